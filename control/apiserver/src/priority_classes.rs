//! What Priority admission knows of PriorityClasses without asking etcd on every pod create: a
//! [`WatchedMap`] of each class's value, preemption policy and `globalDefault` flag (upstream's
//! plugin reads a PriorityClass informer the same way). A name the map does not know is looked
//! up in etcd, so a class created a moment ago is never refused; while the map is not synced,
//! the default class is found by listing etcd.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use baton_store::Store;
use serde_json::Value;

use crate::objects::{decode, store_error};
use crate::resources::{self, Resource};
use crate::status::StatusError;
use crate::watch_cache::WatchCaches;
use crate::watched_map::WatchedMap;

/// How long a PriorityClass write waits for the cache to see it before answering.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(2);

/// What admission needs of one PriorityClass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorityClassInfo {
    /// `value`.
    pub value: i32,
    /// `preemptionPolicy` (defaulted on write; absent only in objects stored without it).
    pub preemption_policy: Option<String>,
    /// `globalDefault`.
    pub global_default: bool,
}

/// Reduces a PriorityClass object to what admission needs.
pub fn info_of(obj: &Value) -> PriorityClassInfo {
    PriorityClassInfo {
        value: obj["value"]
            .as_i64()
            .and_then(|v| i32::try_from(v).ok())
            .unwrap_or(0),
        preemption_policy: obj["preemptionPolicy"].as_str().map(str::to_string),
        global_default: obj["globalDefault"].as_bool().unwrap_or(false),
    }
}

/// The default class among `classes`: the one marked `globalDefault`; should a race have let
/// two be marked, the lower value wins (as upstream), then the smaller name.
pub fn default_among<'a>(
    classes: impl IntoIterator<Item = (&'a String, &'a PriorityClassInfo)>,
) -> Option<(String, PriorityClassInfo)> {
    classes
        .into_iter()
        .filter(|(_, info)| info.global_default)
        .min_by(|(a_name, a), (b_name, b)| a.value.cmp(&b.value).then(a_name.cmp(b_name)))
        .map(|(name, info)| (name.clone(), info.clone()))
}

fn resource() -> &'static Resource {
    resources::find("scheduling.k8s.io", "v1", "priorityclasses")
        .expect("priorityclasses are served")
}

/// PriorityClasses by name.
#[derive(Debug, Clone)]
pub struct PriorityClassCache {
    known: WatchedMap<PriorityClassInfo>,
}

impl Default for PriorityClassCache {
    fn default() -> Self {
        Self {
            known: WatchedMap::new(info_of),
        }
    }
}

impl PriorityClassCache {
    /// The class named `name`: from the cache, else from etcd; `None` when it does not exist.
    pub async fn lookup<S: Store>(
        &self,
        store: &S,
        name: &str,
    ) -> Result<Option<PriorityClassInfo>, StatusError> {
        self.known.get_or_fetch(store, resource(), None, name).await
    }

    /// The default class (name and class), if one exists: from the cache once it is synced,
    /// else from a list of etcd.
    pub async fn global_default<S: Store>(
        &self,
        store: &S,
    ) -> Result<Option<(String, PriorityClassInfo)>, StatusError> {
        if let Some(found) = self.known.with_all(|all| default_among(all)) {
            return Ok(found);
        }
        let resource = resource();
        let page = store
            .list(resource.storage_prefix, Default::default())
            .await
            .map_err(|e| store_error(resource, "", e))?;
        let mut classes = HashMap::with_capacity(page.items.len());
        for kv in &page.items {
            let obj = decode(kv)?;
            if let Some(name) = obj["metadata"]["name"].as_str() {
                classes.insert(name.to_string(), info_of(&obj));
            }
        }
        Ok(default_among(&classes))
    }

    /// The default class as the cache knows it now (nothing while it is not synced), for
    /// checks made inside an update's compare-and-swap loop.
    pub fn cached_global_default(&self) -> Option<(String, PriorityClassInfo)> {
        self.known.with_all(|all| default_among(all)).flatten()
    }

    /// Waits until the cache has seen the PriorityClass write made at `revision`, so the pods
    /// created after the write returns see it (a default class in particular).
    pub async fn caught_up(&self, revision: i64) {
        if !self.known.caught_up(revision, CATCH_UP_LIMIT).await {
            tracing::warn!(
                revision,
                "the PriorityClass cache has not caught up with a write yet"
            );
        }
    }

    /// Keeps the cache in step with the store, forever (restarting after any gap).
    pub async fn run<S: Store>(self, store: Arc<S>, caches: Arc<WatchCaches<S>>) {
        self.known.run(store, caches, resource()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info(value: i32, global_default: bool) -> PriorityClassInfo {
        PriorityClassInfo {
            value,
            preemption_policy: Some("PreemptLowerPriority".into()),
            global_default,
        }
    }

    #[test]
    fn info_reads_value_policy_and_default_flag() {
        let obj = json!({
            "metadata": { "name": "high" }, "value": 1000,
            "preemptionPolicy": "Never", "globalDefault": true,
        });
        assert_eq!(
            info_of(&obj),
            PriorityClassInfo {
                value: 1000,
                preemption_policy: Some("Never".into()),
                global_default: true,
            }
        );
        let bare = info_of(&json!({ "metadata": { "name": "x" }, "value": -5 }));
        assert_eq!(
            (bare.value, bare.preemption_policy, bare.global_default),
            (-5, None, false)
        );
    }

    #[test]
    fn the_default_is_the_lowest_marked_class() {
        let mut classes = HashMap::new();
        classes.insert("plain".to_string(), info(1, false));
        assert_eq!(default_among(&classes), None);
        classes.insert("high".to_string(), info(100, true));
        classes.insert("low".to_string(), info(10, true));
        classes.insert("also-low".to_string(), info(10, true));
        assert_eq!(
            default_among(&classes),
            Some(("also-low".to_string(), info(10, true)))
        );
    }
}
