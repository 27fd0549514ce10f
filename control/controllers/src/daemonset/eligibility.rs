//! Which nodes a DaemonSet's Pod belongs on, as upstream's daemon controller decides it: the
//! template's nodeName, nodeSelector and required node affinity must match the node, and every
//! NoSchedule/NoExecute taint must be tolerated by the Pod's tolerations (the template's plus
//! the ones the controller adds to every daemon Pod). A Pod already running may stay on a node
//! whose only untolerated taints are NoSchedule.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PodSpec, Taint, Toleration,
};

/// Whether a daemon Pod should be created on a node, and whether one already there may stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eligibility {
    pub should_run: bool,
    pub should_continue_running: bool,
}

/// The placement constraints of one DaemonSet's Pods, computed once per reconcile.
#[derive(Debug, Clone)]
pub struct Placement {
    node_name: Option<String>,
    node_selector: BTreeMap<String, String>,
    required_affinity: Option<NodeSelector>,
    tolerations: Vec<Toleration>,
}

impl Placement {
    /// The constraints of Pods made from `spec` (the DaemonSet's template), with the default
    /// daemon tolerations added.
    pub fn of(spec: &PodSpec) -> Self {
        let mut with_defaults = PodSpec {
            tolerations: spec.tolerations.clone(),
            host_network: spec.host_network,
            ..Default::default()
        };
        add_daemon_tolerations(&mut with_defaults);
        Placement {
            node_name: spec.node_name.clone().filter(|n| !n.is_empty()),
            node_selector: spec.node_selector.clone().unwrap_or_default(),
            required_affinity: spec
                .affinity
                .as_ref()
                .and_then(|a| a.node_affinity.as_ref())
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .clone()
                }),
            tolerations: with_defaults.tolerations.unwrap_or_default(),
        }
    }

    /// Upstream's NodeShouldRunDaemonPod.
    pub fn eligibility(&self, node: &Node) -> Eligibility {
        let no = Eligibility {
            should_run: false,
            should_continue_running: false,
        };
        let node_name = node.metadata.name.as_deref().unwrap_or_default();
        if self.node_name.as_deref().is_some_and(|n| n != node_name) {
            return no;
        }
        if !self.fits_affinity(node) {
            return no;
        }
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_deref())
            .unwrap_or_default();
        let schedulable = untolerated_taint(taints, &self.tolerations, |t| {
            t.effect == "NoSchedule" || t.effect == "NoExecute"
        })
        .is_none();
        if schedulable {
            return Eligibility {
                should_run: true,
                should_continue_running: true,
            };
        }
        let evicted =
            untolerated_taint(taints, &self.tolerations, |t| t.effect == "NoExecute").is_some();
        Eligibility {
            should_run: false,
            should_continue_running: !evicted,
        }
    }

    fn fits_affinity(&self, node: &Node) -> bool {
        let empty = BTreeMap::new();
        let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
        let selector_fits = self
            .node_selector
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v));
        selector_fits
            && self
                .required_affinity
                .as_ref()
                .is_none_or(|s| node_selector_matches(s, node))
    }
}

/// Whether `node` matches a required node selector: any of its terms.
pub fn node_selector_matches(selector: &NodeSelector, node: &Node) -> bool {
    selector
        .node_selector_terms
        .iter()
        .any(|term| term_matches(term, node))
}

/// A term matches when all its expressions (on labels) and fields do; an empty term matches
/// nothing, and a term that cannot be evaluated (a bad operator or value) neither.
fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    expressions
        .iter()
        .all(|r| label_requirement_matches(r, labels))
        && fields.iter().all(|r| field_requirement_matches(r, node))
}

fn label_requirement_matches(
    req: &NodeSelectorRequirement,
    labels: &BTreeMap<String, String>,
) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    let value = labels.get(&req.key);
    match req.operator.as_str() {
        "In" => !values.is_empty() && value.is_some_and(|v| values.contains(v)),
        "NotIn" => !values.is_empty() && value.is_none_or(|v| !values.contains(v)),
        "Exists" => values.is_empty() && value.is_some(),
        "DoesNotExist" => values.is_empty() && value.is_none(),
        op @ ("Gt" | "Lt") => {
            let [bound] = values else { return false };
            let (Ok(bound), Some(Ok(actual))) =
                (bound.parse::<i64>(), value.map(|v| v.parse::<i64>()))
            else {
                return false;
            };
            if op == "Gt" {
                actual > bound
            } else {
                actual < bound
            }
        }
        _ => false,
    }
}

/// Only `metadata.name` is a node field a selector may use, with In or NotIn and one value.
fn field_requirement_matches(req: &NodeSelectorRequirement, node: &Node) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    if req.key != "metadata.name" || values.len() != 1 {
        return false;
    }
    let name = node.metadata.name.as_deref().unwrap_or_default();
    match req.operator.as_str() {
        "In" => values[0] == name,
        "NotIn" => values[0] != name,
        _ => false,
    }
}

