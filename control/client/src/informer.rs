//! A shared informer: one watch of a resource, one cache (kube-runtime's reflector store) and a
//! fan-out of changes to every interested controller, like client-go's shared informers. Many
//! controllers in one process look at Pods; with this they share one watch and one copy of
//! each Pod instead of holding one each.
//!
//! kube-runtime's own shared streams do not report deletions, which controllers need (a deleted
//! Pod must wake its ReplicaSet), so the fan-out here reports both, with the previous state of
//! a changed object so that a handler can react to what changed (a Pod's labels moving it out of
//! a Service). managedFields are dropped from cached objects: no controller reads them and they
//! are a large part of every object; an informer may also be given a transform that drops more
//! (client-go's `SetTransform`), as the control plane's Pod informers do (see `slim`).
//!
//! A user that keeps its own copies of what it hears (the scheduler's cache) need not pay for a
//! second copy in the informer: a keys-only informer keeps just the key of each object, enough
//! to tell which objects vanished across a re-list.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// A change an informer reports to its handlers.
#[derive(Debug)]
pub enum InformerEvent<'a, K> {
    /// An object was added (`old` is `None`) or changed.
    Applied { old: Option<&'a K>, new: &'a K },
    /// An object was deleted (or was found gone when the watch was re-listed).
    Deleted(&'a K),
}

impl<K> InformerEvent<'_, K> {
    /// The objects the event concerns: the old and the new state where both exist.
    pub fn objects(&self) -> impl Iterator<Item = &K> {
        let (a, b) = match self {
            InformerEvent::Applied { old, new } => (*old, Some(*new)),
            InformerEvent::Deleted(obj) => (Some(*obj), None),
        };
        a.into_iter().chain(b)
    }
}

type Handler<K> = Box<dyn Fn(&InformerEvent<'_, K>) + Send + Sync>;

/// What an informer does to each object before caching it.
pub type Transform<K> = fn(&mut K);

/// How a keys-only informer makes the object of a deletion it found by re-listing: one
/// carrying only the key's name, namespace and uid.
type Tombstone<K> = fn(&ObjectRef<K>) -> K;

/// One watch and cache of resource `K`, shared by the handlers registered on it.
pub struct Informer<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Hash + Eq + Clone,
{
    api: Api<K>,
    config: watcher::Config,
    store: Store<K>,
    writer: Mutex<Option<reflector::store::Writer<K>>>,
    handlers: Arc<Mutex<Vec<Handler<K>>>>,
    transform: Option<Transform<K>>,
    /// Set for a keys-only informer (see `keys_only`).
    tombstone: Option<Tombstone<K>>,
}

impl<K> Debug for Informer<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Hash + Eq + Clone,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Informer")
            .field("resource", &std::any::type_name::<K>())
            .field("cached", &self.store.len())
            .finish()
    }
}

impl<K> Informer<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Hash + Eq + Clone + Default,
{
    /// An informer for the objects `api` and `config` select. It does nothing until `run`.
    pub fn new(api: Api<K>, config: watcher::Config) -> Self {
        let (store, writer) = reflector::store();
        Informer {
            api,
            config,
            store,
            writer: Mutex::new(Some(writer)),
            handlers: Arc::default(),
            transform: None,
            tombstone: None,
        }
    }

    /// The same informer keeping only the key of each object, not the object: its store stays
    /// empty (though it still becomes ready), every change is reported with `old: None`, a
    /// re-listed object is reported as soon as it arrives, and an object found gone by a
    /// re-list is reported deleted with only its name, namespace and uid. For a user that keeps
    /// its own copy of whatever it needs from each object.
    pub fn keys_only(mut self) -> Self
    where
        K: Default,
    {
        self.tombstone = Some(Self::new_tombstone());
        self
    }

    /// A tombstone maker for `K`: an object with only the key's name, namespace and uid.
    fn new_tombstone() -> Tombstone<K>
    where
        K: Default,
    {
        |key| {
            let mut obj = K::default();
            let meta = obj.meta_mut();
            meta.name = Some(key.name.clone());
            meta.namespace = key.namespace.clone();
            meta.uid = key.extra.uid.clone();
            obj
        }
    }

