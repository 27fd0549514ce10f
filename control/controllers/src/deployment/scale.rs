//! How many Pods a Deployment may run above and below its replicas (maxSurge rounds up,
//! maxUnavailable rounds down, both never zero together), how far a new ReplicaSet may grow,
//! and how a Deployment scaled mid-rollout spreads the change across its ReplicaSets in
//! proportion to their sizes (upstream's proportional scaling, driven by each ReplicaSet's
//! desired-replicas and max-replicas annotations).

use std::cmp::Ordering;
use std::num::IntErrorKind;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::revisions;
use super::{by_creation, desired, is_rolling, rs_available, rs_spec};

/// An absolute count or a percentage of `total`, rounded up or down, never below zero. A value
/// that validation refuses (negative, or a string that is not a whole percentage) counts as
/// zero; a percentage too large to represent clamps to `i32::MAX` instead of overflowing.
pub(crate) fn scaled_value(value: Option<&IntOrString>, total: i32, round_up: bool) -> i32 {
    match value {
        None => 0,
        Some(IntOrString::Int(n)) => (*n).max(0),
        Some(IntOrString::String(s)) => {
            let Some(percent) = s.strip_suffix('%').and_then(parse_percent) else {
                return 0;
            };
            // An i64 times an i32 always fits in an i128.
            let scaled = i128::from(percent.max(0)) * i128::from(total.max(0));
            let value = if round_up {
                scaled.div_euclid(100) + i128::from(scaled.rem_euclid(100) != 0)
            } else {
                scaled.div_euclid(100)
            };
            i32::try_from(value).unwrap_or(i32::MAX)
        }
    }
}

/// A whole percentage; digits beyond the range of `i64` saturate rather than fail.
fn parse_percent(digits: &str) -> Option<i64> {
    match digits.parse::<i64>() {
        Ok(n) => Some(n),
        Err(e) => match e.kind() {
            IntErrorKind::PosOverflow => Some(i64::MAX),
            IntErrorKind::NegOverflow => Some(i64::MIN),
            _ => None,
        },
    }
}

/// (maxSurge, maxUnavailable) for `desired` replicas; when both resolve to zero, one Pod may
/// be unavailable, or a rollout could never move.
pub(super) fn resolve_fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    desired: i32,
) -> (i32, i32) {
    let surge = scaled_value(max_surge, desired, true);
    let mut unavailable = scaled_value(max_unavailable, desired, false);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable)
}

fn fenceposts(d: &Deployment) -> Option<(i32, i32)> {
    if !is_rolling(d) {
        return None;
    }
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    Some(resolve_fenceposts(
        ru.and_then(|r| r.max_surge.as_ref()),
        ru.and_then(|r| r.max_unavailable.as_ref()),
        desired(d),
    ))
}

/// How many Pods above spec.replicas a rolling update may run (0 for Recreate).
pub(super) fn max_surge(d: &Deployment) -> i32 {
    fenceposts(d).map_or(0, |(surge, _)| surge)
}

/// How many of spec.replicas may be unavailable during a rolling update (0 for Recreate or no
/// replicas; never more than spec.replicas).
pub(super) fn max_unavailable(d: &Deployment) -> i32 {
    if desired(d) == 0 {
        return 0;
    }
    fenceposts(d).map_or(0, |(_, unavailable)| unavailable.min(desired(d)))
}

/// spec.replicas plus maxSurge: the most Pods a rolling update may run, saturating at
/// `i32::MAX`.
pub(super) fn max_total(d: &Deployment) -> i32 {
    desired(d).saturating_add(max_surge(d))
}

/// Sum of spec.replicas, saturating rather than overflowing.
pub(super) fn spec_total(rses: &[&ReplicaSet]) -> i32 {
    saturating_sum(rses.iter().map(|rs| rs_spec(rs)))
}

/// A sum of replica counts that saturates at the bounds of `i32` instead of overflowing.
pub(super) fn saturating_sum(values: impl IntoIterator<Item = i32>) -> i32 {
    values.into_iter().fold(0, i32::saturating_add)
}

