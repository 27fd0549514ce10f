//! One etcd watch per resource, fanned out to every client watch of that resource.
//!
//! The cache keeps the most recent events so that a client resuming from a recent
//! resourceVersion is served from memory; older resourceVersions fall back to a direct store
//! watch (which answers 410 Gone once etcd has compacted them).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use baton_store::{EventKind, KeyValue, Store, StoreError};
use bytes::Bytes;
use futures::StreamExt;
use serde::de::DeserializeSeed;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::objects::decode_bytes;
use crate::resources::Resource;

/// How many recent events each resource keeps for resuming watches...
const HISTORY: usize = 4096;
/// ... and how many stored bytes they may hold at most: a few large objects changing often (an
/// Endpoints of thousands of addresses) must not pin gigabytes. The newest event is always kept.
const HISTORY_BYTES: usize = 16 << 20;
/// Capacity of the fan-out channel; a watcher that falls this far behind is closed and resumes.
const FANOUT: usize = 2048;

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// ADDED
    Added,
    /// MODIFIED
    Modified,
    /// DELETED
    Deleted,
}

impl EventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// A change to one object, kept as the stored bytes and decoded only when a watcher needs the
/// object itself (selectors, Tables, conversions): a plain JSON watch copies the bytes.
#[derive(Debug)]
pub struct CachedEvent {
    /// ADDED, MODIFIED or DELETED.
    pub kind: EventType,
    /// The store revision of the change.
    pub revision: i64,
    /// The stored bytes of the object after the change (for DELETED: its last state).
    raw: Bytes,
    object: OnceLock<Value>,
    /// The stored bytes of the object before the change, when known.
    previous_raw: Option<Bytes>,
    previous: OnceLock<Option<Value>>,
    /// What selectors read of the object and of its previous state (see [`selectable`]).
    selectable: OnceLock<Value>,
    previous_selectable: OnceLock<Option<Value>>,
    /// The object's metadata alone (for metadata-only watchers).
    metadata: OnceLock<Value>,
    encoded: OnceLock<Bytes>,
}

impl CachedEvent {
    /// The stored bytes this event holds (its object and previous state), for the history's
    /// byte bound. Decoded forms come on top: they exist only for events a watcher needed
    /// decoded.
    fn stored_bytes(&self) -> usize {
        self.raw.len() + self.previous_raw.as_ref().map_or(0, Bytes::len)
    }

    /// Makes an event from stored bytes.
    pub fn new(kind: EventType, revision: i64, raw: Bytes, previous_raw: Option<Bytes>) -> Self {
        Self {
            kind,
            revision,
            raw,
            object: OnceLock::new(),
            previous_raw,
            previous: OnceLock::new(),
            selectable: OnceLock::new(),
            previous_selectable: OnceLock::new(),
            metadata: OnceLock::new(),
            encoded: OnceLock::new(),
        }
    }

    /// The object after the change, with its resourceVersion (the change's revision).
    pub fn object(&self) -> &Value {
        self.object.get_or_init(|| {
            decode_bytes("watch event", &self.raw, self.revision).unwrap_or(Value::Null)
        })
    }

    /// The object before the change, when known.
    pub fn previous(&self) -> Option<&Value> {
        self.previous
            .get_or_init(|| {
                let raw = self.previous_raw.as_ref()?;
                decode_bytes("previous object", raw, self.revision).ok()
            })
            .as_ref()
    }

    /// What label and field selectors can read of the object after the change: a watcher
    /// filters on this without decoding the whole object.
    pub fn selectable(&self) -> &Value {
        self.selectable.get_or_init(|| selectable(&self.raw))
    }

    /// What selectors can read of the object before the change, when known.
    pub fn previous_selectable(&self) -> Option<&Value> {
        self.previous_selectable
            .get_or_init(|| self.previous_raw.as_deref().map(selectable))
            .as_ref()
    }

    /// The object's metadata with its resourceVersion, decoded without the rest of the object
    /// (Null if the stored bytes hold none).
    pub fn metadata(&self) -> &Value {
        self.metadata
            .get_or_init(|| metadata_of(&self.raw, self.revision))
    }

    /// The metadata of the object before the change, with this event's resourceVersion (Null
    /// when unknown); not kept, as few watchers need it.
    pub fn previous_metadata(&self) -> Value {
        self.previous_raw
            .as_deref()
            .map_or(Value::Null, |raw| metadata_of(raw, self.revision))
    }

