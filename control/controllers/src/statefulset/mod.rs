//! The StatefulSet controller (kube-controller-manager's "statefulset-controller"): Pods with
//! stable names, ordinals, hostnames and storage, created, scaled down and updated in order
//! (OrderedReady) or all at once (Parallel). Each reconcile: find or make the update
//! ControllerRevision; decide the steps (see `plan`); run them, creating each Pod's
//! PersistentVolumeClaims before the Pod; prune old revisions; write the status
//! `kubectl rollout status` reads.
//!
//! Woken by changes of its StatefulSets, of their Pods and of their ControllerRevisions.

mod history;
mod identity;
mod plan;
mod status;

use crate::pod_control::controller_changes;
use baton_client::CachedPod;
use std::sync::Arc;
use std::time::Duration;

use baton_client::Informer;
use futures::future::{BoxFuture, join_all};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim, Pod, PodTemplateSpec};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use self::plan::{Plan, PlanInput, Step};
use crate::Context;
use crate::controller_revision::{owned_revisions, template_of};
use crate::failure_backoff::FailureBackoff;
use crate::pod_control::{
    EXPECTATIONS_TIMEOUT, Expectations, api_error_message, controller_uid, key_of,
    observe_pod_event, publish_event,
};

const KIND: &str = "StatefulSet";

