//! Cluster events that may make unschedulable pods schedulable, what each plugin registers for,
//! and upstream's queueing hints (a cheap check whether the event can help this pod at all).
//! Node heartbeats change no scheduling property and so are no event.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Taint};

use crate::framework::{Plugin, PluginSet};
use crate::node_info::{NodeInfo, node_is_ready};
use crate::plugins::node_affinity::RequiredNodeAffinity;
use crate::plugins::node_ports::conflicts;
use crate::plugins::node_resources_fit::insufficient_resources;
use crate::plugins::node_unschedulable::tolerates_unschedulable;
use crate::plugins::pod_topology_spread::constraints;
use crate::plugins::taint_toleration::first_untolerated;
use crate::pod_info::PodInfo;
use crate::selector::NO_LABELS;

/// Which scheduling properties of a Node an update changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeChange(u8);

impl NodeChange {
    pub const ALLOCATABLE: NodeChange = NodeChange(1);
    pub const LABEL: NodeChange = NodeChange(2);
    /// Taints or spec.unschedulable.
    pub const TAINT: NodeChange = NodeChange(4);
    /// The status of a condition (not its heartbeat).
    pub const CONDITION: NodeChange = NodeChange(8);

    /// Whether any of `other`'s changes are in this set.
    pub fn intersects(self, other: NodeChange) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether nothing relevant changed.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn add(&mut self, other: NodeChange) {
        self.0 |= other.0;
    }
}

fn labels(node: &Node) -> &BTreeMap<String, String> {
    node.metadata.labels.as_ref().unwrap_or(&NO_LABELS)
}

fn taints(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
}