/// Whether `toleration` tolerates `taint` (an empty key with Exists tolerates every taint; an
/// empty effect every effect).
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    if let Some(key) = toleration.key.as_deref().filter(|k| !k.is_empty())
        && key != taint.key
    {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or_default() {
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or_default()
                == taint.value.as_deref().unwrap_or_default()
        }
        "Exists" => true,
        _ => false,
    }
}

/// The first taint that `filter` selects and no toleration tolerates.
pub fn untolerated_taint<'a>(
    taints: &'a [Taint],
    tolerations: &[Toleration],
    filter: impl Fn(&Taint) -> bool,
) -> Option<&'a Taint> {
    taints
        .iter()
        .filter(|t| filter(t))
        .find(|taint| !tolerations.iter().any(|t| tolerates(t, taint)))
}

/// The tolerations every daemon Pod gets (upstream's AddOrUpdateDaemonPodTolerations): node
/// problems must not evict or keep out a node's daemons.
pub fn add_daemon_tolerations(spec: &mut PodSpec) {
    let mut defaults = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        defaults.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for (key, effect) in defaults {
        add_or_update_toleration(
            tolerations,
            Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some(effect.into()),
                ..Default::default()
            },
        );
    }
}

/// Puts `toleration` in `list`, replacing one with the same key, operator, value and effect
/// (so that a bounded tolerationSeconds there becomes unbounded).
fn add_or_update_toleration(list: &mut Vec<Toleration>, toleration: Toleration) {
    let same = |t: &Toleration| {
        t.key == toleration.key
            && t.operator == toleration.operator
            && t.value == toleration.value
            && t.effect == toleration.effect
    };
    match list.iter_mut().find(|t| same(t)) {
        Some(existing) => *existing = toleration,
        None => list.push(toleration),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Affinity, NodeAffinity, NodeSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, labels: &[(&str, &str)], taints: Vec<Taint>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(taints),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.map(str::to_string),
            effect: effect.into(),
            time_added: None,
        }
    }

    fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn with_affinity(terms: Vec<NodeSelectorTerm>) -> PodSpec {
        PodSpec {
            affinity: Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: terms,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    const RUN: Eligibility = Eligibility {
        should_run: true,
        should_continue_running: true,
    };
    const NEVER: Eligibility = Eligibility {
        should_run: false,
        should_continue_running: false,
    };
    const STAY: Eligibility = Eligibility {
        should_run: false,
        should_continue_running: true,
    };

    #[test]
    fn plain_nodes_run_daemons() {
        let p = Placement::of(&PodSpec::default());
        assert_eq!(p.eligibility(&node("n1", &[], vec![])), RUN);
    }

    #[test]
    fn node_selector_must_match() {
        let spec = PodSpec {
            node_selector: Some([("disk".to_string(), "ssd".to_string())].into()),
            ..Default::default()
        };
        let p = Placement::of(&spec);
        assert_eq!(p.eligibility(&node("n1", &[("disk", "ssd")], vec![])), RUN);
        assert_eq!(
            p.eligibility(&node("n2", &[("disk", "hdd")], vec![])),
            NEVER
        );
        assert_eq!(p.eligibility(&node("n3", &[], vec![])), NEVER);
    }

    #[test]
    fn template_node_name_pins_the_daemon() {
        let spec = PodSpec {
            node_name: Some("n1".into()),
            ..Default::default()
        };
        let p = Placement::of(&spec);
        assert_eq!(p.eligibility(&node("n1", &[], vec![])), RUN);
        assert_eq!(p.eligibility(&node("n2", &[], vec![])), NEVER);
    }

    #[test]
    fn required_affinity_terms_are_ored_and_requirements_anded() {
        let spec = with_affinity(vec![
            NodeSelectorTerm {
                match_expressions: Some(vec![
                    req("zone", "In", &["a", "b"]),
                    req("gpu", "DoesNotExist", &[]),
                ]),
                match_fields: None,
            },
            NodeSelectorTerm {
                match_expressions: None,
                match_fields: Some(vec![req("metadata.name", "In", &["special"])]),
            },
        ]);
        let p = Placement::of(&spec);
        assert_eq!(p.eligibility(&node("n1", &[("zone", "a")], vec![])), RUN);
        assert_eq!(
            p.eligibility(&node("n2", &[("zone", "a"), ("gpu", "1")], vec![])),
            NEVER
        );
        assert_eq!(p.eligibility(&node("n3", &[("zone", "c")], vec![])), NEVER);
        assert_eq!(p.eligibility(&node("special", &[], vec![])), RUN);
    }

    #[test]
    fn numeric_and_negative_operators() {
        let labels: BTreeMap<String, String> = [("cores".to_string(), "8".to_string())].into();
        assert!(label_requirement_matches(
            &req("cores", "Gt", &["4"]),
            &labels
        ));
        assert!(!label_requirement_matches(
            &req("cores", "Lt", &["4"]),
            &labels
        ));
        assert!(!label_requirement_matches(
            &req("cores", "Gt", &["x"]),
            &labels
        ));
        assert!(!label_requirement_matches(
            &req("mem", "Gt", &["4"]),
            &labels
        ));
        assert!(label_requirement_matches(
            &req("mem", "NotIn", &["1"]),
            &labels
        ));
        assert!(!label_requirement_matches(
            &req("cores", "NotIn", &["8"]),
            &labels
        ));
        assert!(!label_requirement_matches(
            &req("cores", "Bogus", &["8"]),
            &labels
        ));
    }

    #[test]
    fn empty_terms_match_nothing() {
        let p = Placement::of(&with_affinity(vec![NodeSelectorTerm::default()]));
        assert_eq!(p.eligibility(&node("n1", &[], vec![])), NEVER);
        let p = Placement::of(&with_affinity(vec![]));
        assert_eq!(p.eligibility(&node("n1", &[], vec![])), NEVER);
    }

    #[test]
    fn taints_keep_out_and_evict() {
        let p = Placement::of(&PodSpec::default());
        let no_schedule = node(
            "n1",
            &[],
            vec![taint("dedicated", Some("db"), "NoSchedule")],
        );
        assert_eq!(p.eligibility(&no_schedule), STAY);
        let no_execute = node("n2", &[], vec![taint("dedicated", Some("db"), "NoExecute")]);
        assert_eq!(p.eligibility(&no_execute), NEVER);
        let prefer = node(
            "n3",
            &[],
            vec![taint("dedicated", None, "PreferNoSchedule")],
        );
        assert_eq!(p.eligibility(&prefer), RUN);

        let tolerating = PodSpec {
            tolerations: Some(vec![Toleration {
                key: Some("dedicated".into()),
                operator: Some("Equal".into()),
                value: Some("db".into()),
                effect: None,
                toleration_seconds: None,
            }]),
            ..Default::default()
        };
        let p = Placement::of(&tolerating);
        assert_eq!(p.eligibility(&no_schedule), RUN);
        assert_eq!(p.eligibility(&no_execute), RUN);
        let other_value = node(
            "n4",
            &[],
            vec![taint("dedicated", Some("web"), "NoSchedule")],
        );
        assert_eq!(p.eligibility(&other_value), STAY);
    }

    #[test]
    fn node_problems_are_tolerated_by_default() {
        let p = Placement::of(&PodSpec::default());
        for (key, effect) in [
            ("node.kubernetes.io/not-ready", "NoExecute"),
            ("node.kubernetes.io/unreachable", "NoExecute"),
            ("node.kubernetes.io/unschedulable", "NoSchedule"),
            ("node.kubernetes.io/disk-pressure", "NoSchedule"),
            ("node.kubernetes.io/memory-pressure", "NoSchedule"),
            ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ] {
            assert_eq!(
                p.eligibility(&node("n", &[], vec![taint(key, None, effect)])),
                RUN,
                "{key}"
            );
        }
        let unavailable = node(
            "n",
            &[],
            vec![taint(
                "node.kubernetes.io/network-unavailable",
                None,
                "NoSchedule",
            )],
        );
        assert_eq!(p.eligibility(&unavailable), STAY);
        let host = Placement::of(&PodSpec {
            host_network: Some(true),
            ..Default::default()
        });
        assert_eq!(host.eligibility(&unavailable), RUN);
    }

    #[test]
    fn default_tolerations_replace_bounded_ones() {
        let mut spec = PodSpec {
            tolerations: Some(vec![
                Toleration {
                    key: Some("node.kubernetes.io/not-ready".into()),
                    operator: Some("Exists".into()),
                    effect: Some("NoExecute".into()),
                    toleration_seconds: Some(300),
                    value: None,
                },
                Toleration {
                    key: Some("custom".into()),
                    operator: Some("Exists".into()),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        add_daemon_tolerations(&mut spec);
        let tolerations = spec.tolerations.unwrap();
        assert_eq!(tolerations.len(), 7);
        assert_eq!(tolerations[0].toleration_seconds, None);
        assert_eq!(tolerations[1].key.as_deref(), Some("custom"));
        assert!(
            !tolerations
                .iter()
                .any(|t| t.key.as_deref() == Some("node.kubernetes.io/network-unavailable"))
        );
    }

    #[test]
    fn wildcard_toleration_tolerates_everything() {
        let all = Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert!(tolerates(&all, &taint("a", Some("b"), "NoExecute")));
        let wrong_effect = Toleration {
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        };
        assert!(!tolerates(&wrong_effect, &taint("a", None, "NoExecute")));
    }
}
