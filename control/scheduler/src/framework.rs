//! The plugin framework of a scheduling cycle: plugin names and sets, the statuses filters
//! return, the per-cycle state computed once per pod (PreFilter), the filter chain in upstream's
//! order, and the weighted scoring of the feasible nodes.

use std::borrow::Cow;
use std::collections::BTreeSet;

use crate::cache::Cache;
use crate::node_info::NodeInfo;
use crate::plugins::{
    balanced_allocation, image_locality, inter_pod_affinity, node_affinity, node_name, node_ports,
    node_ready, node_resources_fit, node_unschedulable, pod_topology_spread, taint_toleration,
    volume_binding,
};
use crate::pod_info::PodInfo;

/// The highest score a plugin gives a node.
pub const MAX_NODE_SCORE: i64 = 100;

/// The filter plugins, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Plugin {
    NodeUnschedulable,
    NodeName,
    TaintToleration,
    /// Baton's check that the node's Ready condition is True (upstream relies on the
    /// not-ready taint alone).
    NodeReady,
    NodeAffinity,
    NodePorts,
    NodeResourcesFit,
    VolumeBinding,
    PodTopologySpread,
    InterPodAffinity,
}

impl Plugin {
    /// Every filter plugin.
    pub const ALL: [Plugin; 10] = [
        Plugin::NodeUnschedulable,
        Plugin::NodeName,
        Plugin::TaintToleration,
        Plugin::NodeReady,
        Plugin::NodeAffinity,
        Plugin::NodePorts,
        Plugin::NodeResourcesFit,
        Plugin::VolumeBinding,
        Plugin::PodTopologySpread,
        Plugin::InterPodAffinity,
    ];

    /// The plugin's upstream name.
    pub fn name(self) -> &'static str {
        match self {
            Plugin::NodeUnschedulable => "NodeUnschedulable",
            Plugin::NodeName => "NodeName",
            Plugin::TaintToleration => "TaintToleration",
            Plugin::NodeReady => "NodeReady",
            Plugin::NodeAffinity => "NodeAffinity",
            Plugin::NodePorts => "NodePorts",
            Plugin::NodeResourcesFit => "NodeResourcesFit",
            Plugin::VolumeBinding => "VolumeBinding",
            Plugin::PodTopologySpread => "PodTopologySpread",
            Plugin::InterPodAffinity => "InterPodAffinity",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of plugins (those that rejected a pod).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PluginSet(u16);

impl PluginSet {
    /// Adds `plugin`.
    pub fn insert(&mut self, plugin: Plugin) {
        self.0 |= plugin.bit();
    }

    /// Whether `plugin` is in the set.
    pub fn contains(self, plugin: Plugin) -> bool {
        self.0 & plugin.bit() != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The plugins in the set.
    pub fn iter(self) -> impl Iterator<Item = Plugin> {
        Plugin::ALL.into_iter().filter(move |p| self.contains(*p))
    }
}

impl FromIterator<Plugin> for PluginSet {
    fn from_iter<I: IntoIterator<Item = Plugin>>(iter: I) -> Self {
        let mut set = PluginSet::default();
        for plugin in iter {
            set.insert(plugin);
        }
        set
    }
}

/// How a node rejected a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Evicting pods from the node might make room (preemption may help).
    Unschedulable,
    /// Nothing done to the node's pods would help.
    UnschedulableAndUnresolvable,
}

/// A filter's verdict against a node, with upstream's reason texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub plugin: Plugin,
    pub code: Code,
    pub reasons: Vec<Cow<'static, str>>,
}

impl Rejection {
    /// A rejection with one reason.
    pub fn new(plugin: Plugin, code: Code, reason: impl Into<Cow<'static, str>>) -> Self {
        Rejection {
            plugin,
            code,
            reasons: vec![reason.into()],
        }
    }
}

/// A PreFilter refused the pod outright (for every node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreFilterRejection {
    pub plugin: Plugin,
    pub message: String,
}

/// What the PreFilter step computed for one pod, read by the filters.
#[derive(Debug)]
pub struct CycleState<'a> {
    pub pod: &'a PodInfo,
    /// `None` when the pod has no node selector or required node affinity.
    pub node_affinity: Option<node_affinity::RequiredNodeAffinity>,
    /// `None` when the pod has no DoNotSchedule topology spread constraints.
    pub spread: Option<pod_topology_spread::FilterState>,
    /// `None` when neither the pod nor any existing pod has required (anti-)affinity.
    pub inter_pod: Option<inter_pod_affinity::FilterState>,
    /// `None` when the pod has no PersistentVolumeClaims.
    pub volumes: Option<volume_binding::FilterState>,
}

