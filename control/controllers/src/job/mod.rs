//! The Job controller (kube-controller-manager's "job-controller"): runs a Job's Pods until
//! enough succeed (completions; Indexed Jobs one per index) or it fails (backoffLimit,
//! activeDeadlineSeconds), parallelism at a time, replacing failed Pods after an exponential
//! backoff, and none while suspended. Pod outcomes are counted through the tracking finalizer
//! (see `tracking`). Conditions go SuccessCriteriaMet then Complete, or FailureTarget then
//! Failed, as in upstream v1.33.
//!
//! Woken by changes of its Jobs and of their Pods, and at the exact time a deadline or a
//! backoff ends.

mod backoff;
pub(crate) mod conditions;
mod expectations;
mod indexes;
mod orphans;
mod pods;
mod tracking;

use crate::pod_control::{controller_changes, create_pods_recorded};
use baton_client::CachedPod;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use baton_client::InformerEvent;
use futures::future::{BoxFuture, join_all};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use self::backoff::{BackoffRecord, BackoffStore, finish_time};
use self::conditions::{
    FAILED, FAILURE_TARGET, MESSAGE_BACKOFF_LIMIT_EXCEEDED, MESSAGE_COMPLETIONS_REACHED,
    MESSAGE_DEADLINE_EXCEEDED, REASON_BACKOFF_LIMIT_EXCEEDED, REASON_COMPLETIONS_REACHED,
    REASON_DEADLINE_EXCEEDED, SUCCESS_CRITERIA_MET, SUSPENDED, new_condition,
};
use self::expectations::{FinalizerRemovals, OutdatedVersions};
use self::indexes::{Intervals, completion_index};
use self::pods::{TRACKING_FINALIZER, has_tracking_finalizer, is_indexed};
use crate::Context;
use crate::failure_backoff::FailureBackoff;
use crate::pod_control::{
    Expectations, api_error_message, controller_key_of, controller_uid, is_pod_active,
    is_pod_ready, key_of, observe_pod_event, publish_event,
};

const KIND: &str = "Job";
/// At most this many Pods are created or deleted per reconcile.
const MAX_POD_CREATE_DELETE_PER_SYNC: usize = 500;
/// The controller that manages Jobs whose spec.managedBy is unset.
const JOB_CONTROLLER_NAME: &str = "kubernetes.io/job-controller";

/// A Job could not be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum SyncJobError {
    #[error("creating pods")]
    CreatePods(#[source] kube::Error),
    #[error("deleting pod {0}")]
    DeletePod(String, #[source] kube::Error),
    #[error("removing the tracking finalizer of pod {0}")]
    RemoveFinalizer(String, #[source] kube::Error),
    #[error("updating status")]
    UpdateStatus(#[source] kube::Error),
}

struct JobController {
    client: Client,
    pods: Store<CachedPod>,
    expectations: Expectations,
    finalizer_removals: FinalizerRemovals,
    outdated: OutdatedVersions,
    backoff: BackoffStore,
    errors: FailureBackoff,
    recorder: Recorder,
}

/// The strategic merge patch that takes the tracking finalizer off a Pod.
fn remove_finalizer_patch() -> serde_json::Value {
    json!({"metadata": {"$deleteFromPrimitiveList/finalizers": [TRACKING_FINALIZER]}})
}

/// Registers the Job controller's watches and returns its loop.
pub fn start(ctx: &Arc<Context>) -> BoxFuture<'static, ()> {
    let this = Arc::new(JobController {
        client: ctx.client.clone(),
        pods: ctx.pods.store(),
        expectations: Expectations::default(),
        finalizer_removals: FinalizerRemovals::default(),
        outdated: OutdatedVersions::default(),
        backoff: BackoffStore::default(),
        errors: FailureBackoff::default(),
        recorder: ctx.recorder("job-controller"),
    });
    let controller = Controller::new(
        Api::<Job>::all(ctx.client.clone()),
        watcher::Config::default(),
    );
    let jobs = controller.store();
    let (orphan_tx, orphan_rx) = tokio::sync::mpsc::unbounded_channel();

    let observer = this.clone();
    let orphan_jobs = jobs.clone();
    let orphans = orphan_tx.clone();
    ctx.pods.on_event(move |event| {
        observe_pod_event(&observer.expectations, KIND, event);
        observe_finalizers(&observer.finalizer_removals, event);
        for pod in event.objects() {
            if orphans::maybe_orphan(pod, &orphan_jobs) {
                let _ = orphans.send((pod.namespace().unwrap_or_default(), pod.name_any()));
            }
        }
    });
    let pod_changes = controller_changes::<Job, _>(&ctx.pods);
    let concurrency = ctx.concurrent_syncs;
    let orphan_worker = orphans::run(
        ctx.client.clone(),
        ctx.pods.store(),
        jobs,
        orphan_tx,
        orphan_rx,
    );
    async move {
        let run = controller
            .reconcile_on(pod_changes)
            .with_config(Config::default().concurrency(concurrency))
            .run(reconcile, error_policy, this)
            .for_each(|result| async move {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "job reconcile");
                }
            });
        tokio::join!(run, orphan_worker);
    }
    .boxed()
}

