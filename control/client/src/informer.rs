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

use std::collections::HashMap;
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
        }
    }

    /// The same informer, applying `transform` to every object before it is cached or handed
    /// to a handler (for dropping fields that no user of the cache reads). Every user of the
    /// cache sees the transformed objects, so none may write one back whole (PUT): patch.
    pub fn with_transform(mut self, transform: Transform<K>) -> Self {
        self.transform = Some(transform);
        self
    }

    /// The cache (ready once the first list has been read: see `wait_until_ready`).
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
        let handlers = self.handlers.clone();
        let store = self.store.clone();
        // During a (re-)list the cache keeps its old contents until the list is complete, so
        // handlers hear about listed objects only then: (key, the cached state before the list).
        let mut listed: HashMap<ObjectRef<K>, Option<Arc<K>>> = HashMap::new();
        let mut events = watcher::watcher(self.api.clone(), self.config.clone())
            .default_backoff()
            .boxed();
        while let Some(event) = events.next().await {
            let mut event = match event {
                Ok(event) => event,
                Err(e) => {
                    tracing::warn!(resource = std::any::type_name::<K>(), error = %e, "watch failed; retrying");
                    continue;
                }
            };
            match &mut event {
                Event::Apply(obj) | Event::InitApply(obj) | Event::Delete(obj) => {
                    obj.meta_mut().managed_fields = None;
                    if let Some(transform) = self.transform {
                        transform(obj);
                    }
                }
                Event::Init | Event::InitDone => {}
            }
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