    /// The same informer, applying `transform` to every object before it is cached or handed
    /// to a handler (for dropping fields that no user of the cache reads). Every user of the
    /// cache sees the transformed objects, so none may write one back whole (PUT): patch.
    pub fn with_transform(mut self, transform: Transform<K>) -> Self {
        self.transform = Some(transform);
        self
    }

    /// The cache (ready once the first list has been read: see `wait_until_ready`); always
    /// empty for a keys-only informer.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Waits until the first list has been read into the cache.
    pub async fn wait_until_ready(&self) {
        // The writer lives as long as `run`; if it is dropped there is nothing to wait for.
        let _ = self.store.wait_until_ready().await;
    }

    /// Calls `handler` for every change, in the informer's task (keep it short: send, do not
    /// work). Register handlers before `run` to see the initial list.
    pub fn on_event(&self, handler: impl Fn(&InformerEvent<'_, K>) + Send + Sync + 'static) {
        self.handlers
            .lock()
            .expect("informer handlers")
            .push(Box::new(handler));
    }

    /// A stream of the object references `map` derives from each change: the usual way to
    /// wake a kube-runtime `Controller` (`reconcile_on`) when related objects change.
    pub fn subscribe<R, I>(
        &self,
        map: impl Fn(&InformerEvent<'_, K>) -> I + Send + Sync + 'static,
    ) -> UnboundedReceiverStream<ObjectRef<R>>
    where
        R: Resource + 'static,
        I: IntoIterator<Item = ObjectRef<R>>,
    {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.on_event(move |event| {
            for reference in map(event) {
                let _ = tx.send(reference);
            }
        });
        UnboundedReceiverStream::new(rx)
    }

    /// Drives the watch forever (re-listing with backoff after errors). Call once.
    pub async fn run(&self) {
        let Some(mut writer) = self.writer.lock().expect("informer writer").take() else {
            tracing::error!(resource = std::any::type_name::<K>(), "informer run twice");
            return;
        };
        let mut events = watcher::watcher(self.api.clone(), self.config.clone())
            .default_backoff()
            .boxed();
        if let Some(tombstone) = self.tombstone {
            return run_keys_only(
                &mut events,
                &mut writer,
                &self.handlers,
                self.transform,
                tombstone,
            )
            .await;
        }
        let handlers = self.handlers.clone();
        let store = self.store.clone();
        // During a (re-)list the cache keeps its old contents until the list is complete, so
        // handlers hear about listed objects only then: (key, the cached state before the list).
        let mut listed: HashMap<ObjectRef<K>, Option<Arc<K>>> = HashMap::new();
        while let Some(event) = events.next().await {
            let Some(event) = prepared(event, self.transform) else {
                continue;
            };
            let handlers = handlers.lock().expect("informer handlers");
            let notify = |event: InformerEvent<'_, K>| handlers.iter().for_each(|h| h(&event));
            match &event {
                Event::Apply(obj) => {
                    let old = store.get(&ObjectRef::from_obj(obj));
                    // Cache first, then tell: a reconcile woken by a handler must find the
                    // object it was told about (client-go's order).
                    writer.apply_watcher_event(&event);
                    notify(InformerEvent::Applied {
                        old: old.as_deref(),
                        new: obj,
                    });
                }
                Event::InitApply(obj) => {
                    let key = ObjectRef::from_obj(obj);
                    let old = store.get(&key);
                    listed.insert(key, old);
                    writer.apply_watcher_event(&event);
                }
                Event::Delete(obj) => {
                    writer.apply_watcher_event(&event);
                    notify(InformerEvent::Deleted(obj));
                }
                Event::Init => {
                    listed.clear();
                    writer.apply_watcher_event(&event);
                }
                Event::InitDone => {
                    let vanished: Vec<Arc<K>> = store
                        .state()
                        .into_iter()
                        .filter(|obj| !listed.contains_key(&ObjectRef::from_obj(obj.as_ref())))
                        .collect();
                    writer.apply_watcher_event(&event);
                    for (key, old) in listed.drain() {
                        if let Some(new) = store.get(&key) {
                            notify(InformerEvent::Applied {
                                old: old.as_deref(),
                                new: &new,
                            });
                        }
                    }
                    for obj in vanished {
                        notify(InformerEvent::Deleted(obj.as_ref()));
                    }
                }
            }
        }
    }
}

/// A watch event ready for the cache and the handlers: its object without managedFields and
/// transformed; `None` (logged) for a failed watch, which the watcher retries.
fn prepared<K>(
    event: watcher::Result<Event<K>>,
    transform: Option<Transform<K>>,
) -> Option<Event<K>>
where
    K: Resource,
{
    let mut event = match event {
        Ok(event) => event,
        Err(e) => {
            tracing::warn!(resource = std::any::type_name::<K>(), error = %e, "watch failed; retrying");
            return None;
        }
    };
    match &mut event {
        Event::Apply(obj) | Event::InitApply(obj) | Event::Delete(obj) => {
            obj.meta_mut().managed_fields = None;
            if let Some(transform) = transform {
                transform(obj);
            }
        }
        Event::Init | Event::InitDone => {}
    }
    Some(event)
}

/// The key a keys-only informer remembers: name, namespace and uid (not the resourceVersion).
fn key_of<K>(obj: &K) -> ObjectRef<K>
where
    K: Resource,
    K::DynamicType: Default,
{
    let mut key = ObjectRef::from_obj(obj);
    key.extra.resource_version = None;
    key
}

/// `run` for a keys-only informer: the writer only hears the list boundaries (so that the
/// empty store becomes ready), and the informer remembers keys, not objects.
async fn run_keys_only<K>(
    events: &mut (impl futures::Stream<Item = watcher::Result<Event<K>>> + Unpin),
    writer: &mut reflector::store::Writer<K>,
    handlers: &Mutex<Vec<Handler<K>>>,
    transform: Option<Transform<K>>,
    tombstone: Tombstone<K>,
) where
    K: Resource + Clone + 'static,
    K::DynamicType: Hash + Eq + Clone + Default,
{
    let mut known: HashSet<ObjectRef<K>> = HashSet::new();
    let mut listed: HashSet<ObjectRef<K>> = HashSet::new();
    while let Some(event) = events.next().await {
        let Some(event) = prepared(event, transform) else {
            continue;
        };
        let handlers = handlers.lock().expect("informer handlers");
        let notify = |event: InformerEvent<'_, K>| handlers.iter().for_each(|h| h(&event));
        match &event {
            Event::Apply(obj) => {
                // The newest key, whose uid a later tombstone carries.
                known.replace(key_of(obj));
                notify(InformerEvent::Applied {
                    old: None,
                    new: obj,
                });
            }
            Event::InitApply(obj) => {
                listed.replace(key_of(obj));
                notify(InformerEvent::Applied {
                    old: None,
                    new: obj,
                });
            }
            Event::Delete(obj) => {
                known.remove(&key_of(obj));
                notify(InformerEvent::Deleted(obj));
            }
            Event::Init => {
                // A list that failed part way was still reported: what it listed is known, so
                // that the list starting now can find it gone.
                for key in listed.drain() {
                    known.replace(key);
                }
                writer.apply_watcher_event(&event);
            }
            Event::InitDone => {
                writer.apply_watcher_event(&event);
                for key in known.difference(&listed) {
                    notify(InformerEvent::Deleted(&tombstone(key)));
                }
                known = std::mem::take(&mut listed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;

    use super::*;

    fn config_map(name: &str, uid: &str) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.to_string());
        cm.metadata.namespace = Some("ns".to_string());
        cm.metadata.uid = Some(uid.to_string());
        cm.data = Some([("k".to_string(), "v".to_string())].into());
        cm
    }

    /// What handlers heard: ("applied"/"deleted", name, uid, whether data came along).
    type Heard = Arc<Mutex<Vec<(&'static str, String, String, bool)>>>;

    fn recording_handlers() -> (Mutex<Vec<Handler<ConfigMap>>>, Heard) {
        let heard: Heard = Arc::default();
        let log = heard.clone();
        let handler: Handler<ConfigMap> = Box::new(move |event| {
            let (what, obj) = match event {
                InformerEvent::Applied { old, new } => {
                    assert!(old.is_none(), "a keys-only informer has no old state");
                    ("applied", *new)
                }
                InformerEvent::Deleted(obj) => ("deleted", *obj),
            };
            log.lock().unwrap().push((
                what,
                obj.metadata.name.clone().unwrap(),
                obj.metadata.uid.clone().unwrap(),
                obj.data.is_some(),
            ));
        });
        (Mutex::new(vec![handler]), heard)
    }

    #[tokio::test]
    async fn keys_only_reports_changes_and_what_a_relist_finds_gone_without_caching() {
        let (handlers, heard) = recording_handlers();
        let (store, mut writer) = reflector::store::<ConfigMap>();
        let events = vec![
            Event::Init,
            Event::InitApply(config_map("a", "ua")),
            Event::InitApply(config_map("b", "ub")),
            Event::InitDone,
            Event::Apply(config_map("c", "uc")),
            Event::Delete(config_map("a", "ua")),
            // A re-list (after a watch expired) that no longer holds "c" but a new "b".
            Event::Init,
            Event::InitApply(config_map("b", "ub2")),
            Event::InitDone,
            // A second re-list: "b" vanished, and its tombstone carries the newest uid.
            Event::Init,
            Event::InitDone,
        ];
        let mut stream = futures::stream::iter(events.into_iter().map(Ok));
        let tombstone = Informer::new_tombstone();
        run_keys_only(&mut stream, &mut writer, &handlers, None, tombstone).await;

        let heard = heard.lock().unwrap().clone();
        let expected: Vec<(&str, String, String, bool)> = [
            ("applied", "a", "ua", true),
            ("applied", "b", "ub", true),
            ("applied", "c", "uc", true),
            ("deleted", "a", "ua", true),
            ("applied", "b", "ub2", true),
            ("deleted", "c", "uc", false),
            ("deleted", "b", "ub2", false),
        ]
        .into_iter()
        .map(|(w, n, u, d)| (w, n.to_string(), u.to_string(), d))
        .collect();
        assert_eq!(heard, expected);
        assert!(store.is_empty(), "a keys-only informer caches no object");
        assert!(
            store.wait_until_ready().await.is_ok(),
            "its store is ready once listed"
        );
    }

    #[tokio::test]
    async fn keys_only_finds_gone_what_only_a_failed_list_reported() {
        let (handlers, heard) = recording_handlers();
        let (_store, mut writer) = reflector::store::<ConfigMap>();
        let events = vec![
            Event::Init,
            Event::InitDone,
            // A re-list that fails after its first page (the watcher starts over with Init),
            // then one that no longer holds "x".
            Event::Init,
            Event::InitApply(config_map("x", "ux")),
            Event::Init,
            Event::InitDone,
        ];
        let mut stream = futures::stream::iter(events.into_iter().map(Ok));
        let tombstone = Informer::new_tombstone();
        run_keys_only(&mut stream, &mut writer, &handlers, None, tombstone).await;
        assert_eq!(
            heard.lock().unwrap().as_slice(),
            [
                ("applied", "x".to_string(), "ux".to_string(), true),
                ("deleted", "x".to_string(), "ux".to_string(), false),
            ]
        );
    }

    #[tokio::test]
    async fn keys_only_applies_the_transform_before_handlers_hear() {
        let (handlers, heard) = recording_handlers();
        let (_store, mut writer) = reflector::store::<ConfigMap>();
        let mut stream = futures::stream::iter(
            [Event::Init, Event::InitApply(config_map("a", "ua"))]
                .into_iter()
                .map(Ok),
        );
        let drop_data: Transform<ConfigMap> = |cm| cm.data = None;
        let tombstone = Informer::new_tombstone();
        run_keys_only(
            &mut stream,
            &mut writer,
            &handlers,
            Some(drop_data),
            tombstone,
        )
        .await;
        assert_eq!(
            heard.lock().unwrap().as_slice(),
            [("applied", "a".to_string(), "ua".to_string(), false)]
        );
    }
}
