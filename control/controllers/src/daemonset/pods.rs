//! A DaemonSet's Pods: the Pod made for a node (pinned there by a required node affinity on
//! the node's name, as upstream does, so that the scheduler binds it), the node a Pod is for,
//! and the order in which a node's Pods are considered.

use baton_client::CachedPod;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
};

use super::eligibility::add_daemon_tolerations;
use crate::controller_revision::POD_REVISION_LABEL;
use crate::pod_control::{controller_ref, pod_from_template};

/// The label upstream gives daemon Pods when the DaemonSet carries a template generation.
const TEMPLATE_GENERATION_LABEL: &str = "pod-template-generation";
/// The annotation holding a DaemonSet's template generation (written by upstream's API server).
const TEMPLATE_GENERATION_ANNOTATION: &str = "deprecated.daemonset.template.generation";

/// The Pod to create for `ds` on `node`, labelled with the current revision `hash`.
pub fn daemon_pod(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let spec = ds.spec.clone().unwrap_or_default();
    let mut template = spec.template;
    let meta = template.metadata.get_or_insert_with(Default::default);
    let labels = meta.labels.get_or_insert_with(Default::default);
    if let Some(generation) = template_generation(ds) {
        labels.insert(TEMPLATE_GENERATION_LABEL.into(), generation.to_string());
    }
    labels.insert(POD_REVISION_LABEL.into(), hash.into());
    let pod_spec = template.spec.get_or_insert_with(Default::default);
    add_daemon_tolerations(pod_spec);
    pin_to_node(&mut pod_spec.affinity, node);
    let name = ds.metadata.name.as_deref().unwrap_or_default();
    pod_from_template(
        &template,
        controller_ref(ds),
        ds.metadata.namespace.as_deref().unwrap_or_default(),
        &format!("{name}-"),
        None,
    )
}

fn template_generation(ds: &DaemonSet) -> Option<i64> {
    ds.metadata
        .annotations
        .as_ref()?
        .get(TEMPLATE_GENERATION_ANNOTATION)?
        .parse()
        .ok()
}

/// Whether `pod` was made from the current template: its revision hash (or template
/// generation) is the DaemonSet's.
pub fn is_updated(pod: &CachedPod, ds: &DaemonSet, hash: &str) -> bool {
    let labels = pod.metadata.labels.as_ref();
    let label = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
    let generation_matches = template_generation(ds)
        .is_some_and(|g| label(TEMPLATE_GENERATION_LABEL) == Some(g.to_string().as_str()));
    generation_matches || label(POD_REVISION_LABEL) == Some(hash)
}

/// Replaces the required node affinity with one term selecting `node` by name (upstream's
/// ReplaceDaemonSetPodNodeNameNodeAffinity: the template's own terms were already checked
/// against the node by the controller).
fn pin_to_node(affinity: &mut Option<Affinity>, node: &str) {
    let term = NodeSelectorTerm {
        match_expressions: None,
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.to_string()]),
        }]),
    };
    let node_affinity = affinity
        .get_or_insert_with(Default::default)
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![term],
    });
}

/// The node a daemon Pod is for: where it is bound, or else the node its affinity names.
pub fn target_node(pod: &CachedPod) -> Option<&str> {
    let spec = pod.spec.as_ref()?;
    if let Some(name) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Some(name);
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| match r.values.as_deref() {
            Some([one]) => Some(one.as_str()),
            _ => None,
        })
}

/// `pods` grouped by the node they are for, each group in `by_age` order; Pods whose node
/// cannot be told are left out.
pub fn by_node(pods: &[Arc<CachedPod>]) -> HashMap<String, Vec<Arc<CachedPod>>> {
    let mut map: HashMap<String, Vec<Arc<CachedPod>>> = HashMap::new();
    for pod in pods {
        match target_node(pod) {
            Some(node) => map.entry(node.to_string()).or_default().push(pod.clone()),
            None => tracing::debug!(pod = ?pod.metadata.name, "daemon pod names no node"),
        }
    }
    for group in map.values_mut() {
        group.sort_by(|a, b| by_age(a, b));
    }
    map
}

/// Bound Pods first, then the oldest, then by name (upstream's
/// podByCreationTimestampAndPhase).
pub fn by_age(a: &CachedPod, b: &CachedPod) -> Ordering {
    let bound = |p: &CachedPod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty())
    };
    bound(b)
        .cmp(&bound(a))
        .then_with(|| {
            let created = |p: &CachedPod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            created(a).cmp(&created(b))
        })
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DaemonSetSpec;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn ds() -> DaemonSet {
        DaemonSet {
            metadata: ObjectMeta {
                name: Some("agent".into()),
                namespace: Some("kube-system".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            spec: Some(DaemonSetSpec {
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some([("app".to_string(), "agent".to_string())].into()),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        affinity: Some(Affinity {
                            node_affinity: Some(NodeAffinity {
                                required_during_scheduling_ignored_during_execution: Some(
                                    NodeSelector {
                                        node_selector_terms: vec![NodeSelectorTerm {
                                            match_expressions: Some(vec![
                                                NodeSelectorRequirement {
                                                    key: "zone".into(),
                                                    operator: "Exists".into(),
                                                    values: None,
                                                },
                                            ]),
                                            match_fields: None,
                                        }],
                                    },
                                ),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn daemon_pods_are_pinned_by_affinity_not_node_name() {
        let pod = daemon_pod(&ds(), "n1", "abc");
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name, None);
        assert_eq!(target_node(&CachedPod::from(&pod)), Some("n1"));
        let terms = &spec
            .affinity
            .as_ref()
            .unwrap()
            .node_affinity
            .as_ref()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 1);
        assert!(terms[0].match_expressions.is_none());
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[POD_REVISION_LABEL], "abc");
        assert_eq!(labels["app"], "agent");
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("agent-"));
        assert_eq!(spec.tolerations.as_ref().unwrap().len(), 6);
        assert!(is_updated(&CachedPod::from(&pod), &ds(), "abc"));
        assert!(!is_updated(&CachedPod::from(&pod), &ds(), "def"));
    }

    #[test]
    fn bound_and_older_pods_come_first() {
        let pod = |name: &str, node: Option<&str>, secs: i64| {
            CachedPod::from(Pod {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    creation_timestamp: Some(Time(jiff::Timestamp::from_second(secs).unwrap())),
                    ..Default::default()
                },
                spec: Some(PodSpec {
                    node_name: node.map(str::to_string),
                    ..Default::default()
                }),
                status: None,
            })
        };
        let mut pods = [
            pod("young", Some("n"), 20),
            pod("pending", None, 1),
            pod("old", Some("n"), 10),
        ];
        pods.sort_by(by_age);
        let names: Vec<_> = pods
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["old", "young", "pending"]);
    }
}
