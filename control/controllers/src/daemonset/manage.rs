//! The DaemonSet's core decision (upstream's manage/podsShouldBeOnNode): which nodes need a
//! daemon Pod, which daemon Pods must go (on nodes no longer eligible, failed or succeeded,
//! or in excess), with failed Pods replaced only as their node's backoff allows.

use baton_client::CachedPod;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;

use super::eligibility::Placement;
use crate::pod_control::{is_pod_available, is_pod_ready};

/// An event the decision asks the controller to record on the DaemonSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// What the core loop does in one reconcile.
#[derive(Debug, Default)]
pub struct ManagePlan {
    /// Nodes to create a daemon Pod on.
    pub create_on: Vec<String>,
    /// Pods to delete.
    pub delete: Vec<Arc<CachedPod>>,
    /// Events to record.
    pub notices: Vec<Notice>,
    /// When to look again, for a failed Pod whose replacement is held back.
    pub retry_after: Option<Duration>,
}

/// The state `plan` needs besides the nodes and Pods.
#[derive(Debug)]
pub struct ManageInput<'a> {
    pub placement: &'a Placement,
    /// Whether the rolling update may run two Pods on a node (maxSurge > 0).
    pub allows_surge: bool,
    pub min_ready_seconds: i32,
    pub now: jiff::Timestamp,
}

/// Decides the core loop's work. `backoff(node)` tells whether a failed Pod on `node` may be
/// replaced now (`None`, and the replacement is recorded) or how long it must wait; `updated`
/// tells a Pod of the current revision.
pub fn plan(
    input: &ManageInput<'_>,
    nodes: &[Arc<Node>],
    by_node: &HashMap<String, Vec<Arc<CachedPod>>>,
    mut backoff: impl FnMut(&str) -> Option<Duration>,
    updated: impl Fn(&CachedPod) -> bool,
) -> ManagePlan {
    let mut plan = ManagePlan::default();
    for node in nodes {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let eligibility = input.placement.eligibility(node);
        let pods = by_node.get(name).map(Vec::as_slice).unwrap_or_default();
        if eligibility.should_run && pods.is_empty() {
            plan.create_on.push(name.to_string());
        } else if eligibility.should_continue_running {
            keep_one(
                input,
                &mut plan,
                name,
                eligibility.should_run,
                pods,
                &mut backoff,
                &updated,
            );
        } else {
            plan.delete.extend(
                pods.iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .cloned(),
            );
        }
    }
    // Pods still waiting for a node that no longer exists.
    let existing: std::collections::HashSet<&str> = nodes
        .iter()
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    for (node, pods) in by_node {
        if existing.contains(node.as_str()) {
            continue;
        }
        plan.delete.extend(
            pods.iter()
                .filter(|p| {
                    p.spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_deref())
                        .is_none_or(str::is_empty)
                })
                .cloned(),
        );
    }
    plan
}

