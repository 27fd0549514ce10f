//! The PersistentVolume binder (kube-controller-manager's
//! "persistentvolume-binder-controller"), with Baton's local-path provisioner built in.
//!
//! Claims: an unbound claim binds the volume [`baton_volume_binding::find_volume`] picks (the volume's
//! claimRef first, then the claim's volumeName, then their statuses, as upstream orders the
//! writes, each over the version it was decided from); with no volume to bind, a claim of a
//! class whose provisioner is [`local_path::PROVISIONER`] gets a volume on the node the
//! scheduler chose for it (WaitForFirstConsumer classes, annotation
//! `volume.kubernetes.io/selected-node`), and other provisioners are waited for. A bound
//! claim whose volume is gone becomes Lost.
//!
//! Volumes: Available while unclaimed, Bound once their claim names them, Released when
//! their claim is gone; then deleted (reclaim policy Delete, volumes this provisioner made),
//! kept (Retain), or Failed (what Baton cannot reclaim).
//!
//! Woken by changes of claims, volumes, classes and nodes' arrival, never by polling.

pub mod local_path;

use std::path::PathBuf;
use std::sync::Arc;

use baton_client::{Informer, InformerEvent};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::Context;
use crate::failure_backoff::FailureBackoff;
use crate::pod_control::{api_error_message, key_of, publish_event};
use baton_volume_binding::{
    SELECTED_NODE_ANNOTATION, claim_class, claim_volume_name, find_volume, is_bound_to, satisfies,
};

/// The annotation that names the provisioner expected to make a claim's volume.
const STORAGE_PROVISIONER_ANNOTATION: &str = "volume.kubernetes.io/storage-provisioner";
const BETA_STORAGE_PROVISIONER_ANNOTATION: &str = "volume.beta.kubernetes.io/storage-provisioner";

