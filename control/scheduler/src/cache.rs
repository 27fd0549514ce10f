//! The scheduler's cache: nodes with the pods bound or assumed on them, plus the namespace
//! labels and Service selectors some plugins read. It is owned by the scheduling loop, which
//! applies informer changes between scheduling cycles, so each cycle sees a consistent state.
//!
//! A pod is "assumed" on its node as soon as the scheduler picks the node, before the binding
//! is written, so that the next pod sees the resources taken; the assumption is confirmed when
//! the informer reports the pod bound, and forgotten when the binding fails.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, Service};

use crate::node_info::{NodeInfo, node_images};
use crate::node_tree::{NodeTree, zone_key};
use crate::pod_info::PodInfo;
use crate::selector::Selector;

/// A pod the cache counts against a node.
#[derive(Debug, Clone)]
pub struct CountedPod {
    pub info: Arc<PodInfo>,
    pub slot: usize,
    /// Chosen by this scheduler but not yet seen bound.
    pub assumed: bool,
}

/// What an update of a bound pod did to the cache.
#[derive(Debug)]
pub enum PodChange {
    /// The pod was not counted before.
    Added,
    /// The pod was counted before (possibly as assumed, possibly on another node).
    Updated {
        old: Arc<PodInfo>,
        was_assumed: bool,
    },
}

/// The scheduler's view of the cluster.
#[derive(Debug, Default)]
pub struct Cache {
    slots: Vec<Option<NodeInfo>>,
    index: HashMap<Arc<str>, usize>,
    free: Vec<usize>,
    tree: NodeTree,
    zones: HashMap<usize, String>,
    pods: HashMap<Arc<str>, CountedPod>,
    /// How many nodes have each image name.
    image_nodes: HashMap<String, u32>,
    namespaces: HashMap<String, BTreeMap<String, String>>,
    /// Service selectors by "namespace/name": (namespace, selector, compiled selector).
    services: HashMap<String, (String, BTreeMap<String, String>, Selector)>,
    nodes_with_objects: usize,
    /// Pods (bound or assumed) with pod affinity or anti-affinity of any kind.
    pods_with_affinity: usize,
    /// Pods (bound or assumed) with required pod anti-affinity.
    pods_with_required_anti_affinity: usize,
    /// Non-terminating pods per spreading owner and zone (topology.kubernetes.io/zone of
    /// their node): what upstream's default zone spreading counts, kept up to date.
    owner_zones: HashMap<String, HashMap<String, u32>>,
    /// PersistentVolumeClaims, PersistentVolumes and StorageClasses (VolumeBinding).
    pub volumes: crate::plugins::volume_binding::VolumeObjects,
}

/// The zone label the default topology spreading uses.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

fn spreading_zone(node: &Node) -> Option<&String> {
    node.metadata.labels.as_ref()?.get(ZONE_LABEL)
}

impl Cache {
    /// The node in `slot`.
    pub fn node(&self, slot: usize) -> &NodeInfo {
        self.slots[slot].as_ref().expect("live node slot")
    }

    /// The node in `slot`, mutably.
    pub fn node_mut(&mut self, slot: usize) -> &mut NodeInfo {
        self.slots[slot].as_mut().expect("live node slot")
    }

    /// The slot of node `name`, if the cache has an entry for it.
    pub fn slot_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// Brings the scheduling order up to date (before a cycle reads [`Cache::order`]).
    pub fn prepare_order(&mut self) {
        self.tree.refresh();
    }

    /// The scheduling order as of the last [`Cache::prepare_order`].
    pub fn order(&self) -> &[usize] {
        self.tree.current()
    }

    /// How many nodes have a Node object.
    pub fn node_count(&self) -> usize {
        self.nodes_with_objects
    }

