//! A DaemonSet's status (upstream's updateDaemonSetStatus): how many nodes should run its Pod,
//! run one, run one wrongly, and how many of those Pods are ready, available and current.
//! `kubectl rollout status daemonset` compares these.

use baton_client::CachedPod;
use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::DaemonSetStatus;
use k8s_openapi::api::core::v1::Node;

use super::eligibility::Placement;
use crate::pod_control::{is_pod_available, is_pod_ready};

/// The counted part of a DaemonSet's status.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub desired: i32,
    pub current: i32,
    pub misscheduled: i32,
    pub ready: i32,
    pub available: i32,
    pub updated: i32,
}

/// Counts nodes and their daemons. `by_node` lists each node's Pods oldest first (terminal
/// Pods being deleted left out); the oldest Pod on a node is the one that counts.
pub fn count(
    placement: &Placement,
    nodes: &[Arc<Node>],
    by_node: &HashMap<String, Vec<Arc<CachedPod>>>,
    min_ready_seconds: i32,
    now: jiff::Timestamp,
    updated: impl Fn(&CachedPod) -> bool,
) -> Counts {
    let mut c = Counts::default();
    for node in nodes {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let first = by_node.get(name).and_then(|pods| pods.first());
        if !placement.eligibility(node).should_run {
            if first.is_some() {
                c.misscheduled += 1;
            }
            continue;
        }
        c.desired += 1;
        let Some(pod) = first else { continue };
        c.current += 1;
        if is_pod_ready(pod) {
            c.ready += 1;
            if is_pod_available(pod, min_ready_seconds, now) {
                c.available += 1;
            }
        }
        if updated(pod) {
            c.updated += 1;
        }
    }
    c
}

/// `previous` with the counts and observed generation written in; `None` when nothing
/// changed.
pub fn next_status(
    previous: Option<&DaemonSetStatus>,
    counts: Counts,
    generation: Option<i64>,
) -> Option<DaemonSetStatus> {
    let mut status = previous.cloned().unwrap_or_default();
    status.desired_number_scheduled = counts.desired;
    status.current_number_scheduled = counts.current;
    status.number_misscheduled = counts.misscheduled;
    status.number_ready = counts.ready;
    status.number_available = Some(counts.available);
    status.number_unavailable = Some(counts.desired - counts.available);
    status.updated_number_scheduled = Some(counts.updated);
    status.observed_generation = generation.or(status.observed_generation);
    let unchanged = previous.is_some_and(|p| {
        p.desired_number_scheduled == status.desired_number_scheduled
            && p.current_number_scheduled == status.current_number_scheduled
            && p.number_misscheduled == status.number_misscheduled
            && p.number_ready == status.number_ready
            && p.number_available.unwrap_or(0) == counts.available
            && p.number_unavailable.unwrap_or(0) == counts.desired - counts.available
            && p.updated_number_scheduled.unwrap_or(0) == counts.updated
            && p.observed_generation >= status.observed_generation
    });
    (!unchanged).then_some(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemonset::pods::by_node;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::core::v1::{NodeSpec, PodCondition, PodSpec, PodStatus, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn node(name: &str, tainted: bool) -> Arc<Node> {
        Arc::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: tainted.then(|| {
                    vec![Taint {
                        key: "x".into(),
                        effect: "NoSchedule".into(),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
            status: None,
        })
    }

    fn pod(node: &str, ready_since: Option<i64>, current: bool) -> Arc<CachedPod> {
        Arc::new(CachedPod::from(Pod {
            metadata: ObjectMeta {
                name: Some(format!("p-{node}")),
                labels: Some([("current".to_string(), current.to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
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

    #[test]
    fn counts_follow_upstream() {
        let placement = Placement::of(&PodSpec::default());
        let nodes = [
            node("a", false),
            node("b", false),
            node("c", false),
            node("t", true),
        ];
        let pods = [
            pod("a", Some(0), true),
            pod("b", Some(95), false),
            pod("t", Some(0), true),
        ];
        let now = jiff::Timestamp::from_second(100).unwrap();
        let current = |p: &CachedPod| p.metadata.labels.as_ref().unwrap()["current"] == "true";
        let c = count(&placement, &nodes, &by_node(&pods), 10, now, current);
        assert_eq!(
            c,
            Counts {
                desired: 3,
                current: 2,
                misscheduled: 1,
                ready: 2,
                available: 1,
                updated: 1,
            }
        );
        let status = next_status(None, c, Some(4)).unwrap();
        assert_eq!(status.number_unavailable, Some(2));
        assert_eq!(status.observed_generation, Some(4));
        assert!(next_status(Some(&status), c, Some(4)).is_none());
        assert!(next_status(Some(&status), c, Some(5)).is_some());
    }
}
