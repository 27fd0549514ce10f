//! The RollingUpdate strategy's choice (upstream's rollingUpdate): which outdated daemon Pods
//! to delete, or, with maxSurge, on which nodes to start the new Pod beside the old one, so
//! that at most maxUnavailable nodes lack an available daemon (or maxSurge nodes run two).
//! The core loop then creates the missing Pods and removes the surplus.

use baton_client::CachedPod;
use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::eligibility::Placement;
use crate::pod_control::is_pod_available;

/// A maxSurge or maxUnavailable value that is neither a number nor a percentage.
#[derive(Debug, thiserror::Error)]
#[error("invalid value {0:?}: must be an integer or a percentage")]
pub struct IntOrPercentError(pub String);

/// `value` scaled against `total`: a number as is, a percentage of `total` rounded up.
pub fn scaled_value(value: &IntOrString, total: i32) -> Result<i32, IntOrPercentError> {
    match value {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(s) => {
            let percent: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| IntOrPercentError(s.clone()))?;
            Ok(((percent * i64::from(total) + 99) / 100) as i32)
        }
    }
}

/// (maxSurge, maxUnavailable) of `ds` for `desired` scheduled daemons; when both come out 0,
/// one unavailable node is allowed so that the update can progress.
pub fn surge_and_unavailable(
    ds: &DaemonSet,
    desired: i32,
) -> Result<(i32, i32), IntOrPercentError> {
    let strategy = ds.spec.as_ref().and_then(|s| s.update_strategy.as_ref());
    let rolling = strategy
        .filter(|s| s.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate")
        .and_then(|s| s.rolling_update.as_ref());
    let (mut surge, mut unavailable) = (0, 0);
    if let Some(r) = rolling {
        if let Some(v) = &r.max_surge {
            surge = scaled_value(v, desired)?;
        }
        if let Some(v) = &r.max_unavailable {
            unavailable = scaled_value(v, desired)?;
        }
    }
    if desired > 0 && surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    Ok((surge, unavailable))
}

/// What the rolling update does in one reconcile.
#[derive(Debug, Default)]
pub struct RollingPlan {
    pub delete: Vec<Arc<CachedPod>>,
    pub create_on: Vec<String>,
}

/// A node's Pod of the current revision and its outdated one, each if any.
type NewAndOld = (Option<Arc<CachedPod>>, Option<Arc<CachedPod>>);

/// The new and the old Pod on one node (`None` when a node has more than one of either: the
/// core loop cleans such nodes up first).
fn new_and_old(
    pods: &[Arc<CachedPod>],
    updated: &impl Fn(&CachedPod) -> bool,
) -> Option<NewAndOld> {
    let (mut new, mut old) = (None, None);
    for pod in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let slot = if updated(pod) { &mut new } else { &mut old };
        if slot.is_some() {
            return None;
        }
        *slot = Some(pod.clone());
    }
    Some((new, old))
}

