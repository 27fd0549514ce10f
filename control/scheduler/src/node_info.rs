//! A node's aggregated state: the Node, the pods on it (bound and assumed), what they request,
//! the host ports they hold, and the images the node has.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ContainerImage, Node, Taint};

use crate::pod_info::{HostPort, PodInfo};
use crate::resources::{Resources, node_allocatable};
use crate::selector::NO_LABELS;

/// The aggregated state of one node.
#[derive(Debug)]
pub struct NodeInfo {
    pub name: Arc<str>,
    /// `None` while pods still point at a node the cache no longer has.
    pub node: Option<Arc<Node>>,
    pub allocatable: Resources,
    pub allowed_pods: i64,
    /// Sum of the pods' requests.
    pub requested: Resources,
    /// Sum of the pods' CPU requests with the default for containers that set none.
    pub non_zero_milli_cpu: i64,
    /// Sum of the pods' memory requests with the default for containers that set none.
    pub non_zero_memory: i64,
    pub pods: Vec<Arc<PodInfo>>,
    /// How many of `pods` have pod affinity or anti-affinity.
    pub pods_with_affinity: usize,
    /// How many of `pods` have required anti-affinity.
    pub pods_with_required_anti_affinity: usize,
    /// Host ports in use (a multiset: two pods may hold the same port on different IPs).
    pub used_ports: Vec<HostPort>,
    /// Image names on the node with their sizes.
    pub images: HashMap<String, i64>,
    /// Non-terminating pods per spreading owner UID (see `PodInfo::spreading_owner`).
    pub owner_counts: HashMap<String, u32>,
    /// The Ready condition is True.
    pub ready: bool,
    /// Bumped on every change.
    pub generation: u64,
}

impl NodeInfo {
    /// An empty entry for node `name`.
    pub fn new(name: Arc<str>) -> Self {
        NodeInfo {
            name,
            node: None,
            allocatable: Resources::default(),
            allowed_pods: 0,
            requested: Resources::default(),
            non_zero_milli_cpu: 0,
            non_zero_memory: 0,
            pods: Vec::new(),
            pods_with_affinity: 0,
            pods_with_required_anti_affinity: 0,
            used_ports: Vec::new(),
            images: HashMap::new(),
            owner_counts: HashMap::new(),
            ready: false,
            generation: 0,
        }
    }