    /// The event as one line of a JSON watch stream, built once and shared by all watchers:
    /// the stored bytes with the resourceVersion spliced in, no decoding.
    pub fn json_line(&self) -> Bytes {
        self.encoded
            .get_or_init(|| self.line(self.kind, &self.raw, || self.object()))
            .clone()
    }

    /// The event as a filtered watcher sees it, as one line: a change that brought the object
    /// into its selection is ADDED with the object; one that took it out is DELETED with the
    /// object as it was before (as upstream's watch cache sends it), at this revision.
    pub fn json_line_as(&self, kind: EventType) -> Bytes {
        match (kind, &self.previous_raw) {
            _ if kind == self.kind => self.json_line(),
            (EventType::Deleted, Some(previous)) => {
                self.line(kind, previous, || self.previous().unwrap_or(&Value::Null))
            }
            _ => self.line(kind, &self.raw, || self.object()),
        }
    }

    /// One watch line of `kind` holding `raw` with this event's resourceVersion spliced in;
    /// `decoded` serves when the bytes have no metadata to splice into.
    fn line<'a>(
        &'a self,
        kind: EventType,
        raw: &[u8],
        decoded: impl FnOnce() -> &'a Value,
    ) -> Bytes {
        let mut line = Vec::with_capacity(raw.len() + 64);
        line.extend_from_slice(b"{\"type\":\"");
        line.extend_from_slice(kind.as_str().as_bytes());
        line.extend_from_slice(b"\",\"object\":");
        if !crate::objects::write_with_resource_version(&mut line, raw, self.revision) {
            // Decoded objects carry this event's resourceVersion already.
            serde_json::to_writer(&mut line, decoded()).expect("JSON values always serialize");
        }
        line.extend_from_slice(b"}\n");
        Bytes::from(line)
    }
}

/// The part of a stored object that label and field selectors read: its top-level values and
/// the plain values of its top-level objects (`metadata.name`, `spec.nodeName`,
/// `involvedObject.uid`, `source.component`, ...), and `metadata.labels`. Lists and deeper
/// objects are skipped while parsing, never built. Null if the bytes are not a JSON object.
pub fn selectable(raw: &[u8]) -> Value {
    let mut deserializer = serde_json::Deserializer::from_slice(raw);
    Kept::Object(Depth::Root)
        .deserialize(&mut deserializer)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// How deep in the object a value is, which decides what of it [`selectable`] keeps.
#[derive(Clone, Copy)]
enum Depth {
    /// The object itself.
    Root,
    /// A top-level object (`metadata`, `spec`, `involvedObject`).
    Section,
    /// `metadata.labels`.
    Labels,
}

/// What [`selectable`] keeps of one value: an object at a depth, or only a plain value.
#[derive(Clone, Copy)]
enum Kept {
    Object(Depth),
    Plain,
}

impl<'de> serde::de::DeserializeSeed<'de> for Kept {
    type Value = Option<Value>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<Value>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Kept {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Some(v.into()))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Some(v.into()))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(v.into()))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Some(Value::Null))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let Kept::Object(depth) = self else {
            while map
                .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                .is_some()
            {}
            return Ok(None);
        };
        let mut kept = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let child = match (depth, key.as_str()) {
                (Depth::Root, _) => Kept::Object(Depth::Section),
                (Depth::Section, "labels") => Kept::Object(Depth::Labels),
                _ => Kept::Plain,
            };
            if let Some(value) = map.next_value_seed(child)? {
                kept.insert(key, value);
            }
        }
        Ok(Some(Value::Object(kept)))
    }
}

/// The `metadata` of a stored object with `revision` as its resourceVersion, decoded without
/// the rest of the object.
fn metadata_of(raw: &[u8], revision: i64) -> Value {
    let mut deserializer = serde_json::Deserializer::from_slice(raw);
    let mut metadata = MetadataOnly
        .deserialize(&mut deserializer)
        .unwrap_or_default();
    if let Some(meta) = metadata.as_object_mut() {
        meta.insert("resourceVersion".into(), revision.to_string().into());
    }
    metadata
}

/// Reads only the `metadata` of a stored object, skipping the rest while parsing.
struct MetadataOnly;