/// The size the new ReplicaSet may grow to now (upstream's NewRSNewReplicas).
pub(super) fn new_rs_replicas(d: &Deployment, all: &[&ReplicaSet], new: &ReplicaSet) -> i32 {
    if !is_rolling(d) {
        return desired(d);
    }
    let max_total = max_total(d);
    let current = spec_total(all);
    if current >= max_total {
        return rs_spec(new);
    }
    let up = max_total
        .saturating_sub(current)
        .min(desired(d).saturating_sub(rs_spec(new)));
    rs_spec(new).saturating_add(up)
}

/// ReplicaSets with spec.replicas above zero.
pub(super) fn active<'a>(rses: impl IntoIterator<Item = &'a ReplicaSet>) -> Vec<&'a ReplicaSet> {
    rses.into_iter().filter(|rs| rs_spec(rs) > 0).collect()
}

/// The one active ReplicaSet, or with none active the new one or else the newest old one;
/// `None` when several are active (upstream's FindActiveOrLatest).
pub(super) fn find_active_or_latest<'a>(
    new: Option<&'a ReplicaSet>,
    olds: &[&'a ReplicaSet],
) -> Option<&'a ReplicaSet> {
    let all = active(olds.iter().copied().chain(new));
    match all.len() {
        0 => new.or_else(|| olds.iter().copied().max_by(|a, b| by_creation(a, b))),
        1 => Some(all[0]),
        _ => None,
    }
}

/// Whether the new ReplicaSet runs all of spec.replicas, annotated for it and available.
pub(super) fn is_saturated(d: &Deployment, rs: Option<&ReplicaSet>) -> bool {
    let Some(rs) = rs else { return false };
    let Some(annotated) = revisions::desired_replicas_annotation(rs) else {
        return false;
    };
    rs_spec(rs) == desired(d) && annotated == desired(d) && rs_available(rs) == desired(d)
}

/// One ReplicaSet to set to `to` replicas; `up` is the direction named in its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Resize {
    pub(super) name: String,
    pub(super) to: i32,
    pub(super) up: bool,
}

/// How a Deployment whose replicas changed resizes its ReplicaSets (upstream's scale): the
/// only active one (or the latest) takes the new count; with a saturated new ReplicaSet the
/// old ones go to zero; mid rolling update, every active ReplicaSet takes a share of the
/// difference in proportion to its size, leftovers to the largest.
pub(super) fn plan_scale(
    d: &Deployment,
    new: Option<&ReplicaSet>,
    olds: &[&ReplicaSet],
) -> Vec<Resize> {
    if let Some(rs) = find_active_or_latest(new, olds) {
        if rs_spec(rs) == desired(d) {
            return Vec::new();
        }
        return vec![Resize {
            name: name_of(rs),
            to: desired(d),
            up: rs_spec(rs) < desired(d),
        }];
    }
    if is_saturated(d, new) {
        return active(olds.iter().copied())
            .into_iter()
            .map(|rs| Resize {
                name: name_of(rs),
                to: 0,
                up: false,
            })
            .collect();
    }
    if !is_rolling(d) {
        return Vec::new();
    }
    let mut all = active(olds.iter().copied().chain(new));
    let allowed = if desired(d) > 0 { max_total(d) } else { 0 };
    let to_add = allowed.saturating_sub(spec_total(&all));
    match to_add.cmp(&0) {
        // Larger first; among equals, newer first when growing, older first when shrinking.
        Ordering::Greater => {
            all.sort_by(|a, b| rs_spec(b).cmp(&rs_spec(a)).then(by_creation(b, a)))
        }
        Ordering::Less => all.sort_by(|a, b| rs_spec(b).cmp(&rs_spec(a)).then(by_creation(a, b))),
        Ordering::Equal => {}
    }
    let mut added = 0;
    let mut sizes: Vec<i32> = Vec::with_capacity(all.len());
    for rs in &all {
        if to_add == 0 {
            sizes.push(rs_spec(rs));
            continue;
        }
        let share = proportion(rs, d, to_add, added);
        sizes.push(rs_spec(rs).saturating_add(share));
        added = added.saturating_add(share);
    }
    if to_add != 0 && !sizes.is_empty() {
        sizes[0] = sizes[0].saturating_add(to_add.saturating_sub(added)).max(0);
    }
    all.iter()
        .zip(sizes)
        .map(|(rs, to)| Resize {
            name: name_of(rs),
            to,
            up: to_add > 0,
        })
        .collect()
}

