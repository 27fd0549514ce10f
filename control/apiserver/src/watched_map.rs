//! A map from object name (`namespace/name` for namespaced objects) to what admission needs to
//! know of that object, kept in step with one resource's watch cache (upstream's admission
//! plugins keep informers the same way), so that hot paths such as every create ask memory
//! instead of etcd.
//!
//! The map is replaced by a fresh list from etcd whenever the watch loses continuity; until
//! that list is in, it reads as not synced and callers ask etcd themselves.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use baton_store::Store;
use serde_json::Value;
use tokio::sync::watch;

use crate::objects::{decode, store_error};
use crate::resources::Resource;
use crate::status::StatusError;
use crate::watch_cache::{Delivery, EventType, WatchCaches};

/// How long a failed sync waits before listing again.
const RESYNC_DELAY: Duration = Duration::from_millis(200);

/// What the map holds, and whether it reflects the store.
#[derive(Debug)]
struct Entries<T> {
    by_name: HashMap<String, T>,
    synced: bool,
}

/// Objects of one resource by name, each reduced to a `T` by the map's extractor.
pub struct WatchedMap<T> {
    entries: Arc<RwLock<Entries<T>>>,
    /// The store revision the map reflects (0 while not synced).
    applied: Arc<watch::Sender<i64>>,
    extract: fn(&Value) -> T,
}

impl<T> Clone for WatchedMap<T> {
    fn clone(&self) -> Self {
        Self {
            entries: self.entries.clone(),
            applied: self.applied.clone(),
            extract: self.extract,
        }
    }
}

impl<T> std::fmt::Debug for WatchedMap<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchedMap")
            .field("applied", &*self.applied.borrow())
            .finish_non_exhaustive()
    }
}

