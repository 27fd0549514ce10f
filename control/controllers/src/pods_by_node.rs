//! An index of the shared Pod cache by node: the node controllers (lifecycle, taint eviction,
//! pod GC) look up the Pods bound to one node without scanning every Pod.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use baton_client::{CachedPod, Informer, InformerEvent};
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

/// `namespace/name` keys of the Pods bound to each node.
#[derive(Debug, Default)]
pub struct PodsByNode {
    by_node: Mutex<HashMap<String, HashSet<(String, String)>>>,
}

/// The node a Pod is bound to, if any.
pub fn node_of(pod: &CachedPod) -> Option<&str> {
    pod.spec
        .as_ref()?
        .node_name
        .as_deref()
        .filter(|n| !n.is_empty())
}

impl crate::Context {
    /// The shared Pod cache indexed by node (registered on the Pod informer on first use,
    /// which must be before the informers run, i.e. in a controller's `start`).
    pub fn pods_by_node(&self) -> Arc<PodsByNode> {
        self.pods_by_node
            .get_or_init(|| PodsByNode::register(&self.pods))
            .clone()
    }
}

impl PodsByNode {
    /// An index kept up to date from `pods` (register before the informer runs).
    pub fn register(pods: &Informer<CachedPod>) -> Arc<Self> {
        let index = Arc::new(PodsByNode::default());
        let writer = index.clone();
        pods.on_event(move |event| writer.apply(event));
        index
    }

    fn apply(&self, event: &InformerEvent<'_, CachedPod>) {
        let (old, new) = match event {
            InformerEvent::Applied { old, new } => (*old, Some(*new)),
            InformerEvent::Deleted(pod) => (Some(*pod), None),
        };
        let old_node = old.and_then(node_of);
        let new_node = new.and_then(node_of);
        if old_node == new_node && old.is_some() {
            return;
        }
        let pod = new.or(old).expect("an event has a pod");
        let key = (pod.namespace().unwrap_or_default(), pod.name_any());
        let mut by_node = self.by_node.lock().expect("pods by node");
        if let Some(node) = old_node
            && let Some(set) = by_node.get_mut(node)
        {
            set.remove(&key);
            if set.is_empty() {
                by_node.remove(node);
            }
        }
        if let Some(node) = new_node {
            by_node.entry(node.to_string()).or_default().insert(key);
        }
    }

    /// References to the Pods bound to `node`.
    pub fn pods_on(&self, node: &str) -> Vec<ObjectRef<CachedPod>> {
        let by_node = self.by_node.lock().expect("pods by node");
        by_node
            .get(node)
            .map(|set| {
                set.iter()
                    .map(|(ns, name)| ObjectRef::new(name).within(ns))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The nodes that have Pods bound to them.
    pub fn nodes(&self) -> Vec<String> {
        self.by_node
            .lock()
            .expect("pods by node")
            .keys()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(name: &str, node: Option<&str>) -> CachedPod {
        CachedPod::from(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(str::to_string),
                ..Default::default()
            }),
            status: None,
        })
    }

    #[test]
    fn follows_binding_and_deletion() {
        let index = PodsByNode::default();
        let unbound = pod("a", None);
        let bound = pod("a", Some("n1"));
        index.apply(&InformerEvent::Applied {
            old: None,
            new: &unbound,
        });
        assert!(index.pods_on("n1").is_empty());
        index.apply(&InformerEvent::Applied {
            old: Some(&unbound),
            new: &bound,
        });
        assert_eq!(index.pods_on("n1"), vec![ObjectRef::new("a").within("ns")]);
        index.apply(&InformerEvent::Deleted(&bound));
        assert!(index.pods_on("n1").is_empty());
        assert!(index.nodes().is_empty());
    }
}
