//! A ReplicaSet's status from the Pods it owns (upstream's calculateStatus): replicas,
//! fullyLabeledReplicas, readyReplicas, availableReplicas, observedGeneration and the
//! ReplicaFailure condition while creating or deleting Pods fails.

use baton_client::CachedPod;
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::pod_control::{is_pod_available, is_pod_ready};

/// The condition type that reports failed Pod creations or deletions.
pub(crate) const REPLICA_FAILURE: &str = "ReplicaFailure";

/// The status `rs` should have with `active` as its active Pods. `manage_error` is the message
/// of a failed creation or deletion in this sync, if any.
pub(crate) fn calculate(
    rs: &ReplicaSet,
    active: &[&CachedPod],
    manage_error: Option<&str>,
    now: Timestamp,
) -> ReplicaSetStatus {
    let spec = rs.spec.as_ref();
    let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let desired = spec.and_then(|s| s.replicas).unwrap_or(1);
    let template_labels: BTreeMap<String, String> = spec
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let mut fully_labeled = 0;
    let mut ready = 0;
    let mut available = 0;
    for pod in active {
        let labels = pod.metadata.labels.as_ref();
        if template_labels
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        {
            fully_labeled += 1;
        }
        if is_pod_ready(pod) {
            ready += 1;
            if is_pod_available(pod, min_ready, now) {
                available += 1;
            }
        }
    }
    let mut conditions = rs
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let has_failure = conditions.iter().any(|c| c.type_ == REPLICA_FAILURE);
    match manage_error {
        Some(message) if !has_failure => {
            let diff = active.len() as i64 - i64::from(desired);
            let reason = match diff {
                d if d < 0 => "FailedCreate",
                d if d > 0 => "FailedDelete",
                _ => "",
            };
            conditions.push(ReplicaSetCondition {
                type_: REPLICA_FAILURE.into(),
                status: "True".into(),
                reason: Some(reason.into()).filter(|r: &String| !r.is_empty()),
                message: Some(message.to_string()),
                last_transition_time: Some(Time(now_seconds(now))),
            });
        }
        None if has_failure => conditions.retain(|c| c.type_ != REPLICA_FAILURE),
        _ => {}
    }
    ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: nonzero(fully_labeled),
        ready_replicas: nonzero(ready),
        available_replicas: nonzero(available),
        observed_generation: rs.metadata.generation,
        conditions: (!conditions.is_empty()).then_some(conditions),
        terminating_replicas: None,
    }
}

/// Whether `new` differs from what `rs` records (zero counts and absent ones are the same, as
/// upstream leaves zeros out).
pub(crate) fn changed(rs: &ReplicaSet, new: &ReplicaSetStatus) -> bool {
    let current = rs.status.clone().unwrap_or_default();
    normalized(current) != normalized(new.clone())
}

fn normalized(mut s: ReplicaSetStatus) -> ReplicaSetStatus {
    for field in [
        &mut s.fully_labeled_replicas,
        &mut s.ready_replicas,
        &mut s.available_replicas,
        &mut s.terminating_replicas,
    ] {
        if *field == Some(0) {
            *field = None;
        }
    }
    if s.observed_generation == Some(0) {
        s.observed_generation = None;
    }
    if s.conditions.as_ref().is_some_and(Vec::is_empty) {
        s.conditions = None;
    }
    s
}

fn nonzero(n: i32) -> Option<i32> {
    (n != 0).then_some(n)
}

/// `now` to the second, as API times are stored (so a written time reads back equal).
pub(crate) fn now_seconds(now: Timestamp) -> Timestamp {
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicaset::pods::tests::pod;
    use k8s_openapi::api::apps::v1::ReplicaSetSpec;
    use k8s_openapi::api::core::v1::PodTemplateSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::jiff::SignedDuration;

    fn rs(replicas: i32, min_ready: i32) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                generation: Some(4),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: Some(min_ready),
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some([("app".to_string(), "web".to_string())].into()),
                        ..Default::default()
                    }),
                    spec: None,
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn counts_labeled_ready_and_available() {
        let now: Timestamp = "2025-01-01T00:01:00Z".parse().unwrap();
        let mut labeled = pod(
            "a",
            "n",
            "Running",
            Some(now - SignedDuration::from_secs(30)),
        );
        labeled.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        let fresh = pod(
            "b",
            "n",
            "Running",
            Some(now - SignedDuration::from_secs(2)),
        );
        let unready = pod("c", "", "Pending", None);
        let status = calculate(&rs(3, 10), &[&labeled, &fresh, &unready], None, now);
        assert_eq!(status.replicas, 3);
        assert_eq!(status.fully_labeled_replicas, Some(1));
        assert_eq!(status.ready_replicas, Some(2));
        assert_eq!(status.available_replicas, Some(1));
        assert_eq!(status.observed_generation, Some(4));
        assert!(status.conditions.is_none());
    }

    #[test]
    fn replica_failure_is_set_once_and_cleared() {
        let now: Timestamp = "2025-01-01T00:01:00.5Z".parse().unwrap();
        let mut set = rs(2, 0);
        let status = calculate(&set, &[], Some("quota exceeded"), now);
        let cond = &status.conditions.as_ref().unwrap()[0];
        assert_eq!(cond.type_, "ReplicaFailure");
        assert_eq!(cond.reason.as_deref(), Some("FailedCreate"));
        assert_eq!(cond.message.as_deref(), Some("quota exceeded"));
        assert_eq!(
            cond.last_transition_time
                .as_ref()
                .unwrap()
                .0
                .subsec_nanosecond(),
            0
        );
        set.status = Some(status.clone());
        assert!(!changed(&set, &calculate(&set, &[], Some("again"), now)));
        let cleared = calculate(&set, &[], None, now);
        assert!(cleared.conditions.is_none());
        assert!(changed(&set, &cleared));
    }

    #[test]
    fn zero_counts_equal_absent_ones() {
        let mut set = rs(0, 0);
        set.status = Some(ReplicaSetStatus {
            replicas: 0,
            ready_replicas: Some(0),
            observed_generation: Some(4),
            ..Default::default()
        });
        let now = Timestamp::now();
        assert!(!changed(&set, &calculate(&set, &[], None, now)));
        set.metadata.generation = Some(5);
        assert!(changed(&set, &calculate(&set, &[], None, now)));
    }
}
