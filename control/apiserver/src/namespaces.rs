//! What the API server knows of namespaces without asking etcd on every create: a map fed by
//! the namespaces watch cache (upstream's NamespaceLifecycle admission keeps an informer the
//! same way). A name the map does not know is looked up in etcd, so a namespace created a
//! moment ago is never refused.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use baton_store::Store;
use serde_json::Value;

use crate::objects::decode;
use crate::resources::Resource;
use crate::watch_cache::{Delivery, EventType, WatchCaches};

/// The state of one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceState {
    /// Objects may be created in it.
    Active,
    /// It is being deleted: creates are refused.
    Terminating,
}

/// Namespaces by name.
#[derive(Debug, Default, Clone)]
pub struct NamespaceCache {
    known: Arc<RwLock<HashMap<String, NamespaceState>>>,
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
        self.known
            .read()
            .expect("namespace cache lock")
            .get(name)
            .copied()
    }

    /// Keeps the cache in step with the store, forever (restarting after any gap).
    pub async fn run<S: Store>(
        self,
        store: Arc<S>,
        caches: Arc<WatchCaches<S>>,
        resource: &'static Resource,
    ) {
        loop {
            if let Err(e) = self.sync(&store, &caches, resource).await {
                tracing::warn!(error = %e, "namespace cache resyncing");
            }
            self.known.write().expect("namespace cache lock").clear();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn sync<S: Store>(
        &self,
        store: &Arc<S>,
        caches: &WatchCaches<S>,
        resource: &'static Resource,
    ) -> Result<(), String> {
        let cache = caches.get(resource).await.map_err(|e| e.to_string())?;
        let page = store
            .list(resource.storage_prefix, Default::default())
            .await
            .map_err(|e| e.to_string())?;
        {
            let mut known = self.known.write().expect("namespace cache lock");
            known.clear();
            for kv in &page.items {
                if let Ok(obj) = decode(kv)
                    && let Some(name) = obj["metadata"]["name"].as_str()
                {
                    known.insert(name.to_string(), state_of(&obj));
                }
            }
        }
        let mut sub = cache
            .subscribe(page.revision)
            .ok_or("namespace history is gone")?;
        for event in sub.backlog.drain(..) {
            self.apply(event.kind, event.object());
        }
        loop {
            match sub.live.recv().await {
                Ok(Delivery::Event(event)) if event.revision > page.revision => {
                    self.apply(event.kind, event.object())
                }
                Ok(Delivery::Event(_)) => {}
                Ok(Delivery::Reset) => return Err("watch cache reset".into()),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    fn apply(&self, kind: EventType, obj: &Value) {
        let Some(name) = obj["metadata"]["name"].as_str() else {
            return;
        };
        let mut known = self.known.write().expect("namespace cache lock");
        match kind {
            EventType::Deleted => {
                known.remove(name);
            }
            _ => {
                known.insert(name.to_string(), state_of(obj));
            }
        }
    }
}