/// A claim or a volume could not be synced.
#[derive(Debug, thiserror::Error)]
pub enum SyncVolumeError {
    #[error("binding volume {volume} to the claim")]
    BindVolume {
        volume: String,
        #[source]
        source: kube::Error,
    },
    #[error("updating the claim")]
    UpdateClaim(#[source] kube::Error),
    #[error("updating volume {0}")]
    UpdateVolume(String, #[source] kube::Error),
    #[error("provisioning a volume")]
    Provision(#[source] kube::Error),
    #[error("deleting volume {0}")]
    DeleteVolume(String, #[source] kube::Error),
    #[error("reading {0}")]
    Read(String, #[source] kube::Error),
}

struct Binder {
    client: Client,
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    classes: Store<StorageClass>,
    nodes: Store<Node>,
    root: PathBuf,
    recorder: Recorder,
    errors: FailureBackoff,
}

/// Starts the binder: its informers of claims, volumes and classes, and the two loops.
pub fn start(ctx: &Arc<Context>) -> BoxFuture<'static, ()> {
    let claims = Informer::<PersistentVolumeClaim>::new(
        Api::all(ctx.client.clone()),
        watcher::Config::default(),
    );
    let volumes =
        Informer::<PersistentVolume>::new(Api::all(ctx.client.clone()), watcher::Config::default());
    let classes =
        Informer::<StorageClass>::new(Api::all(ctx.client.clone()), watcher::Config::default());
    let this = Arc::new(Binder {
        client: ctx.client.clone(),
        claims: claims.store(),
        volumes: volumes.store(),
        classes: classes.store(),
        nodes: ctx.nodes.store(),
        root: ctx.local_path_root.clone(),
        recorder: ctx.recorder("persistentvolume-controller"),
        errors: FailureBackoff::default(),
    });

    // A volume's change wakes the claim it names, or every unbound claim when it is free.
    let unbound = claims.store();
    let volume_changes = volumes.subscribe(move |event: &InformerEvent<'_, PersistentVolume>| {
        let mut wake = vec![];
        for volume in event.objects() {
            match volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) {
                Some(claim) => wake.push(
                    ObjectRef::new(claim.name.as_deref().unwrap_or_default())
                        .within(claim.namespace.as_deref().unwrap_or_default()),
                ),
                None => wake.extend(unbound_claims(&unbound)),
            }
        }
        wake
    });
    let unbound = claims.store();
    let class_changes =
        classes.subscribe(move |_: &InformerEvent<'_, StorageClass>| unbound_claims(&unbound));
    let unbound = claims.store();
    let node_changes = ctx.nodes.subscribe(move |event: &InformerEvent<'_, Node>| {
        // A claim may name a node not yet known.
        match event {
            InformerEvent::Applied { old: None, .. } => unbound_claims(&unbound),
            _ => vec![],
        }
    });
    // A claim's change wakes the volume it names or that names it.
    let bound_to = volumes.store();
    let claim_changes =
        claims.subscribe(move |event: &InformerEvent<'_, PersistentVolumeClaim>| {
            let mut wake = vec![];
            for claim in event.objects() {
                if let Some(name) = claim.spec.as_ref().and_then(|s| s.volume_name.as_deref())
                    && !name.is_empty()
                {
                    wake.push(ObjectRef::new(name));
                }
                wake.extend(
                    bound_to
                        .state()
                        .iter()
                        .filter(|v| is_bound_to(v, claim))
                        .map(|v| ObjectRef::from_obj(v.as_ref())),
                );
            }
            wake
        });

    let claim_loop = Controller::new(
        Api::<PersistentVolumeClaim>::all(ctx.client.clone()),
        watcher::Config::default(),
    );
    let volume_loop = Controller::new(
        Api::<PersistentVolume>::all(ctx.client.clone()),
        watcher::Config::default(),
    );
    let concurrency = ctx.concurrent_syncs;
    let default_class = ctx.default_storage_class.clone();
    let client = ctx.client.clone();
    async move {
        if !default_class.is_empty() {
            make_default_class(&client, &default_class).await;
        }
        let run = async {
            tokio::join!(
                claims.wait_until_ready(),
                volumes.wait_until_ready(),
                classes.wait_until_ready()
            );
            let claim_work = claim_loop
                .reconcile_on(volume_changes)
                .reconcile_on(class_changes)
                .reconcile_on(node_changes)
                .with_config(Config::default().concurrency(concurrency))
                .run(reconcile_claim, claim_error_policy, this.clone())
                .for_each(|result| async move {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "claim reconcile");
                    }
                });
            let volume_work = volume_loop
                .reconcile_on(claim_changes)
                .with_config(Config::default().concurrency(concurrency))
                .run(reconcile_volume, volume_error_policy, this)
                .for_each(|result| async move {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "volume reconcile");
                    }
                });
            tokio::join!(claim_work, volume_work);
        };
        tokio::join!(claims.run(), volumes.run(), classes.run(), run);
    }
    .boxed()
}

