//! Job conditions as upstream writes them. A Job that reaches its end first gets an interim
//! condition (SuccessCriteriaMet or FailureTarget) while its Pods' outcomes are being counted
//! and its remaining Pods terminate; then the terminal one (Complete or Failed) with the same
//! reason and message.

use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Condition type: the Job finished successfully (terminal).
pub const COMPLETE: &str = "Complete";
/// Condition type: the Job failed (terminal).
pub const FAILED: &str = "Failed";
/// Condition type: the Job met its success criteria; its remaining Pods are being finished.
pub const SUCCESS_CRITERIA_MET: &str = "SuccessCriteriaMet";
/// Condition type: the Job will fail; its remaining Pods are being finished.
pub const FAILURE_TARGET: &str = "FailureTarget";
/// Condition type: the Job is suspended (spec.suspend).
pub const SUSPENDED: &str = "Suspended";

/// Reason when the Job reached its number of successful completions.
pub const REASON_COMPLETIONS_REACHED: &str = "CompletionsReached";
/// Message going with `REASON_COMPLETIONS_REACHED`.
pub const MESSAGE_COMPLETIONS_REACHED: &str = "Reached expected number of succeeded pods";
/// Reason when the Job's Pods failed more often than spec.backoffLimit allows.
pub const REASON_BACKOFF_LIMIT_EXCEEDED: &str = "BackoffLimitExceeded";
/// Message going with `REASON_BACKOFF_LIMIT_EXCEEDED`.
pub const MESSAGE_BACKOFF_LIMIT_EXCEEDED: &str = "Job has reached the specified backoff limit";
/// Reason when the Job ran longer than spec.activeDeadlineSeconds.
pub const REASON_DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
/// Message going with `REASON_DEADLINE_EXCEEDED`.
pub const MESSAGE_DEADLINE_EXCEEDED: &str = "Job was active longer than specified deadline";

/// A True condition of `type_` made `now`.
pub fn new_condition(
    type_: &str,
    reason: &str,
    message: &str,
    now: jiff::Timestamp,
) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// The condition of `type_`, if the list has it.
pub fn find<'a>(conditions: &'a [JobCondition], type_: &str) -> Option<&'a JobCondition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// The condition of `type_` when it is True.
pub fn find_true<'a>(job: &'a Job, type_: &str) -> Option<&'a JobCondition> {
    let conditions = job.status.as_ref()?.conditions.as_deref()?;
    find(conditions, type_).filter(|c| c.status == "True")
}

/// Whether the Job is finished: Complete or Failed is True.
pub fn is_finished(job: &Job) -> bool {
    finish_condition(job).is_some()
}

/// The True Complete or Failed condition of a finished Job.
pub fn finish_condition(job: &Job) -> Option<&JobCondition> {
    find_true(job, COMPLETE).or_else(|| find_true(job, FAILED))
}

/// Sets the condition of `type_` to `status`, reason and message (upstream's
/// ensureJobConditionStatus): an existing one is replaced when any of them differs, a missing
/// one is added unless it would be False. Returns whether the list changed.
pub fn ensure(
    conditions: &mut Vec<JobCondition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: jiff::Timestamp,
) -> bool {
    let mut fresh = new_condition(type_, reason, message, now);
    fresh.status = status.into();
    if let Some(existing) = conditions.iter_mut().find(|c| c.type_ == type_) {
        let same = existing.status == status
            && existing.reason.as_deref() == Some(reason)
            && existing.message.as_deref() == Some(message);
        if same {
            return false;
        }
        *existing = fresh;
        return true;
    }
    if status == "False" {
        return false;
    }
    conditions.push(fresh);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::JobStatus;

    fn t(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn ensure_adds_replaces_and_skips() {
        let mut list = Vec::new();
        assert!(!ensure(
            &mut list,
            SUSPENDED,
            "False",
            "JobResumed",
            "Job resumed",
            t(1)
        ));
        assert!(list.is_empty());
        assert!(ensure(
            &mut list,
            SUSPENDED,
            "True",
            "JobSuspended",
            "Job suspended",
            t(1)
        ));
        assert!(!ensure(
            &mut list,
            SUSPENDED,
            "True",
            "JobSuspended",
            "Job suspended",
            t(2)
        ));
        assert_eq!(list[0].last_transition_time, Some(Time(t(1))));
        assert!(ensure(
            &mut list,
            SUSPENDED,
            "False",
            "JobResumed",
            "Job resumed",
            t(3)
        ));
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].status, "False");
        assert_eq!(list[0].last_transition_time, Some(Time(t(3))));
    }

    #[test]
    fn finished_means_complete_or_failed_true() {
        let mut job = Job::default();
        assert!(!is_finished(&job));
        job.status = Some(JobStatus {
            conditions: Some(vec![new_condition(SUCCESS_CRITERIA_MET, "r", "m", t(1))]),
            ..Default::default()
        });
        assert!(!is_finished(&job));
        let mut failed = new_condition(FAILED, "r", "m", t(1));
        failed.status = "False".into();
        job.status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()
            .push(failed);
        assert!(!is_finished(&job));
        job.status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()
            .push(new_condition(COMPLETE, "r", "m", t(2)));
        assert!(is_finished(&job));
        assert_eq!(finish_condition(&job).unwrap().type_, COMPLETE);
    }
}