/// Marks finalizer removals observed: a Job's Pod seen without the finalizer, or gone.
fn observe_finalizers(removals: &FinalizerRemovals, event: &InformerEvent<'_, CachedPod>) {
    let (pod, gone) = match event {
        InformerEvent::Applied { new, .. } => (*new, false),
        InformerEvent::Deleted(pod) => (*pod, true),
    };
    if (gone || !has_tracking_finalizer(pod))
        && let Some(job) = controller_key_of(pod, KIND)
    {
        removals.observed(&job, pod.metadata.uid.as_deref().unwrap_or_default());
    }
}

fn error_policy(job: Arc<Job>, error: &SyncJobError, this: Arc<JobController>) -> Action {
    let key = key_of(job.as_ref());
    let delay = this.errors.next_delay(&key);
    tracing::warn!(job = %key, error = %error, retry_in = ?delay, "job sync failed");
    Action::requeue(delay)
}

async fn reconcile(job: Arc<Job>, this: Arc<JobController>) -> Result<Action, SyncJobError> {
    let key = key_of(job.as_ref());
    let action = this.sync(&job, &key).await?;
    this.errors.reset(&key);
    Ok(action)
}

/// What `manage` did.
#[derive(Debug, Default)]
struct Managed {
    active: i32,
    /// Pods deleted, now terminating.
    deleted: i32,
    deleted_ready: i32,
    requeue: Option<Duration>,
    error: Option<SyncJobError>,
}

fn min_duration(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// restartPolicy OnFailure: whether the containers of running Pods restarted as often as
/// the backoff limit allows failures.
fn past_backoff_limit_on_failure(job: &Job, pods: &[Arc<CachedPod>]) -> bool {
    let spec = job.spec.as_ref();
    let restart = spec
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.restart_policy.as_deref());
    if restart != Some("OnFailure") {
        return false;
    }
    let limit = spec.and_then(|s| s.backoff_limit).unwrap_or(6);
    let restarts: i32 = pods
        .iter()
        .filter(|p| {
            matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Running" | "Pending")
            )
        })
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        })
        .map(|c| c.restart_count)
        .sum();
    if limit == 0 {
        restarts > 0
    } else {
        restarts >= limit
    }
}

/// How long until the Job's activeDeadlineSeconds is reached (zero when it is), if it has one
/// and is running.
fn deadline_left(job: &Job, status: &JobStatus, now: jiff::Timestamp) -> Option<Duration> {
    let spec = job.spec.as_ref()?;
    let deadline = spec.active_deadline_seconds?;
    if spec.suspend == Some(true) {
        return None;
    }
    let start = status.start_time.as_ref()?.0;
    let elapsed = Duration::try_from(now.duration_since(start)).unwrap_or(Duration::ZERO);
    Some(Duration::from_secs(deadline.max(0) as u64).saturating_sub(elapsed))
}