impl<T: Clone + Send + Sync + 'static> WatchedMap<T> {
    /// An empty, not yet synced map that reduces each object with `extract`.
    pub fn new(extract: fn(&Value) -> T) -> Self {
        Self {
            entries: Arc::new(RwLock::new(Entries {
                by_name: HashMap::new(),
                synced: false,
            })),
            applied: Arc::new(watch::channel(0).0),
            extract,
        }
    }

    /// What the map knows of `name` (nothing while not synced).
    pub fn get(&self, name: &str) -> Option<T> {
        self.entries
            .read()
            .expect("watched map lock")
            .by_name
            .get(name)
            .cloned()
    }

    /// What the map knows of `name` in `namespace` (cluster objects: `None`), else what the
    /// store has; `None` when the object does not exist.
    pub async fn get_or_fetch<S: Store>(
        &self,
        store: &S,
        resource: &Resource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<T>, StatusError> {
        let key = namespace.map_or_else(|| name.to_owned(), |ns| format!("{ns}/{name}"));
        if let Some(known) = self.get(&key) {
            return Ok(Some(known));
        }
        let kv = store
            .get(&resource.key(namespace, name))
            .await
            .map_err(|e| store_error(resource, name, e))?;
        kv.map(|kv| decode(&kv).map(|obj| (self.extract)(&obj)))
            .transpose()
    }

    /// Runs `f` over all entries, or answers `None` while the map is not synced.
    pub fn with_all<R>(&self, f: impl FnOnce(&HashMap<String, T>) -> R) -> Option<R> {
        let entries = self.entries.read().expect("watched map lock");
        entries.synced.then(|| f(&entries.by_name))
    }

    /// Waits (at most `limit`) until the map reflects the store at `revision` or later, so a
    /// write this server made is seen by the requests that follow it. Answers whether it did.
    pub async fn caught_up(&self, revision: i64, limit: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        matches!(
            tokio::time::timeout(limit, rx.wait_for(|applied| *applied >= revision)).await,
            Ok(Ok(_))
        )
    }

    /// Keeps the map in step with the store, forever (listing again after any gap).
    pub async fn run<S: Store>(
        self,
        store: Arc<S>,
        caches: Arc<WatchCaches<S>>,
        resource: &'static Resource,
    ) {
        loop {
            if let Err(e) = self.sync(&store, &caches, resource).await {
                tracing::warn!(resource = resource.plural, error = %e, "admission cache resyncing");
            }
            {
                let mut entries = self.entries.write().expect("watched map lock");
                entries.by_name.clear();
                entries.synced = false;
            }
            self.applied.send_replace(0);
            tokio::time::sleep(RESYNC_DELAY).await;
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
        let mut by_name = HashMap::with_capacity(page.items.len());
        for kv in &page.items {
            if let Ok(obj) = decode(kv)
                && let Some(name) = map_key(&obj)
            {
                by_name.insert(name, (self.extract)(&obj));
            }
        }
        let mut sub = cache
            .subscribe(page.revision)
            .ok_or("the watch cache no longer holds the listed revision")?;
        {
            let mut entries = self.entries.write().expect("watched map lock");
            entries.by_name = by_name;
            entries.synced = true;
        }
        self.applied.send_replace(page.revision);
        for event in sub.backlog.drain(..) {
            self.apply(event.kind, event.object(), event.revision);
        }
        loop {
            match sub.live.recv().await {
                Ok(Delivery::Event(event)) if event.revision > page.revision => {
                    self.apply(event.kind, event.object(), event.revision)
                }
                Ok(Delivery::Event(_)) => {}
                Ok(Delivery::Reset) => return Err("watch cache reset".into()),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    fn apply(&self, kind: EventType, obj: &Value, revision: i64) {
        if let Some(name) = map_key(obj) {
            let mut entries = self.entries.write().expect("watched map lock");
            match kind {
                EventType::Deleted => {
                    entries.by_name.remove(&name);
                }
                _ => {
                    entries.by_name.insert(name, (self.extract)(obj));
                }
            }
        }
        self.applied.send_if_modified(|applied| {
            let newer = revision > *applied;
            if newer {
                *applied = revision;
            }
            newer
        });
    }
}

/// An object's key in the map: `namespace/name` for a namespaced object, else its name.
fn map_key(obj: &Value) -> Option<String> {
    let name = obj["metadata"]["name"].as_str()?;
    Some(match obj["metadata"]["namespace"].as_str() {
        Some(namespace) if !namespace.is_empty() => format!("{namespace}/{name}"),
        _ => name.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn label(obj: &Value) -> String {
        obj["metadata"]["labels"]["k"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn obj(name: &str, k: &str) -> Value {
        json!({ "metadata": { "name": name, "labels": { "k": k } } })
    }

    #[test]
    fn events_add_replace_and_remove_entries() {
        let map = WatchedMap::new(label);
        map.entries.write().unwrap().synced = true;
        map.apply(EventType::Added, &obj("a", "1"), 5);
        map.apply(EventType::Modified, &obj("a", "2"), 6);
        map.apply(EventType::Added, &obj("b", "3"), 7);
        assert_eq!(map.get("a").as_deref(), Some("2"));
        map.apply(EventType::Deleted, &obj("b", "3"), 8);
        assert_eq!(map.get("b"), None);
        assert_eq!(*map.applied.borrow(), 8);
        assert_eq!(map.with_all(|m| m.len()), Some(1));
    }

    #[test]
    fn an_unsynced_map_says_so() {
        let map = WatchedMap::new(label);
        map.apply(EventType::Added, &obj("a", "1"), 5);
        assert_eq!(map.with_all(|m| m.len()), None);
    }

    #[tokio::test]
    async fn caught_up_waits_for_the_revision() {
        let map = WatchedMap::new(label);
        map.entries.write().unwrap().synced = true;
        assert!(!map.caught_up(3, Duration::from_millis(10)).await);
        let waiter = {
            let map = map.clone();
            tokio::spawn(async move { map.caught_up(3, Duration::from_secs(5)).await })
        };
        map.apply(EventType::Added, &obj("a", "1"), 3);
        assert!(waiter.await.unwrap());
        // An older event does not move the revision back.
        map.apply(EventType::Modified, &obj("a", "2"), 2);
        assert_eq!(*map.applied.borrow(), 3);
    }
}
