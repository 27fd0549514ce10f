//! The CronJob controller (kube-controller-manager's "cronjob-controller"): starts a Job
//! for each time a CronJob's schedule comes (in its spec.timeZone, else UTC), as upstream's
//! v2 controller does. Each sync keeps status.active to the CronJob's running Jobs (with
//! SawCompletedJob, MissingJob and UnexpectedJob events), sets status.lastSuccessfulTime,
//! starts the most recent unmet scheduled time under the concurrency policy, writes the new
//! Job to status.active and status.lastScheduleTime, and deletes finished Jobs beyond the
//! history limits.
//!
//! Woken by changes of CronJobs and of their Jobs, and 100 ms after each CronJob's next
//! scheduled time: no polling.

mod decide;
mod jobs;

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use self::decide::{Note, decide};
use self::jobs::{beyond_history_limits, job_for};
use crate::Context;
use crate::failure_backoff::FailureBackoff;
use crate::job::conditions::{COMPLETE, finish_condition};
use crate::pod_control::{
    api_error_message, controller_changes, controller_uid, key_of, publish_event,
};

/// A CronJob could not be synced.
#[derive(Debug, thiserror::Error)]
pub enum SyncCronJobError {
    #[error("reading job {0}")]
    ReadJob(String, #[source] kube::Error),
    #[error("reading the cronjob")]
    ReadCronJob(#[source] kube::Error),
    #[error("deleting job {0}")]
    DeleteJob(String, #[source] kube::Error),
    #[error("creating job {0}")]
    CreateJob(String, #[source] kube::Error),
    #[error("updating status")]
    UpdateStatus(#[source] kube::Error),
}

struct CronJobController {
    client: Client,
    jobs: Store<Job>,
    errors: FailureBackoff,
    recorder: Recorder,
}

/// Starts the CronJob controller: its own Job informer, and the loop over CronJobs.
pub fn start(ctx: &Arc<Context>) -> BoxFuture<'static, ()> {
    let jobs = baton_client::Informer::new(
        Api::<Job>::all(ctx.client.clone()),
        watcher::Config::default(),
    );
    let this = Arc::new(CronJobController {
        client: ctx.client.clone(),
        jobs: jobs.store(),
        errors: FailureBackoff::default(),
        recorder: ctx.recorder("cronjob-controller"),
    });
    let job_changes = controller_changes::<CronJob, _>(&jobs);
    let controller = Controller::new(
        Api::<CronJob>::all(ctx.client.clone()),
        watcher::Config::default(),
    );
    let concurrency = ctx.concurrent_syncs;
    async move {
        let run = async {
            // Children must be known before any decision about them.
            jobs.wait_until_ready().await;
            controller
                .reconcile_on(job_changes)
                .with_config(Config::default().concurrency(concurrency))
                .run(reconcile, error_policy, this)
                .for_each(|result| async move {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "cronjob reconcile");
                    }
                })
                .await;
        };
        tokio::join!(jobs.run(), run);
    }
    .boxed()
}

fn error_policy(
    cron_job: Arc<CronJob>,
    error: &SyncCronJobError,
    this: Arc<CronJobController>,
) -> Action {
    let key = key_of(cron_job.as_ref());
    let delay = this.errors.next_delay(&key);
    tracing::warn!(cronjob = %key, error = %error, retry_in = ?delay, "cronjob sync failed");
    Action::requeue(delay)
}

async fn reconcile(
    cron_job: Arc<CronJob>,
    this: Arc<CronJobController>,
) -> Result<Action, SyncCronJobError> {
    let key = key_of(cron_job.as_ref());
    let action = this.sync(&cron_job).await?;
    this.errors.reset(&key);
    Ok(action)
}

fn job_reference(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        field_path: None,
    }
}

fn in_active(status: &CronJobStatus, uid: Option<&str>) -> bool {
    status
        .active
        .iter()
        .flatten()
        .any(|r| uid.is_some() && r.uid.as_deref() == uid)
}

fn remove_from_active(status: &mut CronJobStatus, uid: Option<&str>) {
    if let Some(active) = status.active.as_mut() {
        active.retain(|r| r.uid.as_deref() != uid);
    }
}

impl CronJobController {
    async fn note(&self, cron_job: &CronJob, note: Note, related: Option<ObjectReference>) {
        let regarding = cron_job.object_ref(&());
        publish_event(
            &self.recorder,
            &regarding,
            note.warning,
            note.reason,
            note.message,
            related,
        )
        .await;
    }