impl JobController {
    async fn sync(&self, cached: &Job, key: &str) -> Result<Action, SyncJobError> {
        let spec = cached.spec.clone().unwrap_or_default();
        if spec
            .managed_by
            .as_deref()
            .is_some_and(|m| m != JOB_CONTROLLER_NAME)
        {
            return Ok(Action::await_change());
        }
        let version = cached.metadata.resource_version.clone().unwrap_or_default();
        if self.outdated.is_outdated(key, &version) {
            // This copy is older than what this controller wrote; the newer one is on its way.
            return Ok(Action::await_change());
        }
        let namespace = cached.namespace().unwrap_or_default();
        let uid = cached.uid().unwrap_or_default();
        let pods: Vec<Arc<CachedPod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some(namespace.as_str())
                    && controller_uid(p.as_ref()) == Some(uid.as_str())
            })
            .collect();

        if conditions::is_finished(cached) {
            self.backoff.remove(key);
            self.expectations.forget(key);
            // Watches deliver versions in order: no copy older than this one comes again.
            self.outdated.forget(key);
            // A backup: every Pod was counted before the Job finished.
            let expected = self.finalizer_removals.expected(key);
            let leftover: Vec<Arc<CachedPod>> = pods
                .iter()
                .filter(|p| has_tracking_finalizer(p))
                .filter(|p| !expected.contains(p.metadata.uid.as_deref().unwrap_or_default()))
                .cloned()
                .collect();
            let (_, error) = self.remove_finalizers(key, &leftover).await;
            return match error {
                Some(e) => Err(e),
                None => Ok(Action::await_change()),
            };
        }

        let mut job = cached.clone();
        let now = jiff::Timestamp::now();
        let mut status = job.status.clone().unwrap_or_default();
        status
            .uncounted_terminated_pods
            .get_or_insert_with(Default::default);
        let satisfied = self.expectations.satisfied(key);
        let expected_removals = self.finalizer_removals.expected(key);
        let active_pods: Vec<Arc<CachedPod>> =
            pods.iter().filter(|p| is_pod_active(p)).cloned().collect();
        let mut active = active_pods.len() as i32;
        let (new_succeeded, new_failed) = tracking::new_finished(&job, &pods, &expected_removals);
        let (uncounted_succeeded, uncounted_failed) = tracking::uncounted(&status);
        let mut succeeded = status.succeeded.unwrap_or(0)
            + (new_succeeded.len() + uncounted_succeeded.len()) as i32;
        let failed =
            status.failed.unwrap_or(0) + (new_failed.len() + uncounted_failed.len()) as i32;
        let mut ready = active_pods.iter().filter(|p| is_pod_ready(p)).count() as i32;
        let mut terminating = pods.iter().filter(|p| pods::is_terminating(p)).count() as i32;
        let suspended = spec.suspend == Some(true);
        if status.start_time.is_none() && !suspended {
            status.start_time = Some(Time(now));
        }
        let finish_times =
            |list: &[Arc<CachedPod>]| list.iter().map(|p| finish_time(p)).collect::<Vec<_>>();
        let new_backoff = self
            .backoff
            .get(key)
            .after(&finish_times(&new_succeeded), &finish_times(&new_failed));

        let mut requeue = None;
        let mut finished: Option<JobCondition> =
            conditions::find_true(&job, SUCCESS_CRITERIA_MET).cloned();
        if finished.is_none()
            && let Some(target) = conditions::find_true(&job, FAILURE_TARGET)
        {
            finished = Some(new_condition(
                FAILED,
                target.reason.as_deref().unwrap_or_default(),
                target.message.as_deref().unwrap_or_default(),
                now,
            ));
        }
        if finished.is_none() {
            let deadline = deadline_left(&job, &status, now);
            if failed > spec.backoff_limit.unwrap_or(6)
                || past_backoff_limit_on_failure(&job, &pods)
            {
                finished = Some(new_condition(
                    FAILURE_TARGET,
                    REASON_BACKOFF_LIMIT_EXCEEDED,
                    MESSAGE_BACKOFF_LIMIT_EXCEEDED,
                    now,
                ));
            } else if deadline == Some(Duration::ZERO) {
                finished = Some(new_condition(
                    FAILURE_TARGET,
                    REASON_DEADLINE_EXCEEDED,
                    MESSAGE_DEADLINE_EXCEEDED,
                    now,
                ));
            } else {
                requeue = deadline;
            }
        }
        let (recorded_indexes, succeeded_indexes) = if is_indexed(&job) {
            tracking::succeeded_indexes(&job, &pods)
        } else {
            Default::default()
        };
        if is_indexed(&job) {
            succeeded = succeeded_indexes.total();
        }

        let mut suspend_changed = false;
        let mut manage_error = None;
        if finished.is_some() {
            let (deleted_ready, deleted, error) = self.delete_active(&job, &active_pods).await;
            if deleted != active || !satisfied {
                // Pods may remain, or be unseen yet: finish in a later reconcile.
                finished = None;
            }
            active -= deleted;
            terminating += deleted;
            ready -= deleted_ready;
            manage_error = error;
        } else {
            let mut managed_now = false;
            if satisfied && job.metadata.deletion_timestamp.is_none() {
                let outcome = self
                    .manage(
                        &job,
                        key,
                        &active_pods,
                        succeeded,
                        terminating,
                        &succeeded_indexes,
                        &new_backoff,
                        now,
                    )
                    .await;
                active = outcome.active;
                terminating += outcome.deleted;
                ready -= outcome.deleted_ready;
                requeue = min_duration(requeue, outcome.requeue);
                manage_error = outcome.error;
                managed_now = true;
            }
            let complete = match spec.completions {
                None => succeeded > 0 && active == 0,
                Some(completions) => succeeded >= completions && active == 0,
            };
            if complete {
                finished = Some(new_condition(
                    SUCCESS_CRITERIA_MET,
                    REASON_COMPLETIONS_REACHED,
                    MESSAGE_COMPLETIONS_REACHED,
                    now,
                ));
            } else if managed_now {
                let list = status.conditions.get_or_insert_with(Vec::new);
                let regarding = job.object_ref(&());
                if suspended {
                    if conditions::ensure(
                        list,
                        SUSPENDED,
                        "True",
                        "JobSuspended",
                        "Job suspended",
                        now,
                    ) {
                        suspend_changed = true;
                        publish_event(
                            &self.recorder,
                            &regarding,
                            false,
                            "Suspended",
                            "Job suspended".into(),
                            None,
                        )
                        .await;
                    }
                } else if conditions::ensure(
                    list,
                    SUSPENDED,
                    "False",
                    "JobResumed",
                    "Job resumed",
                    now,
                ) {
                    suspend_changed = true;
                    publish_event(
                        &self.recorder,
                        &regarding,
                        false,
                        "Resumed",
                        "Job resumed".into(),
                        None,
                    )
                    .await;
                    // activeDeadlineSeconds counts from the resumption.
                    status.start_time = Some(Time(now));
                }
            }
        }

        let needs_update = suspend_changed
            || active != status.active.unwrap_or(0)
            || Some(ready) != status.ready
            || Some(terminating) != status.terminating
            || status.start_time != job.status.as_ref().and_then(|s| s.start_time.clone());
        status.active = (active > 0).then_some(active);
        status.ready = Some(ready);
        status.terminating = Some(terminating);
        job.status = Some(status);
        let tracked = self
            .track_and_flush(
                &mut job,
                key,
                &pods,
                &expected_removals,
                finished,
                needs_update,
                new_backoff,
                (&recorded_indexes, succeeded_indexes),
                terminating,
                now,
            )
            .await;
        tracked?;
        if let Some(e) = manage_error {
            return Err(e);
        }
        if !satisfied {
            // Should the awaited Pod events never come, act once the expectations expire.
            requeue = min_duration(requeue, Some(crate::pod_control::EXPECTATIONS_TIMEOUT));
        }
        Ok(requeue.map_or_else(Action::await_change, Action::requeue))
    }

    /// Creates or deletes Pods so that the right number run (upstream's manageJob).
    #[allow(clippy::too_many_arguments)]
    async fn manage(
        &self,
        job: &Job,
        key: &str,
        active_pods: &[Arc<CachedPod>],
        succeeded: i32,
        terminating: i32,
        succeeded_indexes: &Intervals,
        backoff: &BackoffRecord,
        now: jiff::Timestamp,
    ) -> Managed {
        let spec = job.spec.clone().unwrap_or_default();
        let active = active_pods.len() as i32;
        let mut out = Managed {
            active,
            ..Default::default()
        };
        if spec.suspend == Some(true) {
            let doomed = pods::active_pods_for_removal(job, active_pods, active_pods.len());
            self.delete_job_pods(job, key, &doomed, &mut out).await;
            return out;
        }
        let parallelism = spec.parallelism.unwrap_or(1);
        let want = match spec.completions {
            None if succeeded > 0 => active,
            None => parallelism,
            Some(completions) => (completions - succeeded).min(parallelism).max(0),
        };
        let excess = (active - want).max(0) as usize;
        let mut doomed = pods::active_pods_for_removal(job, active_pods, excess);
        doomed.truncate(MAX_POD_CREATE_DELETE_PER_SYNC);
        if !doomed.is_empty() {
            self.delete_job_pods(job, key, &doomed, &mut out).await;
            return out;
        }
        let replacing = if spec.pod_replacement_policy.as_deref() == Some("Failed") {
            terminating
        } else {
            0
        };
        let missing = want - replacing - active;
        if missing <= 0 {
            return out;
        }
        let wait = backoff.remaining(now);
        if !wait.is_zero() {
            out.requeue = Some(wait);
            return out;
        }
        let mut count = (missing as usize).min(MAX_POD_CREATE_DELETE_PER_SYNC);
        let indexes: Vec<Option<i32>> = if is_indexed(job) {
            let running: Vec<i32> = active_pods
                .iter()
                .filter_map(|p| completion_index(p))
                .collect();
            let found = indexes::first_pending(
                succeeded_indexes,
                &running,
                count,
                spec.completions.unwrap_or(0),
            );
            count = found.len();
            found.into_iter().map(Some).collect()
        } else {
            vec![None; count]
        };
        if count == 0 {
            return out;
        }
        self.expectations.expect(key, count, 0);
        let new_pods: Vec<Pod> = indexes.into_iter().map(|i| pods::job_pod(job, i)).collect();
        let regarding = job.object_ref(&());
        let (created, error) = create_pods_recorded(
            &self.pod_api(job),
            new_pods,
            &self.recorder,
            &regarding,
            &self.expectations,
            key,
        )
        .await;
        out.active = active + created as i32;
        out.error = error.map(SyncJobError::CreatePods);
        out
    }

    fn pod_api(&self, job: &Job) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &job.namespace().unwrap_or_default())
    }

    /// Deletes Pods the Job no longer wants; they lose the finalizer first, so they are not
    /// counted as failures (upstream's deleteJobPods).
    async fn delete_job_pods(
        &self,
        job: &Job,
        key: &str,
        doomed: &[Arc<CachedPod>],
        out: &mut Managed,
    ) {
        self.expectations.expect(key, 0, doomed.len());
        let api = self.pod_api(job);
        let patch = remove_finalizer_patch();
        let results = join_all(doomed.iter().map(|pod| {
            let api = api.clone();
            let patch = patch.clone();
            async move {
                let name = pod.name_any();
                if has_tracking_finalizer(pod) {
                    api.patch(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                        .await?;
                }
                api.delete(&name, &DeleteParams::default())
                    .await
                    .map(|_| ())
            }
        }))
        .await;
        let regarding = job.object_ref(&());
        for (pod, result) in doomed.iter().zip(results) {
            let name = pod.name_any();
            match result {
                Ok(()) => {
                    out.active -= 1;
                    out.deleted += 1;
                    if is_pod_ready(pod) {
                        out.deleted_ready += 1;
                    }
                    publish_event(
                        &self.recorder,
                        &regarding,
                        false,
                        "SuccessfulDelete",
                        format!("Deleted pod: {name}"),
                        Some(pod_ref(job, &name)),
                    )
                    .await;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    self.expectations.deletion_failed(key);
                    out.active -= 1;
                    out.deleted += 1;
                }
                Err(e) => {
                    self.expectations.deletion_failed(key);
                    publish_event(
                        &self.recorder,
                        &regarding,
                        true,
                        "FailedDelete",
                        format!("Error deleting: {}", api_error_message(&e)),
                        Some(pod_ref(job, &name)),
                    )
                    .await;
                    if out.error.is_none() {
                        out.error = Some(SyncJobError::DeletePod(name, e));
                    }
                }
            }
        }
    }

    /// Deletes the active Pods of a Job that is finishing, keeping their finalizers so that
    /// they are counted (upstream's deleteActivePods). Returns (ready deleted, deleted, error).
    async fn delete_active(
        &self,
        job: &Job,
        active: &[Arc<CachedPod>],
    ) -> (i32, i32, Option<SyncJobError>) {
        let api = self.pod_api(job);
        let results = join_all(active.iter().map(|pod| {
            let api = api.clone();
            async move { api.delete(&pod.name_any(), &DeleteParams::default()).await }
        }))
        .await;
        let (mut ready, mut deleted, mut error) = (0, 0, None);
        for (pod, result) in active.iter().zip(results) {
            match result {
                Err(e) if !is_not_found(&e) => {
                    if error.is_none() {
                        error = Some(SyncJobError::DeletePod(pod.name_any(), e));
                    }
                }
                _ => {
                    deleted += 1;
                    if is_pod_ready(pod) {
                        ready += 1;
                    }
                }
            }
        }
        (ready, deleted, error)
    }

    /// Takes the tracking finalizer off `pods`; returns the uids it came off (or whose Pod is
    /// gone) and the first error.
    async fn remove_finalizers(
        &self,
        key: &str,
        pods: &[Arc<CachedPod>],
    ) -> (HashSet<String>, Option<SyncJobError>) {
        let patch = remove_finalizer_patch();
        for pod in pods {
            self.finalizer_removals
                .expect(key, pod.metadata.uid.as_deref().unwrap_or_default());
        }
        let results = join_all(pods.iter().map(|pod| {
            let api: Api<Pod> =
                Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
            let patch = patch.clone();
            async move {
                api.patch(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Strategic(&patch),
                )
                .await
            }
        }))
        .await;
        let mut removed = HashSet::new();
        let mut error = None;
        for (pod, result) in pods.iter().zip(results) {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            match result {
                Ok(_) => {
                    removed.insert(uid);
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    removed.insert(uid);
                }
                Err(e) => {
                    self.finalizer_removals.observed(key, &uid);
                    if error.is_none() {
                        error = Some(SyncJobError::RemoveFinalizer(pod.name_any(), e));
                    }
                }
            }
        }
        (removed, error)
    }

    /// Records finished Pods in the status, removes their finalizers, counts them, and marks
    /// the Job finished when it is (upstream's trackJobStatusAndRemoveFinalizers).
    #[allow(clippy::too_many_arguments)]
    async fn track_and_flush(
        &self,
        job: &mut Job,
        key: &str,
        pods: &[Arc<CachedPod>],
        expected_removals: &HashSet<String>,
        finished: Option<JobCondition>,
        needs_update: bool,
        new_backoff: BackoffRecord,
        (recorded_indexes, succeeded_indexes): (&Intervals, Intervals),
        terminating: i32,
        now: jiff::Timestamp,
    ) -> Result<(), SyncJobError> {
        let mut with_finalizer: HashSet<String> = pods
            .iter()
            .filter(|p| has_tracking_finalizer(p))
            .filter_map(|p| p.metadata.uid.clone())
            .filter(|u| !expected_removals.contains(u))
            .collect();
        let mut status = job.status.take().unwrap_or_default();
        let tracked = tracking::track(
            job,
            &mut status,
            pods,
            expected_removals,
            finished,
            recorded_indexes,
            succeeded_indexes,
            needs_update,
            now,
        );
        job.status = Some(status);
        let mut needs_flush = tracked.needs_flush;
        if needs_flush {
            self.write_status(job, key).await?;
            self.backoff.put(key, new_backoff);
            needs_flush = false;
        }
        let (removed, removal_error) = self.remove_finalizers(key, &tracked.remove_finalizer).await;
        with_finalizer.retain(|u| !removed.contains(u));
        let status = job.status.as_mut().expect("status set above");
        if tracking::clean_uncounted(status, &with_finalizer) {
            needs_flush = true;
        }
        if let Some(e) = removal_error {
            if needs_flush {
                self.write_status(job, key).await?;
            }
            return Err(e);
        }
        let status = job.status.as_mut().expect("status set above");
        let finished_now = !tracked.reached_max
            && tracking::enact_finished(status, tracked.finished.as_ref(), terminating, now);
        if finished_now || needs_flush {
            self.write_status(job, key).await?;
        }
        if finished_now && let Some(condition) = &tracked.finished {
            self.record_finished(job, condition).await;
        }
        Ok(())
    }

    /// Replaces the Job's status; later copies of the old version are known to be stale.
    async fn write_status(&self, job: &mut Job, key: &str) -> Result<(), SyncJobError> {
        let api: Api<Job> =
            Api::namespaced(self.client.clone(), &job.namespace().unwrap_or_default());
        let written = api
            .replace_status(&job.name_any(), &PostParams::default(), job)
            .await
            .map_err(SyncJobError::UpdateStatus)?;
        // A write that changed nothing keeps the version, which then is not outdated.
        if let Some(old) = &job.metadata.resource_version
            && written.metadata.resource_version.as_ref() != Some(old)
        {
            self.outdated.overwritten(key, old);
        }
        job.metadata.resource_version = written.metadata.resource_version;
        Ok(())
    }

    async fn record_finished(&self, job: &Job, condition: &JobCondition) {
        let regarding = job.object_ref(&());
        if condition.type_ == conditions::COMPLETE {
            let completions = job.spec.as_ref().and_then(|s| s.completions);
            let succeeded = job.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0);
            if completions.is_some_and(|c| succeeded > c) {
                publish_event(
                    &self.recorder,
                    &regarding,
                    true,
                    "TooManySucceededPods",
                    "Too many succeeded pods running after completion count reached".into(),
                    None,
                )
                .await;
            }
            publish_event(
                &self.recorder,
                &regarding,
                false,
                "Completed",
                "Job completed".into(),
                None,
            )
            .await;
        } else {
            publish_event(
                &self.recorder,
                &regarding,
                true,
                condition.reason.as_deref().unwrap_or_default(),
                condition.message.clone().unwrap_or_default(),
                None,
            )
            .await;
        }
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn pod_ref(job: &Job, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: job.namespace(),
        name: Some(name.into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::JobSpec;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::core::v1::{ContainerStatus, PodSpec, PodStatus, PodTemplateSpec};

    fn job(restart: &str, limit: i32) -> Job {
        Job {
            spec: Some(JobSpec {
                backoff_limit: Some(limit),
                active_deadline_seconds: Some(30),
                template: PodTemplateSpec {
                    metadata: None,
                    spec: Some(PodSpec {
                        restart_policy: Some(restart.into()),
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn restarted(count: i32) -> Arc<CachedPod> {
        Arc::new(CachedPod::from(Pod {
            status: Some(PodStatus {
                phase: Some("Running".into()),
                container_statuses: Some(vec![ContainerStatus {
                    restart_count: count,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    #[test]
    fn restarts_count_against_the_backoff_limit_with_on_failure() {
        assert!(!past_backoff_limit_on_failure(
            &job("OnFailure", 3),
            &[restarted(2)]
        ));
        assert!(past_backoff_limit_on_failure(
            &job("OnFailure", 3),
            &[restarted(2), restarted(1)]
        ));
        assert!(past_backoff_limit_on_failure(
            &job("OnFailure", 0),
            &[restarted(1)]
        ));
        assert!(!past_backoff_limit_on_failure(
            &job("Never", 0),
            &[restarted(5)]
        ));
    }

    #[test]
    fn deadline_counts_from_start() {
        let j = job("Never", 6);
        let t = |s| jiff::Timestamp::from_second(s).unwrap();
        let mut status = JobStatus::default();
        assert_eq!(deadline_left(&j, &status, t(100)), None);
        status.start_time = Some(Time(t(100)));
        assert_eq!(
            deadline_left(&j, &status, t(110)),
            Some(Duration::from_secs(20))
        );
        assert_eq!(deadline_left(&j, &status, t(200)), Some(Duration::ZERO));
        let mut suspended = j.clone();
        suspended.spec.as_mut().unwrap().suspend = Some(true);
        assert_eq!(deadline_left(&suspended, &status, t(200)), None);
    }

    #[test]
    fn finalizer_removals_are_observed_from_pod_events() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
        let removals = FinalizerRemovals::default();
        removals.expect("ns/pi", "u1");
        let mut pod = CachedPod::from(Pod {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                uid: Some("u1".into()),
                finalizers: Some(vec![TRACKING_FINALIZER.into()]),
                owner_references: Some(vec![OwnerReference {
                    api_version: "batch/v1".into(),
                    kind: "Job".into(),
                    name: "pi".into(),
                    uid: "j".into(),
                    controller: Some(true),
                    block_owner_deletion: None,
                }]),
                ..Default::default()
            },
            ..Default::default()
        });
        observe_finalizers(
            &removals,
            &InformerEvent::Applied {
                old: None,
                new: &pod,
            },
        );
        assert_eq!(removals.expected("ns/pi").len(), 1);
        pod.metadata.finalizers = None;
        observe_finalizers(
            &removals,
            &InformerEvent::Applied {
                old: None,
                new: &pod,
            },
        );
        assert!(removals.expected("ns/pi").is_empty());
    }
}
