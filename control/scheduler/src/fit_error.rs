//! Why a pod fits no node: the per-node verdicts of a scheduling cycle and upstream's summary
//! message ("0/3 nodes are available: 1 Insufficient memory, 2 node(s) didn't match Pod's node
//! affinity/selector. preemption: ...").

use std::borrow::Cow;
use std::collections::HashMap;

use crate::framework::{Code, PluginSet, Rejection};

/// The message when the cluster has no nodes at all.
pub const NO_NODES_AVAILABLE: &str = "no nodes available to schedule pods";

/// The verdicts of one scheduling cycle that found no feasible node.
#[derive(Debug, Clone, Default)]
pub struct Diagnosis {
    /// The verdict of each node that was evaluated, by cache slot.
    pub node_statuses: Vec<(usize, Rejection)>,
    /// The verdict for the nodes that were not evaluated (when a PreFilter restricted the
    /// search or rejected the pod), with its code.
    pub absent: Option<(Code, Cow<'static, str>)>,
    /// A PreFilter's message when it rejected the pod for every node.
    pub pre_filter_message: Option<String>,
    /// The plugins that rejected the pod on some node.
    pub plugins: PluginSet,
}

impl Diagnosis {
    /// The code of the node in `slot` (the absent status when it was not evaluated).
    pub fn code_of(&self, slot: usize) -> Option<Code> {
        self.node_statuses
            .iter()
            .find(|(s, _)| *s == slot)
            .map(|(_, r)| r.code)
            .or(self.absent.as_ref().map(|(c, _)| *c))
    }
}

/// Upstream's FitError message for `total_nodes` nodes: the PreFilter message, or the reasons
/// counted per node ("N reason", sorted as strings, joined with ", "), then the post-filter
/// (preemption) message.
pub fn fit_error_message(
    total_nodes: usize,
    node_reasons: impl IntoIterator<Item = impl AsRef<str>>,
    evaluated_nodes: usize,
    absent_reason: Option<&str>,
    pre_filter_message: Option<&str>,
    post_filter_message: Option<&str>,
) -> String {
    let mut message = format!("0/{total_nodes} nodes are available:");
    if let Some(pre) = pre_filter_message {
        message.push_str(&format!(" {pre}."));
    } else {
        let mut histogram: HashMap<String, usize> = HashMap::new();
        for reason in node_reasons {
            *histogram.entry(reason.as_ref().to_string()).or_default() += 1;
        }
        if evaluated_nodes < total_nodes
            && let Some(reason) = absent_reason
        {
            *histogram.entry(reason.to_string()).or_default() += total_nodes - evaluated_nodes;
        }
        let mut parts: Vec<String> = histogram
            .into_iter()
            .map(|(reason, count)| format!("{count} {reason}"))
            .collect();
        parts.sort();
        if !parts.is_empty() {
            message.push_str(&format!(" {}.", parts.join(", ")));
        }
    }
    if let Some(post) = post_filter_message {
        message.push(' ');
        message.push_str(post);
    }
    message
}

/// The summary of a diagnosis over `total_nodes`, with an optional preemption message.
pub fn diagnosis_message(
    total_nodes: usize,
    diagnosis: &Diagnosis,
    post_filter_message: Option<&str>,
) -> String {
    fit_error_message(
        total_nodes,
        diagnosis
            .node_statuses
            .iter()
            .flat_map(|(_, r)| r.reasons.iter()),
        diagnosis.node_statuses.len(),
        diagnosis.absent.as_ref().map(|(_, r)| r.as_ref()),
        diagnosis.pre_filter_message.as_deref(),
        post_filter_message,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::Plugin;
    use crate::plugins::default_preemption::NOT_HELPFUL;

    #[test]
    fn upstream_format() {
        let mut d = Diagnosis::default();
        d.node_statuses.push((
            0,
            Rejection::new(
                Plugin::NodeResourcesFit,
                Code::UnschedulableAndUnresolvable,
                "Insufficient memory",
            ),
        ));
        for slot in [1, 2] {
            d.node_statuses.push((
                slot,
                Rejection::new(
                    Plugin::NodeAffinity,
                    Code::UnschedulableAndUnresolvable,
                    "node(s) didn't match Pod's node affinity/selector",
                ),
            ));
        }
        let preemption = format!(
            "preemption: {}",
            fit_error_message(3, Vec::<&str>::new(), 0, Some(NOT_HELPFUL), None, None)
        );
        assert_eq!(
            diagnosis_message(3, &d, Some(&preemption)),
            "0/3 nodes are available: 1 Insufficient memory, 2 node(s) didn't match Pod's node \
             affinity/selector. preemption: 0/3 nodes are available: 3 Preemption is not helpful \
             for scheduling."
        );
    }

    #[test]
    fn sorting_is_by_the_whole_string_and_reasons_count_per_node() {
        let mut d = Diagnosis::default();
        let mut both = Rejection::new(
            Plugin::NodeResourcesFit,
            Code::Unschedulable,
            "Insufficient memory",
        );
        both.reasons.insert(0, "Insufficient cpu".into());
        d.node_statuses.push((0, both));
        for slot in 1..=10 {
            d.node_statuses.push((
                slot,
                Rejection::new(Plugin::NodePorts, Code::Unschedulable, "Insufficient cpu"),
            ));
        }
        assert_eq!(
            diagnosis_message(11, &d, None),
            "0/11 nodes are available: 1 Insufficient memory, 11 Insufficient cpu."
        );
    }

    #[test]
    fn absent_nodes_and_prefilter_messages() {
        let d = Diagnosis {
            node_statuses: vec![(
                0,
                Rejection::new(
                    Plugin::NodeResourcesFit,
                    Code::Unschedulable,
                    "Insufficient cpu",
                ),
            )],
            absent: Some((
                Code::UnschedulableAndUnresolvable,
                "node(s) didn't satisfy plugin(s) [NodeAffinity]".into(),
            )),
            ..Default::default()
        };
        assert_eq!(
            diagnosis_message(4, &d, None),
            "0/4 nodes are available: 1 Insufficient cpu, 3 node(s) didn't satisfy plugin(s) [NodeAffinity]."
        );
        let d = Diagnosis {
            pre_filter_message: Some("pod affinity terms conflict".into()),
            ..Default::default()
        };
        assert_eq!(
            diagnosis_message(
                2,
                &d,
                Some("preemption: not eligible due to preemptionPolicy=Never.")
            ),
            "0/2 nodes are available: pod affinity terms conflict. preemption: not eligible due to \
             preemptionPolicy=Never."
        );
    }
}
