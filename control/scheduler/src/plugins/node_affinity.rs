//! NodeAffinity: spec.nodeSelector and required node affinity must match the node (filter);
//! matching preferred terms add their weights (score). A required affinity on `metadata.name`
//! (how DaemonSet pods name their node) restricts the search to those nodes up front.

use baton_client::CachedPod;
use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm};

use crate::framework::{
    Code, Plugin, PreFilterRejection, Rejection, ScoreContext, default_normalize,
};
use crate::node_info::NodeInfo;
use crate::pod_info::PodInfo;
use crate::selector::NO_LABELS;

/// The reason a node that does not match gives.
pub const REASON: &str = "node(s) didn't match Pod's node affinity/selector";
/// The PreFilter reason when the terms name disjoint sets of nodes.
pub const REASON_CONFLICT: &str = "pod affinity terms conflict";

#[derive(Debug, Clone, PartialEq)]
enum Operator {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    Gt(i64),
    Lt(i64),
}

#[derive(Debug, Clone, PartialEq)]
struct LabelRequirement {
    key: String,
    op: Operator,
}

#[derive(Debug, Clone, PartialEq)]
struct FieldRequirement {
    key: String,
    value: String,
    equal: bool,
}

/// A compiled node selector term (requirements ANDed). An invalid term matches nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    labels: Vec<LabelRequirement>,
    fields: Vec<FieldRequirement>,
    valid: bool,
}

fn compile_label_requirement(r: &NodeSelectorRequirement) -> Option<LabelRequirement> {
    let values = r.values.clone().unwrap_or_default();
    let single_int = || -> Option<i64> {
        if values.len() != 1 {
            return None;
        }
        values[0].parse().ok()
    };
    let op = match r.operator.as_str() {
        "In" if !values.is_empty() => Operator::In(values),
        "NotIn" if !values.is_empty() => Operator::NotIn(values),
        "Exists" if values.is_empty() => Operator::Exists,
        "DoesNotExist" if values.is_empty() => Operator::DoesNotExist,
        "Gt" => Operator::Gt(single_int()?),
        "Lt" => Operator::Lt(single_int()?),
        _ => return None,
    };
    Some(LabelRequirement {
        key: r.key.clone(),
        op,
    })
}

impl Term {
    /// Compiles a NodeSelectorTerm.
    pub fn new(term: &NodeSelectorTerm) -> Self {
        let mut valid = true;
        let mut labels = Vec::new();
        for r in term.match_expressions.iter().flatten() {
            match compile_label_requirement(r) {
                Some(req) => labels.push(req),
                None => valid = false,
            }
        }
        let mut fields = Vec::new();
        for r in term.match_fields.iter().flatten() {
            let values = r.values.as_deref().unwrap_or_default();
            match (r.operator.as_str(), values) {
                ("In", [value]) | ("NotIn", [value]) => fields.push(FieldRequirement {
                    key: r.key.clone(),
                    value: value.clone(),
                    equal: r.operator == "In",
                }),
                _ => valid = false,
            }
        }
        Term {
            valid: valid && !(labels.is_empty() && fields.is_empty()),
            labels,
            fields,
        }
    }

    /// Whether a node with `name` and `labels` matches the term.
    pub fn matches(&self, name: &str, labels: &std::collections::BTreeMap<String, String>) -> bool {
        if !self.valid {
            return false;
        }
        let labels_match = self.labels.iter().all(|r| {
            let value = labels.get(&r.key);
            match &r.op {
                Operator::In(values) => value.is_some_and(|v| values.contains(v)),
                Operator::NotIn(values) => value.is_none_or(|v| !values.contains(v)),
                Operator::Exists => value.is_some(),
                Operator::DoesNotExist => value.is_none(),
                Operator::Gt(n) => value
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v > *n),
                Operator::Lt(n) => value
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v < *n),
            }
        });
        labels_match
            && self.fields.iter().all(|f| {
                let actual = if f.key == "metadata.name" { name } else { "" };
                (actual == f.value) == f.equal
            })
    }
}

/// A pod's node selector and required node affinity, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct RequiredNodeAffinity {
    node_selector: Vec<(String, String)>,
    /// `None` when the pod has no required node affinity; terms are ORed.
    terms: Option<Vec<Term>>,
}

impl RequiredNodeAffinity {
    /// The pod's requirements, or `None` when it has none.
    pub fn of(pod: &CachedPod) -> Option<Self> {
        let spec = pod.spec.as_ref()?;
        let node_selector: Vec<(String, String)> = spec
            .node_selector
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let terms = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|selector| selector.node_selector_terms.iter().map(Term::new).collect());
        if spec.node_selector.is_none() && terms.is_none() {
            return None;
        }
        Some(RequiredNodeAffinity {
            node_selector,
            terms,
        })
    }

    /// Whether `node` satisfies both the node selector and the required terms.
    pub fn matches(&self, node: &NodeInfo) -> bool {
        self.matches_labels(&node.name, node.labels())
    }

    /// Like [`RequiredNodeAffinity::matches`] for a node's name and labels.
    pub fn matches_labels(
        &self,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> bool {
        self.node_selector
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self
                .terms
                .as_ref()
                .is_none_or(|terms| terms.iter().any(|t| t.matches(name, labels)))
    }
}