    /// Iterates over all nodes that have a Node object, in no particular order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.slots.iter().flatten().filter(|n| n.node.is_some())
    }

    /// How many pods have pod affinity or anti-affinity.
    pub fn pods_with_affinity(&self) -> usize {
        self.pods_with_affinity
    }

    /// How many pods have required pod anti-affinity.
    pub fn pods_with_required_anti_affinity(&self) -> usize {
        self.pods_with_required_anti_affinity
    }

    /// How many non-terminating pods of spreading owner `owner` run on nodes of `zone`.
    pub fn owner_zone_count(&self, owner: &str, zone: &str) -> u32 {
        self.owner_zones
            .get(owner)
            .and_then(|z| z.get(zone))
            .copied()
            .unwrap_or(0)
    }

    fn zone_of(&self, slot: usize) -> Option<String> {
        self.node(slot)
            .node
            .as_ref()?
            .metadata
            .labels
            .as_ref()?
            .get(ZONE_LABEL)
            .cloned()
    }

    fn count_owner_zone(&mut self, owner: &str, zone: &str, delta: i64) {
        let zones = self.owner_zones.entry(owner.to_string()).or_default();
        let count = zones.entry(zone.to_string()).or_default();
        *count = count.saturating_add_signed(delta as i32);
        if *count == 0 {
            zones.remove(zone);
            if zones.is_empty() {
                self.owner_zones.remove(owner);
            }
        }
    }

    /// Moves the node's owner counts out of (`delta` -1) or into (1) its zone's totals.
    fn count_node_zone(&mut self, slot: usize, delta: i64) {
        let Some(zone) = self.zone_of(slot) else {
            return;
        };
        let owners: Vec<(String, u32)> = self
            .node(slot)
            .owner_counts
            .iter()
            .map(|(o, c)| (o.clone(), *c))
            .collect();
        for (owner, count) in owners {
            self.count_owner_zone(&owner, &zone, delta * i64::from(count));
        }
    }

    /// Counts `info` on the node in `slot`.
    fn attach(&mut self, slot: usize, info: Arc<PodInfo>) {
        if info.has_affinity() {
            self.pods_with_affinity += 1;
        }
        if info.has_required_anti_affinity() {
            self.pods_with_required_anti_affinity += 1;
        }
        if let Some(owner) = info.spreading_owner.as_deref()
            && !info.terminating
            && let Some(zone) = self.zone_of(slot)
        {
            self.count_owner_zone(owner, &zone, 1);
        }
        self.node_mut(slot).add_pod(info);
    }

    /// Stops counting the pod with `key` on the node in `slot`.
    fn detach(&mut self, slot: usize, key: &str) -> Option<Arc<PodInfo>> {
        let info = self.node_mut(slot).remove_pod(key)?;
        if info.has_affinity() {
            self.pods_with_affinity -= 1;
        }
        if info.has_required_anti_affinity() {
            self.pods_with_required_anti_affinity -= 1;
        }
        if let Some(owner) = info.spreading_owner.as_deref()
            && !info.terminating
            && let Some(zone) = self.zone_of(slot)
        {
            self.count_owner_zone(owner, &zone, -1);
        }
        Some(info)
    }

    /// How many nodes have image `name`.
    pub fn image_node_count(&self, name: &str) -> u32 {
        self.image_nodes.get(name).copied().unwrap_or(0)
    }

    fn slot_for(&mut self, name: &str) -> usize {
        if let Some(slot) = self.index.get(name) {
            return *slot;
        }
        let name: Arc<str> = Arc::from(name);
        let info = NodeInfo::new(name.clone());
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(info);
                slot
            }
            None => {
                self.slots.push(Some(info));
                self.slots.len() - 1
            }
        };
        self.index.insert(name, slot);
        slot
    }

    fn release_if_empty(&mut self, slot: usize) {
        let info = self.node(slot);
        if info.node.is_none() && info.pods.is_empty() {
            let name = info.name.clone();
            self.index.remove(&name);
            self.slots[slot] = None;
            self.free.push(slot);
        }
    }

    fn count_images(&mut self, slot: usize, delta: i32) {
        let names: Vec<String> = self.node(slot).images.keys().cloned().collect();
        for name in names {
            let count = self.image_nodes.entry(name.clone()).or_default();
            *count = count.saturating_add_signed(delta);
            if *count == 0 {
                self.image_nodes.remove(&name);
            }
        }
    }

    /// Adds or replaces a Node; returns the previous object.
    pub fn upsert_node(&mut self, node: Arc<Node>) -> Option<Arc<Node>> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let slot = self.slot_for(&name);
        let zone = zone_key(&node);
        let old = self.node(slot).node.clone();
        // Heartbeat-like updates change neither images nor zone: skip their bookkeeping.
        let images_changed = old
            .as_deref()
            .is_none_or(|o| node_images(o) != node_images(&node));
        let zone_changed = old
            .as_deref()
            .is_none_or(|o| spreading_zone(o) != spreading_zone(&node));
        if zone_changed {
            self.count_node_zone(slot, -1);
        }
        if old.is_some() {
            if images_changed {
                self.count_images(slot, -1);
            }
        } else {
            self.nodes_with_objects += 1;
        }
        match self.zones.get(&slot) {
            Some(previous) if *previous == zone => {}
            Some(previous) => {
                let previous = previous.clone();
                self.tree.remove(&previous, slot);
                self.tree.add(&zone, slot);
                self.zones.insert(slot, zone);
            }
            None => {
                self.tree.add(&zone, slot);
                self.zones.insert(slot, zone);
            }
        }
        self.node_mut(slot).set_node(node);
        if images_changed {
            self.count_images(slot, 1);
        }
        if zone_changed {
            self.count_node_zone(slot, 1);
        }
        old
    }

    /// Removes a Node (its pods stay counted until they go); returns the removed object.
    pub fn remove_node(&mut self, name: &str) -> Option<Arc<Node>> {
        let slot = self.slot_of(name)?;
        let old = self.node(slot).node.clone()?;
        self.count_images(slot, -1);
        self.count_node_zone(slot, -1);
        if let Some(zone) = self.zones.remove(&slot) {
            self.tree.remove(&zone, slot);
        }
        self.nodes_with_objects -= 1;
        self.node_mut(slot).clear_node();
        self.release_if_empty(slot);
        Some(old)
    }

    /// The cache's entry for the pod with `key`.
    #[cfg(test)]
    pub fn pod(&self, key: &str) -> Option<&CountedPod> {
        self.pods.get(key)
    }

    /// Counts a bound pod (from the informer): adds it, moves it, or confirms an assumption.
    pub fn upsert_bound_pod(&mut self, info: Arc<PodInfo>) -> PodChange {
        let change = match self.pods.remove(&info.key) {
            Some(previous) => {
                self.detach(previous.slot, &info.key);
                self.release_if_empty(previous.slot);
                PodChange::Updated {
                    old: previous.info,
                    was_assumed: previous.assumed,
                }
            }
            None => PodChange::Added,
        };
        let slot = self.slot_for(info.node_name());
        self.attach(slot, info.clone());
        self.pods.insert(
            info.key.clone(),
            CountedPod {
                info,
                slot,
                assumed: false,
            },
        );
        change
    }

    /// Stops counting the pod with `key` (deleted, or terminated); returns its entry.
    pub fn remove_pod(&mut self, key: &str) -> Option<CountedPod> {
        let entry = self.pods.remove(key)?;
        self.detach(entry.slot, key);
        self.release_if_empty(entry.slot);
        Some(entry)
    }

    /// Counts `info` against the node in `slot` before its binding is written.
    pub fn assume(&mut self, info: Arc<PodInfo>, slot: usize) {
        self.remove_pod(&info.key);
        self.attach(slot, info.clone());
        self.pods.insert(
            info.key.clone(),
            CountedPod {
                info,
                slot,
                assumed: true,
            },
        );
    }

    /// Drops the assumption for `key` when its binding failed; returns the assumed pod.
    pub fn forget(&mut self, key: &str, uid: &str) -> Option<Arc<PodInfo>> {
        match self.pods.get(key) {
            Some(entry) if entry.assumed && entry.info.uid == uid => {}
            _ => return None,
        }
        self.remove_pod(key).map(|e| e.info)
    }

    /// Replaces the unbound pod object kept for an assumed pod (its binding is in flight).
    pub fn refresh_assumed(&mut self, info: Arc<PodInfo>) -> bool {
        let Some(entry) = self.pods.get(&info.key) else {
            return false;
        };
        if !entry.assumed || entry.info.uid != info.uid {
            return false;
        }
        let slot = entry.slot;
        self.detach(slot, &info.key);
        self.attach(slot, info.clone());
        self.pods.insert(
            info.key.clone(),
            CountedPod {
                info,
                slot,
                assumed: true,
            },
        );
        true
    }

    /// Records a Namespace's labels.
    pub fn upsert_namespace(&mut self, namespace: &Namespace) {
        if let Some(name) = &namespace.metadata.name {
            self.namespaces.insert(
                name.clone(),
                namespace.metadata.labels.clone().unwrap_or_default(),
            );
        }
    }

    /// Forgets a Namespace.
    pub fn remove_namespace(&mut self, name: &str) {
        self.namespaces.remove(name);
    }

    /// The labels of namespace `name` (if the cache knows it).
    pub fn namespace_labels(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces.get(name)
    }

    /// Records a Service's selector.
    pub fn upsert_service(&mut self, service: &Service) {
        let namespace = service.metadata.namespace.clone().unwrap_or_default();
        let key = format!(
            "{namespace}/{}",
            service.metadata.name.as_deref().unwrap_or_default()
        );
        match service.spec.as_ref().and_then(|s| s.selector.clone()) {
            Some(selector) if !selector.is_empty() => {
                let compiled = Selector::from_set(&selector);
                self.services.insert(key, (namespace, selector, compiled));
            }
            _ => {
                self.services.remove(&key);
            }
        }
    }

    /// Forgets a Service.
    pub fn remove_service(&mut self, namespace: &str, name: &str) {
        self.services.remove(&format!("{namespace}/{name}"));
    }

    /// The union of the selectors of the Services that select `pod` (upstream's default
    /// spreading selector, Service part).
    pub fn service_selector_for(&self, pod: &PodInfo) -> BTreeMap<String, String> {
        let mut merged = BTreeMap::new();
        for (namespace, selector, compiled) in self.services.values() {
            if *namespace == pod.namespace && compiled.matches(pod.labels()) {
                merged.extend(selector.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::{Cache, PodChange};
    use crate::pod_info::testing::{node, pod};

    #[test]
    fn assume_confirm_and_forget() {
        let mut cache = Cache::default();
        cache.upsert_node(node("n1").build());
        let slot = cache.slot_of("n1").unwrap();
        let p = pod("p").requests(&[("cpu", "1")]).info();
        cache.assume(p.clone(), slot);
        assert_eq!(cache.node(slot).requested.milli_cpu, 1000);
        assert!(cache.pod("default/p").unwrap().assumed);

        let bound = pod("p").requests(&[("cpu", "1")]).node_name("n1").info();
        assert!(matches!(
            cache.upsert_bound_pod(bound),
            PodChange::Updated {
                was_assumed: true,
                ..
            }
        ));
        assert!(!cache.pod("default/p").unwrap().assumed);
        assert_eq!(cache.node(slot).requested.milli_cpu, 1000);
        // A bound pod cannot be forgotten.
        assert!(cache.forget("default/p", "uid-p").is_none());

        let q = pod("q").requests(&[("cpu", "2")]).info();
        cache.assume(q, slot);
        assert_eq!(cache.node(slot).requested.milli_cpu, 3000);
        assert!(cache.forget("default/q", "other-uid").is_none());
        assert!(cache.forget("default/q", "uid-q").is_some());
        assert_eq!(cache.node(slot).requested.milli_cpu, 1000);
    }

    #[test]
    fn pods_on_unknown_nodes_keep_a_ghost_entry() {
        let mut cache = Cache::default();
        let p = pod("p").node_name("ghost").info();
        assert!(matches!(cache.upsert_bound_pod(p), PodChange::Added));
        assert_eq!(cache.node_count(), 0);
        cache.prepare_order();
        assert!(cache.order().is_empty());
        cache.upsert_node(node("ghost").build());
        assert_eq!(cache.node_count(), 1);
        assert_eq!(cache.node(cache.slot_of("ghost").unwrap()).pods.len(), 1);
        cache.remove_node("ghost");
        assert!(cache.slot_of("ghost").is_some(), "pod still counted");
        cache.remove_pod("default/p");
        assert!(cache.slot_of("ghost").is_none());
    }

    #[test]
    fn owner_zone_counts_follow_pods_and_node_labels() {
        let mut cache = Cache::default();
        cache.upsert_node(node("n1").label(super::ZONE_LABEL, "a").build());
        cache.upsert_node(node("n2").build());
        for (i, n) in ["n1", "n1", "n2"].iter().enumerate() {
            cache.upsert_bound_pod(
                pod(&format!("p{i}"))
                    .owner("ReplicaSet", "rs")
                    .node_name(n)
                    .info(),
            );
        }
        assert_eq!(cache.owner_zone_count("rs", "a"), 2);
        // n2 joins zone a, n1 moves to zone b.
        cache.upsert_node(node("n2").label(super::ZONE_LABEL, "a").build());
        cache.upsert_node(node("n1").label(super::ZONE_LABEL, "b").build());
        assert_eq!(cache.owner_zone_count("rs", "a"), 1);
        assert_eq!(cache.owner_zone_count("rs", "b"), 2);
        cache.remove_pod("default/p0");
        cache.remove_node("n2");
        assert_eq!(cache.owner_zone_count("rs", "a"), 0);
        assert_eq!(cache.owner_zone_count("rs", "b"), 1);
        let affine = pod("x").node_name("n1").with_spec(|s| {
            s.affinity = Some(k8s_openapi::api::core::v1::Affinity {
                pod_affinity: Some(Default::default()),
                ..Default::default()
            })
        });
        cache.upsert_bound_pod(affine.info());
        assert_eq!(cache.pods_with_affinity(), 1);
        cache.remove_pod("default/x");
        assert_eq!(cache.pods_with_affinity(), 0);
    }

    #[test]
    fn image_counts_follow_nodes() {
        let mut cache = Cache::default();
        cache.upsert_node(node("n1").image(&["nginx:1"], 10).build());
        cache.upsert_node(node("n2").image(&["nginx:1"], 10).build());
        assert_eq!(cache.image_node_count("nginx:1"), 2);
        cache.upsert_node(node("n2").build());
        assert_eq!(cache.image_node_count("nginx:1"), 1);
        cache.remove_node("n1");
        assert_eq!(cache.image_node_count("nginx:1"), 0);
    }
}
