//! What the collector watches: every served resource that can be listed, watched and deleted
//! (found by discovery; Events excepted, as upstream), through metadata-only watches, and Pods
//! through the shared Pod informer. Each change becomes a graph `Change`.

use std::collections::{HashMap, HashSet};

use baton_client::{CachedPod, Informer, InformerEvent};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::PartialObjectMeta;
use kube::core::{ApiResource, DynamicObject};
use kube::discovery::{Discovery, Scope, verbs};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher::watcher as watch_stream};
use kube::{Api, Client};
use tokio::sync::mpsc::UnboundedSender;

use super::graph::{Change, Identity, Observed, Owner, group_of};

/// The finalizer that makes a deletion orphan the dependents.
pub const ORPHAN: &str = "orphan";
/// The finalizer of a foreground deletion.
pub const FOREGROUND: &str = "foregroundDeletion";

/// Served kinds, by (group, kind): how to reach their objects.
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    by_kind: HashMap<(String, String), (ApiResource, bool)>,
}

impl Mapping {
    /// The resource of a kind, and whether it is namespaced.
    pub fn resolve(&self, api_version: &str, kind: &str) -> Option<&(ApiResource, bool)> {
        self.by_kind
            .get(&(group_of(api_version).to_string(), kind.to_string()))
    }

    /// A client for the object at `identity`'s coordinates (its namespace ignored for a
    /// cluster-scoped kind); `None` for a kind that is not served, or a namespaced kind
    /// referred to without a namespace.
    pub fn api(&self, client: &Client, identity: &Identity) -> Option<Api<DynamicObject>> {
        let (resource, namespaced) = self.resolve(&identity.api_version, &identity.kind)?;
        if *namespaced {
            let ns = identity.namespace.as_deref()?;
            Some(Api::namespaced_with(client.clone(), ns, resource))
        } else {
            Some(Api::all_with(client.clone(), resource))
        }
    }
}

/// Discovers the served kinds, and the resources to watch: those that can be listed,
/// watched and deleted, but Events, and Pods (which come from the shared informer).
pub async fn discover(client: &Client) -> Result<(Mapping, Vec<ApiResource>), kube::Error> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut mapping = Mapping::default();
    let mut watched = vec![];
    for group in discovery.groups() {
        for (resource, caps) in group.recommended_resources() {
            let namespaced = caps.scope == Scope::Namespaced;
            mapping.by_kind.insert(
                (resource.group.clone(), resource.kind.clone()),
                (resource.clone(), namespaced),
            );
            let deletable = [verbs::LIST, verbs::WATCH, verbs::DELETE]
                .iter()
                .all(|v| caps.supports_operation(v));
            let ignored = resource.plural == "events"
                && (resource.group.is_empty() || resource.group == "events.k8s.io");
            let pods = resource.group.is_empty() && resource.plural == "pods";
            if deletable && !ignored && !pods {
                watched.push(resource);
            }
        }
    }
    Ok((mapping, watched))
}

fn owners(refs: Option<&Vec<OwnerReference>>) -> Vec<Owner> {
    refs.into_iter()
        .flatten()
        .map(|r| Owner {
            uid: r.uid.as_str().into(),
            api_version: r.api_version.clone(),
            kind: r.kind.clone(),
            name: r.name.clone(),
            block: r.block_owner_deletion == Some(true),
        })
        .collect()
}

/// What the graph needs of an object's metadata.
pub fn observe(api_version: &str, kind: &str, meta: &ObjectMeta) -> Option<Observed> {
    let uid = meta.uid.as_deref().filter(|u| !u.is_empty())?;
    let finalizers = meta.finalizers.as_deref().unwrap_or_default();
    Some(Observed {
        identity: Identity {
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: meta.namespace.clone(),
            name: meta.name.clone().unwrap_or_default(),
            uid: uid.into(),
        },
        owners: owners(meta.owner_references.as_ref()),
        deleting: meta.deletion_timestamp.is_some(),
        orphan_finalizer: finalizers.iter().any(|f| f == ORPHAN),
        foreground_finalizer: finalizers.iter().any(|f| f == FOREGROUND),
    })
}

/// Feeds Pod changes from the shared informer, skipping updates that change nothing the graph
/// holds (most Pod updates are status updates).
pub fn feed_pods(pods: &Informer<CachedPod>, tx: UnboundedSender<Change>) {
    pods.on_event(move |event| match event {
        InformerEvent::Applied { old, new } => {
            if let Some(old) = old {
                let (a, b) = (&old.metadata, &new.metadata);
                if a.owner_references == b.owner_references
                    && a.finalizers == b.finalizers
                    && a.deletion_timestamp.is_some() == b.deletion_timestamp.is_some()
                    && a.uid == b.uid
                {
                    return;
                }
            }
            if let Some(o) = observe("v1", "Pod", &new.metadata) {
                let _ = tx.send(Change::Upsert(o));
            }
        }
        InformerEvent::Deleted(pod) => {
            if let Some(o) = observe("v1", "Pod", &pod.metadata) {
                let _ = tx.send(Change::Deleted(o.identity));
            }
        }
    });
}

/// Watches the metadata of one resource forever, sending its changes (a re-list ends with
/// `Relisted`, so that what vanished meanwhile is removed).
pub async fn watch(client: Client, resource: ApiResource, tx: UnboundedSender<Change>) {
    // An Api of PartialObjectMeta makes metadata-only list and watch requests.
    let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client, &resource);
    let mut events = watch_stream(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut listed = HashSet::new();
    while let Some(event) = events.next().await {
        let change = match event {
            Ok(Event::Init) => {
                listed.clear();
                continue;
            }
            Ok(Event::InitApply(obj)) => {
                let Some(o) = observe(&resource.api_version, &resource.kind, &obj.metadata) else {
                    continue;
                };
                listed.insert(o.identity.uid.clone());
                Change::Upsert(o)
            }
            Ok(Event::InitDone) => Change::Relisted {
                group: resource.group.clone(),
                kind: resource.kind.clone(),
                listed: std::mem::take(&mut listed),
            },
            Ok(Event::Apply(obj)) => {
                match observe(&resource.api_version, &resource.kind, &obj.metadata) {
                    Some(o) => Change::Upsert(o),
                    None => continue,
                }
            }
            Ok(Event::Delete(obj)) => {
                match observe(&resource.api_version, &resource.kind, &obj.metadata) {
                    Some(o) => Change::Deleted(o.identity),
                    None => continue,
                }
            }
            Err(e) => {
                tracing::warn!(resource = %resource.plural, group = %resource.group, error = %e, "garbage collector watch failed; retrying");
                continue;
            }
        };
        if tx.send(change).is_err() {
            return;
        }
    }
}