/// A StatefulSet could not be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum SyncStatefulSetError {
    #[error(transparent)]
    Revisions(#[from] history::StatefulSetRevisionsError),
    #[error("creating pod {0}")]
    CreatePod(String, #[source] kube::Error),
    #[error("deleting pod {0}")]
    DeletePod(String, #[source] kube::Error),
    #[error("updating the identity of pod {0}")]
    UpdatePod(String, #[source] kube::Error),
    #[error("reading claim {0}")]
    ReadClaim(String, #[source] kube::Error),
    #[error("creating claim {0}")]
    CreateClaim(String, #[source] kube::Error),
    #[error("claim {0} is being deleted")]
    ClaimDeleting(String),
    #[error("handing claim {0} to its pod")]
    UpdateClaim(String, #[source] kube::Error),
    #[error("pruning revision history")]
    TruncateHistory(#[source] kube::Error),
    #[error("updating status")]
    UpdateStatus(#[source] kube::Error),
}

struct StatefulSetController {
    client: Client,
    pods: Store<CachedPod>,
    revisions: Arc<Informer<ControllerRevision>>,
    expectations: Expectations,
    errors: FailureBackoff,
    recorder: Recorder,
}

/// Registers the StatefulSet controller's watches and returns its loop.
pub fn start(ctx: &Arc<Context>) -> BoxFuture<'static, ()> {
    let revisions = Arc::new(crate::controller_revision::informer(&ctx.client));
    let this = Arc::new(StatefulSetController {
        client: ctx.client.clone(),
        pods: ctx.pods.store(),
        revisions: revisions.clone(),
        expectations: Expectations::default(),
        errors: FailureBackoff::default(),
        recorder: ctx.recorder("statefulset-controller"),
    });
    let observer = this.clone();
    ctx.pods
        .on_event(move |event| observe_pod_event(&observer.expectations, KIND, event));
    let pod_changes = controller_changes::<StatefulSet, _>(&ctx.pods);
    let revision_changes = controller_changes::<StatefulSet, _>(&revisions);
    let controller = Controller::new(
        Api::<StatefulSet>::all(ctx.client.clone()),
        watcher::Config::default(),
    );
    let concurrency = ctx.concurrent_syncs;
    async move {
        let run = async {
            revisions.wait_until_ready().await;
            controller
                .reconcile_on(pod_changes)
                .reconcile_on(revision_changes)
                .with_config(Config::default().concurrency(concurrency))
                .run(reconcile, error_policy, this)
                .for_each(|result| async move {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "statefulset reconcile");
                    }
                })
                .await;
        };
        tokio::join!(revisions.run(), run);
    }
    .boxed()
}

fn error_policy(
    set: Arc<StatefulSet>,
    error: &SyncStatefulSetError,
    this: Arc<StatefulSetController>,
) -> Action {
    let key = key_of(set.as_ref());
    let delay = this.errors.next_delay(&key);
    tracing::warn!(statefulset = %key, error = %error, retry_in = ?delay, "statefulset sync failed");
    Action::requeue(delay)
}

async fn reconcile(
    set: Arc<StatefulSet>,
    this: Arc<StatefulSetController>,
) -> Result<Action, SyncStatefulSetError> {
    let key = key_of(set.as_ref());
    let action = this.sync(&set, &key).await?;
    this.errors.reset(&key);
    Ok(action)
}

/// The template a revision holds, or the set's own when the revision cannot be read.
fn revision_template(set: &StatefulSet, revision: &ControllerRevision) -> PodTemplateSpec {
    template_of(revision).unwrap_or_else(|| set.spec.clone().unwrap_or_default().template)
}

impl StatefulSetController {
    async fn sync(&self, set: &StatefulSet, key: &str) -> Result<Action, SyncStatefulSetError> {
        let namespace = set.namespace().unwrap_or_default();
        let uid = set.uid().unwrap_or_default();
        let mut pods: Vec<Arc<CachedPod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some(namespace.as_str())
                    && controller_uid(p.as_ref()) == Some(uid.as_str())
                    && identity::member_ordinal(set, p).is_some()
            })
            .collect();
        identity::by_ordinal(set, &mut pods);
        let owned = owned_revisions(&self.revisions.store(), &namespace, &uid);
        let revisions = history::revisions(&self.client, set, &owned).await?;
        let current_name = revisions.current.name_any();
        let update_name = revisions.update.name_any();
        let min_ready = set
            .spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0);

        let mut outcome = Ok(false);
        let processed = self.expectations.satisfied(key);
        if processed {
            let plan = plan::plan(&PlanInput {
                set,
                pods: &pods,
                update_revision: &update_name,
                now: jiff::Timestamp::now(),
            });
            outcome = self.execute(set, key, plan, &revisions).await;
        }

        let mut counts = status::count(
            &pods,
            min_ready,
            jiff::Timestamp::now(),
            &current_name,
            &update_name,
        );
        if let Ok(true) = outcome {
            // The rolling update just deleted a current Pod.
            counts.current -= 1;
        }
        if let Some(next) = status::next_status(
            set,
            counts,
            &current_name,
            &update_name,
            revisions.collision_count,
        ) {
            self.write_status(set, next).await?;
        }
        outcome?;
        history::truncate(&self.client, set, &owned, &pods, &revisions)
            .await
            .map_err(SyncStatefulSetError::TruncateHistory)?;
        let mut retry = None;
        if min_ready > 0 && counts.available != identity::replicas(set) {
            retry = Some(Duration::from_secs(min_ready as u64));
        }
        if !processed {
            // Should the awaited Pod events never come, act once the expectations expire.
            retry = Some(retry.map_or(EXPECTATIONS_TIMEOUT, |r: Duration| {
                r.min(EXPECTATIONS_TIMEOUT)
            }));
        }
        Ok(retry.map_or_else(Action::await_change, Action::requeue))
    }

    /// Runs the plan's phases; returns whether the rolling update deleted a Pod.
    async fn execute(
        &self,
        set: &StatefulSet,
        key: &str,
        plan: Plan,
        revisions: &history::Revisions,
    ) -> Result<bool, SyncStatefulSetError> {
        let steps = plan.phases.iter().flatten();
        let creates = steps
            .clone()
            .filter(|s| matches!(s, Step::Create { .. }))
            .count();
        let deletes = steps
            .filter(|s| matches!(s, Step::Recreate(_) | Step::ScaleDown(_) | Step::Update(_)))
            .count();
        if creates + deletes > 0 {
            self.expectations.expect(key, creates, deletes);
        }
        let templates = (
            revision_template(set, &revisions.current),
            revision_template(set, &revisions.update),
        );
        let names = (revisions.current.name_any(), revisions.update.name_any());
        let mut updated = false;
        let mut phases = plan.phases.into_iter();
        while let Some(phase) = phases.next() {
            updated |= phase.iter().any(|s| matches!(s, Step::Update(_)));
            let mut steps = phase.into_iter();
            let mut batch = 1;
            loop {
                let chunk: Vec<Step> = if plan.monotonic {
                    steps.by_ref().take(1).collect()
                } else {
                    steps.by_ref().take(batch).collect()
                };
                if chunk.is_empty() {
                    break;
                }
                batch *= 2;
                let results = join_all(
                    chunk
                        .iter()
                        .map(|step| self.run_step(set, key, step, &templates, &names)),
                )
                .await;
                if let Some(error) = results.into_iter().find_map(Result::err) {
                    // What was planned and will not happen is not to be waited for.
                    for step in steps.chain(phases.by_ref().flatten()) {
                        match step {
                            Step::Create { .. } => self.expectations.creation_failed(key),
                            Step::Recreate(_) | Step::ScaleDown(_) | Step::Update(_) => {
                                self.expectations.deletion_failed(key)
                            }
                            Step::EnsureClaims(_) | Step::FixIdentity(_) => {}
                        }
                    }
                    return Err(error);
                }
            }
        }
        Ok(updated)
    }

    async fn run_step(
        &self,
        set: &StatefulSet,
        key: &str,
        step: &Step,
        templates: &(PodTemplateSpec, PodTemplateSpec),
        names: &(String, String),
    ) -> Result<(), SyncStatefulSetError> {
        match step {
            Step::Create {
                ordinal,
                at_update_revision,
            } => {
                let (template, revision) = if *at_update_revision {
                    (&templates.1, &names.1)
                } else {
                    (&templates.0, &names.0)
                };
                let pod = identity::new_pod(set, template, *ordinal, revision);
                let result = self.create_pod(set, pod).await;
                if result.is_err() {
                    self.expectations.creation_failed(key);
                }
                result
            }
            Step::Recreate(pod) => {
                let failed = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed");
                let (warning, reason, what) = if failed {
                    (true, "RecreatingFailedPod", "failed")
                } else {
                    (false, "RecreatingTerminatedPod", "terminated")
                };
                let note = format!(
                    "StatefulSet {}/{} is recreating {what} Pod {}",
                    set.namespace().unwrap_or_default(),
                    set.name_any(),
                    pod.name_any()
                );
                publish_event(
                    &self.recorder,
                    &set.object_ref(&()),
                    warning,
                    reason,
                    note,
                    None,
                )
                .await;
                self.delete_pod(set, key, pod).await
            }
            Step::ScaleDown(pod) => {
                if retention(set, |p| p.when_scaled.as_deref()) == "Delete" {
                    self.hand_claims_to_pod(set, pod).await?;
                }
                self.delete_pod(set, key, pod).await
            }
            Step::Update(pod) => self.delete_pod(set, key, pod).await,
            Step::EnsureClaims(pod) => self.ensure_claims(set, &pod.name_any()).await,
            Step::FixIdentity(pod) => {
                let Some(ordinal) = identity::member_ordinal(set, pod) else {
                    return Ok(());
                };
                let patch = json!({"metadata": {"labels": {
                    identity::POD_NAME_LABEL: pod.name_any(),
                    identity::POD_INDEX_LABEL: ordinal.to_string(),
                }}});
                self.pod_api(set)
                    .patch(
                        &pod.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                    .map_err(|e| SyncStatefulSetError::UpdatePod(pod.name_any(), e))?;
                self.ensure_claims(set, &pod.name_any()).await
            }
        }
    }

    fn pod_api(&self, set: &StatefulSet) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &set.namespace().unwrap_or_default())
    }

    /// Creates the Pod's claims, then the Pod, with upstream's events.
    async fn create_pod(&self, set: &StatefulSet, pod: Pod) -> Result<(), SyncStatefulSetError> {
        let name = pod.name_any();
        self.ensure_claims(set, &name).await?;
        let regarding = set.object_ref(&());
        let result = self.pod_api(set).create(&PostParams::default(), &pod).await;
        match result {
            Ok(_) => {
                let note = format!(
                    "create Pod {name} in StatefulSet {} successful",
                    set.name_any()
                );
                publish_event(
                    &self.recorder,
                    &regarding,
                    false,
                    "SuccessfulCreate",
                    note,
                    Some(pod_ref(set, &name)),
                )
                .await;
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                Err(SyncStatefulSetError::CreatePod(name, kube::Error::Api(s)))
            }
            Err(e) => {
                let note = format!(
                    "create Pod {name} in StatefulSet {} failed error: {}",
                    set.name_any(),
                    api_error_message(&e)
                );
                publish_event(
                    &self.recorder,
                    &regarding,
                    true,
                    "FailedCreate",
                    note,
                    Some(pod_ref(set, &name)),
                )
                .await;
                Err(SyncStatefulSetError::CreatePod(name, e))
            }
        }
    }

    async fn delete_pod(
        &self,
        set: &StatefulSet,
        key: &str,
        pod: &CachedPod,
    ) -> Result<(), SyncStatefulSetError> {
        let name = pod.name_any();
        let regarding = set.object_ref(&());
        match self
            .pod_api(set)
            .delete(&name, &DeleteParams::default())
            .await
        {
            Ok(_) => {
                let note = format!(
                    "delete Pod {name} in StatefulSet {} successful",
                    set.name_any()
                );
                publish_event(
                    &self.recorder,
                    &regarding,
                    false,
                    "SuccessfulDelete",
                    note,
                    Some(pod_ref(set, &name)),
                )
                .await;
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                self.expectations.deletion_failed(key);
                Ok(())
            }
            Err(e) => {
                self.expectations.deletion_failed(key);
                let note = format!(
                    "delete Pod {name} in StatefulSet {} failed error: {}",
                    set.name_any(),
                    api_error_message(&e)
                );
                publish_event(
                    &self.recorder,
                    &regarding,
                    true,
                    "FailedDelete",
                    note,
                    Some(pod_ref(set, &name)),
                )
                .await;
                Err(SyncStatefulSetError::DeletePod(name, e))
            }
        }
    }

    /// Creates the claims of `pod`'s ordinal that do not exist; a claim being deleted is an
    /// error (the Pod must wait for it to go).
    async fn ensure_claims(
        &self,
        set: &StatefulSet,
        pod_name: &str,
    ) -> Result<(), SyncStatefulSetError> {
        let Some(ordinal) = identity::member_name_ordinal(set, pod_name) else {
            return Ok(());
        };
        let api: Api<PersistentVolumeClaim> =
            Api::namespaced(self.client.clone(), &set.namespace().unwrap_or_default());
        let regarding = set.object_ref(&());
        for (_, mut claim) in identity::claims(set, ordinal) {
            let name = claim.name_any();
            match api.get_opt(&name).await {
                Ok(Some(existing)) => {
                    if existing.metadata.deletion_timestamp.is_some() {
                        return Err(SyncStatefulSetError::ClaimDeleting(name));
                    }
                }
                Ok(None) => {
                    if retention(set, |p| p.when_deleted.as_deref()) == "Delete" {
                        claim.metadata.owner_references = Some(vec![identity::claim_owner_ref(
                            "apps/v1",
                            KIND,
                            &set.name_any(),
                            &set.uid().unwrap_or_default(),
                        )]);
                    }
                    match api.create(&PostParams::default(), &claim).await {
                        Ok(_) => {
                            let note = format!(
                                "create Claim {name} Pod {} in StatefulSet {} success",
                                pod_name,
                                set.name_any()
                            );
                            publish_event(
                                &self.recorder,
                                &regarding,
                                false,
                                "SuccessfulCreate",
                                note,
                                None,
                            )
                            .await;
                        }
                        Err(kube::Error::Api(s)) if s.code == 409 => {}
                        Err(e) => {
                            let note = format!(
                                "create Claim {name} for Pod {} in StatefulSet {} failed error: {}",
                                pod_name,
                                set.name_any(),
                                api_error_message(&e)
                            );
                            publish_event(
                                &self.recorder,
                                &regarding,
                                true,
                                "FailedCreate",
                                note,
                                None,
                            )
                            .await;
                            return Err(SyncStatefulSetError::CreateClaim(name, e));
                        }
                    }
                }
                Err(e) => return Err(SyncStatefulSetError::ReadClaim(name, e)),
            }
        }
        Ok(())
    }

    /// whenScaled: Delete: before a Pod goes for scale-down, its claims get the Pod as owner,
    /// so that the garbage collector removes them after it.
    async fn hand_claims_to_pod(
        &self,
        set: &StatefulSet,
        pod: &CachedPod,
    ) -> Result<(), SyncStatefulSetError> {
        let Some(ordinal) = identity::member_ordinal(set, pod) else {
            return Ok(());
        };
        let api: Api<PersistentVolumeClaim> =
            Api::namespaced(self.client.clone(), &set.namespace().unwrap_or_default());
        let owner =
            identity::claim_owner_ref("v1", "Pod", &pod.name_any(), &pod.uid().unwrap_or_default());
        for (_, claim) in identity::claims(set, ordinal) {
            let name = claim.name_any();
            let Some(existing) = api
                .get_opt(&name)
                .await
                .map_err(|e| SyncStatefulSetError::ReadClaim(name.clone(), e))?
            else {
                continue;
            };
            let mut refs = existing
                .metadata
                .owner_references
                .clone()
                .unwrap_or_default();
            if refs.iter().any(|r| r.uid == owner.uid) {
                continue;
            }
            refs.push(owner.clone());
            let patch = json!({"metadata": {
                "ownerReferences": refs,
                "resourceVersion": existing.metadata.resource_version,
            }});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| SyncStatefulSetError::UpdateClaim(name.clone(), e))?;
        }
        Ok(())
    }

    /// Writes the status (on a conflict, once more onto the current object).
    async fn write_status(
        &self,
        set: &StatefulSet,
        status: StatefulSetStatus,
    ) -> Result<(), SyncStatefulSetError> {
        let api: Api<StatefulSet> =
            Api::namespaced(self.client.clone(), &set.namespace().unwrap_or_default());
        let mut next = set.clone();
        next.status = Some(status.clone());
        match api
            .replace_status(&set.name_any(), &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let mut fresh = api
                    .get_status(&set.name_any())
                    .await
                    .map_err(SyncStatefulSetError::UpdateStatus)?;
                fresh.status = Some(status);
                api.replace_status(&set.name_any(), &PostParams::default(), &fresh)
                    .await
                    .map(|_| ())
                    .map_err(SyncStatefulSetError::UpdateStatus)
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(SyncStatefulSetError::UpdateStatus(e)),
        }
    }
}

/// A field of the claim retention policy ("Retain" when unset).
fn retention<'a>(
    set: &'a StatefulSet,
    field: impl Fn(
        &'a k8s_openapi::api::apps::v1::StatefulSetPersistentVolumeClaimRetentionPolicy,
    ) -> Option<&'a str>,
) -> &'a str {
    set.spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref())
        .and_then(field)
        .unwrap_or("Retain")
}

fn pod_ref(set: &StatefulSet, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: set.namespace(),
        name: Some(name.into()),
        ..Default::default()
    }
}
