//! One sync of one Deployment: the Deployment and its claimed ReplicaSets as last written or
//! read, and the writes every strategy shares: finding or creating the new ReplicaSet with its
//! revision, resizing a ReplicaSet (with its ScalingReplicaSet event), proportional scaling,
//! history cleanup, rollback, and the status.
//!
//! Every write replaces the local copy with the server's answer, so later writes in the same
//! sync carry the current resourceVersion; a write that loses a race fails with a conflict and
//! the sync is retried from the cache.

use baton_client::CachedPod;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::{Selector, SelectorExt};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::hash::{POD_TEMPLATE_HASH, compute_hash, equal_ignore_hash};
use super::revisions::{self, REVISION, ROLLBACK_TO};
use super::scale::{self, max_surge, new_rs_replicas};
use super::status::{self, FAILED_RS_CREATE, FOUND_NEW_RS, NEW_RS_CREATED, PROGRESSING};
use super::{Deployments, SyncDeploymentError, by_creation, desired, rs_spec};
use crate::pod_control;
use crate::replicaset::events::EventType;
use crate::replicaset::{api_message, claim};

/// A Deployment being synced, with the ReplicaSets it owns.
pub(super) struct Rollout<'a> {
    ctl: &'a Deployments,
    pub(super) d: Deployment,
    pub(super) rs_list: Vec<ReplicaSet>,
    key: String,
    d_api: Api<Deployment>,
    rs_api: Api<ReplicaSet>,
}

impl<'a> Rollout<'a> {
    pub(super) fn new(ctl: &'a Deployments, d: Deployment) -> Self {
        let namespace = d.namespace().unwrap_or_default();
        Rollout {
            key: pod_control::key_of(&d),
            d_api: Api::namespaced(ctl.client.clone(), &namespace),
            rs_api: Api::namespaced(ctl.client.clone(), &namespace),
            ctl,
            d,
            rs_list: Vec::new(),
        }
    }

    fn name(&self) -> String {
        self.d.name_any()
    }

    fn emit(&self, type_: EventType, reason: &str, message: String) {
        self.ctl
            .events
            .emit(self.d.object_ref(&()), type_, reason, message);
    }

    /// Takes the ReplicaSets of the namespace that `selector` picks, adopting orphans and
    /// releasing those it no longer selects.
    pub(super) async fn claim(&mut self, selector: &Selector) -> Result<(), SyncDeploymentError> {
        let namespace = self.d.namespace();
        let candidates: Vec<Arc<ReplicaSet>> = self
            .ctl
            .replicasets
            .state()
            .into_iter()
            .filter(|rs| rs.namespace() == namespace)
            .collect();
        let owned = claim::claim(&self.rs_api, &self.d_api, &self.d, candidates, |rs| {
            selector.matches(rs.labels())
        })
        .await
        .map_err(|source| SyncDeploymentError::Claim {
            deployment: self.key.clone(),
            source,
        })?;
        self.rs_list = owned.iter().map(|rs| rs.as_ref().clone()).collect();
        Ok(())
    }