/// A node that may keep its daemon: drop finished Pods (failed ones within the backoff) and
/// extra ones (keeping, while surging, one old Pod until the new one is available).
fn keep_one(
    input: &ManageInput<'_>,
    plan: &mut ManagePlan,
    node: &str,
    should_run: bool,
    pods: &[Arc<CachedPod>],
    backoff: &mut impl FnMut(&str) -> Option<Duration>,
    updated: &impl Fn(&CachedPod) -> bool,
) {
    let mut running = Vec::new();
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Failed") => {
                if let Some(wait) = backoff(node) {
                    plan.retry_after = Some(plan.retry_after.map_or(wait, |r| r.min(wait)));
                    continue;
                }
                plan.notices.push(Notice {
                    warning: true,
                    reason: "FailedDaemonPod",
                    message: format!(
                        "Found failed daemon pod {namespace}/{name} on node {node}, will try to kill it"
                    ),
                });
                plan.delete.push(pod.clone());
            }
            Some("Succeeded") => {
                plan.notices.push(Notice {
                    warning: false,
                    reason: "SucceededDaemonPod",
                    message: format!(
                        "Found succeeded daemon pod {namespace}/{name} on node {node}, will try to delete it"
                    ),
                });
                plan.delete.push(pod.clone());
            }
            _ => running.push(pod.clone()),
        }
    }
    // `pods` is sorted oldest first, so `running` is too.
    if !input.allows_surge {
        plan.delete.extend(running.into_iter().skip(1));
        return;
    }
    if running.len() <= 1 {
        if running.is_empty() && should_run {
            plan.create_on.push(node.to_string());
        }
        return;
    }
    let mut oldest_new = None;
    let mut oldest_old = None;
    for pod in running {
        let slot = if updated(&pod) {
            &mut oldest_new
        } else {
            &mut oldest_old
        };
        if slot.is_none() {
            *slot = Some(pod);
        } else {
            plan.delete.push(pod);
        }
    }
    if let (Some(new), Some(old)) = (oldest_new, oldest_old)
        && (!is_pod_ready(&old) || is_pod_available(&new, input.min_ready_seconds, input.now))
    {
        plan.delete.push(old);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller_revision::POD_REVISION_LABEL;
    use crate::daemonset::pods::by_node;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::core::v1::{NodeSpec, PodCondition, PodSpec, PodStatus, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn node(name: &str, taint: Option<&str>) -> Arc<Node> {
        Arc::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: taint.map(|effect| {
                    vec![Taint {
                        key: "k".into(),
                        effect: effect.into(),
                        value: None,
                        time_added: None,
                    }]
                }),
                ..Default::default()
            }),
            status: None,
        })
    }

    fn pod(
        name: &str,
        node: &str,
        phase: &str,
        ready: bool,
        hash: &str,
        age: i64,
    ) -> Arc<CachedPod> {
        Arc::new(CachedPod::from(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                labels: Some([(POD_REVISION_LABEL.to_string(), hash.to_string())].into()),
                creation_timestamp: Some(Time(jiff::Timestamp::from_second(1000 - age).unwrap())),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    last_transition_time: Some(Time(jiff::Timestamp::from_second(0).unwrap())),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }))
    }

    fn input(placement: &Placement, surge: bool) -> ManageInput<'_> {
        ManageInput {
            placement,
            allows_surge: surge,
            min_ready_seconds: 0,
            now: jiff::Timestamp::from_second(2000).unwrap(),
        }
    }

    fn names(pods: &[Arc<CachedPod>]) -> Vec<String> {
        let mut v: Vec<_> = pods
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        v.sort();
        v
    }

    fn updated(p: &CachedPod) -> bool {
        p.metadata.labels.as_ref().unwrap()[POD_REVISION_LABEL] == "new"
    }

    #[test]
    fn new_nodes_get_pods_and_ineligible_nodes_lose_them() {
        let placement = Placement::of(&PodSpec::default());
        let nodes = [
            node("a", None),
            node("b", None),
            node("c", Some("NoExecute")),
            node("d", Some("NoSchedule")),
        ];
        let pods = [
            pod("on-b", "b", "Running", true, "new", 1),
            pod("on-c", "c", "Running", true, "new", 1),
            pod("on-d", "d", "Running", true, "new", 1),
        ];
        let plan = plan(
            &input(&placement, false),
            &nodes,
            &by_node(&pods),
            |_| None,
            updated,
        );
        assert_eq!(plan.create_on, ["a"]);
        // NoExecute evicts; NoSchedule lets the running Pod stay but adds none.
        assert_eq!(names(&plan.delete), ["on-c"]);
    }

    #[test]
    fn failed_pods_are_replaced_within_backoff() {
        let placement = Placement::of(&PodSpec::default());
        let nodes = [node("a", None)];
        let pods = [pod("failed", "a", "Failed", false, "new", 1)];
        let plan1 = plan(
            &input(&placement, false),
            &nodes,
            &by_node(&pods),
            |_| None,
            updated,
        );
        assert_eq!(names(&plan1.delete), ["failed"]);
        assert_eq!(plan1.notices[0].reason, "FailedDaemonPod");
        assert_eq!(
            plan1.notices[0].message,
            "Found failed daemon pod ns/failed on node a, will try to kill it"
        );
        let held = plan(
            &input(&placement, false),
            &nodes,
            &by_node(&pods),
            |_| Some(Duration::from_secs(4)),
            updated,
        );
        assert!(held.delete.is_empty());
        assert_eq!(held.retry_after, Some(Duration::from_secs(4)));
    }

    #[test]
    fn extra_pods_are_trimmed_to_the_oldest() {
        let placement = Placement::of(&PodSpec::default());
        let nodes = [node("a", None)];
        let pods = [
            pod("young", "a", "Running", true, "new", 1),
            pod("old", "a", "Running", true, "new", 5),
        ];
        let plan = plan(
            &input(&placement, false),
            &nodes,
            &by_node(&pods),
            |_| None,
            updated,
        );
        assert_eq!(names(&plan.delete), ["young"]);
        assert!(plan.create_on.is_empty());
    }

    #[test]
    fn surge_keeps_the_old_pod_until_the_new_one_is_available() {
        let placement = Placement::of(&PodSpec::default());
        let nodes = [node("a", None)];
        let waiting = [
            pod("old", "a", "Running", true, "old", 5),
            pod("new", "a", "Running", false, "new", 1),
        ];
        let plan1 = plan(
            &input(&placement, true),
            &nodes,
            &by_node(&waiting),
            |_| None,
            updated,
        );
        assert!(plan1.delete.is_empty());
        let available = [
            pod("old", "a", "Running", true, "old", 5),
            pod("new", "a", "Running", true, "new", 1),
        ];
        let plan2 = plan(
            &input(&placement, true),
            &nodes,
            &by_node(&available),
            |_| None,
            updated,
        );
        assert_eq!(names(&plan2.delete), ["old"]);
    }
}
