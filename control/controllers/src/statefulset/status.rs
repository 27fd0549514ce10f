//! A StatefulSet's status (upstream's computeReplicaStatus, completeRollingUpdate and
//! inconsistentStatus): replicas, ready, available, current and updated counts and the two
//! revisions, which `kubectl rollout status statefulset` compares.

use baton_client::CachedPod;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};

use super::identity::pod_revision;
use super::plan::{is_running_and_available, is_running_and_ready, is_terminating};

/// The counts of a StatefulSet's Pods.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub replicas: i32,
    pub ready: i32,
    pub available: i32,
    pub current: i32,
    pub updated: i32,
}

/// Counts `pods` (the set's Pods with an ordinal) against the two revision names.
pub fn count(
    pods: &[Arc<CachedPod>],
    min_ready_seconds: i32,
    now: jiff::Timestamp,
    current_revision: &str,
    update_revision: &str,
) -> Counts {
    let mut c = Counts::default();
    for pod in pods {
        c.replicas += 1;
        if is_running_and_ready(pod) {
            c.ready += 1;
            if is_running_and_available(pod, min_ready_seconds, now) {
                c.available += 1;
            }
        }
        if !is_terminating(pod) {
            let revision = pod_revision(pod);
            if revision == Some(current_revision) {
                c.current += 1;
            }
            if revision == Some(update_revision) {
                c.updated += 1;
            }
        }
    }
    c
}

/// The status to write, or `None` when the stored one already says the same.
pub fn next_status(
    set: &StatefulSet,
    counts: Counts,
    current_revision: &str,
    update_revision: &str,
    collision_count: i32,
) -> Option<StatefulSetStatus> {
    let previous = set.status.clone().unwrap_or_default();
    let mut status = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        replicas: counts.replicas,
        ready_replicas: Some(counts.ready),
        available_replicas: Some(counts.available),
        current_replicas: Some(counts.current),
        updated_replicas: Some(counts.updated),
        current_revision: Some(current_revision.to_string()),
        update_revision: Some(update_revision.to_string()),
        collision_count: Some(collision_count),
        conditions: previous.conditions.clone(),
    };
    // A finished rolling update makes the update revision the current one.
    let rolling = set
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        == "RollingUpdate";
    if rolling && counts.updated == counts.replicas && counts.ready == counts.replicas {
        status.current_replicas = status.updated_replicas;
        status.current_revision = status.update_revision.clone();
    }
    let changed = status.observed_generation > previous.observed_generation
        || status.replicas != previous.replicas
        || status.current_replicas.unwrap_or(0) != previous.current_replicas.unwrap_or(0)
        || status.ready_replicas.unwrap_or(0) != previous.ready_replicas.unwrap_or(0)
        || status.updated_replicas.unwrap_or(0) != previous.updated_replicas.unwrap_or(0)
        || status.available_replicas.unwrap_or(0) != previous.available_replicas.unwrap_or(0)
        || status.current_revision != previous.current_revision
        || status.update_revision != previous.update_revision
        || status.collision_count.unwrap_or(0) != previous.collision_count.unwrap_or(0);
    changed.then_some(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller_revision::POD_REVISION_LABEL;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn pod(revision: &str, ready_since: Option<i64>, terminating: bool) -> Arc<CachedPod> {
        Arc::new(CachedPod::from(Pod {
            metadata: ObjectMeta {
                labels: Some([(POD_REVISION_LABEL.to_string(), revision.to_string())].into()),
                deletion_timestamp: terminating.then_some(Time(jiff::Timestamp::UNIX_EPOCH)),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready_since.is_some() {
                        "True"
                    } else {
                        "False"
                    }
                    .into(),
                    last_transition_time: ready_since
                        .map(|s| Time(jiff::Timestamp::from_second(s).unwrap())),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }))
    }

    fn set(generation: i64) -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta {
                generation: Some(generation),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn counts_and_completion() {
        let now = jiff::Timestamp::from_second(100).unwrap();
        let pods = [
            pod("a", Some(0), false),
            pod("b", Some(95), false),
            pod("b", None, true),
        ];
        let c = count(&pods, 10, now, "a", "b");
        assert_eq!(
            c,
            Counts {
                replicas: 3,
                ready: 2,
                available: 1,
                current: 1,
                updated: 1,
            }
        );
        let s = next_status(&set(2), c, "a", "b", 0).unwrap();
        assert_eq!(s.current_revision.as_deref(), Some("a"));
        assert_eq!(s.observed_generation, Some(2));

        let done = [pod("b", Some(0), false), pod("b", Some(0), false)];
        let c = count(&done, 0, now, "a", "b");
        let s = next_status(&set(2), c, "a", "b", 0).unwrap();
        assert_eq!(s.current_revision.as_deref(), Some("b"));
        assert_eq!(s.current_replicas, Some(2));
        let mut written = set(2);
        written.status = Some(s);
        assert!(next_status(&written, c, "a", "b", 0).is_none());
    }
}