impl<'de> serde::de::DeserializeSeed<'de> for MetadataOnly {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for MetadataOnly {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut metadata = Value::Null;
        while let Some(key) = map.next_key::<String>()? {
            if key == "metadata" {
                metadata = map.next_value()?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(metadata)
    }
}

/// What a watcher receives from the cache.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// A change.
    Event(Arc<CachedEvent>),
    /// The cache lost continuity (etcd compacted past it); watchers must end so clients re-list.
    Reset,
}

struct History {
    events: VecDeque<Arc<CachedEvent>>,
    /// Stored bytes held by `events` (objects and their previous states).
    bytes: usize,
    /// Watchers may resume from any revision at or after this one.
    oldest: i64,
    /// The newest revision the cache knows the store has reached.
    latest: i64,
}

/// The watch cache of one resource.
pub struct WatchCache {
    history: Mutex<History>,
    /// The newest stored bytes and revision of every key seen changing since the cache
    /// started: the first guess of a read-modify-write, whose compare-and-swap finds out if
    /// it is stale, as upstream's GuaranteedUpdate uses its watch cache's object.
    latest: Mutex<HashMap<String, (Bytes, i64)>>,
    tx: broadcast::Sender<Delivery>,
}

impl std::fmt::Debug for WatchCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchCache").finish_non_exhaustive()
    }
}

/// A subscription: buffered events to send first, then the live channel.
#[derive(Debug)]
pub struct Subscription {
    /// Events after the requested revision that the cache already had.
    pub backlog: Vec<Arc<CachedEvent>>,
    /// Live deliveries.
    pub live: broadcast::Receiver<Delivery>,
}

impl WatchCache {
    fn new(start: i64) -> Arc<Self> {
        let (tx, _) = broadcast::channel(FANOUT);
        Arc::new(Self {
            history: Mutex::new(History {
                events: VecDeque::new(),
                bytes: 0,
                oldest: start,
                latest: start,
            }),
            latest: Mutex::new(HashMap::new()),
            tx,
        })
    }

    /// The newest value of `key` this cache has seen, if it saw the key change and not go.
    pub fn latest(&self, key: &str) -> Option<KeyValue> {
        let latest = self.latest.lock().expect("watch cache lock");
        let (value, mod_revision) = latest.get(key)?;
        Some(KeyValue {
            key: key.to_string(),
            value: value.clone(),
            // Not known from a watch event, and not needed for a compare-and-swap.
            create_revision: 0,
            mod_revision: *mod_revision,
        })
    }

    /// Remembers the newest value of each key a store message changed.
    fn remember(&self, events: &[baton_store::WatchEvent]) {
        let mut latest = self.latest.lock().expect("watch cache lock");
        for event in events {
            match event.kind {
                // A key already known is updated in place: no new copy of its name.
                EventKind::Put => match latest.get_mut(&event.key) {
                    Some(known) => *known = (event.value.clone(), event.revision),
                    None => {
                        latest.insert(event.key.clone(), (event.value.clone(), event.revision));
                    }
                },
                EventKind::Delete => {
                    latest.remove(&event.key);
                }
            }
        }
    }

    /// Subscribes to changes after `after`, or `None` if the cache cannot serve that far back.
    pub fn subscribe(&self, after: i64) -> Option<Subscription> {
        let history = self.history.lock().expect("watch cache lock");
        if after < history.oldest {
            return None;
        }
        let backlog = history
            .events
            .iter()
            .filter(|e| e.revision > after)
            .cloned()
            .collect();
        Some(Subscription {
            backlog,
            live: self.tx.subscribe(),
        })
    }

    /// The newest revision the cache has seen.
    pub fn latest_revision(&self) -> i64 {
        self.history.lock().expect("watch cache lock").latest
    }

    /// Adds the events of one store message (whole revisions; none for a progress notification,
    /// which still tells the store's revision for bookmarks), all under one lock: a watcher
    /// never sees the cache's latest revision while only part of a revision's events (a
    /// transaction that changed several keys) is in the channel, so no bookmark comes between
    /// them.
    fn push_all(&self, events: impl IntoIterator<Item = CachedEvent>, revision: i64) {
        let mut history = self.history.lock().expect("watch cache lock");
        for event in events {
            let event = Arc::new(event);
            history.latest = history.latest.max(event.revision);
            history.bytes += event.stored_bytes();
            history.events.push_back(event.clone());
            while history.events.len() > HISTORY
                || (history.bytes > HISTORY_BYTES && history.events.len() > 1)
            {
                if let Some(old) = history.events.pop_front() {
                    history.bytes -= old.stored_bytes();
                    history.oldest = old.revision;
                }
            }
            let _ = self.tx.send(Delivery::Event(event));
        }
        history.latest = history.latest.max(revision);
    }