/// The PreFilter step: per-pod state, and the node names the pod is restricted to (a node
/// affinity on `metadata.name`), or the reason it cannot be scheduled anywhere.
pub fn pre_filter<'a>(
    pod: &'a PodInfo,
    cache: &Cache,
) -> Result<(CycleState<'a>, Option<BTreeSet<String>>), PreFilterRejection> {
    let (node_affinity, names) = node_affinity::pre_filter(pod)?;
    let volumes = volume_binding::pre_filter(pod, &cache.volumes)?;
    Ok((
        CycleState {
            pod,
            spread: pod_topology_spread::pre_filter(pod, cache),
            inter_pod: inter_pod_affinity::pre_filter(pod, cache),
            node_affinity,
            volumes,
        },
        names,
    ))
}

/// Runs the filters against one node, stopping at the first that rejects it.
pub fn run_filters(state: &CycleState<'_>, node: &NodeInfo) -> Result<(), Rejection> {
    let pod = state.pod;
    node_unschedulable::filter(pod, node)?;
    node_name::filter(pod, node)?;
    taint_toleration::filter(pod, node)?;
    node_ready::filter(pod, node)?;
    if let Some(required) = &state.node_affinity {
        node_affinity::filter(required, node)?;
    }
    node_ports::filter(pod, node)?;
    node_resources_fit::filter(pod, node)?;
    if let Some(volumes) = &state.volumes {
        volume_binding::filter(volumes, node)?;
    }
    if let Some(spread) = &state.spread {
        pod_topology_spread::filter(spread, pod, node)?;
    }
    if let Some(inter_pod) = &state.inter_pod {
        inter_pod_affinity::filter(inter_pod, node)?;
    }
    Ok(())
}

/// What score plugins read besides the node they score.
#[derive(Debug)]
pub struct ScoreContext<'a> {
    pub pod: &'a PodInfo,
    pub cache: &'a Cache,
}

/// A score plugin: fills `out` (one 0..=100 score per node, normalized) or returns false when
/// it has nothing to say about this pod (every node then gets 0 from it).
type ScoreFn = fn(&ScoreContext<'_>, &[&NodeInfo], &mut [i64]) -> bool;

/// The score plugins of upstream's default profile with their weights.
const SCORE_PLUGINS: [(&str, i64, ScoreFn); 7] = [
    ("TaintToleration", 3, taint_toleration::score),
    ("NodeAffinity", 2, node_affinity::score),
    ("NodeResourcesFit", 1, node_resources_fit::score),
    ("PodTopologySpread", 2, pod_topology_spread::score),
    ("InterPodAffinity", 2, inter_pod_affinity::score),
    (
        "NodeResourcesBalancedAllocation",
        1,
        balanced_allocation::score,
    ),
    ("ImageLocality", 1, image_locality::score),
];

/// Scores `nodes` for the pod: the weighted sum of every score plugin, into `totals`.
pub fn run_scores(
    ctx: &ScoreContext<'_>,
    nodes: &[&NodeInfo],
    totals: &mut Vec<i64>,
    scratch: &mut Vec<i64>,
) {
    totals.clear();
    totals.resize(nodes.len(), 0);
    for (_, weight, score) in SCORE_PLUGINS {
        scratch.clear();
        scratch.resize(nodes.len(), 0);
        if score(ctx, nodes, scratch) {
            for (total, s) in totals.iter_mut().zip(scratch.iter()) {
                *total += s * weight;
            }
        }
    }
}

/// Upstream's default normalization: scales scores so the highest is 100 (or, reversed, the
/// highest becomes 0 and zero becomes 100).
pub fn default_normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0).max(0);
    if max == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX_NODE_SCORE);
        }
        return;
    }
    for s in scores.iter_mut() {
        let scaled = MAX_NODE_SCORE * *s / max;
        *s = if reverse {
            MAX_NODE_SCORE - scaled
        } else {
            scaled
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize() {
        let mut s = vec![0, 5, 10];
        default_normalize(&mut s, false);
        assert_eq!(s, vec![0, 50, 100]);
        let mut s = vec![0, 5, 10];
        default_normalize(&mut s, true);
        assert_eq!(s, vec![100, 50, 0]);
        let mut s = vec![0, 0];
        default_normalize(&mut s, true);
        assert_eq!(s, vec![100, 100]);
        let mut s = vec![0, 0];
        default_normalize(&mut s, false);
        assert_eq!(s, vec![0, 0]);
    }

    #[test]
    fn plugin_sets() {
        let set: PluginSet = [Plugin::NodePorts, Plugin::InterPodAffinity]
            .into_iter()
            .collect();
        assert!(set.contains(Plugin::NodePorts));
        assert!(!set.contains(Plugin::NodeResourcesFit));
        assert_eq!(set.iter().count(), 2);
        assert!(PluginSet::default().is_empty());
    }
}
