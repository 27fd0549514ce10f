//! What the API server knows of namespaces without asking etcd on every create: a
//! [`WatchedMap`] of namespace states (upstream's NamespaceLifecycle admission keeps an informer
//! the same way). A name the map does not know is looked up in etcd, so a namespace created a
//! moment ago is never refused.

use std::sync::Arc;

use baton_store::Store;
use serde_json::Value;

use crate::resources::Resource;
use crate::watch_cache::WatchCaches;
use crate::watched_map::WatchedMap;

/// The state of one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceState {
    /// Objects may be created in it.
    Active,
    /// It is being deleted: creates are refused.
    Terminating,
}

/// Namespaces by name.
#[derive(Debug, Clone)]
pub struct NamespaceCache {
    known: WatchedMap<NamespaceState>,
}

impl Default for NamespaceCache {
    fn default() -> Self {
        Self {
            known: WatchedMap::new(state_of),
        }
    }
}

/// The state a namespace object is in.
pub fn state_of(obj: &Value) -> NamespaceState {
    if obj["status"]["phase"] == "Terminating" || !obj["metadata"]["deletionTimestamp"].is_null() {
        NamespaceState::Terminating
    } else {
        NamespaceState::Active
    }
}

impl NamespaceCache {
    /// The cached state of `name`, if known.
    pub fn get(&self, name: &str) -> Option<NamespaceState> {
        self.known.get(name)
    }

    /// Keeps the cache in step with the store, forever (restarting after any gap).
    pub async fn run<S: Store>(
        self,
        store: Arc<S>,
        caches: Arc<WatchCaches<S>>,
        resource: &'static Resource,
    ) {
        self.known.run(store, caches, resource).await
    }
}