/// Whether a pod's required node affinity (if any) admits `node` (used by other plugins).
pub fn pod_matches_node(required: Option<&RequiredNodeAffinity>, node: &NodeInfo) -> bool {
    required.is_none_or(|r| r.matches(node))
}

/// The PreFilter: the compiled requirements (`None`: nothing to check) and the node names the
/// pod's `metadata.name` terms restrict it to (`None`: all nodes).
pub fn pre_filter(
    pod: &PodInfo,
) -> Result<(Option<RequiredNodeAffinity>, Option<BTreeSet<String>>), PreFilterRejection> {
    let required = RequiredNodeAffinity::of(&pod.pod);
    let terms = pod
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|s| &s.node_selector_terms);
    let Some(terms) = terms else {
        return Ok((required, None));
    };
    let mut names: Option<BTreeSet<String>> = None;
    for term in terms {
        let mut term_names: Option<BTreeSet<String>> = None;
        for r in term.match_fields.iter().flatten() {
            if r.key == "metadata.name" && r.operator == "In" {
                let set: BTreeSet<String> = r.values.iter().flatten().cloned().collect();
                term_names = Some(match term_names {
                    None => set,
                    Some(previous) => previous.intersection(&set).cloned().collect(),
                });
            }
        }
        let Some(term_names) = term_names else {
            // A term without a name restriction admits every node (terms are ORed).
            return Ok((required, None));
        };
        names.get_or_insert_with(BTreeSet::new).extend(term_names);
    }
    if names.as_ref().is_some_and(|n| n.is_empty()) {
        return Err(PreFilterRejection {
            plugin: Plugin::NodeAffinity,
            message: REASON_CONFLICT.to_string(),
        });
    }
    Ok((required, names))
}

/// Rejects nodes that do not match the node selector or the required affinity.
pub fn filter(required: &RequiredNodeAffinity, node: &NodeInfo) -> Result<(), Rejection> {
    if required.matches(node) {
        Ok(())
    } else {
        Err(Rejection::new(
            Plugin::NodeAffinity,
            Code::UnschedulableAndUnresolvable,
            REASON,
        ))
    }
}

/// A pod's preferred node affinity terms with their weights (empty or zero-weight terms are
/// dropped, as upstream does).
pub fn preferred_terms(pod: &CachedPod) -> Vec<(i64, Term)> {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
        .filter(|t| {
            t.weight != 0
                && (t
                    .preference
                    .match_expressions
                    .as_ref()
                    .is_some_and(|e| !e.is_empty())
                    || t.preference
                        .match_fields
                        .as_ref()
                        .is_some_and(|f| !f.is_empty()))
        })
        .map(|t| (i64::from(t.weight), Term::new(&t.preference)))
        .collect()
}