fn unschedulable(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

fn condition_statuses(node: &Node) -> Vec<(&str, &str)> {
    let mut list: Vec<(&str, &str)> = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .map(|c| (c.type_.as_str(), c.status.as_str()))
        .collect();
    list.sort_unstable();
    list
}

/// The scheduling-relevant differences between two versions of a Node.
pub fn node_changes(old: &Node, new: &Node) -> NodeChange {
    let mut change = NodeChange::default();
    let allocatable = |n: &Node| n.status.as_ref().and_then(|s| s.allocatable.clone());
    if allocatable(old) != allocatable(new) {
        change.add(NodeChange::ALLOCATABLE);
    }
    if labels(old) != labels(new) {
        change.add(NodeChange::LABEL);
    }
    if taints(old) != taints(new) || unschedulable(old) != unschedulable(new) {
        change.add(NodeChange::TAINT);
    }
    if condition_statuses(old) != condition_statuses(new) {
        change.add(NodeChange::CONDITION);
    }
    change
}

/// A change in the cluster that may let waiting pods in.
#[derive(Debug)]
pub enum ClusterEvent<'a> {
    NodeAdd(&'a NodeInfo),
    NodeUpdate {
        old: &'a Node,
        new: &'a NodeInfo,
        changes: NodeChange,
    },
    NodeDelete(&'a Node),
    AssignedPodAdd(&'a PodInfo),
    /// A bound pod's labels changed or its requests went down.
    AssignedPodUpdate {
        old: &'a PodInfo,
        new: &'a PodInfo,
    },
    /// A bound pod was deleted or terminated, freeing its resources.
    AssignedPodDelete(&'a PodInfo),
    /// A PersistentVolumeClaim, PersistentVolume or StorageClass was added or changed.
    VolumeChange,
}

impl ClusterEvent<'_> {
    /// The plugins that register for this event.
    pub fn interested(&self) -> PluginSet {
        use Plugin::*;
        match self {
            ClusterEvent::NodeAdd(_) => Plugin::ALL.into_iter().collect(),
            ClusterEvent::NodeUpdate { changes, .. } => {
                let mut set = PluginSet::default();
                if changes.intersects(NodeChange::TAINT) {
                    [NodeUnschedulable, TaintToleration, PodTopologySpread]
                        .into_iter()
                        .for_each(|p| set.insert(p));
                }
                if changes.intersects(NodeChange::LABEL) {
                    [NodeAffinity, PodTopologySpread, InterPodAffinity]
                        .into_iter()
                        .for_each(|p| set.insert(p));
                }
                if changes.intersects(NodeChange::ALLOCATABLE) {
                    set.insert(NodeResourcesFit);
                }
                if changes.intersects(NodeChange::CONDITION) {
                    set.insert(NodeReady);
                }
                set
            }
            ClusterEvent::NodeDelete(_) => [PodTopologySpread].into_iter().collect(),
            ClusterEvent::AssignedPodAdd(_) => {
                [PodTopologySpread, InterPodAffinity].into_iter().collect()
            }
            ClusterEvent::AssignedPodUpdate { .. } => {
                [PodTopologySpread, InterPodAffinity, NodeResourcesFit]
                    .into_iter()
                    .collect()
            }
            ClusterEvent::AssignedPodDelete(_) => [
                NodePorts,
                NodeResourcesFit,
                PodTopologySpread,
                InterPodAffinity,
            ]
            .into_iter()
            .collect(),
            ClusterEvent::VolumeChange => [VolumeBinding].into_iter().collect(),
        }
    }

    /// Whether the event may make `pod`, rejected by `rejected_by`, schedulable. Pods rejected
    /// by no plugin (an error, no nodes) are moved by any event.
    pub fn may_help(&self, pod: &PodInfo, rejected_by: PluginSet) -> bool {
        if rejected_by.is_empty() {
            return true;
        }
        let interested = self.interested();
        rejected_by
            .iter()
            .filter(|p| interested.contains(*p))
            .any(|p| self.hint(p, pod))
    }

    /// Upstream's queueing hint of `plugin` for this event and `pod`.
    fn hint(&self, plugin: Plugin, pod: &PodInfo) -> bool {
        match (plugin, self) {
            (Plugin::NodeUnschedulable, ClusterEvent::NodeAdd(n)) => {
                !n.unschedulable() || tolerates_unschedulable(pod)
            }
            (Plugin::NodeUnschedulable, ClusterEvent::NodeUpdate { old, new, .. }) => {
                unschedulable(old) && (!new.unschedulable() || tolerates_unschedulable(pod))
            }
            (Plugin::NodeName, ClusterEvent::NodeAdd(n)) => {
                pod.node_name().is_empty() || pod.node_name() == &*n.name
            }
            (Plugin::TaintToleration, ClusterEvent::NodeAdd(n)) => {
                first_untolerated(n.taints(), pod.tolerations()).is_none()
            }
            (Plugin::TaintToleration, ClusterEvent::NodeUpdate { old, new, .. }) => {
                first_untolerated(new.taints(), pod.tolerations()).is_none()
                    && first_untolerated(taints(old), pod.tolerations()).is_some()
            }
            (Plugin::NodeReady, ClusterEvent::NodeAdd(n)) => n.ready,
            (Plugin::NodeReady, ClusterEvent::NodeUpdate { old, new, .. }) => {
                new.ready && !node_is_ready(old)
            }
            (Plugin::NodeAffinity, ClusterEvent::NodeAdd(n)) => {
                RequiredNodeAffinity::of(&pod.pod).is_none_or(|r| r.matches(n))
            }
            (Plugin::NodeAffinity, ClusterEvent::NodeUpdate { old, new, .. }) => {
                RequiredNodeAffinity::of(&pod.pod).is_none_or(|r| {
                    r.matches(new)
                        && !r.matches_labels(
                            old.metadata.name.as_deref().unwrap_or_default(),
                            labels(old),
                        )
                })
            }
            (Plugin::NodePorts, ClusterEvent::NodeAdd(_)) => true,
            (Plugin::VolumeBinding, ClusterEvent::NodeAdd(_) | ClusterEvent::VolumeChange) => true,
            (Plugin::NodePorts, ClusterEvent::AssignedPodDelete(gone)) => pod
                .host_ports
                .iter()
                .any(|wanted| conflicts(&gone.host_ports, wanted)),
            (Plugin::NodeResourcesFit, ClusterEvent::NodeAdd(n)) => fits_empty(pod, n),
            (Plugin::NodeResourcesFit, ClusterEvent::NodeUpdate { old, new, .. }) => {
                fits_empty(pod, new) && allocatable_grew(pod, old, new)
            }
            (Plugin::NodeResourcesFit, ClusterEvent::AssignedPodDelete(_)) => true,
            (Plugin::NodeResourcesFit, ClusterEvent::AssignedPodUpdate { old, new }) => {
                let (was, now) = (&old.requests.requests, &new.requests.requests);
                let wanted = &pod.requests.requests;
                (wanted.milli_cpu > 0 && now.milli_cpu < was.milli_cpu)
                    || (wanted.memory > 0 && now.memory < was.memory)
                    || (wanted.ephemeral_storage > 0
                        && now.ephemeral_storage < was.ephemeral_storage)
                    || wanted
                        .scalar
                        .iter()
                        .any(|(n, v)| *v > 0 && now.scalar(n) < was.scalar(n))
            }
            (Plugin::PodTopologySpread, ClusterEvent::NodeAdd(n)) => {
                spread_keys_on(pod, n.labels())
            }
            (Plugin::PodTopologySpread, ClusterEvent::NodeDelete(n)) => {
                spread_keys_on(pod, labels(n))
            }
            (Plugin::PodTopologySpread, ClusterEvent::NodeUpdate { .. }) => true,
            (
                Plugin::PodTopologySpread,
                ClusterEvent::AssignedPodAdd(other) | ClusterEvent::AssignedPodDelete(other),
            ) => spread_counts(pod, other),
            (Plugin::PodTopologySpread, ClusterEvent::AssignedPodUpdate { old, new }) => {
                old.labels() != new.labels() && (spread_counts(pod, old) || spread_counts(pod, new))
            }
            (
                Plugin::InterPodAffinity,
                ClusterEvent::NodeAdd(_) | ClusterEvent::NodeUpdate { .. },
            ) => true,
            (Plugin::InterPodAffinity, ClusterEvent::AssignedPodAdd(other)) => {
                affinity_matches(pod, other)
            }
            (Plugin::InterPodAffinity, ClusterEvent::AssignedPodUpdate { old, new }) => {
                old.labels() != new.labels()
                    && (affinity_matches(pod, new) || anti_affinity_involves(pod, old))
            }
            (Plugin::InterPodAffinity, ClusterEvent::AssignedPodDelete(gone)) => {
                anti_affinity_involves(pod, gone)
            }
            _ => false,
        }
    }
}

/// Whether the pod would fit the node if it were empty.
fn fits_empty(pod: &PodInfo, node: &NodeInfo) -> bool {
    let mut empty = NodeInfo::new(node.name.clone());
    empty.allocatable = node.allocatable.clone();
    empty.allowed_pods = node.allowed_pods;
    insufficient_resources(pod, &empty).is_empty()
}

/// Whether the node gained allocatable of a resource the pod requests (or pod slots).
fn allocatable_grew(pod: &PodInfo, old: &Node, new: &NodeInfo) -> bool {
    let (before, before_pods) = crate::resources::node_allocatable(old);
    let now = &new.allocatable;
    let wanted = &pod.requests.requests;
    new.allowed_pods > before_pods
        || (wanted.milli_cpu > 0 && now.milli_cpu > before.milli_cpu)
        || (wanted.memory > 0 && now.memory > before.memory)
        || (wanted.ephemeral_storage > 0 && now.ephemeral_storage > before.ephemeral_storage)
        || wanted
            .scalar
            .iter()
            .any(|(n, v)| *v > 0 && now.scalar(n) > before.scalar(n))
}

fn spread_keys_on(pod: &PodInfo, labels: &BTreeMap<String, String>) -> bool {
    constraints(pod, "DoNotSchedule")
        .iter()
        .all(|c| labels.contains_key(&c.topology_key))
}

fn spread_counts(pod: &PodInfo, other: &PodInfo) -> bool {
    other.namespace == pod.namespace
        && constraints(pod, "DoNotSchedule")
            .iter()
            .any(|c| c.selector.matches(other))
}

fn affinity_matches(pod: &PodInfo, other: &PodInfo) -> bool {
    pod.required_affinity.iter().any(|t| {
        (t.namespaces.contains(&other.namespace) || !t.namespace_selector.is_nothing())
            && t.selector.matches(other.labels())
    })
}

fn anti_affinity_involves(pod: &PodInfo, other: &PodInfo) -> bool {
    other.has_required_anti_affinity()
        || pod
            .required_anti_affinity
            .iter()
            .any(|t| t.selector.matches(other.labels()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod_info::testing::{node, pod};

    fn info(n: &Node) -> NodeInfo {
        let mut i = NodeInfo::new(n.metadata.name.clone().unwrap().into());
        i.set_node(std::sync::Arc::new(n.clone()));
        i
    }

    #[test]
    fn heartbeats_are_not_changes() {
        let old = node("n").build();
        let mut new = (*old).clone();
        new.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_heartbeat_time = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        assert!(node_changes(&old, &new).is_empty());
        let not_ready = node("n").not_ready().build();
        assert_eq!(node_changes(&old, &not_ready), NodeChange::CONDITION);
        let labelled = node("n").label("a", "b").build();
        assert_eq!(node_changes(&old, &labelled), NodeChange::LABEL);
        let cordoned = node("n").unschedulable().build();
        assert_eq!(node_changes(&old, &cordoned), NodeChange::TAINT);
        let bigger = node("n").allocatable(&[("cpu", "8")]).build();
        assert_eq!(node_changes(&old, &bigger), NodeChange::ALLOCATABLE);
    }

    #[test]
    fn hints() {
        let big = pod("p").requests(&[("cpu", "6")]).info();
        let fit: PluginSet = [Plugin::NodeResourcesFit].into_iter().collect();
        let small_node = info(&node("s").build());
        let big_node = info(
            &node("b")
                .allocatable(&[("cpu", "8"), ("pods", "10")])
                .build(),
        );
        assert!(!ClusterEvent::NodeAdd(&small_node).may_help(&big, fit));
        assert!(ClusterEvent::NodeAdd(&big_node).may_help(&big, fit));
        // A label change does not concern NodeResourcesFit.
        let old = node("b").build();
        let update = ClusterEvent::NodeUpdate {
            old: &old,
            new: &big_node,
            changes: NodeChange::LABEL,
        };
        assert!(!update.may_help(&big, fit));
        let update = ClusterEvent::NodeUpdate {
            old: &old,
            new: &big_node,
            changes: NodeChange::ALLOCATABLE,
        };
        assert!(update.may_help(&big, fit));
        let gone = pod("g").node_name("s").info();
        assert!(ClusterEvent::AssignedPodDelete(&gone).may_help(&big, fit));
        assert!(!ClusterEvent::AssignedPodAdd(&gone).may_help(&big, fit));
        // Rejected by nothing in particular: any event helps.
        assert!(ClusterEvent::AssignedPodAdd(&gone).may_help(&big, PluginSet::default()));

        let ready: PluginSet = [Plugin::NodeReady].into_iter().collect();
        let was = node("r").not_ready().build();
        let now = info(&node("r").build());
        let update = ClusterEvent::NodeUpdate {
            old: &was,
            new: &now,
            changes: NodeChange::CONDITION,
        };
        assert!(update.may_help(&big, ready));
    }
}