/// The share of `to_add` that `rs` takes, never beyond what is left to add or remove.
fn proportion(rs: &ReplicaSet, d: &Deployment, to_add: i32, added: i32) -> i32 {
    if rs_spec(rs) == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let fraction = fraction(rs, d);
    let allowed = to_add.saturating_sub(added);
    if to_add > 0 {
        fraction.min(allowed)
    } else {
        fraction.max(allowed)
    }
}

/// How many replicas `rs` gains (or loses) when the Deployment's maximum size goes from the
/// one annotated on `rs` to the current one.
fn fraction(rs: &ReplicaSet, d: &Deployment) -> i32 {
    if desired(d) == 0 {
        return rs_spec(rs).saturating_neg();
    }
    let max_now = max_total(d);
    let max_before = match revisions::max_replicas_annotation(rs) {
        Some(n) if n != 0 => n,
        _ => d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0),
    };
    if max_before == 0 {
        return 0;
    }
    let scaled = f64::from(rs_spec(rs)) * f64::from(max_now) / f64::from(max_before);
    // `as` saturates a float that does not fit.
    (scaled.round() as i32).saturating_sub(rs_spec(rs))
}

fn name_of(rs: &ReplicaSet) -> String {
    rs.metadata.name.clone().unwrap_or_default()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::deployment::revisions::{DESIRED_REPLICAS, MAX_REPLICAS};
    use k8s_openapi::api::apps::v1::{
        DeploymentSpec, DeploymentStatus, DeploymentStrategy, ReplicaSetSpec, ReplicaSetStatus,
        RollingUpdateDeployment,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn pct(s: &str) -> IntOrString {
        IntOrString::String(s.into())
    }

    /// A rolling-update Deployment with `replicas`, maxSurge and maxUnavailable.
    pub(in crate::deployment) fn deployment(
        replicas: i32,
        surge: IntOrString,
        unavailable: IntOrString,
    ) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                uid: Some("d-uid".into()),
                generation: Some(1),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(surge),
                        max_unavailable: Some(unavailable),
                    }),
                }),
                progress_deadline_seconds: Some(600),
                revision_history_limit: Some(10),
                ..Default::default()
            }),
            status: Some(DeploymentStatus::default()),
        }
    }

    /// A ReplicaSet `name` created at second `created`, with spec and available replicas and the
    /// max-replicas annotation.
    pub(in crate::deployment) fn replicaset(
        name: &str,
        created: i64,
        spec: i32,
        available: i32,
        max_annotation: Option<i32>,
    ) -> ReplicaSet {
        let mut annotations = std::collections::BTreeMap::new();
        if let Some(max) = max_annotation {
            annotations.insert(MAX_REPLICAS.to_string(), max.to_string());
            annotations.insert(DESIRED_REPLICAS.to_string(), spec.to_string());
        }
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                uid: Some(format!("uid-{name}")),
                creation_timestamp: Some(Time(
                    k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + created).unwrap(),
                )),
                annotations: Some(annotations),
                generation: Some(1),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(spec),
                ..Default::default()
            }),
            status: Some(ReplicaSetStatus {
                replicas: spec,
                available_replicas: Some(available),
                ready_replicas: Some(available),
                observed_generation: Some(1),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn surge_rounds_up_and_unavailable_down() {
        assert_eq!(
            resolve_fenceposts(Some(&pct("25%")), Some(&pct("25%")), 10),
            (3, 2)
        );
        assert_eq!(
            resolve_fenceposts(Some(&pct("25%")), Some(&pct("25%")), 1),
            (1, 0)
        );
        assert_eq!(
            resolve_fenceposts(Some(&pct("10%")), Some(&pct("10%")), 3),
            (1, 0)
        );
        assert_eq!(
            resolve_fenceposts(Some(&IntOrString::Int(0)), Some(&pct("10%")), 3),
            (0, 1)
        );
        assert_eq!(
            resolve_fenceposts(Some(&IntOrString::Int(2)), Some(&IntOrString::Int(1)), 5),
            (2, 1)
        );
        assert_eq!(
            resolve_fenceposts(Some(&pct("100%")), Some(&pct("0%")), 7),
            (7, 0)
        );
        let d = deployment(3, IntOrString::Int(1), IntOrString::Int(5));
        assert_eq!(max_unavailable(&d), 3, "capped at replicas");
        let mut recreate = d.clone();
        recreate.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        });
        assert_eq!((max_surge(&recreate), max_unavailable(&recreate)), (0, 0));
    }

    #[test]
    fn huge_percentages_and_replicas_clamp_instead_of_overflowing() {
        let huge = pct("9223372036854775807%");
        assert_eq!(scaled_value(Some(&huge), i32::MAX, true), i32::MAX);
        assert_eq!(scaled_value(Some(&huge), i32::MAX, false), i32::MAX);
        assert_eq!(
            scaled_value(Some(&pct("-9223372036854775808%")), i32::MAX, true),
            0
        );
        assert_eq!(
            scaled_value(Some(&pct("99999999999999999999%")), 10, true),
            i32::MAX
        );
        assert_eq!(scaled_value(Some(&pct("abc")), 10, true), 0);
        assert_eq!(scaled_value(Some(&IntOrString::Int(-5)), 10, true), 0);
        assert_eq!(
            resolve_fenceposts(Some(&huge), Some(&huge), i32::MAX),
            (i32::MAX, i32::MAX)
        );

        let mut d = deployment(i32::MAX, huge.clone(), huge);
        assert_eq!(max_surge(&d), i32::MAX);
        assert_eq!(max_unavailable(&d), i32::MAX);
        assert_eq!(max_total(&d), i32::MAX);
        d.status.as_mut().unwrap().replicas = Some(i32::MAX);
        let old = replicaset("old", 0, i32::MAX, i32::MAX, Some(i32::MAX));
        let new = replicaset("new", 1, i32::MAX, 0, Some(i32::MAX));
        assert_eq!(spec_total(&[&old, &new]), i32::MAX);
        assert_eq!(new_rs_replicas(&d, &[&old, &new], &new), i32::MAX);
        let new = replicaset("new", 1, 1, 0, Some(1));
        assert_eq!(
            new_rs_replicas(&d, &[&old, &new], &new),
            1,
            "the total is already at the (saturated) maximum"
        );
        let old = replicaset("old", 0, i32::MAX - 5, i32::MAX - 5, Some(i32::MAX));
        assert_eq!(new_rs_replicas(&d, &[&old, &new], &new), 5);
        let plan = plan_scale(&d, Some(&new), &[&old]);
        assert!(plan.iter().all(|r| r.to >= 0), "{plan:?}");
        let olds = [&old, &old];
        let _ = plan_scale(&deployment(0, pct("1%"), pct("1%")), Some(&new), &olds);
        let _ = crate::deployment::rolling::old_scale_down(&d, &olds, &new);
    }

    #[test]
    fn new_replicaset_grows_within_the_surge() {
        let d = deployment(10, pct("25%"), pct("25%"));
        let old = replicaset("old", 0, 10, 10, Some(13));
        let new = replicaset("new", 1, 0, 0, None);
        assert_eq!(new_rs_replicas(&d, &[&old, &new], &new), 3);
        let new = replicaset("new", 1, 3, 0, None);
        assert_eq!(new_rs_replicas(&d, &[&old, &new], &new), 3, "at max surge");
        let old = replicaset("old", 0, 8, 8, Some(13));
        assert_eq!(new_rs_replicas(&d, &[&old, &new], &new), 5);
        let old = replicaset("old", 0, 0, 0, Some(13));
        let new = replicaset("new", 1, 9, 9, None);
        assert_eq!(
            new_rs_replicas(&d, &[&old, &new], &new),
            10,
            "never beyond replicas"
        );
    }

    #[test]
    fn scaling_mid_rollout_is_proportional() {
        // The documented example: 10 replicas, maxSurge 3, a stuck rollout at old 8 + new 5,
        // then scaled to 15: 3 more for the old ReplicaSet, 2 for the new.
        let mut d = deployment(15, IntOrString::Int(3), IntOrString::Int(2));
        d.status.as_mut().unwrap().replicas = Some(13);
        let old = replicaset("old", 0, 8, 8, Some(13));
        let new = replicaset("new", 1, 5, 0, Some(13));
        let plan = plan_scale(&d, Some(&new), &[&old]);
        assert_eq!(
            plan,
            [
                Resize {
                    name: "old".into(),
                    to: 11,
                    up: true
                },
                Resize {
                    name: "new".into(),
                    to: 7,
                    up: true
                },
            ]
        );
        // And back down to 10: sizes shrink in proportion, leftovers from the largest.
        let mut d = deployment(10, IntOrString::Int(3), IntOrString::Int(2));
        d.status.as_mut().unwrap().replicas = Some(18);
        let old = replicaset("old", 0, 11, 11, Some(18));
        let new = replicaset("new", 1, 7, 0, Some(18));
        let plan = plan_scale(&d, Some(&new), &[&old]);
        let total: i32 = plan.iter().map(|r| r.to).sum();
        assert_eq!(total, 13);
        assert_eq!(
            plan[0],
            Resize {
                name: "old".into(),
                to: 8,
                up: false
            }
        );
        assert_eq!(
            plan[1],
            Resize {
                name: "new".into(),
                to: 5,
                up: false
            }
        );
    }

    #[test]
    fn scaling_picks_the_only_active_or_clears_old_ones() {
        let d = deployment(5, pct("25%"), pct("25%"));
        let new = replicaset("new", 1, 3, 3, Some(4));
        let old = replicaset("old", 0, 0, 0, Some(4));
        assert_eq!(
            plan_scale(&d, Some(&new), &[&old]),
            [Resize {
                name: "new".into(),
                to: 5,
                up: true
            }]
        );
        // No active ReplicaSet and no new one: the newest old one takes the replicas.
        let older = replicaset("older", -5, 0, 0, None);
        assert_eq!(
            plan_scale(&d, None, &[&older, &old]),
            [Resize {
                name: "old".into(),
                to: 5,
                up: true
            }]
        );
        // A saturated new ReplicaSet: old ones go to zero.
        let mut new = replicaset("new", 1, 5, 5, Some(7));
        new.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(DESIRED_REPLICAS.into(), "5".into());
        let old = replicaset("old", 0, 2, 2, Some(7));
        assert_eq!(
            plan_scale(&d, Some(&new), &[&old]),
            [Resize {
                name: "old".into(),
                to: 0,
                up: false
            }]
        );
    }

    #[test]
    fn scaling_to_zero_empties_everything() {
        let mut d = deployment(0, pct("25%"), pct("25%"));
        d.status.as_mut().unwrap().replicas = Some(8);
        let old = replicaset("old", 0, 5, 5, Some(7));
        let new = replicaset("new", 1, 3, 0, Some(7));
        let plan = plan_scale(&d, Some(&new), &[&old]);
        assert!(plan.iter().all(|r| r.to == 0 && !r.up), "{plan:?}");
        assert_eq!(plan.len(), 2);
    }
}