    /// A Normal event about `job` (named as the related object, which also keeps events
    /// about different Jobs apart in the recorder's series).
    async fn normal(
        &self,
        cron_job: &CronJob,
        reason: &'static str,
        message: String,
        job: ObjectReference,
    ) {
        let note = Note {
            warning: false,
            reason,
            message,
        };
        self.note(cron_job, note, Some(job)).await;
    }

    async fn sync(&self, cached: &CronJob) -> Result<Action, SyncCronJobError> {
        let namespace = cached.namespace().unwrap_or_default();
        let name = cached.name_any();
        let cron_jobs: Api<CronJob> = Api::namespaced(self.client.clone(), &namespace);
        let job_api: Api<Job> = Api::namespaced(self.client.clone(), &namespace);
        let mut cron_job = cached.clone();
        let before = cron_job.status.clone().unwrap_or_default();
        let mut status = before.clone();
        let uid = cron_job.metadata.uid.clone();
        let children: Vec<Arc<Job>> = self
            .jobs
            .state()
            .into_iter()
            .filter(|j| {
                j.metadata.namespace.as_deref() == Some(namespace.as_str())
                    && uid.is_some()
                    && controller_uid(j.as_ref()) == uid.as_deref()
            })
            .collect();

        // status.active: exactly the running Jobs.
        for job in &children {
            let job_uid = job.metadata.uid.as_deref();
            let finished = finish_condition(job);
            let listed = in_active(&status, job_uid);
            if !listed && finished.is_none() {
                // The cache may be older than our own last status write: ask again.
                let fresh = cron_jobs
                    .get(&name)
                    .await
                    .map_err(SyncCronJobError::ReadCronJob)?;
                let fresh_status = fresh.status.clone().unwrap_or_default();
                if in_active(&fresh_status, job_uid) {
                    status = fresh_status;
                    cron_job = fresh;
                    continue;
                }
                self.note(
                    &cron_job,
                    Note {
                        warning: true,
                        reason: "UnexpectedJob",
                        message: format!(
                            "Saw a job that the controller did not create or forgot: {}",
                            job.name_any()
                        ),
                    },
                    Some(job_reference(job)),
                )
                .await;
            } else if let (true, Some(condition)) = (listed, finished) {
                remove_from_active(&mut status, job_uid);
                let message = format!(
                    "Saw completed job: {}, condition: {}",
                    job.name_any(),
                    condition.type_
                );
                self.normal(&cron_job, "SawCompletedJob", message, job_reference(job))
                    .await;
            }
            if finished.is_some_and(|c| c.type_ == COMPLETE)
                && let Some(done) = job.status.as_ref().and_then(|s| s.completion_time.clone())
                && status
                    .last_successful_time
                    .as_ref()
                    .is_none_or(|t| t.0 < done.0)
            {
                status.last_successful_time = Some(done);
            }
        }
        let listed: Vec<ObjectReference> = status.active.clone().unwrap_or_default();
        for reference in listed {
            let known = children
                .iter()
                .any(|j| j.metadata.uid.is_some() && j.metadata.uid == reference.uid);
            if known {
                continue;
            }
            // Not in the cache: make sure it is really gone.
            let job_name = reference.name.clone().unwrap_or_default();
            let gone = job_api
                .get_opt(&job_name)
                .await
                .map_err(|e| SyncCronJobError::ReadJob(job_name.clone(), e))?
                .is_none_or(|j| j.metadata.uid != reference.uid);
            if gone {
                remove_from_active(&mut status, reference.uid.as_deref());
                let message = format!("Active job went missing: {job_name}");
                self.normal(&cron_job, "MissingJob", message, reference.clone())
                    .await;
            }
        }

        let mut action = Action::await_change();
        // A failure to start a Job still lets the status and the history be kept.
        let mut failure = None;
        if cron_job.metadata.deletion_timestamp.is_none() {
            let mut current = cron_job.clone();
            current.status = Some(status.clone());
            let decision = decide(&current, Timestamp::now());
            for note in decision.notes {
                self.note(&cron_job, note, None).await;
            }
            if let Some(requeue) = decision.requeue {
                action = Action::requeue(requeue);
            }
            if let Some(scheduled) = decision.start {
                let zone = decision.zone.unwrap_or(jiff::tz::TimeZone::UTC);
                let started = async {
                    if decision.replace_active {
                        self.delete_active(&cron_job, &job_api, &mut status).await?;
                    }
                    let job = job_for(&cron_job, scheduled, &zone);
                    self.create_job(&cron_job, &job_api, &job).await
                }
                .await;
                match started {
                    Ok(Some(started)) => {
                        status
                            .active
                            .get_or_insert_with(Vec::new)
                            .push(job_reference(&started));
                        status.last_schedule_time = Some(Time(scheduled));
                    }
                    Ok(None) => {}
                    Err(e) => failure = Some(e),
                }
            }
        }
        if status != before {
            // Written only over the version these decisions were made from.
            let patch = json!({
                "metadata": {"resourceVersion": cron_job.metadata.resource_version},
                "status": {
                    "active": status.active.as_ref().filter(|a| !a.is_empty()),
                    "lastScheduleTime": status.last_schedule_time,
                    "lastSuccessfulTime": status.last_successful_time,
                },
            });
            cron_jobs
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(SyncCronJobError::UpdateStatus)?;
        }

        let children: Vec<&Job> = children.iter().map(Arc::as_ref).collect();
        for job in beyond_history_limits(&cron_job, &children) {
            if let Err(e) = self.delete_job(&cron_job, &job_api, job).await {
                failure.get_or_insert(e);
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(action),
        }
    }

    /// concurrencyPolicy Replace: deletes every running Job of the CronJob.
    async fn delete_active(
        &self,
        cron_job: &CronJob,
        job_api: &Api<Job>,
        status: &mut CronJobStatus,
    ) -> Result<(), SyncCronJobError> {
        for reference in status.active.clone().unwrap_or_default() {
            let job_name = reference.name.clone().unwrap_or_default();
            let job = job_api
                .get_opt(&job_name)
                .await
                .map_err(|e| SyncCronJobError::ReadJob(job_name.clone(), e))?;
            if let Some(job) = job.filter(|j| j.metadata.uid == reference.uid) {
                self.delete_job(cron_job, job_api, &job).await?;
            }
            remove_from_active(status, reference.uid.as_deref());
        }
        Ok(())
    }

    /// Deletes a Job (its Pods go with it: propagation Background), recording it.
    async fn delete_job(
        &self,
        cron_job: &CronJob,
        job_api: &Api<Job>,
        job: &Job,
    ) -> Result<(), SyncCronJobError> {
        let job_name = job.name_any();
        let params = DeleteParams::background().preconditions(kube::api::Preconditions {
            uid: job.metadata.uid.clone(),
            resource_version: None,
        });
        match job_api.delete(&job_name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return Ok(()),
            Err(e) => {
                let message = format!("Deleted job: {}", api_error_message(&e));
                let note = Note {
                    warning: true,
                    reason: "FailedDelete",
                    message,
                };
                self.note(cron_job, note, Some(job_reference(job))).await;
                return Err(SyncCronJobError::DeleteJob(job_name, e));
            }
        }
        let message = format!("Deleted job {job_name}");
        self.normal(cron_job, "SuccessfulDelete", message, job_reference(job))
            .await;
        Ok(())
    }

    /// Creates the Job; returns it when it should be listed as active (created now, or made
    /// by an earlier sync that did not get to record it).
    async fn create_job(
        &self,
        cron_job: &CronJob,
        job_api: &Api<Job>,
        job: &Job,
    ) -> Result<Option<Job>, SyncCronJobError> {
        let job_name = job.name_any();
        match job_api.create(&PostParams::default(), job).await {
            Ok(created) => {
                let message = format!("Created job {job_name}");
                let note = Note {
                    warning: false,
                    reason: "SuccessfulCreate",
                    message,
                };
                self.note(cron_job, note, Some(job_reference(&created)))
                    .await;
                Ok(Some(created))
            }
            Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists" => {
                let existing = job_api
                    .get(&job_name)
                    .await
                    .map_err(|e| SyncCronJobError::ReadJob(job_name.clone(), e))?;
                let ours = controller_uid(&existing) == cron_job.metadata.uid.as_deref();
                let status = cron_job.status.clone().unwrap_or_default();
                let listed = in_active(&status, existing.metadata.uid.as_deref());
                Ok((ours && !listed).then_some(existing))
            }
            Err(e) => {
                let message = format!("Error creating job: {}", api_error_message(&e));
                let note = Note {
                    warning: true,
                    reason: "FailedCreate",
                    message,
                };
                self.note(cron_job, note, Some(job_reference(job))).await;
                Err(SyncCronJobError::CreateJob(job_name, e))
            }
        }
    }
}
