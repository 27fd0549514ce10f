//! The TTL-after-finished controller (kube-controller-manager's
//! "ttl-after-finished-controller"): deletes a finished Job (Complete or Failed) once
//! spec.ttlSecondsAfterFinished have passed since it finished, its Pods going with it (the
//! garbage collector deletes them, propagation Background). A Job not yet expired is looked
//! at again exactly when it expires; before deleting, the Job is read afresh from the API
//! server, in case its TTL just changed, and deleted only if it is still the same Job.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{DeleteParams, Preconditions};
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use crate::Context;
use crate::failure_backoff::FailureBackoff;
use crate::job::conditions::finish_condition;
use crate::pod_control::key_of;

/// A Job could not be cleaned up.
#[derive(Debug, thiserror::Error)]
pub enum CleanupJobError {
    #[error("the Job finished but its {0} condition has no lastTransitionTime")]
    NoFinishTime(String),
    #[error("reading the Job")]
    Read(#[source] kube::Error),
    #[error("deleting the Job")]
    Delete(#[source] kube::Error),
}

/// When a Job finished and when it expires, if it is finished, has a TTL and is not being
/// deleted already.
pub fn finish_and_expiry(
    job: &Job,
) -> Result<Option<(jiff::Timestamp, jiff::Timestamp)>, CleanupJobError> {
    let ttl = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished);
    let (Some(ttl), None) = (ttl, &job.metadata.deletion_timestamp) else {
        return Ok(None);
    };
    let Some(condition) = finish_condition(job) else {
        return Ok(None);
    };
    let finished = condition
        .last_transition_time
        .as_ref()
        .ok_or_else(|| CleanupJobError::NoFinishTime(condition.type_.clone()))?
        .0;
    let expires = finished + jiff::SignedDuration::from_secs(i64::from(ttl));
    Ok(Some((finished, expires)))
}

/// How long until `expires` at `now` (zero once it passed).
pub fn time_left(expires: jiff::Timestamp, now: jiff::Timestamp) -> Duration {
    Duration::try_from(expires.duration_since(now)).unwrap_or(Duration::ZERO)
}

struct TtlController {
    client: Client,
    errors: FailureBackoff,
}

/// Registers nothing on the shared informers (it watches only Jobs) and returns the loop.
pub fn start(ctx: &Arc<Context>) -> BoxFuture<'static, ()> {
    let this = Arc::new(TtlController {
        client: ctx.client.clone(),
        errors: FailureBackoff::default(),
    });
    let controller = Controller::new(
        Api::<Job>::all(ctx.client.clone()),
        watcher::Config::default(),
    );
    let concurrency = ctx.concurrent_syncs;
    async move {
        controller
            .with_config(Config::default().concurrency(concurrency))
            .run(reconcile, error_policy, this)
            .for_each(|result| async move {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "ttl-after-finished reconcile");
                }
            })
            .await;
    }
    .boxed()
}

fn error_policy(job: Arc<Job>, error: &CleanupJobError, this: Arc<TtlController>) -> Action {
    let key = key_of(job.as_ref());
    let delay = this.errors.next_delay(&key);
    tracing::warn!(job = %key, error = %error, retry_in = ?delay, "cleaning up a finished job failed");
    Action::requeue(delay)
}

async fn reconcile(job: Arc<Job>, this: Arc<TtlController>) -> Result<Action, CleanupJobError> {
    let key = key_of(job.as_ref());
    let action = this.process(&job, &key).await?;
    this.errors.reset(&key);
    Ok(action)
}

impl TtlController {
    async fn process(&self, job: &Job, key: &str) -> Result<Action, CleanupJobError> {
        let now = jiff::Timestamp::now();
        let Some((finished, expires)) = finish_and_expiry(job)? else {
            return Ok(Action::await_change());
        };
        if finished > now {
            tracing::warn!(job = %key, "found a job that finished in the future (clock skew?); its cleanup is deferred");
        }
        let left = time_left(expires, now);
        if !left.is_zero() {
            return Ok(Action::requeue(left));
        }
        // The cached Job says it expired; the TTL may have changed since: ask again.
        let api: Api<Job> =
            Api::namespaced(self.client.clone(), &job.namespace().unwrap_or_default());
        let Some(fresh) = api
            .get_opt(&job.name_any())
            .await
            .map_err(CleanupJobError::Read)?
        else {
            return Ok(Action::await_change());
        };
        let Some((_, expires)) = finish_and_expiry(&fresh)? else {
            return Ok(Action::await_change());
        };
        let left = time_left(expires, jiff::Timestamp::now());
        if !left.is_zero() {
            return Ok(Action::requeue(left));
        }
        tracing::info!(job = %key, "cleaning up finished job (ttlSecondsAfterFinished)");
        let params = DeleteParams::background().preconditions(Preconditions {
            uid: fresh.metadata.uid.clone(),
            resource_version: None,
        });
        match api.delete(&fresh.name_any(), &params).await {
            Ok(_) => Ok(Action::await_change()),
            // Gone, or replaced by another Job of the same name.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                Ok(Action::await_change())
            }
            Err(e) => Err(CleanupJobError::Delete(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::conditions::{COMPLETE, FAILED, new_condition};
    use k8s_openapi::api::batch::v1::{JobSpec, JobStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn t(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(s).unwrap()
    }

    fn job(ttl: Option<i32>, condition: Option<(&str, &str, i64)>) -> Job {
        Job {
            spec: Some(JobSpec {
                ttl_seconds_after_finished: ttl,
                ..Default::default()
            }),
            status: Some(JobStatus {
                conditions: condition.map(|(type_, status, at)| {
                    let mut c = new_condition(type_, "r", "m", t(at));
                    c.status = status.into();
                    vec![c]
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn expiry_is_finish_time_plus_ttl() {
        assert_eq!(
            finish_and_expiry(&job(Some(30), Some((COMPLETE, "True", 100)))).unwrap(),
            Some((t(100), t(130)))
        );
        assert_eq!(
            finish_and_expiry(&job(Some(0), Some((FAILED, "True", 100)))).unwrap(),
            Some((t(100), t(100)))
        );
        // No TTL, not finished, or already being deleted: nothing to do.
        assert_eq!(
            finish_and_expiry(&job(None, Some((COMPLETE, "True", 100)))).unwrap(),
            None
        );
        assert_eq!(finish_and_expiry(&job(Some(30), None)).unwrap(), None);
        assert_eq!(
            finish_and_expiry(&job(Some(30), Some((COMPLETE, "False", 100)))).unwrap(),
            None
        );
        let mut deleting = job(Some(30), Some((COMPLETE, "True", 100)));
        deleting.metadata.deletion_timestamp = Some(Time(t(120)));
        assert_eq!(finish_and_expiry(&deleting).unwrap(), None);
        let mut no_time = job(Some(30), Some((COMPLETE, "True", 100)));
        no_time
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .last_transition_time = None;
        assert!(finish_and_expiry(&no_time).is_err());
    }

    #[test]
    fn time_left_counts_down_to_zero() {
        assert_eq!(time_left(t(130), t(100)), Duration::from_secs(30));
        assert_eq!(time_left(t(130), t(130)), Duration::ZERO);
        assert_eq!(time_left(t(130), t(200)), Duration::ZERO);
    }
}