/// Decides the rolling update's step. `by_node` holds every node's daemon Pods (terminal Pods
/// being deleted left out); `updated` tells a Pod of the current revision.
pub fn plan(
    ds: &DaemonSet,
    placement: &Placement,
    nodes: &[Arc<Node>],
    by_node: &BTreeMap<String, Vec<Arc<CachedPod>>>,
    now: jiff::Timestamp,
    updated: impl Fn(&CachedPod) -> bool,
) -> Result<RollingPlan, IntOrPercentError> {
    let min_ready = ds
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let available = |p: &CachedPod| is_pod_available(p, min_ready, now);
    let mut nodes_to_pods = by_node.clone();
    let mut desired = 0;
    let mut eligible = std::collections::HashSet::new();
    for node in nodes {
        if placement.eligibility(node).should_run {
            desired += 1;
            let name = node.metadata.name.clone().unwrap_or_default();
            eligible.insert(name.clone());
            nodes_to_pods.entry(name).or_default();
        }
    }
    let (max_surge, max_unavailable) = surge_and_unavailable(ds, desired)?;
    let mut plan = RollingPlan::default();

    if max_surge == 0 {
        let mut unavailable = 0;
        let mut replace_now = Vec::new();
        let mut candidates = Vec::new();
        for pods in nodes_to_pods.values() {
            let Some((new, old)) = new_and_old(pods, &updated) else {
                unavailable += 1;
                continue;
            };
            match (new, old) {
                (None, None) | (Some(_), Some(_)) => unavailable += 1,
                (Some(new), None) => {
                    if !available(&new) {
                        unavailable += 1;
                    }
                }
                (None, Some(old)) => {
                    if !available(&old) {
                        replace_now.push(old);
                    } else if unavailable < max_unavailable {
                        candidates.push(old);
                    }
                }
            }
        }
        let room = (max_unavailable - unavailable).max(0) as usize;
        plan.delete = replace_now;
        plan.delete.extend(candidates.into_iter().take(room));
        return Ok(plan);
    }

    let mut surging = 0;
    let mut replace_now = Vec::new();
    let mut candidates = Vec::new();
    for (node, pods) in &nodes_to_pods {
        let Some((new, old)) = new_and_old(pods, &updated) else {
            surging += 1;
            continue;
        };
        match (new, old) {
            (_, None) => {}
            (None, Some(old)) => {
                if available(&old) {
                    candidates.push(node.clone());
                } else if !eligible.contains(node) {
                    // Not available and not wanted here any more: no reason to keep it.
                    plan.delete.push(old);
                } else {
                    replace_now.push(node.clone());
                }
            }
            (Some(new), Some(old)) => {
                if available(&new) {
                    plan.delete.push(old);
                } else {
                    surging += 1;
                }
            }
        }
    }
    let room = (max_surge - surging).max(0) as usize;
    plan.create_on = replace_now;
    plan.create_on.extend(candidates.into_iter().take(room));
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller_revision::POD_REVISION_LABEL;
    use k8s_openapi::api::apps::v1::{
        DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet,
    };
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn ds(surge: i32, unavailable: IntOrString) -> DaemonSet {
        DaemonSet {
            spec: Some(DaemonSetSpec {
                update_strategy: Some(DaemonSetUpdateStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDaemonSet {
                        max_surge: Some(IntOrString::Int(surge)),
                        max_unavailable: Some(unavailable),
                    }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn node(name: &str) -> Arc<Node> {
        Arc::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    fn pod(name: &str, node: &str, hash: &str, ready: bool) -> Arc<CachedPod> {
        Arc::new(CachedPod::from(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([(POD_REVISION_LABEL.to_string(), hash.to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    last_transition_time: Some(Time(jiff::Timestamp::UNIX_EPOCH)),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }))
    }

    fn updated(p: &CachedPod) -> bool {
        p.metadata.labels.as_ref().unwrap()[POD_REVISION_LABEL] == "new"
    }

    fn group(pods: &[Arc<CachedPod>]) -> BTreeMap<String, Vec<Arc<CachedPod>>> {
        let mut map: BTreeMap<String, Vec<Arc<CachedPod>>> = BTreeMap::new();
        for p in pods {
            let node = p.spec.as_ref().unwrap().node_name.clone().unwrap();
            map.entry(node).or_default().push(p.clone());
        }
        map
    }

    fn run(ds: &DaemonSet, pods: &[Arc<CachedPod>]) -> RollingPlan {
        let nodes = [node("a"), node("b"), node("c"), node("d")];
        plan(
            ds,
            &Placement::of(&PodSpec::default()),
            &nodes,
            &group(pods),
            jiff::Timestamp::from_second(100).unwrap(),
            updated,
        )
        .unwrap()
    }

    fn names(pods: &[Arc<CachedPod>]) -> Vec<String> {
        pods.iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect()
    }

    #[test]
    fn percentages_round_up() {
        assert_eq!(
            scaled_value(&IntOrString::String("25%".into()), 3).unwrap(),
            1
        );
        assert_eq!(
            scaled_value(&IntOrString::String("50%".into()), 5).unwrap(),
            3
        );
        assert_eq!(
            scaled_value(&IntOrString::String("0%".into()), 5).unwrap(),
            0
        );
        assert_eq!(scaled_value(&IntOrString::Int(2), 5).unwrap(), 2);
        assert!(scaled_value(&IntOrString::String("half".into()), 5).is_err());
        assert_eq!(
            surge_and_unavailable(&ds(0, IntOrString::Int(0)), 3).unwrap(),
            (0, 1)
        );
    }

    #[test]
    fn deletes_up_to_max_unavailable_old_pods() {
        let all_old = [
            pod("a1", "a", "old", true),
            pod("b1", "b", "old", true),
            pod("c1", "c", "old", true),
            pod("d1", "d", "old", true),
        ];
        let p = run(&ds(0, IntOrString::Int(1)), &all_old);
        assert_eq!(names(&p.delete), ["a1"]);
        assert!(p.create_on.is_empty());
        let p = run(&ds(0, IntOrString::String("50%".into())), &all_old);
        assert_eq!(names(&p.delete), ["a1", "b1"]);
    }

    #[test]
    fn unavailable_new_pods_and_missing_pods_use_the_budget() {
        let pods = [
            pod("a2", "a", "new", false),
            pod("b1", "b", "old", true),
            pod("c1", "c", "old", true),
            pod("d1", "d", "old", true),
        ];
        assert!(run(&ds(0, IntOrString::Int(1)), &pods).delete.is_empty());
        assert_eq!(
            names(&run(&ds(0, IntOrString::Int(2)), &pods).delete),
            ["b1"]
        );
        // Node d has no pod at all: it counts as unavailable too.
        let pods = [
            pod("a2", "a", "new", true),
            pod("b1", "b", "old", true),
            pod("c1", "c", "old", true),
        ];
        assert!(run(&ds(0, IntOrString::Int(1)), &pods).delete.is_empty());
    }

    #[test]
    fn unavailable_old_pods_are_replaced_at_once() {
        let pods = [
            pod("a1", "a", "old", false),
            pod("b1", "b", "old", false),
            pod("c1", "c", "old", true),
            pod("d1", "d", "old", true),
        ];
        // Replacing them does not use the budget (upstream counts only what it leaves
        // unavailable), so one available old Pod goes as well.
        let p = run(&ds(0, IntOrString::Int(1)), &pods);
        assert_eq!(names(&p.delete), ["a1", "b1", "c1"]);
    }

    #[test]
    fn surge_starts_new_pods_beside_old_ones() {
        let all_old = [
            pod("a1", "a", "old", true),
            pod("b1", "b", "old", true),
            pod("c1", "c", "old", true),
            pod("d1", "d", "old", false),
        ];
        let p = run(&ds(1, IntOrString::Int(0)), &all_old);
        assert!(p.delete.is_empty());
        // d's old Pod is unavailable: replaced at once, beside one surge candidate.
        assert_eq!(p.create_on, ["d", "a"]);

        let surging = [
            pod("a1", "a", "old", true),
            pod("a2", "a", "new", true),
            pod("b1", "b", "old", true),
            pod("b2", "b", "new", false),
            pod("c1", "c", "old", true),
            pod("d2", "d", "new", true),
        ];
        let p = run(&ds(1, IntOrString::Int(0)), &surging);
        assert_eq!(names(&p.delete), ["a1"]);
        // b is still surging, so no room for c.
        assert!(p.create_on.is_empty());
        let p = run(&ds(2, IntOrString::Int(0)), &surging);
        assert_eq!(p.create_on, ["c"]);
    }
}