/// Scores nodes by the summed weights of the preferred terms they match, scaled to 0..=100.
pub fn score(ctx: &ScoreContext<'_>, nodes: &[&NodeInfo], out: &mut [i64]) -> bool {
    let terms = preferred_terms(&ctx.pod.pod);
    if terms.is_empty() {
        return false;
    }
    for (node, score) in nodes.iter().zip(out.iter_mut()) {
        let labels = node
            .node
            .as_ref()
            .and_then(|n| n.metadata.labels.as_ref())
            .unwrap_or(&NO_LABELS);
        *score = terms
            .iter()
            .filter(|(_, t)| t.matches(&node.name, labels))
            .map(|(w, _)| *w)
            .sum();
    }
    default_normalize(out, false);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Cache;
    use crate::pod_info::testing::{map, node, pod};
    use k8s_openapi::api::core::v1::{
        Affinity, NodeAffinity, NodeSelector, PreferredSchedulingTerm,
    };

    fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn with_required(terms: Vec<NodeSelectorTerm>) -> std::sync::Arc<PodInfo> {
        pod("p")
            .with_spec(|s| {
                s.affinity = Some(Affinity {
                    node_affinity: Some(NodeAffinity {
                        required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                            node_selector_terms: terms,
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            })
            .info()
    }

    fn node_info(b: crate::pod_info::testing::NodeBuilder) -> NodeInfo {
        let mut n = NodeInfo::new(b.0.metadata.name.clone().unwrap().into());
        n.set_node(b.build());
        n
    }

    fn run(p: &PodInfo, n: &NodeInfo) -> bool {
        let (required, _) = pre_filter(p).unwrap();
        required.is_none_or(|r| filter(&r, n).is_ok())
    }

    #[test]
    fn node_selector() {
        let n = node_info(node("n1").label("disk", "ssd"));
        let p = pod("p")
            .with_spec(|s| s.node_selector = Some(map(&[("disk", "ssd")])))
            .info();
        assert!(run(&p, &n));
        let p = pod("p")
            .with_spec(|s| s.node_selector = Some(map(&[("disk", "hdd")])))
            .info();
        assert!(!run(&p, &n));
        let (required, _) = pre_filter(&p).unwrap();
        assert_eq!(
            filter(&required.unwrap(), &n).unwrap_err().reasons[0],
            REASON
        );
    }

    #[test]
    fn operators() {
        let n = node_info(node("n1").label("zone", "a").label("cores", "8"));
        let cases = [
            (req("zone", "In", &["a", "b"]), true),
            (req("zone", "In", &["b"]), false),
            (req("zone", "NotIn", &["b"]), true),
            (req("zone", "NotIn", &["a"]), false),
            (req("missing", "NotIn", &["a"]), true),
            (req("zone", "Exists", &[]), true),
            (req("missing", "Exists", &[]), false),
            (req("missing", "DoesNotExist", &[]), true),
            (req("zone", "DoesNotExist", &[]), false),
            (req("cores", "Gt", &["4"]), true),
            (req("cores", "Gt", &["8"]), false),
            (req("cores", "Lt", &["9"]), true),
            (req("zone", "Gt", &["1"]), false),
            (req("cores", "Gt", &["x"]), false),
        ];
        for (r, want) in cases {
            let p = with_required(vec![NodeSelectorTerm {
                match_expressions: Some(vec![r.clone()]),
                match_fields: None,
            }]);
            assert_eq!(run(&p, &n), want, "{r:?}");
        }
    }

    #[test]
    fn terms_are_ored_and_empty_terms_match_nothing() {
        let n = node_info(node("n1").label("zone", "a"));
        let p = with_required(vec![
            NodeSelectorTerm {
                match_expressions: Some(vec![req("zone", "In", &["b"])]),
                match_fields: None,
            },
            NodeSelectorTerm {
                match_expressions: Some(vec![req("zone", "In", &["a"])]),
                match_fields: None,
            },
        ]);
        assert!(run(&p, &n));
        assert!(!run(&with_required(vec![NodeSelectorTerm::default()]), &n));
        assert!(!run(&with_required(vec![]), &n));
    }

    #[test]
    fn match_fields_restrict_the_node_names() {
        let term = |name: &str| NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![req("metadata.name", "In", &[name])]),
        };
        let p = with_required(vec![term("n1")]);
        let (_, names) = pre_filter(&p).unwrap();
        assert_eq!(names.unwrap().into_iter().collect::<Vec<_>>(), vec!["n1"]);
        assert!(run(&p, &node_info(node("n1"))));
        assert!(!run(&p, &node_info(node("n2"))));
        // Two requirements in one term intersect.
        let p = with_required(vec![NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![
                req("metadata.name", "In", &["n1"]),
                req("metadata.name", "In", &["n2"]),
            ]),
        }]);
        assert_eq!(pre_filter(&p).unwrap_err().message, REASON_CONFLICT);
    }

    #[test]
    fn preferred_weights() {
        let cache = Cache::default();
        let p = pod("p")
            .with_spec(|s| {
                s.affinity = Some(Affinity {
                    node_affinity: Some(NodeAffinity {
                        preferred_during_scheduling_ignored_during_execution: Some(vec![
                            PreferredSchedulingTerm {
                                weight: 2,
                                preference: NodeSelectorTerm {
                                    match_expressions: Some(vec![req("zone", "In", &["a"])]),
                                    match_fields: None,
                                },
                            },
                            PreferredSchedulingTerm {
                                weight: 6,
                                preference: NodeSelectorTerm {
                                    match_expressions: Some(vec![req("ssd", "Exists", &[])]),
                                    match_fields: None,
                                },
                            },
                        ]),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            })
            .info();
        let a = node_info(node("a").label("zone", "a"));
        let b = node_info(node("b").label("zone", "a").label("ssd", "1"));
        let c = node_info(node("c"));
        let ctx = ScoreContext {
            pod: &p,
            cache: &cache,
        };
        let mut out = vec![0; 3];
        assert!(score(&ctx, &[&a, &b, &c], &mut out));
        assert_eq!(out, vec![25, 100, 0]);
        let plain = pod("q").info();
        let ctx = ScoreContext {
            pod: &plain,
            cache: &cache,
        };
        assert!(!score(&ctx, &[&a], &mut out[..1]));
    }
}