    /// Forgets the events at or before `revision` (etcd compacted them): a watch from before
    /// the newest forgotten event is then answered by etcd, which says 410 Gone. A resource
    /// with no change in the compacted range keeps its window, so its quiet watchers resume.
    fn compacted(&self, revision: i64) {
        let mut history = self.history.lock().expect("watch cache lock");
        while history
            .events
            .front()
            .is_some_and(|e| e.revision <= revision)
        {
            if let Some(old) = history.events.pop_front() {
                history.bytes -= old.stored_bytes();
                history.oldest = history.oldest.max(old.revision);
            }
        }
    }

    fn reset(&self, start: i64) {
        // Deletions may have been missed.
        self.latest.lock().expect("watch cache lock").clear();
        let mut history = self.history.lock().expect("watch cache lock");
        history.events.clear();
        history.bytes = 0;
        history.oldest = start;
        history.latest = start;
        let _ = self.tx.send(Delivery::Reset);
    }
}

/// Turns a store event into an API watch event (nothing is decoded yet).
pub fn convert(event: &baton_store::WatchEvent) -> Option<CachedEvent> {
    match event.kind {
        EventKind::Put => {
            let kind = if event.created {
                EventType::Added
            } else {
                EventType::Modified
            };
            Some(CachedEvent::new(
                kind,
                event.revision,
                event.value.clone(),
                event.prev_value.clone(),
            ))
        }
        EventKind::Delete => {
            let raw = event.prev_value.clone()?;
            Some(CachedEvent::new(
                EventType::Deleted,
                event.revision,
                raw,
                None,
            ))
        }
    }
}

/// The watch caches of all resources (the API server starts them all with itself).
pub struct WatchCaches<S> {
    store: Arc<S>,
    caches: Mutex<HashMap<&'static str, Arc<WatchCache>>>,
}

impl<S> std::fmt::Debug for WatchCaches<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchCaches").finish_non_exhaustive()
    }
}

impl<S: Store> WatchCaches<S> {
    /// No caches yet.
    pub fn new(store: Arc<S>) -> Self {
        Self {
            store,
            caches: Mutex::new(HashMap::new()),
        }
    }

    /// The cache of `resource`, started now if it was not running.
    pub async fn get(&self, resource: &'static Resource) -> Result<Arc<WatchCache>, StoreError> {
        if let Some(cache) = self
            .caches
            .lock()
            .expect("caches lock")
            .get(resource.storage_prefix)
        {
            return Ok(cache.clone());
        }
        let start = self.store.current_revision().await?;
        let mut caches = self.caches.lock().expect("caches lock");
        if let Some(cache) = caches.get(resource.storage_prefix) {
            return Ok(cache.clone());
        }
        let cache = WatchCache::new(start);
        caches.insert(resource.storage_prefix, cache.clone());
        tokio::spawn(feed(
            self.store.clone(),
            resource.storage_prefix,
            cache.clone(),
            start,
        ));
        Ok(cache)
    }
}

impl<S: Store> WatchCaches<S> {
    /// Tells every cache that the store compacted its history up to `revision`.
    pub fn compacted(&self, revision: i64) {
        for cache in self.caches.lock().expect("caches lock").values() {
            cache.compacted(revision);
        }
    }
}