/// Makes the default StorageClass unless a class of that name exists (retrying with backoff
/// while the API server refuses for another reason).
async fn make_default_class(client: &Client, name: &str) {
    let api: Api<StorageClass> = Api::all(client.clone());
    let class = local_path::default_class(name);
    let backoff = FailureBackoff::default();
    loop {
        match api.create(&PostParams::default(), &class).await {
            Ok(_) => {
                tracing::info!(class = name, "made the default StorageClass");
                return;
            }
            Err(kube::Error::Api(s)) if s.code == 409 => return,
            Err(e) => {
                let delay = backoff.next_delay(name);
                tracing::warn!(class = name, error = %e, retry_in = ?delay, "making the default StorageClass failed");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn unbound_claims(claims: &Store<PersistentVolumeClaim>) -> Vec<ObjectRef<PersistentVolumeClaim>> {
    claims
        .state()
        .iter()
        .filter(|c| claim_volume_name(c).is_none())
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

fn claim_error_policy(
    claim: Arc<PersistentVolumeClaim>,
    error: &SyncVolumeError,
    this: Arc<Binder>,
) -> Action {
    let key = format!("claim {}", key_of(claim.as_ref()));
    let delay = this.errors.next_delay(&key);
    tracing::warn!(%key, error = %error, retry_in = ?delay, "claim sync failed");
    Action::requeue(delay)
}

fn volume_error_policy(
    volume: Arc<PersistentVolume>,
    error: &SyncVolumeError,
    this: Arc<Binder>,
) -> Action {
    let key = format!("volume {}", volume.name_any());
    let delay = this.errors.next_delay(&key);
    tracing::warn!(%key, error = %error, retry_in = ?delay, "volume sync failed");
    Action::requeue(delay)
}

async fn reconcile_claim(
    claim: Arc<PersistentVolumeClaim>,
    this: Arc<Binder>,
) -> Result<Action, SyncVolumeError> {
    this.sync_claim(&claim).await?;
    this.errors
        .reset(&format!("claim {}", key_of(claim.as_ref())));
    Ok(Action::await_change())
}

async fn reconcile_volume(
    volume: Arc<PersistentVolume>,
    this: Arc<Binder>,
) -> Result<Action, SyncVolumeError> {
    this.sync_volume(&volume).await?;
    this.errors.reset(&format!("volume {}", volume.name_any()));
    Ok(Action::await_change())
}

fn phase_of_volume(volume: &PersistentVolume) -> Option<&str> {
    volume.status.as_ref().and_then(|s| s.phase.as_deref())
}

impl Binder {
    async fn event<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        publish_event(
            &self.recorder,
            &object.object_ref(&()),
            warning,
            reason,
            note,
            None,
        )
        .await;
    }

    fn claim_api(&self, claim: &PersistentVolumeClaim) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), &claim.namespace().unwrap_or_default())
    }

    /// Merge-patches the claim (its status when `status`).
    async fn patch_claim(
        &self,
        claim: &PersistentVolumeClaim,
        status: bool,
        patch: serde_json::Value,
    ) -> Result<(), SyncVolumeError> {
        let api = self.claim_api(claim);
        let (name, params, patch) = (
            claim.name_any(),
            PatchParams::default(),
            Patch::Merge(&patch),
        );
        let result = if status {
            api.patch_status(&name, &params, &patch).await
        } else {
            api.patch(&name, &params, &patch).await
        };
        result.map(drop).map_err(SyncVolumeError::UpdateClaim)
    }

    async fn sync_claim(&self, claim: &PersistentVolumeClaim) -> Result<(), SyncVolumeError> {
        if claim.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let volumes = self.volumes.state();
        if let Some(volume_name) = claim_volume_name(claim) {
            return self.sync_bound_claim(claim, volume_name, &volumes).await;
        }
        let class_name = claim_class(claim);
        let naming_no_class = claim
            .spec
            .as_ref()
            .is_some_and(|s| s.storage_class_name.is_none());
        if naming_no_class && let Some(default) = self.default_class() {
            // Upstream's retroactive default class: a claim made before the default class
            // existed gets it now (the claim's change brings it back here).
            let patch = json!({"spec": {"storageClassName": default}});
            return self.patch_claim(claim, false, patch).await;
        }
        let class = (!class_name.is_empty())
            .then(|| self.classes.get(&ObjectRef::new(class_name)))
            .flatten();
        let node = claim
            .annotations()
            .get(SELECTED_NODE_ANNOTATION)
            .map(|name| (name.clone(), self.nodes.get(&ObjectRef::new(name))));
        let node_object = node.as_ref().and_then(|(_, n)| n.as_deref());
        let waits_for_pod = class
            .as_ref()
            .is_some_and(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"));
        // A claim of a WaitForFirstConsumer class binds nothing until its pod has a node.
        if waits_for_pod && node_object.is_none() {
            let note = match &node {
                None => "waiting for first consumer to be created before binding".to_string(),
                Some((name, _)) => format!("waiting for node {name:?} to be known"),
            };
            self.event(claim, false, "WaitForFirstConsumer", note).await;
            return Ok(());
        }
        if let Some(volume) = find_volume(claim, &volumes, node_object) {
            return self.bind(volume, claim).await;
        }
        let Some(class) = class else {
            if class_name.is_empty() {
                let note =
                    "no persistent volumes available for this claim and no storage class is set";
                self.event(claim, false, "FailedBinding", note.into()).await;
            } else {
                let note = format!("storageclass.storage.k8s.io {class_name:?} not found");
                self.event(claim, true, "ProvisioningFailed", note).await;
            }
            return Ok(());
        };
        self.expect_provisioner(claim, &class.provisioner).await?;
        if class.provisioner != local_path::PROVISIONER {
            let note = format!(
                "Waiting for a volume to be created either by the external provisioner '{}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered.",
                class.provisioner
            );
            self.event(claim, false, "ExternalProvisioning", note).await;
            return Ok(());
        }
        let node = match node {
            Some((_, Some(node))) => node,
            Some((name, None)) => {
                let note = format!("failed to provision volume: node {name:?} not found");
                self.event(claim, true, "ProvisioningFailed", note).await;
                return Ok(());
            }
            None => {
                let note = format!(
                    "failed to provision volume: the {} provisioner makes a volume on the node of the claim's first pod; set volumeBindingMode WaitForFirstConsumer on StorageClass {:?}",
                    local_path::PROVISIONER,
                    class.name_any()
                );
                self.event(claim, true, "ProvisioningFailed", note).await;
                return Ok(());
            }
        };
        let volume = local_path::volume_for(claim, &class, &node, &self.root);
        let api: Api<PersistentVolume> = Api::all(self.client.clone());
        match api.create(&PostParams::default(), &volume).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => return Ok(()),
            Err(e) => {
                let note = format!("failed to provision volume: {}", api_error_message(&e));
                self.event(claim, true, "ProvisioningFailed", note).await;
                return Err(SyncVolumeError::Provision(e));
            }
        }
        let note = format!("Successfully provisioned volume {}", volume.name_any());
        self.event(claim, false, "ProvisioningSucceeded", note)
            .await;
        Ok(())
    }

    /// The default class's name, if a class is marked default (the newest, as admission).
    fn default_class(&self) -> Option<String> {
        let default = |c: &StorageClass| {
            [
                "storageclass.kubernetes.io/is-default-class",
                "storageclass.beta.kubernetes.io/is-default-class",
            ]
            .iter()
            .any(|a| c.annotations().get(*a).map(String::as_str) == Some("true"))
        };
        self.classes
            .state()
            .into_iter()
            .filter(|c| default(c))
            .max_by_key(|c| {
                (
                    c.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    std::cmp::Reverse(c.name_any()),
                )
            })
            .map(|c| c.name_any())
    }

    /// Records on the claim which provisioner is expected to make its volume.
    async fn expect_provisioner(
        &self,
        claim: &PersistentVolumeClaim,
        provisioner: &str,
    ) -> Result<(), SyncVolumeError> {
        if claim
            .annotations()
            .get(STORAGE_PROVISIONER_ANNOTATION)
            .map(String::as_str)
            == Some(provisioner)
        {
            return Ok(());
        }
        let patch = json!({"metadata": {"annotations": {
            STORAGE_PROVISIONER_ANNOTATION: provisioner,
            BETA_STORAGE_PROVISIONER_ANNOTATION: provisioner,
        }}});
        self.patch_claim(claim, false, patch).await
    }

    /// A claim that names its volume: finishes the binding, or marks the claim Lost.
    async fn sync_bound_claim(
        &self,
        claim: &PersistentVolumeClaim,
        volume_name: &str,
        volumes: &[Arc<PersistentVolume>],
    ) -> Result<(), SyncVolumeError> {
        let phase = claim.status.as_ref().and_then(|s| s.phase.as_deref());
        let Some(volume) = volumes.iter().find(|v| v.name_any() == volume_name) else {
            // A claim that names a volume not made yet waits for it; one that was bound to
            // it has lost it.
            let was_bound = claim
                .annotations()
                .get("pv.kubernetes.io/bind-completed")
                .is_some();
            if phase == Some("Lost") || !was_bound {
                return Ok(());
            }
            // Not in the cache: make sure it is really gone.
            let api: Api<PersistentVolume> = Api::all(self.client.clone());
            let found = api
                .get_opt(volume_name)
                .await
                .map_err(|e| SyncVolumeError::Read(format!("volume {volume_name}"), e))?;
            if found.is_some() {
                return Ok(());
            }
            let patch = json!({"status": {"phase": "Lost"}});
            self.patch_claim(claim, true, patch).await?;
            let note = "Bound claim has lost its PersistentVolume. Data on the volume is lost!";
            self.event(claim, true, "ClaimLost", note.into()).await;
            return Ok(());
        };
        let free = volume.spec.as_ref().is_some_and(|s| s.claim_ref.is_none());
        if is_bound_to(volume, claim) {
            return self.bind(volume, claim).await;
        }
        if free {
            if satisfies(volume, claim, None) {
                return self.bind(volume, claim).await;
            }
            let note = format!(
                "Cannot bind to requested volume {volume_name:?}: it does not offer the claim's class, volume mode, access modes or size"
            );
            self.event(claim, true, "VolumeMismatch", note).await;
            return Ok(());
        }
        if phase != Some("Bound") {
            let note = format!("volume {volume_name:?} already bound to a different claim.");
            self.event(claim, true, "FailedBinding", note).await;
        }
        Ok(())
    }

    /// Binds `volume` and `claim` to each other, in upstream's order: the volume's claimRef,
    /// its phase, the claim's volumeName, the claim's status. Each step is skipped when done.
    async fn bind(
        &self,
        volume: &PersistentVolume,
        claim: &PersistentVolumeClaim,
    ) -> Result<(), SyncVolumeError> {
        let volume_name = volume.name_any();
        let volumes: Api<PersistentVolume> = Api::all(self.client.clone());
        if !is_bound_to(volume, claim)
            || volume
                .spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .is_some_and(|r| r.uid.is_none())
        {
            // Over the version the choice was made from: two claims never take one volume.
            let patch = json!({
                "metadata": {
                    "resourceVersion": volume.metadata.resource_version,
                    "annotations": {"pv.kubernetes.io/bound-by-controller": "yes"},
                },
                "spec": {"claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "name": claim.name_any(),
                    "namespace": claim.namespace(),
                    "uid": claim.metadata.uid,
                    "resourceVersion": claim.metadata.resource_version,
                }},
            });
            volumes
                .patch(&volume_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|source| SyncVolumeError::BindVolume {
                    volume: volume_name.clone(),
                    source,
                })?;
        }
        if phase_of_volume(volume) != Some("Bound") {
            let patch = json!({"status": {"phase": "Bound"}});
            volumes
                .patch_status(&volume_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| SyncVolumeError::UpdateVolume(volume_name.clone(), e))?;
        }
        let named = claim.spec.as_ref().and_then(|s| s.volume_name.as_deref());
        if named != Some(volume_name.as_str()) {
            let patch = json!({
                "metadata": {"annotations": {
                    "pv.kubernetes.io/bind-completed": "yes",
                    "pv.kubernetes.io/bound-by-controller": "yes",
                }},
                "spec": {"volumeName": volume_name},
            });
            self.patch_claim(claim, false, patch).await?;
        }
        let spec = volume.spec.as_ref();
        let status = json!({
            "phase": "Bound",
            "accessModes": spec.and_then(|s| s.access_modes.clone()),
            "capacity": spec.and_then(|s| s.capacity.clone()),
        });
        let current = claim.status.as_ref().map(
            |s| json!({"phase": s.phase, "accessModes": s.access_modes, "capacity": s.capacity}),
        );
        if current.as_ref() != Some(&status) {
            self.patch_claim(claim, true, json!({ "status": status }))
                .await?;
        }
        Ok(())
    }

    async fn set_volume_phase(
        &self,
        volume: &PersistentVolume,
        phase: &str,
        message: Option<&str>,
    ) -> Result<(), SyncVolumeError> {
        let current = volume.status.as_ref();
        if current.and_then(|s| s.phase.as_deref()) == Some(phase)
            && current.and_then(|s| s.message.as_deref()) == message
        {
            return Ok(());
        }
        let patch = json!({"status": {"phase": phase, "message": message}});
        let api: Api<PersistentVolume> = Api::all(self.client.clone());
        api.patch_status(
            &volume.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|e| SyncVolumeError::UpdateVolume(volume.name_any(), e))?;
        Ok(())
    }

    async fn sync_volume(&self, volume: &PersistentVolume) -> Result<(), SyncVolumeError> {
        if volume.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let Some(claim_ref) = volume.spec.as_ref().and_then(|s| s.claim_ref.clone()) else {
            return self.set_volume_phase(volume, "Available", None).await;
        };
        let namespace = claim_ref.namespace.clone().unwrap_or_default();
        let name = claim_ref.name.clone().unwrap_or_default();
        let cached = self.claims.get(&ObjectRef::new(&name).within(&namespace));
        let ours = |claim: &PersistentVolumeClaim| {
            claim_ref.uid.is_none() || claim_ref.uid == claim.metadata.uid
        };
        if let Some(claim) = cached.as_deref().filter(|c| ours(c)) {
            let named = claim.spec.as_ref().and_then(|s| s.volume_name.as_deref());
            if named == Some(volume.name_any().as_str()) {
                return self.set_volume_phase(volume, "Bound", None).await;
            }
            return Ok(());
        }
        if claim_ref.uid.is_none() {
            // Reserved for a claim not made yet: available to it alone.
            return self.set_volume_phase(volume, "Available", None).await;
        }
        // The cache says the claim is gone: ask the API server before releasing.
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &namespace);
        let fresh = claims
            .get_opt(&name)
            .await
            .map_err(|e| SyncVolumeError::Read(format!("claim {namespace}/{name}"), e))?;
        if fresh.as_ref().is_some_and(ours) {
            return Ok(());
        }
        // A Failed volume stays so (until an administrator acts); a Released one is
        // reclaimed once.
        match phase_of_volume(volume) {
            Some("Failed") => Ok(()),
            Some("Released") => self.reclaim(volume).await,
            _ => {
                self.set_volume_phase(volume, "Released", None).await?;
                let mut released = volume.clone();
                released.status.get_or_insert_with(Default::default).phase =
                    Some("Released".into());
                self.reclaim(&released).await
            }
        }
    }

    /// What happens to a Released volume, by its reclaim policy.
    async fn reclaim(&self, volume: &PersistentVolume) -> Result<(), SyncVolumeError> {
        let policy = volume
            .spec
            .as_ref()
            .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
            .unwrap_or("Retain");
        let ours = volume
            .annotations()
            .get(local_path::PROVISIONED_BY_ANNOTATION)
            .map(String::as_str)
            == Some(local_path::PROVISIONER);
        match policy {
            "Delete" if ours => {
                let api: Api<PersistentVolume> = Api::all(self.client.clone());
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: volume.metadata.uid.clone(),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                match api.delete(&volume.name_any(), &params).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
                    Err(e) => Err(SyncVolumeError::DeleteVolume(volume.name_any(), e)),
                }
            }
            "Delete" => {
                let message = format!(
                    "error getting deleter volume plugin for volume {:?}: no deletable volume plugin matched",
                    volume.name_any()
                );
                self.set_volume_phase(volume, "Failed", Some(&message))
                    .await?;
                self.event(volume, true, "VolumeFailedDelete", message)
                    .await;
                Ok(())
            }
            "Recycle" => {
                let message = "No recycler plugin found for the volume!";
                self.set_volume_phase(volume, "Failed", Some(message))
                    .await?;
                self.event(volume, true, "VolumeFailedRecycle", message.into())
                    .await;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
