//! What the scheduler derives from a Pod once (requests, host ports, parsed affinity terms,
//! owner), so that checks against many nodes do not re-parse the Pod.

use std::collections::BTreeMap;
use std::sync::Arc;

use baton_client::cached_pod::{CachedPod, CachedPodStatus};
use k8s_openapi::api::core::v1::{PodAffinityTerm, Toleration, WeightedPodAffinityTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::plugins::image_locality::normalized_image_name;
use crate::resources::{PodRequests, pod_requests};
use crate::selector::{NO_LABELS, Selector};

/// The "namespace/name" key of a Pod.
pub fn pod_key(pod: &CachedPod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// A host port a container asks for (port > 0), with upstream's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// "0.0.0.0" when the container names no host IP.
    pub ip: String,
    /// "TCP" when the container names no protocol.
    pub protocol: String,
    pub port: i32,
}

/// A pod (anti-)affinity term with its selectors compiled.
#[derive(Debug, Clone)]
pub struct AffinityTerm {
    /// Namespaces named by the term (the pod's own when it names none and has no selector).
    pub namespaces: Vec<String>,
    pub namespace_selector: Selector,
    pub selector: Selector,
    pub topology_key: String,
}

impl AffinityTerm {
    fn new(owner_namespace: &str, term: &PodAffinityTerm) -> Self {
        let mut namespaces = term.namespaces.clone().unwrap_or_default();
        if namespaces.is_empty() && term.namespace_selector.is_none() {
            namespaces.push(owner_namespace.to_string());
        }
        AffinityTerm {
            namespaces,
            namespace_selector: Selector::from_label_selector(term.namespace_selector.as_ref()),
            selector: Selector::from_label_selector(term.label_selector.as_ref()),
            topology_key: term.topology_key.clone(),
        }
    }

    /// Whether `pod` (in a namespace labelled `namespace_labels`) falls under this term.
    pub fn matches(
        &self,
        pod: &PodInfo,
        namespace_labels: Option<&BTreeMap<String, String>>,
    ) -> bool {
        let in_namespace = self.namespaces.contains(&pod.namespace)
            || match &self.namespace_selector {
                Selector::Nothing => false,
                selector => selector.matches_opt(namespace_labels),
            };
        in_namespace && self.selector.matches(pod.labels())
    }
}

/// An affinity term with its preference weight.
#[derive(Debug, Clone)]
pub struct WeightedAffinityTerm {
    pub term: AffinityTerm,
    pub weight: i64,
}

/// A Pod and what the scheduler precomputes about it.
#[derive(Debug)]
pub struct PodInfo {
    pub pod: Arc<CachedPod>,
    /// "namespace/name".
    pub key: Arc<str>,
    pub namespace: String,
    pub uid: String,
    pub requests: PodRequests,
    pub host_ports: Vec<HostPort>,
    /// The normalized names of the images of the pod's init containers and containers, in
    /// that order (image locality scores them); empty once bound (see `slimmed`).
    pub images: Vec<String>,
    pub required_affinity: Vec<AffinityTerm>,
    pub required_anti_affinity: Vec<AffinityTerm>,
    pub preferred_affinity: Vec<WeightedAffinityTerm>,
    pub preferred_anti_affinity: Vec<WeightedAffinityTerm>,
    /// spec.priority (0 when unset).
    pub priority: i32,
    /// spec.nodeName ("" when unassigned), kept here because a bound pod's spec is dropped
    /// (see `slimmed`).
    pub node_name: Box<str>,
    /// The pod has pod affinity or anti-affinity of any kind (kept for the same reason).
    pub has_pod_affinity: bool,
    /// The pod has a deletionTimestamp.
    pub terminating: bool,
    /// The UID of the pod's controller when it is a ReplicaSet, StatefulSet or
    /// ReplicationController (the owners upstream's default topology spreading follows).
    pub spreading_owner: Option<String>,
}

fn terms(namespace: &str, list: Option<&Vec<PodAffinityTerm>>) -> Vec<AffinityTerm> {
    list.into_iter()
        .flatten()
        .map(|t| AffinityTerm::new(namespace, t))
        .collect()
}

fn weighted_terms(
    namespace: &str,
    list: Option<&Vec<WeightedPodAffinityTerm>>,
) -> Vec<WeightedAffinityTerm> {
    list.into_iter()
        .flatten()
        .map(|t| WeightedAffinityTerm {
            term: AffinityTerm::new(namespace, &t.pod_affinity_term),
            weight: i64::from(t.weight),
        })
        .collect()
}

impl PodInfo {
    /// Derives the scheduler's view of `pod`.
    pub fn new(pod: Arc<CachedPod>) -> Self {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let host_ports = spec
            .into_iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .filter(|p| p.host_port.unwrap_or(0) > 0)
            .map(|p| HostPort {
                ip: match p.host_ip.as_deref() {
                    None | Some("") => "0.0.0.0".to_string(),
                    Some(ip) => ip.to_string(),
                },
                protocol: match p.protocol.as_deref() {
                    None | Some("") => "TCP".to_string(),
                    Some(proto) => proto.to_string(),
                },
                port: p.host_port.unwrap_or(0),
            })
            .collect();
        let affinity = spec.and_then(|s| s.affinity.as_ref());
        let pod_affinity = affinity.and_then(|a| a.pod_affinity.as_ref());
        let pod_anti_affinity = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        let spreading_owner = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .filter(|o| {
                matches!(
                    (o.api_version.as_str(), o.kind.as_str()),
                    ("v1", "ReplicationController")
                        | ("apps/v1", "ReplicaSet")
                        | ("apps/v1", "StatefulSet")
                )
            })
            .map(|o| o.uid.clone());
        PodInfo {
            key: Arc::from(pod_key(&pod)),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            requests: pod_requests(&pod),
            host_ports,
            images: spec
                .into_iter()
                .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
                .map(|c| normalized_image_name(c.image.as_deref().unwrap_or_default()))
                .collect(),
            required_affinity: terms(
                &namespace,
                pod_affinity.and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .as_ref()
                }),
            ),
            required_anti_affinity: terms(
                &namespace,
                pod_anti_affinity.and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .as_ref()
                }),
            ),
            preferred_affinity: weighted_terms(
                &namespace,
                pod_affinity.and_then(|a| {
                    a.preferred_during_scheduling_ignored_during_execution
                        .as_ref()
                }),
            ),
            preferred_anti_affinity: weighted_terms(
                &namespace,
                pod_anti_affinity.and_then(|a| {
                    a.preferred_during_scheduling_ignored_during_execution
                        .as_ref()
                }),
            ),
            priority: spec.and_then(|s| s.priority).unwrap_or(0),
            node_name: spec
                .and_then(|s| s.node_name.as_deref())
                .unwrap_or_default()
                .into(),
            has_pod_affinity: pod_affinity.is_some() || pod_anti_affinity.is_some(),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            spreading_owner,
            namespace,
            pod,
        }
    }

    /// The same pending pod without its containers and init containers: what the scheduler
    /// reads of them (requests, host ports, images) is derived already, and a backlog of
    /// pending pods is held whole while it waits. The pod is changed in place when this info
    /// holds the only reference to it (the scheduling loop's case), else copied.
    pub fn without_containers(mut self) -> Self {
        if let Some(spec) = Arc::make_mut(&mut self.pod).spec.as_mut() {
            spec.containers = Vec::new();
            spec.init_containers = None;
        }
        self
    }

    /// The same pod keeping only what the scheduler reads of a bound pod: its identity,
    /// labels, times and the status fields preemption reads (phase, start time, the
    /// DisruptionTarget condition). Bound pods are many, and what else the scheduler reads of
    /// them (requests, ports, affinity terms, owner, node, priority) is derived already, so
    /// the spec and the owner references are dropped.
    pub fn slimmed(self) -> Self {
        let pod = &self.pod;
        let metadata = ObjectMeta {
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            labels: pod.metadata.labels.clone(),
            creation_timestamp: pod.metadata.creation_timestamp.clone(),
            deletion_timestamp: pod.metadata.deletion_timestamp.clone(),
            ..Default::default()
        };
        let status = pod.status.as_ref().map(|s| CachedPodStatus {
            phase: s.phase.clone(),
            start_time: s.start_time.clone(),
            // An empty list allocates nothing.
            conditions: s.conditions.as_ref().map(|c| {
                c.iter()
                    .filter(|c| c.type_ == "DisruptionTarget")
                    .cloned()
                    .collect()
            }),
            ..Default::default()
        });
        PodInfo {
            pod: Arc::new(CachedPod {
                metadata,
                spec: None,
                status,
            }),
            images: Vec::new(),
            ..self
        }
    }

    /// The pod's labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        self.pod.metadata.labels.as_ref().unwrap_or(&NO_LABELS)
    }

    /// The pod's name.
    pub fn name(&self) -> &str {
        self.pod.metadata.name.as_deref().unwrap_or_default()
    }

    /// The pod's tolerations.
    pub fn tolerations(&self) -> &[Toleration] {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or_default()
    }

    /// spec.nodeName ("" when unassigned).
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Whether the pod has pod affinity or anti-affinity of any kind.
    pub fn has_affinity(&self) -> bool {
        self.has_pod_affinity
    }

    /// Whether the pod has required anti-affinity terms.
    pub fn has_required_anti_affinity(&self) -> bool {
        !self.required_anti_affinity.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Builders of Pods and Nodes for the unit tests.

    use std::collections::BTreeMap;
    use std::sync::Arc;

    use baton_client::CachedPod;

    use k8s_openapi::api::core::v1::{
        Container, ContainerImage, ContainerPort, Node, NodeCondition, NodeSpec, NodeStatus, Pod,
        PodSpec, ResourceRequirements, Taint,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::PodInfo;

    pub fn map(items: &[(&str, &str)]) -> BTreeMap<String, String> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn quantities(items: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
            .collect()
    }

    /// A Node builder.
    #[derive(Debug, Clone)]
    pub struct NodeBuilder(pub Node);

    /// A ready node with 4 CPUs, 8Gi memory, 110 pods.
    pub fn node(name: &str) -> NodeBuilder {
        NodeBuilder(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(map(&[("kubernetes.io/hostname", name)])),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: Some(quantities(&[
                    ("cpu", "4"),
                    ("memory", "8Gi"),
                    ("pods", "110"),
                    ("ephemeral-storage", "100Gi"),
                ])),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        })
    }

    impl NodeBuilder {
        pub fn label(mut self, key: &str, value: &str) -> Self {
            self.0
                .metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert(key.into(), value.into());
            self
        }
        pub fn allocatable(mut self, items: &[(&str, &str)]) -> Self {
            self.0.status.as_mut().unwrap().allocatable = Some(quantities(items));
            self
        }
        pub fn taint(mut self, key: &str, value: &str, effect: &str) -> Self {
            self.0
                .spec
                .as_mut()
                .unwrap()
                .taints
                .get_or_insert_with(Vec::new)
                .push(Taint {
                    key: key.into(),
                    value: (!value.is_empty()).then(|| value.into()),
                    effect: effect.into(),
                    time_added: None,
                });
            self
        }
        pub fn unschedulable(mut self) -> Self {
            self.0.spec.as_mut().unwrap().unschedulable = Some(true);
            self
        }
        pub fn not_ready(mut self) -> Self {
            self.0.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "False".into();
            self
        }
        pub fn image(mut self, names: &[&str], size: i64) -> Self {
            self.0
                .status
                .as_mut()
                .unwrap()
                .images
                .get_or_insert_with(Vec::new)
                .push(ContainerImage {
                    names: Some(names.iter().map(|n| n.to_string()).collect()),
                    size_bytes: Some(size),
                });
            self
        }
        pub fn build(self) -> Arc<Node> {
            Arc::new(self.0)
        }
    }

    /// A Pod builder.
    #[derive(Debug, Clone)]
    pub struct PodBuilder(pub Pod);

    /// A pod in namespace "default" with one container and no requests.
    pub fn pod(name: &str) -> PodBuilder {
        PodBuilder(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    image: Some("busybox".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        })
    }

    impl PodBuilder {
        fn spec(&mut self) -> &mut PodSpec {
            self.0.spec.as_mut().unwrap()
        }
        pub fn namespace(mut self, ns: &str) -> Self {
            self.0.metadata.namespace = Some(ns.into());
            self
        }
        pub fn label(mut self, key: &str, value: &str) -> Self {
            self.0
                .metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert(key.into(), value.into());
            self
        }
        pub fn requests(mut self, items: &[(&str, &str)]) -> Self {
            self.spec().containers[0].resources = Some(ResourceRequirements {
                requests: Some(quantities(items)),
                ..Default::default()
            });
            self
        }
        pub fn host_port(mut self, port: i32, protocol: &str, ip: &str) -> Self {
            self.spec().containers[0]
                .ports
                .get_or_insert_with(Vec::new)
                .push(ContainerPort {
                    container_port: port,
                    host_port: Some(port),
                    protocol: (!protocol.is_empty()).then(|| protocol.into()),
                    host_ip: (!ip.is_empty()).then(|| ip.into()),
                    ..Default::default()
                });
            self
        }
        pub fn image(mut self, image: &str) -> Self {
            self.spec().containers[0].image = Some(image.into());
            self
        }
        pub fn node_name(mut self, node: &str) -> Self {
            self.spec().node_name = Some(node.into());
            self
        }
        pub fn priority(mut self, priority: i32) -> Self {
            self.spec().priority = Some(priority);
            self
        }
        pub fn with_spec(mut self, f: impl FnOnce(&mut PodSpec)) -> Self {
            f(self.spec());
            self
        }
        pub fn owner(mut self, kind: &str, uid: &str) -> Self {
            let api_version = if kind == "ReplicationController" {
                "v1"
            } else {
                "apps/v1"
            };
            self.0.metadata.owner_references = Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: api_version.into(),
                    kind: kind.into(),
                    name: "owner".into(),
                    uid: uid.into(),
                    controller: Some(true),
                    ..Default::default()
                },
            ]);
            self
        }
        pub fn build(self) -> Arc<CachedPod> {
            Arc::new(CachedPod::from(self.0))
        }
        pub fn info(self) -> Arc<PodInfo> {
            Arc::new(PodInfo::new(self.build()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::pod;
    use k8s_openapi::api::core::v1::{Affinity, PodAffinityTerm, PodAntiAffinity};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    use super::testing::map;

    #[test]
    fn host_ports_get_defaults() {
        let info = pod("p")
            .host_port(80, "", "")
            .host_port(53, "UDP", "10.0.0.1")
            .info();
        assert_eq!(info.host_ports.len(), 2);
        assert_eq!(info.host_ports[0].ip, "0.0.0.0");
        assert_eq!(info.host_ports[0].protocol, "TCP");
        assert_eq!(info.host_ports[1].protocol, "UDP");
    }

    #[test]
    fn affinity_terms_default_to_the_pods_namespace() {
        let info = pod("p")
            .namespace("ns1")
            .with_spec(|s| {
                s.affinity = Some(Affinity {
                    pod_anti_affinity: Some(PodAntiAffinity {
                        required_during_scheduling_ignored_during_execution: Some(vec![
                            PodAffinityTerm {
                                label_selector: Some(LabelSelector {
                                    match_labels: Some(map(&[("app", "x")])),
                                    ..Default::default()
                                }),
                                topology_key: "kubernetes.io/hostname".into(),
                                ..Default::default()
                            },
                        ]),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            })
            .info();
        let term = &info.required_anti_affinity[0];
        assert_eq!(term.namespaces, vec!["ns1".to_string()]);
        let same = pod("q").namespace("ns1").label("app", "x").info();
        let other_ns = pod("r").namespace("ns2").label("app", "x").info();
        assert!(term.matches(&same, None));
        assert!(!term.matches(&other_ns, None));
        assert!(info.has_required_anti_affinity());
    }

    #[test]
    fn slimmed_pods_keep_what_bound_pods_need() {
        let info = pod("p")
            .label("app", "x")
            .requests(&[("cpu", "1")])
            .host_port(80, "", "")
            .node_name("n1")
            .priority(7)
            .owner("ReplicaSet", "rs")
            .with_spec(|s| {
                s.affinity = Some(k8s_openapi::api::core::v1::Affinity {
                    pod_anti_affinity: Some(Default::default()),
                    ..Default::default()
                })
            })
            .info();
        let slim = std::sync::Arc::try_unwrap(info).unwrap().slimmed();
        // The spec and the owner references go; what was derived from them stays.
        assert!(slim.pod.spec.is_none());
        assert!(slim.pod.metadata.owner_references.is_none());
        assert!(slim.has_affinity());
        assert_eq!(slim.node_name(), "n1");
        assert_eq!(slim.labels().get("app").map(String::as_str), Some("x"));
        assert_eq!(slim.requests.requests.milli_cpu, 1000);
        assert_eq!(slim.host_ports.len(), 1);
        assert_eq!(slim.priority, 7);
        assert_eq!(slim.spreading_owner.as_deref(), Some("rs"));
    }

    #[test]
    fn pending_pods_without_containers_keep_what_was_derived_from_them() {
        let info = pod("p")
            .requests(&[("cpu", "500m")])
            .host_port(8080, "UDP", "")
            .image("registry.local/app")
            .info();
        let pending = std::sync::Arc::try_unwrap(info).unwrap();
        let shared = pending.pod.clone();
        let lean = pending.without_containers();
        let spec = lean.pod.spec.as_ref().unwrap();
        assert!(spec.containers.is_empty() && spec.init_containers.is_none());
        assert_eq!(lean.requests.requests.milli_cpu, 500);
        assert_eq!(lean.host_ports[0].port, 8080);
        assert_eq!(lean.images, ["registry.local/app:latest"]);
        // A pod someone else still holds is copied, not changed under them.
        assert_eq!(shared.spec.as_ref().unwrap().containers.len(), 1);
    }

    #[test]
    fn spreading_owner_only_for_replicated_kinds() {
        assert_eq!(
            pod("p")
                .owner("ReplicaSet", "u1")
                .info()
                .spreading_owner
                .as_deref(),
            Some("u1")
        );
        assert_eq!(pod("p").owner("Job", "u2").info().spreading_owner, None);
    }
}