/// Feeds a cache from a store watch, reconnecting after store outages.
async fn feed<S: Store>(store: Arc<S>, prefix: &'static str, cache: Arc<WatchCache>, start: i64) {
    let mut after = start;
    loop {
        match store.watch(prefix, after).await {
            Ok(mut stream) => {
                while let Some(batch) = stream.next().await {
                    match batch {
                        Ok(batch) => {
                            if let Some(last) = batch.events.last() {
                                after = after.max(last.revision);
                            }
                            cache.remember(&batch.events);
                            cache.push_all(batch.events.iter().filter_map(convert), batch.revision);
                        }
                        Err(StoreError::Compacted { compacted, .. }) => {
                            tracing::warn!(
                                prefix,
                                compacted,
                                "watch cache fell behind compaction; resetting"
                            );
                            let now = store.current_revision().await.unwrap_or(compacted);
                            cache.reset(now);
                            after = now;
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(prefix, error = %e, "store watch failed; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(prefix, error = %e, "store watch could not start; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_read_the_same_of_the_selectable_part() {
        use crate::selectors::{FieldSelector, LabelSelector};
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web", "tier": "fe"},
                "annotations": {"note": "x"}, "ownerReferences": [{"uid": "u"}]},
            "spec": {"nodeName": "node-3", "hostNetwork": true, "containers": [{"name": "c"}],
                "securityContext": {"runAsUser": 1}},
            "status": {"phase": "Running", "podIP": "10.0.0.9", "conditions": [{"type": "Ready"}]},
        });
        let raw = serde_json::to_vec(&pod).unwrap();
        let part = selectable(&raw);
        assert_eq!(
            part,
            serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web", "tier": "fe"}},
                "spec": {"nodeName": "node-3", "hostNetwork": true},
                "status": {"phase": "Running", "podIP": "10.0.0.9"},
            })
        );
        for fields in [
            "spec.nodeName=node-3",
            "spec.nodeName!=node-3",
            "spec.hostNetwork=true",
            "status.phase=Running,metadata.namespace=shop",
            "metadata.name=web-2",
        ] {
            let selector = FieldSelector::parse(fields, "", "Pod").unwrap();
            assert_eq!(selector.matches(&part), selector.matches(&pod), "{fields}");
        }
        for labels in ["app=web", "tier in (be)", "!app"] {
            let selector = LabelSelector::parse(labels).unwrap();
            assert_eq!(
                selector.matches(&part["metadata"]["labels"]),
                selector.matches(&pod["metadata"]["labels"]),
                "{labels}"
            );
        }
        let event = serde_json::json!({"involvedObject": {"kind": "Pod", "name": "web-1"},
            "source": {"component": "kubelet"}, "reason": "Pulled", "type": "Normal"});
        let part = selectable(&serde_json::to_vec(&event).unwrap());
        let selector = FieldSelector::parse(
            "involvedObject.name=web-1,source=kubelet,reason=Pulled",
            "",
            "Event",
        )
        .unwrap();
        assert!(selector.matches(&part));
        assert_eq!(selectable(b"not json"), Value::Null);
    }

    #[test]
    fn json_lines_splice_the_revision_without_decoding() {
        let raw = Bytes::from_static(
            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"},"data":{"k":"v"}}"#,
        );
        let event = CachedEvent::new(EventType::Modified, 42, raw, None);
        let line = event.json_line();
        assert!(line.ends_with(b"\n"));
        let parsed: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(parsed["type"], "MODIFIED");
        assert_eq!(parsed["object"]["metadata"]["resourceVersion"], "42");
        assert_eq!(parsed["object"]["data"]["k"], "v");
        assert!(
            event.object.get().is_none(),
            "a plain JSON line needs no decoding"
        );
        assert_eq!(event.object()["metadata"]["resourceVersion"], "42");
    }

    #[test]
    fn events_of_one_revision_arrive_together() {
        let cache = WatchCache::new(5);
        let mut live = cache.subscribe(5).unwrap().live;
        let event = |n: u8| {
            CachedEvent::new(
                EventType::Deleted,
                7,
                Bytes::from(vec![b'{', n, b'}']),
                None,
            )
        };
        cache.push_all([event(b'1'), event(b'2'), event(b'3')], 7);
        assert_eq!(cache.latest_revision(), 7);
        for _ in 0..3 {
            match live.try_recv() {
                Ok(Delivery::Event(e)) => assert_eq!(e.revision, 7),
                _ => panic!("three events of revision 7"),
            }
        }
        assert_eq!(cache.subscribe(6).unwrap().backlog.len(), 3);
        assert!(cache.subscribe(7).unwrap().backlog.is_empty());
        // A progress notification moves the revision alone.
        cache.push_all([], 9);
        assert_eq!(cache.latest_revision(), 9);
    }

    #[test]
    fn history_is_bounded_by_bytes_as_well_as_events() {
        let cache = WatchCache::new(0);
        let big = Bytes::from(vec![b' '; 1 << 20]);
        for revision in 1..=40 {
            let event = CachedEvent::new(
                EventType::Modified,
                revision,
                big.clone(),
                Some(big.clone()),
            );
            cache.push_all([event], revision);
        }
        let history = cache.history.lock().unwrap();
        assert_eq!(history.events.len(), 8, "16 MiB hold eight 2 MiB events");
        assert_eq!(history.bytes, 16 << 20);
        assert_eq!(
            history.oldest, 32,
            "watchers resume after the newest evicted event"
        );
        drop(history);
        assert!(
            cache.subscribe(31).is_none(),
            "too old: answered by etcd (410)"
        );
        assert_eq!(cache.subscribe(32).unwrap().backlog.len(), 8);
        let huge = Bytes::from(vec![b' '; 32 << 20]);
        cache.push_all([CachedEvent::new(EventType::Modified, 41, huge, None)], 41);
        assert_eq!(
            cache.history.lock().unwrap().events.len(),
            1,
            "the newest is always kept"
        );
    }
}
