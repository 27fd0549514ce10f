//! The RollingUpdate strategy: grow the new ReplicaSet as far as maxSurge allows, shrink the
//! old ones as far as maxUnavailable allows (their unhealthy replicas first, oldest ReplicaSets
//! first), one step per sync, each step woken by the ReplicaSets' status changes.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};

use super::scale::{active, max_unavailable, new_rs_replicas, saturating_sum, spec_total};
use super::status::deployment_complete;
use super::sync::Rollout;
use super::{SyncDeploymentError, by_creation, desired, rs_available, rs_spec};

/// The size the new ReplicaSet should take now, if it differs from its current one (upstream's
/// reconcileNewReplicaSet).
pub(super) fn new_rs_target(d: &Deployment, all: &[&ReplicaSet], new: &ReplicaSet) -> Option<i32> {
    let current = rs_spec(new);
    let want = desired(d);
    if current == want {
        return None;
    }
    if current > want {
        return Some(want);
    }
    let target = new_rs_replicas(d, all, new);
    (target != current).then_some(target)
}

/// Old ReplicaSets to shrink now, as (name, new size) (upstream's reconcileOldReplicaSets):
/// first their replicas that are not available, as far as the rollout can lose Pods without
/// dropping below spec.replicas - maxUnavailable counting the new ReplicaSet's unavailable
/// ones; then available replicas down to that minimum. Oldest ReplicaSets first.
pub(super) fn old_scale_down(
    d: &Deployment,
    olds: &[&ReplicaSet],
    new: &ReplicaSet,
) -> Vec<(String, i32)> {
    let old_pods = spec_total(olds);
    if old_pods == 0 {
        return Vec::new();
    }
    let all_pods = old_pods.saturating_add(rs_spec(new));
    let min_available = desired(d).saturating_sub(max_unavailable(d));
    let new_unavailable = rs_spec(new).saturating_sub(rs_available(new));
    let max_scaled_down = all_pods
        .saturating_sub(min_available)
        .saturating_sub(new_unavailable);
    if max_scaled_down <= 0 {
        return Vec::new();
    }
    let mut olds: Vec<(&ReplicaSet, i32)> = active(olds.iter().copied())
        .into_iter()
        .map(|rs| (rs, rs_spec(rs)))
        .collect();
    olds.sort_by(|a, b| by_creation(a.0, b.0));

    // Unhealthy replicas first: removing them costs no availability.
    let mut cleaned = 0;
    for (rs, size) in olds.iter_mut() {
        if cleaned >= max_scaled_down {
            break;
        }
        let unhealthy = size.saturating_sub(rs_available(rs));
        if *size == 0 || unhealthy <= 0 {
            continue;
        }
        let down = max_scaled_down.saturating_sub(cleaned).min(unhealthy);
        *size -= down;
        cleaned = cleaned.saturating_add(down);
    }

    // Then available ones, down to the minimum availability.
    let available = saturating_sum(
        olds.iter()
            .map(|(rs, _)| rs_available(rs))
            .chain([rs_available(new)]),
    );
    if available > min_available {
        let budget = available.saturating_sub(min_available);
        let mut scaled = 0;
        for (_, size) in olds.iter_mut() {
            if scaled >= budget {
                break;
            }
            if *size == 0 {
                continue;
            }
            let down = (*size).min(budget.saturating_sub(scaled));
            *size -= down;
            scaled = scaled.saturating_add(down);
        }
    }
    olds.into_iter()
        .filter(|(rs, size)| *size != rs_spec(rs))
        .map(|(rs, size)| (rs.metadata.name.clone().unwrap_or_default(), size))
        .collect()
}

