//! The collector's actions (upstream's attemptToDeleteItem, processDeletingDependentsItem and
//! attemptToOrphanWorker): each reads the object as it is now before acting, checks owners the
//! graph cannot vouch for with a direct read, and deletes with preconditions, so that a lagging
//! graph never deletes an object whose owner exists.

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::api::{
    DeleteParams, PartialObjectMeta, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::core::DynamicObject;
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::mpsc::UnboundedSender;

use super::graph::{
    Change, Decision, Graph, Identity, Owner, OwnerState, Propagation, Uid, decide,
};
use super::monitors::{FOREGROUND, Mapping, ORPHAN};
use super::queue::WorkQueue;
use crate::failure_backoff::{FailureBackoff, log_failure};

/// Orphaning runs on this many dependents at once.
const PARALLEL_ORPHANING: usize = 10;
/// Tries of a read-modify-write patch that keeps conflicting.
const PATCH_TRIES: usize = 5;

/// A garbage collection step failed.
#[derive(Debug, thiserror::Error)]
pub enum CollectGarbageError {
    #[error("{kind} is not a served kind")]
    UnknownKind { kind: String },
    #[error("reading {0}")]
    Read(String, #[source] kube::Error),
    #[error("deleting {0}")]
    Delete(String, #[source] kube::Error),
    #[error("updating {0}")]
    Patch(String, #[source] kube::Error),
    #[error("{0} kept changing")]
    Conflicts(String),
    #[error("orphaning the dependents of {owner}: {failed} failed")]
    Orphan {
        owner: String,
        failed: usize,
        #[source]
        source: Box<CollectGarbageError>,
    },
}

fn describe(id: &Identity) -> String {
    match &id.namespace {
        Some(ns) => format!("{} {ns}/{}", id.kind, id.name),
        None => format!("{} {}", id.kind, id.name),
    }
}

/// What the workers share.
pub struct Collector {
    pub client: Client,
    pub mapping: Mapping,
    pub graph: Arc<Mutex<Graph>>,
    pub changes: UnboundedSender<Change>,
    pub deletes: Arc<WorkQueue<Uid>>,
    pub orphans: Arc<WorkQueue<Uid>>,
    pub backoff: FailureBackoff,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector").finish_non_exhaustive()
    }
}

fn has(meta: &PartialObjectMeta<DynamicObject>, finalizer: &str) -> bool {
    meta.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == finalizer)
}

impl Collector {
    fn api(&self, id: &Identity) -> Result<Api<DynamicObject>, CollectGarbageError> {
        self.mapping
            .api(&self.client, id)
            .ok_or_else(|| CollectGarbageError::UnknownKind {
                kind: format!("{}/{}", id.api_version, id.kind),
            })
    }

    /// Reads the object at `id`; `None` when it is gone or is another object now (or cannot
    /// exist: a namespaced kind named without a namespace).
    async fn read(
        &self,
        id: &Identity,
    ) -> Result<Option<PartialObjectMeta<DynamicObject>>, CollectGarbageError> {
        let Some((_, namespaced)) = self.mapping.resolve(&id.api_version, &id.kind) else {
            return Err(CollectGarbageError::UnknownKind {
                kind: format!("{}/{}", id.api_version, id.kind),
            });
        };
        if *namespaced && id.namespace.is_none() {
            return Ok(None);
        }
        let api = self.api(id)?;
        let found = api
            .get_metadata_opt(&id.name)
            .await
            .map_err(|e| CollectGarbageError::Read(describe(id), e))?;
        Ok(found.filter(|m| m.metadata.uid.as_deref() == Some(&*id.uid)))
    }

    /// Works on the attempt-to-delete queue forever.
    pub async fn delete_worker(self: Arc<Self>) {
        loop {
            let uid = self.deletes.take().await;
            match self.attempt_to_delete(&uid).await {
                Ok(()) => self.backoff.reset(&uid),
                Err(e) => {
                    let delay = self.backoff.next_delay(&uid);
                    log_failure!("garbage collection failed", &uid, &e, delay);
                    self.deletes.add_after(uid.clone(), delay);
                }
            }
            self.deletes.done(&uid);
        }
    }

    /// Works on the attempt-to-orphan queue forever.
    pub async fn orphan_worker(self: Arc<Self>) {
        loop {
            let uid = self.orphans.take().await;
            let key = format!("orphan/{uid}");
            match self.attempt_to_orphan(&uid).await {
                Ok(()) => self.backoff.reset(&key),
                Err(e) => {
                    let delay = self.backoff.next_delay(&key);
                    log_failure!("orphaning dependents failed", &uid, &e, delay);
                    self.orphans.add_after(uid.clone(), delay);
                }
            }
            self.orphans.done(&uid);
        }
    }

    async fn attempt_to_delete(&self, uid: &Uid) -> Result<(), CollectGarbageError> {
        let Some((identity, virtual_, dependents, dependent_deleting)) = ({
            let graph = self.graph.lock().expect("graph");
            graph.node(uid).map(|n| {
                let deleting = n
                    .dependents
                    .iter()
                    .filter_map(|d| graph.node(d))
                    .any(|d| d.deleting_dependents);
                (
                    n.identity.clone(),
                    n.virtual_,
                    !n.dependents.is_empty(),
                    deleting,
                )
            })
        }) else {
            return Ok(());
        };
        let Some(latest) = self.read(&identity).await? else {
            // Gone (or never there, for an owner only named in references).
            if virtual_ {
                let _ = self.changes.send(Change::VirtualDeleted(identity));
            }
            return Ok(());
        };
        let meta = &latest.metadata;
        let deleting = meta.deletion_timestamp.is_some();
        let deleting_dependents = deleting && has(&latest, FOREGROUND);
        if deleting && !deleting_dependents {
            // On its way out; its dependents are handled once it is gone.
            return Ok(());
        }
        if deleting_dependents {
            return self.finish_foreground(uid, &identity).await;
        }
        let refs = meta.owner_references.clone().unwrap_or_default();
        if refs.is_empty() {
            return Ok(());
        }
        let mut owners = Vec::with_capacity(refs.len());
        for r in &refs {
            let owner = Owner {
                uid: r.uid.as_str().into(),
                api_version: r.api_version.clone(),
                kind: r.kind.clone(),
                name: r.name.clone(),
                block: r.block_owner_deletion == Some(true),
            };
            let state = self
                .owner_state(&owner, identity.namespace.as_deref())
                .await?;
            owners.push((owner, state));
        }
        let decision = decide(
            &owners,
            dependents,
            dependent_deleting,
            has(&latest, ORPHAN),
            has(&latest, FOREGROUND),
        );
        match decision {
            Decision::Keep => Ok(()),
            Decision::RemoveReferences(uids) => {
                tracing::info!(object = %describe(&identity), "removing references to owners that are gone or deleting");
                self.remove_references(&identity, &uids).await
            }
            Decision::DeleteForeground { unblock_first } => {
                if unblock_first {
                    self.unblock_references(&identity).await?;
                }
                self.delete(&identity, &latest, Propagation::Foreground)
                    .await
            }
            Decision::Delete(propagation) => self.delete(&identity, &latest, propagation).await,
        }
    }

    /// How an owner stands: from the graph when it has observed the owner, else by reading it.
    async fn owner_state(
        &self,
        owner: &Owner,
        dependent_ns: Option<&str>,
    ) -> Result<OwnerState, CollectGarbageError> {
        if let Some(state) = self
            .graph
            .lock()
            .expect("graph")
            .owner_state(owner, dependent_ns)
        {
            return Ok(state);
        }
        let Some((_, namespaced)) = self.mapping.resolve(&owner.api_version, &owner.kind) else {
            return Err(CollectGarbageError::UnknownKind {
                kind: format!("{}/{}", owner.api_version, owner.kind),
            });
        };
        if *namespaced && dependent_ns.is_none() {
            // A cluster-scoped object cannot be owned by a namespaced one.
            return Ok(OwnerState::Dangling);
        }
        let id = Identity {
            api_version: owner.api_version.clone(),
            kind: owner.kind.clone(),
            namespace: dependent_ns.filter(|_| *namespaced).map(str::to_string),
            name: owner.name.clone(),
            uid: owner.uid.clone(),
        };
        Ok(match self.read(&id).await? {
            None => {
                self.graph
                    .lock()
                    .expect("graph")
                    .mark_absent(owner.uid.clone());
                OwnerState::Dangling
            }
            Some(found)
                if found.metadata.deletion_timestamp.is_some() && has(&found, FOREGROUND) =>
            {
                OwnerState::Waiting
            }
            Some(_) => OwnerState::Solid,
        })
    }

    /// Upstream's processDeletingDependentsItem: once no dependent blocks, the
    /// `foregroundDeletion` finalizer goes; until then the blocking dependents are deleted.
    async fn finish_foreground(
        &self,
        uid: &Uid,
        identity: &Identity,
    ) -> Result<(), CollectGarbageError> {
        let blocking: Vec<(Uid, bool)> = {
            let graph = self.graph.lock().expect("graph");
            graph
                .blocking_dependents(uid)
                .iter()
                .map(|d| (d.identity.uid.clone(), d.deleting_dependents))
                .collect()
        };
        if blocking.is_empty() {
            tracing::info!(object = %describe(identity), "dependents deleted; removing the foregroundDeletion finalizer");
            return self.remove_finalizer(identity, FOREGROUND).await;
        }
        for (dep, deleting_dependents) in blocking {
            if !deleting_dependents {
                self.deletes.add(dep);
            }
        }
        Ok(())
    }

    async fn delete(
        &self,
        identity: &Identity,
        latest: &PartialObjectMeta<DynamicObject>,
        propagation: Propagation,
    ) -> Result<(), CollectGarbageError> {
        let api = self.api(identity)?;
        let policy = match propagation {
            Propagation::Background => PropagationPolicy::Background,
            Propagation::Foreground => PropagationPolicy::Foreground,
            Propagation::Orphan => PropagationPolicy::Orphan,
        };
        tracing::info!(object = %describe(identity), ?policy, "deleting an object whose owners are gone");
        let mut dp = DeleteParams {
            propagation_policy: Some(policy),
            preconditions: Some(Preconditions {
                uid: Some(identity.uid.to_string()),
                resource_version: latest.metadata.resource_version.clone(),
            }),
            ..Default::default()
        };
        match api.delete(&identity.name, &dp).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(CollectGarbageError::Delete(describe(identity), e)),
        }
        // It changed since it was read: delete it anyway if its owners did not.
        let Some(now) = self.read(identity).await? else {
            return Ok(());
        };
        if now.metadata.owner_references != latest.metadata.owner_references {
            self.deletes.add(identity.uid.clone());
            return Ok(());
        }
        if let Some(p) = dp.preconditions.as_mut() {
            p.resource_version = None;
        }
        match api.delete(&identity.name, &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(CollectGarbageError::Delete(describe(identity), e)),
        }
    }

    /// Read-modify-write of an object's metadata with a resourceVersion precondition, retried
    /// on conflicts. `change` returns the merge patch of `metadata` fields, or `None` when
    /// nothing needs changing.
    async fn patch_metadata(
        &self,
        identity: &Identity,
        change: impl Fn(&PartialObjectMeta<DynamicObject>) -> Option<serde_json::Value>,
    ) -> Result<(), CollectGarbageError> {
        let api = self.api(identity)?;
        for _ in 0..PATCH_TRIES {
            let Some(current) = self.read(identity).await? else {
                return Ok(());
            };
            let Some(mut fields) = change(&current) else {
                return Ok(());
            };
            fields["resourceVersion"] = json!(current.metadata.resource_version);
            fields["uid"] = json!(&*identity.uid);
            let patch = json!({ "metadata": fields });
            match api
                .patch(
                    &identity.name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(CollectGarbageError::Patch(describe(identity), e)),
            }
        }
        Err(CollectGarbageError::Conflicts(describe(identity)))
    }

    /// Drops the owner references with these uids.
    async fn remove_references(
        &self,
        identity: &Identity,
        uids: &[Uid],
    ) -> Result<(), CollectGarbageError> {
        self.patch_metadata(identity, |current| {
            let refs = current
                .metadata
                .owner_references
                .clone()
                .unwrap_or_default();
            let kept: Vec<_> = refs
                .iter()
                .filter(|r| !uids.iter().any(|u| **u == *r.uid))
                .cloned()
                .collect();
            if kept.len() == refs.len() {
                return None;
            }
            Some(if kept.is_empty() {
                json!({ "ownerReferences": null })
            } else {
                json!({ "ownerReferences": kept })
            })
        })
        .await
    }

    /// Makes every owner reference of the object non-blocking.
    async fn unblock_references(&self, identity: &Identity) -> Result<(), CollectGarbageError> {
        self.patch_metadata(identity, |current| {
            let mut refs = current
                .metadata
                .owner_references
                .clone()
                .unwrap_or_default();
            let mut changed = false;
            for r in refs.iter_mut() {
                if r.block_owner_deletion == Some(true) {
                    r.block_owner_deletion = Some(false);
                    changed = true;
                }
            }
            changed.then(|| json!({ "ownerReferences": refs }))
        })
        .await
    }

    async fn remove_finalizer(
        &self,
        identity: &Identity,
        finalizer: &str,
    ) -> Result<(), CollectGarbageError> {
        self.patch_metadata(identity, |current| {
            let all = current.metadata.finalizers.clone().unwrap_or_default();
            let kept: Vec<String> = all.iter().filter(|f| *f != finalizer).cloned().collect();
            (kept.len() != all.len()).then(|| json!({ "finalizers": kept }))
        })
        .await
    }

    /// Upstream's attemptToOrphanWorker: the owner's references are removed from all its
    /// dependents, then its `orphan` finalizer.
    async fn attempt_to_orphan(&self, uid: &Uid) -> Result<(), CollectGarbageError> {
        let Some((owner, dependents)) = ({
            let graph = self.graph.lock().expect("graph");
            graph.node(uid).map(|n| {
                let deps: Vec<Identity> = n
                    .dependents
                    .iter()
                    .filter_map(|d| graph.node(d))
                    .map(|d| d.identity.clone())
                    .collect();
                (n.identity.clone(), deps)
            })
        }) else {
            return Ok(());
        };
        let uids = [uid.clone()];
        let failures: Vec<CollectGarbageError> = futures::stream::iter(dependents)
            .map(|dep| {
                let uids = &uids;
                async move { self.remove_references(&dep, uids).await.err() }
            })
            .buffer_unordered(PARALLEL_ORPHANING)
            .filter_map(|e| async move { e })
            .collect()
            .await;
        let failed = failures.len();
        if let Some(first) = failures.into_iter().next() {
            return Err(CollectGarbageError::Orphan {
                owner: describe(&owner),
                failed,
                source: Box::new(first),
            });
        }
        tracing::info!(object = %describe(&owner), "dependents orphaned; removing the orphan finalizer");
        self.remove_finalizer(&owner, ORPHAN).await
    }
}