    /// (the new ReplicaSet: the oldest whose template is the Deployment's, the others).
    pub(super) fn partition(&self) -> (Option<usize>, Vec<usize>) {
        let mut order: Vec<usize> = (0..self.rs_list.len()).collect();
        order.sort_by(|&a, &b| by_creation(&self.rs_list[a], &self.rs_list[b]));
        let template = self.d.spec.as_ref().map(|s| &s.template);
        let new = order.iter().copied().find(|&i| {
            let rs_template = self.rs_list[i]
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref());
            matches!((template, rs_template), (Some(a), Some(b)) if equal_ignore_hash(a, b))
        });
        let olds = order.into_iter().filter(|&i| Some(i) != new).collect();
        (new, olds)
    }

    /// Every owned ReplicaSet.
    pub(super) fn all(&self) -> Vec<&ReplicaSet> {
        self.rs_list.iter().collect()
    }

    pub(super) fn index_of(&self, name: &str) -> Option<usize> {
        self.rs_list
            .iter()
            .position(|rs| rs.metadata.name.as_deref() == Some(name))
    }

    /// The Pods in the Deployment's namespace that its selector picks and the ReplicaSets
    /// `indices` control.
    pub(super) fn pods_of(&self, indices: &[usize]) -> Vec<Arc<CachedPod>> {
        let uids: Vec<&str> = indices
            .iter()
            .filter_map(|&i| self.rs_list[i].metadata.uid.as_deref())
            .collect();
        let namespace = self.d.namespace();
        let selector: Option<Selector> = self
            .d
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone().try_into().ok());
        self.ctl
            .pods
            .state()
            .into_iter()
            .filter(|p| p.namespace() == namespace)
            .filter(|p| selector.as_ref().is_some_and(|s| s.matches(p.labels())))
            .filter(|p| {
                pod_control::controller_uid(p.as_ref()).is_some_and(|uid| uids.contains(&uid))
            })
            .collect()
    }

    /// Writes `status` through the status subresource.
    pub(super) async fn write_status(
        &mut self,
        status: DeploymentStatus,
    ) -> Result<(), SyncDeploymentError> {
        let mut obj = self.d.clone();
        obj.metadata.managed_fields = None;
        obj.status = Some(status);
        self.d = self
            .d_api
            .replace_status(&self.name(), &PostParams::default(), &obj)
            .await
            .map_err(|source| SyncDeploymentError::UpdateStatus {
                deployment: self.key.clone(),
                source,
            })?;
        Ok(())
    }

    /// Sets the Deployment's revision annotation through the status subresource, as upstream
    /// does, so that it does not count as a new generation.
    async fn set_deployment_revision(&mut self, revision: &str) -> Result<(), SyncDeploymentError> {
        let current = self
            .d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION));
        if current.map(String::as_str) == Some(revision) {
            return Ok(());
        }
        let patch = json!({"metadata": {"annotations": {REVISION: revision}}});
        self.d = self
            .d_api
            .patch_status(&self.name(), &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(|source| SyncDeploymentError::UpdateDeployment {
                deployment: self.key.clone(),
                source,
            })?;
        Ok(())
    }

    /// Finds the new ReplicaSet and brings its revision and annotations, and the Deployment's
    /// revision, up to date; creates it when missing if `create` (upstream's
    /// getAllReplicaSetsAndSyncRevision). Returns its index.
    pub(super) async fn get_all_and_sync_revision(
        &mut self,
        create: bool,
    ) -> Result<Option<usize>, SyncDeploymentError> {
        let (new, olds) = self.partition();
        let new_revision = {
            let olds: Vec<&ReplicaSet> = olds.iter().map(|&i| &self.rs_list[i]).collect();
            revisions::max_revision(&olds).saturating_add(1)
        };
        if let Some(i) = new {
            self.sync_existing_new_rs(i, new_revision).await?;
            return Ok(Some(i));
        }
        if !create {
            return Ok(None);
        }
        self.create_new_rs(new_revision).await.map(Some)
    }

    async fn sync_existing_new_rs(
        &mut self,
        i: usize,
        new_revision: i64,
    ) -> Result<(), SyncDeploymentError> {
        let mut rs = self.rs_list[i].clone();
        let annotations_changed = revisions::set_new_rs_annotations(
            &self.d,
            &mut rs,
            new_revision,
            true,
            max_surge(&self.d),
        );
        let min_ready = self.d.spec.as_ref().and_then(|s| s.min_ready_seconds);
        let spec = rs.spec.get_or_insert_with(ReplicaSetSpec::default);
        let min_ready_changed = spec.min_ready_seconds.unwrap_or(0) != min_ready.unwrap_or(0);
        if annotations_changed || min_ready_changed {
            spec.min_ready_seconds = min_ready;
            self.replace_rs(i, rs).await?;
        }
        let name = self.rs_list[i].name_any();
        if let Some(revision) = self.rs_list[i]
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION))
            .cloned()
        {
            self.set_deployment_revision(&revision).await?;
        }
        if status::has_progress_deadline(&self.d)
            && status::get_condition(self.d.status.as_ref(), PROGRESSING).is_none()
        {
            let mut s = self.d.status.clone().unwrap_or_default();
            let message = format!("Found new replica set \"{name}\"");
            status::set_condition(
                &mut s,
                status::condition(PROGRESSING, "True", FOUND_NEW_RS, message, Timestamp::now()),
            );
            self.write_status(s).await?;
        }
        Ok(())
    }

    async fn create_new_rs(&mut self, new_revision: i64) -> Result<usize, SyncDeploymentError> {
        let spec = self.d.spec.clone().unwrap_or_default();
        let collision_count = self.d.status.as_ref().and_then(|s| s.collision_count);
        let hash = compute_hash(&spec.template, collision_count);
        let mut template = spec.template.clone();
        template
            .metadata
            .get_or_insert_with(ObjectMeta::default)
            .labels
            .get_or_insert_with(Default::default)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let name = format!("{}-{}", self.name(), hash);
        let mut rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: self.d.namespace(),
                owner_references: Some(vec![pod_control::controller_ref(&self.d)]),
                labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        let replicas = {
            let mut all = self.all();
            all.push(&rs);
            new_rs_replicas(&self.d, &all, &rs)
        };
        if let Some(s) = rs.spec.as_mut() {
            s.replicas = Some(replicas);
        }
        revisions::set_new_rs_annotations(
            &self.d,
            &mut rs,
            new_revision,
            false,
            max_surge(&self.d),
        );

        let (created, already_existed) = match self.rs_api.create(&PostParams::default(), &rs).await
        {
            Ok(created) => (created, false),
            Err(kube::Error::Api(s)) if s.reason == "AlreadyExists" => {
                (self.existing_new_rs(&name).await?, true)
            }
            Err(source) => {
                if !crate::replicaset::namespace_terminating(&source) {
                    let message = format!(
                        "Failed to create new replica set \"{name}\": {}",
                        api_message(&source)
                    );
                    if status::has_progress_deadline(&self.d) {
                        let mut s = self.d.status.clone().unwrap_or_default();
                        status::set_condition(
                            &mut s,
                            status::condition(
                                PROGRESSING,
                                "False",
                                FAILED_RS_CREATE,
                                message.clone(),
                                Timestamp::now(),
                            ),
                        );
                        // The creation error is the one worth reporting.
                        let _ = self.write_status(s).await;
                    }
                    self.emit(EventType::Warning, FAILED_RS_CREATE, message);
                }
                return Err(SyncDeploymentError::CreateReplicaSet {
                    replicaset: name,
                    source,
                });
            }
        };
        if !already_existed && replicas > 0 {
            self.emit(
                EventType::Normal,
                "ScalingReplicaSet",
                format!("Scaled up replica set {name} from 0 to {replicas}"),
            );
        }
        let index = match created.metadata.uid.as_deref() {
            Some(uid) => self
                .rs_list
                .iter()
                .position(|r| r.metadata.uid.as_deref() == Some(uid)),
            None => None,
        };
        let index = match index {
            Some(i) => {
                self.rs_list[i] = created;
                i
            }
            None => {
                self.rs_list.push(created);
                self.rs_list.len() - 1
            }
        };
        self.set_deployment_revision(&new_revision.to_string())
            .await?;
        if !already_existed && status::has_progress_deadline(&self.d) {
            let mut s = self.d.status.clone().unwrap_or_default();
            status::set_condition(
                &mut s,
                status::condition(
                    PROGRESSING,
                    "True",
                    NEW_RS_CREATED,
                    format!("Created new replica set \"{name}\""),
                    Timestamp::now(),
                ),
            );
            self.write_status(s).await?;
        }
        Ok(index)
    }

    /// The ReplicaSet already named like the new one: ours if this Deployment controls it and
    /// its template is the Deployment's (the cache had not seen it yet); otherwise a hash
    /// collision, which bumps collisionCount so the next sync picks another name.
    async fn existing_new_rs(&mut self, name: &str) -> Result<ReplicaSet, SyncDeploymentError> {
        let existing = self.rs_api.get(name).await.map_err(|source| {
            SyncDeploymentError::CreateReplicaSet {
                replicaset: name.to_string(),
                source,
            }
        })?;
        let ours = pod_control::controller_uid(&existing) == self.d.metadata.uid.as_deref();
        let same = match (
            self.d.spec.as_ref(),
            existing.spec.as_ref().and_then(|s| s.template.as_ref()),
        ) {
            (Some(spec), Some(template)) => equal_ignore_hash(&spec.template, template),
            _ => false,
        };
        if ours && same {
            return Ok(existing);
        }
        let mut s = self.d.status.clone().unwrap_or_default();
        let count = s.collision_count.unwrap_or(0).saturating_add(1);
        s.collision_count = Some(count);
        self.write_status(s).await?;
        tracing::info!(deployment = %self.key, replicaset = name, collision_count = count, "pod-template-hash collision; bumped collisionCount");
        Err(SyncDeploymentError::HashCollision {
            deployment: self.key.clone(),
            replicaset: name.to_string(),
        })
    }

    async fn replace_rs(
        &mut self,
        i: usize,
        mut rs: ReplicaSet,
    ) -> Result<(), SyncDeploymentError> {
        rs.metadata.managed_fields = None;
        let name = rs.name_any();
        self.rs_list[i] = self
            .rs_api
            .replace(&name, &PostParams::default(), &rs)
            .await
            .map_err(|source| SyncDeploymentError::UpdateReplicaSet {
                replicaset: name,
                source,
            })?;
        Ok(())
    }

    /// Sets ReplicaSet `i` to `to` replicas with current replica annotations; records a
    /// ScalingReplicaSet event (`up` names the direction) when its size changed. Whether it
    /// was resized.
    pub(super) async fn scale_rs(
        &mut self,
        i: usize,
        to: i32,
        up: bool,
    ) -> Result<bool, SyncDeploymentError> {
        let want = desired(&self.d);
        let max = scale::max_total(&self.d);
        let current = &self.rs_list[i];
        let from = rs_spec(current);
        let resize = from != to;
        if !resize && !revisions::replicas_annotations_need_update(current, want, max) {
            return Ok(false);
        }
        let mut rs = current.clone();
        rs.spec.get_or_insert_with(ReplicaSetSpec::default).replicas = Some(to);
        revisions::set_replicas_annotations(&mut rs, want, max);
        self.replace_rs(i, rs).await?;
        if resize {
            let name = self.rs_list[i].name_any();
            let direction = if up { "up" } else { "down" };
            self.emit(
                EventType::Normal,
                "ScalingReplicaSet",
                format!("Scaled {direction} replica set {name} from {from} to {to}"),
            );
        }
        Ok(resize)
    }

    /// Resizes the ReplicaSets after a change of spec.replicas (proportionally mid-rollout).
    pub(super) async fn scale(&mut self) -> Result<(), SyncDeploymentError> {
        let plan = {
            let (new, olds) = self.partition();
            let olds: Vec<&ReplicaSet> = olds.iter().map(|&i| &self.rs_list[i]).collect();
            scale::plan_scale(&self.d, new.map(|i| &self.rs_list[i]), &olds)
        };
        for resize in plan {
            if let Some(i) = self.index_of(&resize.name) {
                self.scale_rs(i, resize.to, resize.up).await?;
            }
        }
        Ok(())
    }

    /// Whether spec.replicas differs from what an active ReplicaSet was last scaled for.
    pub(super) async fn is_scaling_event(&mut self) -> Result<bool, SyncDeploymentError> {
        self.get_all_and_sync_revision(false).await?;
        let want = desired(&self.d);
        Ok(scale::active(self.rs_list.iter())
            .into_iter()
            .filter_map(revisions::desired_replicas_annotation)
            .any(|annotated| annotated != want))
    }

    /// A scaling or paused sync: resize, for a paused Deployment clean up old history, and
    /// record the counts (no progress estimate).
    pub(super) async fn sync(&mut self) -> Result<(), SyncDeploymentError> {
        self.get_all_and_sync_revision(false).await?;
        self.scale().await?;
        let paused = self.d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        if paused && revisions::rollback_to(&self.d).is_none() {
            self.cleanup().await?;
        }
        self.sync_deployment_status().await
    }

    /// Records the counts of a Deployment being deleted.
    pub(super) async fn sync_status_only(&mut self) -> Result<(), SyncDeploymentError> {
        self.get_all_and_sync_revision(false).await?;
        self.sync_deployment_status().await
    }

    async fn sync_deployment_status(&mut self) -> Result<(), SyncDeploymentError> {
        let (new, _) = self.partition();
        let s = status::calculate(
            &self.d,
            &self.all(),
            new.map(|i| &self.rs_list[i]),
            Timestamp::now(),
        );
        if status::changed(&self.d, &s) {
            self.write_status(s).await?;
        }
        Ok(())
    }

    /// Records the counts and the rollout's progress; returns when to look again for the
    /// progress deadline.
    pub(super) async fn sync_rollout_status(
        &mut self,
    ) -> Result<Option<Duration>, SyncDeploymentError> {
        let now = Timestamp::now();
        let (new, _) = self.partition();
        let s = status::rollout(&self.d, &self.all(), new.map(|i| &self.rs_list[i]), now);
        let requeue = status::requeue_for_deadline(&self.d, &s, now);
        if status::changed(&self.d, &s) {
            self.write_status(s).await?;
        }
        Ok(requeue)
    }

    /// Sets the Progressing condition of a paused or resumed Deployment.
    pub(super) async fn check_paused_conditions(&mut self) -> Result<(), SyncDeploymentError> {
        match status::paused_conditions(&self.d, Timestamp::now()) {
            Some(s) => self.write_status(s).await,
            None => Ok(()),
        }
    }

    /// Deletes old ReplicaSets beyond revisionHistoryLimit.
    pub(super) async fn cleanup(&mut self) -> Result<(), SyncDeploymentError> {
        let Some(limit) = self
            .d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .filter(|l| *l != i32::MAX)
        else {
            return Ok(());
        };
        let victims: Vec<String> = {
            let (_, olds) = self.partition();
            let olds: Vec<&ReplicaSet> = olds.iter().map(|&i| &self.rs_list[i]).collect();
            revisions::history_to_delete(&olds, limit)
                .into_iter()
                .map(ResourceExt::name_any)
                .collect()
        };
        for name in victims {
            tracing::debug!(deployment = %self.key, replicaset = %name, "deleting old replica set");
            match self.rs_api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => {
                    return Err(SyncDeploymentError::DeleteReplicaSet {
                        replicaset: name,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Rolls back to the revision the deprecated rollback annotation names (0: the previous
    /// one), then clears the annotation.
    pub(super) async fn rollback(&mut self) -> Result<(), SyncDeploymentError> {
        self.get_all_and_sync_revision(true).await?;
        let mut to = revisions::rollback_to(&self.d).unwrap_or(0);
        if to == 0 {
            to = revisions::last_revision(&self.all());
            if to == 0 {
                self.emit(
                    EventType::Warning,
                    "DeploymentRollbackRevisionNotFound",
                    "Unable to find last revision.".into(),
                );
                return self.clear_rollback_to().await;
            }
        }
        let target = self
            .rs_list
            .iter()
            .find(|rs| revisions::revision(rs) == Some(to))
            .cloned();
        let Some(rs) = target else {
            self.emit(
                EventType::Warning,
                "DeploymentRollbackRevisionNotFound",
                "Unable to find the revision to rollback to.".into(),
            );
            return self.clear_rollback_to().await;
        };
        let template = rs
            .spec
            .as_ref()
            .and_then(|s| s.template.clone())
            .unwrap_or_default();
        let unchanged = self
            .d
            .spec
            .as_ref()
            .is_some_and(|s| equal_ignore_hash(&s.template, &template));
        if unchanged {
            let message = format!(
                "The rollback revision contains the same template as current deployment \"{}\"",
                self.name()
            );
            self.emit(
                EventType::Warning,
                "DeploymentRollbackTemplateUnchanged",
                message,
            );
        } else {
            revisions::roll_back_to(&mut self.d, &template, &rs);
        }
        self.clear_rollback_to().await?;
        if !unchanged {
            let message = format!(
                "Rolled back deployment \"{}\" to revision {to}",
                self.name()
            );
            self.emit(EventType::Normal, "DeploymentRollback", message);
        }
        Ok(())
    }

    /// Writes the Deployment (as rolled back, if it was) without the rollback annotation.
    async fn clear_rollback_to(&mut self) -> Result<(), SyncDeploymentError> {
        let mut d = self.d.clone();
        if let Some(a) = d.metadata.annotations.as_mut() {
            a.remove(ROLLBACK_TO);
        }
        d.metadata.managed_fields = None;
        self.d = self
            .d_api
            .replace(&self.name(), &PostParams::default(), &d)
            .await
            .map_err(|source| SyncDeploymentError::UpdateDeployment {
                deployment: self.key.clone(),
                source,
            })?;
        Ok(())
    }
}