impl Rollout<'_> {
    /// One step of a rolling update; returns when to look again for the progress deadline.
    pub(super) async fn rolling(&mut self) -> Result<Option<Duration>, SyncDeploymentError> {
        let new = self.get_all_and_sync_revision(true).await?;
        if let Some(new) = new {
            let target = {
                let all = self.all();
                new_rs_target(&self.d, &all, &self.rs_list[new])
            };
            if let Some(to) = target {
                let up = to > rs_spec(&self.rs_list[new]);
                if self.scale_rs(new, to, up).await? {
                    return self.sync_rollout_status().await;
                }
            }
            let plan = {
                let (_, olds) = self.partition();
                let olds: Vec<&ReplicaSet> = olds.iter().map(|&i| &self.rs_list[i]).collect();
                old_scale_down(&self.d, &olds, &self.rs_list[new])
            };
            if !plan.is_empty() {
                for (name, to) in plan {
                    if let Some(i) = self.index_of(&name) {
                        self.scale_rs(i, to, false).await?;
                    }
                }
                return self.sync_rollout_status().await;
            }
        }
        let recorded = self.d.status.clone().unwrap_or_default();
        if deployment_complete(&self.d, &recorded) {
            self.cleanup().await?;
        }
        self.sync_rollout_status().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::scale::tests::{deployment, replicaset};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn pct(s: &str) -> IntOrString {
        IntOrString::String(s.into())
    }

    #[test]
    fn a_rollout_of_ten_moves_in_surge_and_unavailable_steps() {
        let d = deployment(10, pct("25%"), pct("25%"));
        // Start: the old ReplicaSet runs everything, the new one is empty.
        let old = replicaset("old", 0, 10, 10, Some(13));
        let new = replicaset("new", 1, 0, 0, Some(13));
        assert_eq!(new_rs_target(&d, &[&old, &new], &new), Some(3));
        // New at 3, none available yet: old may lose 2 (10 - 8 minimum available).
        let new = replicaset("new", 1, 3, 0, Some(13));
        assert_eq!(
            new_rs_target(&d, &[&old, &new], &new),
            None,
            "at the surge limit"
        );
        assert_eq!(old_scale_down(&d, &[&old], &new), [("old".to_string(), 8)]);
        // Old at 8: nothing more until new Pods become available.
        let old = replicaset("old", 0, 8, 8, Some(13));
        assert!(old_scale_down(&d, &[&old], &new).is_empty());
        assert_eq!(new_rs_target(&d, &[&old, &new], &new), Some(5));
        // Three new Pods available: 8 + 3 available, 8 must stay, so the old one loses 3.
        let new = replicaset("new", 1, 5, 3, Some(13));
        assert_eq!(old_scale_down(&d, &[&old], &new), [("old".to_string(), 5)]);
    }

    #[test]
    fn unhealthy_old_replicas_go_first() {
        let d = deployment(4, IntOrString::Int(1), IntOrString::Int(0));
        // An old ReplicaSet with 2 of 4 unavailable; the new one has 1 unavailable Pod.
        let older = replicaset("older", 0, 1, 1, None);
        let old = replicaset("old", 1, 3, 1, None);
        let new = replicaset("new", 2, 1, 0, None);
        // allPods 5, minAvailable 4, newUnavailable 1: 0 may go... nothing.
        assert!(old_scale_down(&d, &[&older, &old], &new).is_empty());
        let d = deployment(4, IntOrString::Int(1), IntOrString::Int(1));
        // allPods 5, minAvailable 3, newUnavailable 1: 1 may go, the unhealthy one of "old".
        assert_eq!(
            old_scale_down(&d, &[&older, &old], &new),
            [("old".to_string(), 2)]
        );
    }

    #[test]
    fn a_shrunk_deployment_scales_the_new_replicaset_down() {
        let d = deployment(2, pct("25%"), pct("25%"));
        let new = replicaset("new", 1, 5, 5, None);
        assert_eq!(new_rs_target(&d, &[&new], &new), Some(2));
    }

    #[test]
    fn old_replicasets_empty_oldest_first() {
        let d = deployment(3, IntOrString::Int(1), IntOrString::Int(1));
        let a = replicaset("a", 0, 1, 1, None);
        let b = replicaset("b", 1, 2, 2, None);
        let new = replicaset("new", 2, 3, 3, None);
        // Available 6, minimum 2: everything old may go, oldest first.
        assert_eq!(
            old_scale_down(&d, &[&b, &a], &new),
            [("a".to_string(), 0), ("b".to_string(), 0)]
        );
    }
}