    /// The node's labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        self.node
            .as_ref()
            .and_then(|n| n.metadata.labels.as_ref())
            .unwrap_or(&NO_LABELS)
    }

    /// The node's taints.
    pub fn taints(&self) -> &[Taint] {
        self.node
            .as_ref()
            .and_then(|n| n.spec.as_ref())
            .and_then(|s| s.taints.as_deref())
            .unwrap_or_default()
    }

    /// Whether spec.unschedulable is set.
    pub fn unschedulable(&self) -> bool {
        self.node
            .as_ref()
            .and_then(|n| n.spec.as_ref())
            .and_then(|s| s.unschedulable)
            .unwrap_or(false)
    }

    /// Replaces the Node object.
    pub fn set_node(&mut self, node: Arc<Node>) {
        let (allocatable, pods) = node_allocatable(&node);
        self.allocatable = allocatable;
        self.allowed_pods = pods;
        self.ready = node_is_ready(&node);
        let same_images = self
            .node
            .as_deref()
            .is_some_and(|old| node_images(old) == node_images(&node));
        if !same_images {
            self.rebuild_images(&node);
        }
        self.node = Some(node);
        self.generation += 1;
    }

    fn rebuild_images(&mut self, node: &Node) {
        self.images.clear();
        for image in node
            .status
            .as_ref()
            .and_then(|s| s.images.as_ref())
            .into_iter()
            .flatten()
        {
            for name in image.names.iter().flatten() {
                self.images
                    .insert(name.clone(), image.size_bytes.unwrap_or(0));
            }
        }
    }

    /// Forgets the Node object (pods may still point at it).
    pub fn clear_node(&mut self) {
        self.node = None;
        self.images.clear();
        self.generation += 1;
    }

    /// Counts `pod` against this node.
    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.requested.add(&pod.requests.requests);
        self.non_zero_milli_cpu += pod.requests.non_zero_milli_cpu;
        self.non_zero_memory += pod.requests.non_zero_memory;
        self.used_ports.extend(pod.host_ports.iter().cloned());
        if pod.has_affinity() {
            self.pods_with_affinity += 1;
        }
        if pod.has_required_anti_affinity() {
            self.pods_with_required_anti_affinity += 1;
        }
        if let Some(owner) = &pod.spreading_owner
            && !pod.terminating
        {
            *self.owner_counts.entry(owner.clone()).or_default() += 1;
        }
        self.pods.push(pod);
        self.generation += 1;
    }

    /// Removes the pod with `key`, returning it.
    pub fn remove_pod(&mut self, key: &str) -> Option<Arc<PodInfo>> {
        let index = self.pods.iter().position(|p| &*p.key == key)?;
        let pod = self.pods.swap_remove(index);
        self.requested.sub(&pod.requests.requests);
        self.non_zero_milli_cpu -= pod.requests.non_zero_milli_cpu;
        self.non_zero_memory -= pod.requests.non_zero_memory;
        for port in &pod.host_ports {
            if let Some(i) = self.used_ports.iter().position(|p| p == port) {
                self.used_ports.swap_remove(i);
            }
        }
        if pod.has_affinity() {
            self.pods_with_affinity -= 1;
        }
        if pod.has_required_anti_affinity() {
            self.pods_with_required_anti_affinity -= 1;
        }
        if let Some(owner) = &pod.spreading_owner
            && !pod.terminating
            && let Some(count) = self.owner_counts.get_mut(owner)
        {
            *count -= 1;
            if *count == 0 {
                self.owner_counts.remove(owner);
            }
        }
        self.generation += 1;
        Some(pod)
    }

    /// A copy for a what-if evaluation (preemption): pods are shared, not cloned.
    pub fn snapshot(&self) -> NodeInfo {
        NodeInfo {
            name: self.name.clone(),
            node: self.node.clone(),
            allocatable: self.allocatable.clone(),
            allowed_pods: self.allowed_pods,
            requested: self.requested.clone(),
            non_zero_milli_cpu: self.non_zero_milli_cpu,
            non_zero_memory: self.non_zero_memory,
            pods: self.pods.clone(),
            pods_with_affinity: self.pods_with_affinity,
            pods_with_required_anti_affinity: self.pods_with_required_anti_affinity,
            used_ports: self.used_ports.clone(),
            images: self.images.clone(),
            owner_counts: self.owner_counts.clone(),
            ready: self.ready,
            generation: self.generation,
        }
    }
}

/// The images a node reports.
pub fn node_images(node: &Node) -> Option<&Vec<ContainerImage>> {
    node.status.as_ref()?.images.as_ref()
}

/// Whether the node's Ready condition is True.
pub fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::NodeInfo;
    use crate::pod_info::testing::{node, pod};

    #[test]
    fn pods_add_and_remove_their_requests_and_ports() {
        let mut info = NodeInfo::new("n1".into());
        info.set_node(
            node("n1")
                .image(&["nginx:1.25", "docker.io/library/nginx:1.25"], 100)
                .build(),
        );
        assert_eq!(info.allocatable.milli_cpu, 4000);
        assert_eq!(info.allowed_pods, 110);
        assert!(info.ready);
        assert_eq!(info.images.get("nginx:1.25"), Some(&100));

        let a = pod("a")
            .requests(&[("cpu", "1"), ("memory", "1Gi")])
            .host_port(80, "", "")
            .owner("ReplicaSet", "rs1")
            .info();
        let b = pod("b").info();
        info.add_pod(a);
        info.add_pod(b);
        assert_eq!(info.requested.milli_cpu, 1000);
        assert_eq!(info.non_zero_milli_cpu, 1100);
        assert_eq!(info.used_ports.len(), 1);
        assert_eq!(info.owner_counts.get("rs1"), Some(&1));

        let removed = info.remove_pod("default/a").unwrap();
        assert_eq!(removed.name(), "a");
        assert_eq!(info.requested.milli_cpu, 0);
        assert_eq!(info.non_zero_milli_cpu, 100);
        assert!(info.used_ports.is_empty());
        assert!(info.owner_counts.is_empty());
        assert!(info.remove_pod("default/a").is_none());
        assert_eq!(info.pods.len(), 1);
    }
}
