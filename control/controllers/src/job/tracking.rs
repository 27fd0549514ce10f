//! Counting a Job's finished Pods exactly once (upstream's tracking with finalizers). Every
//! Pod a Job creates carries the `batch.kubernetes.io/job-tracking` finalizer. A finished Pod
//! is first recorded by uid in status.uncountedTerminatedPods, then its finalizer is removed,
//! then it moves from the uncounted list into status.succeeded or status.failed (Indexed
//! Jobs record succeeded indexes in status.completedIndexes instead). A crash between the
//! steps leaves the Pod either still held by its finalizer or recorded as uncounted, so it is
//! neither lost nor counted twice. A Job is marked finished only once nothing is uncounted.

use baton_client::CachedPod;
use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::conditions::{self, COMPLETE, FAILED, FAILURE_TARGET, SUCCESS_CRITERIA_MET};
use super::indexes::{Intervals, completion_index};
use super::pods::{has_tracking_finalizer, is_failed, is_indexed};

/// At most this many uids wait in uncountedTerminatedPods at once.
pub const MAX_UNCOUNTED_PODS: usize = 500;

fn uid(pod: &CachedPod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or_default()
}

fn completions(job: &Job) -> Option<i32> {
    job.spec.as_ref().and_then(|s| s.completions)
}

/// Whether `pod`'s completion index is valid for the Job (always, for NonIndexed Jobs).
fn index_in_range(job: &Job, pod: &CachedPod) -> bool {
    !is_indexed(job) || completion_index(pod).is_some_and(|i| i < completions(job).unwrap_or(0))
}

/// The uncounted uids of a status (an empty record when there is none).
pub fn uncounted(status: &JobStatus) -> (HashSet<String>, HashSet<String>) {
    let u = status.uncounted_terminated_pods.clone().unwrap_or_default();
    (
        u.succeeded.unwrap_or_default().into_iter().collect(),
        u.failed.unwrap_or_default().into_iter().collect(),
    )
}

/// Pods that finished since the last count: still holding the finalizer, not yet recorded
/// as uncounted, not waiting for their finalizer's removal to be seen, with a valid index.
/// Returns (succeeded, failed).
pub fn new_finished(
    job: &Job,
    pods: &[Arc<CachedPod>],
    expected_removals: &HashSet<String>,
) -> (Vec<Arc<CachedPod>>, Vec<Arc<CachedPod>>) {
    let (uncounted_succeeded, uncounted_failed) =
        uncounted(job.status.as_ref().unwrap_or(&JobStatus::default()));
    let valid = |p: &CachedPod| {
        has_tracking_finalizer(p) && !expected_removals.contains(uid(p)) && index_in_range(job, p)
    };
    let phase = |p: &CachedPod| p.status.as_ref().and_then(|s| s.phase.clone());
    let succeeded = pods
        .iter()
        .filter(|p| {
            valid(p)
                && !uncounted_succeeded.contains(uid(p))
                && phase(p).as_deref() == Some("Succeeded")
        })
        .cloned()
        .collect();
    let failed = pods
        .iter()
        .filter(|p| valid(p) && !uncounted_failed.contains(uid(p)) && is_failed(p, job))
        .cloned()
        .collect();
    (succeeded, failed)
}

/// The succeeded indexes of an Indexed Job: those recorded in status.completedIndexes, and
/// those plus the indexes of succeeded Pods still to be counted. Returns (recorded, all).
pub fn succeeded_indexes(job: &Job, pods: &[Arc<CachedPod>]) -> (Intervals, Intervals) {
    let completions = completions(job).unwrap_or(0);
    let recorded = Intervals::parse(
        job.status
            .as_ref()
            .and_then(|s| s.completed_indexes.as_deref())
            .unwrap_or_default(),
        completions,
    );
    let mut new: Vec<i32> = pods
        .iter()
        .filter(|p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")
                && has_tracking_finalizer(p)
        })
        .filter_map(|p| completion_index(p))
        .filter(|i| *i < completions)
        .collect();
    new.sort_unstable();
    new.dedup();
    let all = recorded.with(&new);
    (recorded, all)
}

/// The first part of a status write: which Pods may lose their finalizer now, with their
/// outcomes recorded in `status` beforehand.
#[derive(Debug, Default)]
pub struct Tracking {
    /// Pods whose finalizer is removed once `status` is written.
    pub remove_finalizer: Vec<Arc<CachedPod>>,
    /// Whether `status` has something new to write first.
    pub needs_flush: bool,
    /// Too many uncounted Pods: the rest wait for the next reconcile, and the Job is not
    /// marked finished in this one.
    pub reached_max: bool,
    /// The terminal condition to set once nothing is uncounted.
    pub finished: Option<JobCondition>,
}

/// Records newly finished Pods in `status` (upstream's trackJobStatusAndRemoveFinalizers, up
/// to the flush). `finished` is the condition the Job is heading for; an interim condition
/// (FailureTarget, SuccessCriteriaMet) is written to `status` and the terminal one returned.
#[allow(clippy::too_many_arguments)]
pub fn track(
    job: &Job,
    status: &mut JobStatus,
    pods: &[Arc<CachedPod>],
    expected_removals: &HashSet<String>,
    finished: Option<JobCondition>,
    recorded_indexes: &Intervals,
    succeeded: Intervals,
    needs_flush: bool,
    now: jiff::Timestamp,
) -> Tracking {
    let indexed = is_indexed(job);
    let completions = completions(job).unwrap_or(0);
    let mut t = Tracking {
        needs_flush,
        finished,
        ..Default::default()
    };
    let mut record = status.uncounted_terminated_pods.take().unwrap_or_default();
    let mut uncounted_succeeded = record.succeeded.take().unwrap_or_default();
    let mut uncounted_failed = record.failed.take().unwrap_or_default();
    let mut new_indexes = Vec::new();
    let heading_for_failure = t
        .finished
        .as_ref()
        .is_some_and(|c| c.type_ != SUCCESS_CRITERIA_MET && c.type_ != COMPLETE);

    let mut sorted = pods.to_vec();
    sorted.sort_by_key(|p| completion_index(p));
    for pod in sorted {
        if !has_tracking_finalizer(&pod) || expected_removals.contains(uid(&pod)) {
            continue;
        }
        let succeeded_pod =
            pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded");
        let failed_pod = is_failed(&pod, job);
        if !(succeeded_pod || failed_pod || t.finished.is_some()) {
            continue;
        }
        let id = uid(&pod).to_string();
        if succeeded_pod && !uncounted_failed.contains(&id) {
            if indexed {
                if let Some(i) = completion_index(&pod)
                    && i < completions
                    && !recorded_indexes.has(i)
                {
                    new_indexes.push(i);
                    t.needs_flush = true;
                }
            } else if !uncounted_succeeded.contains(&id) {
                uncounted_succeeded.push(id);
                t.needs_flush = true;
            }
        } else if (failed_pod || heading_for_failure)
            && !uncounted_failed.contains(&id)
            && index_in_range(job, &pod)
        {
            uncounted_failed.push(id);
            t.needs_flush = true;
        }
        t.remove_finalizer.push(pod);
        if new_indexes.len() + uncounted_succeeded.len() + uncounted_failed.len()
            >= MAX_UNCOUNTED_PODS
        {
            t.reached_max = true;
            break;
        }
    }
    record.succeeded = Some(uncounted_succeeded);
    record.failed = Some(uncounted_failed);
    status.uncounted_terminated_pods = Some(record);

    if indexed {
        new_indexes.sort_unstable();
        let all = succeeded.with(&new_indexes);
        let text = all.to_string();
        if status.completed_indexes.as_deref().unwrap_or_default() != text {
            t.needs_flush = true;
        }
        let total = all.total();
        status.succeeded = (total > 0).then_some(total);
        status.completed_indexes = Some(text);
    }

    let list = status.conditions.get_or_insert_with(Vec::new);
    if let Some(target) = t.finished.take() {
        t.finished = Some(match target.type_.as_str() {
            FAILURE_TARGET => {
                list.push(target.clone());
                t.needs_flush = true;
                conditions::new_condition(
                    FAILED,
                    target.reason.as_deref().unwrap_or_default(),
                    target.message.as_deref().unwrap_or_default(),
                    now,
                )
            }
            SUCCESS_CRITERIA_MET => {
                if conditions::find(list, SUCCESS_CRITERIA_MET).is_none() {
                    list.push(target.clone());
                    t.needs_flush = true;
                }
                conditions::new_condition(
                    COMPLETE,
                    target.reason.as_deref().unwrap_or_default(),
                    target.message.as_deref().unwrap_or_default(),
                    now,
                )
            }
            _ => target,
        });
    }
    t
}

/// Moves the uncounted uids whose Pods no longer hold the finalizer (`with_finalizer` lists
/// those that do) into the succeeded and failed counts. Returns whether anything moved.
pub fn clean_uncounted(status: &mut JobStatus, with_finalizer: &HashSet<String>) -> bool {
    let record = status
        .uncounted_terminated_pods
        .get_or_insert_with(UncountedTerminatedPods::default);
    let mut moved = false;
    for (list, count) in [
        (&mut record.succeeded, &mut status.succeeded),
        (&mut record.failed, &mut status.failed),
    ] {
        let uids = list.take().unwrap_or_default();
        let (keep, done): (Vec<_>, Vec<_>) =
            uids.into_iter().partition(|u| with_finalizer.contains(u));
        if !done.is_empty() {
            *count = Some(count.unwrap_or(0) + done.len() as i32);
            moved = true;
        }
        *list = Some(keep);
    }
    moved
}

/// Sets the terminal condition when nothing is uncounted and no Pod is still terminating
/// (upstream's enactJobFinished). Returns whether it did.
pub fn enact_finished(
    status: &mut JobStatus,
    finished: Option<&JobCondition>,
    terminating: i32,
    now: jiff::Timestamp,
) -> bool {
    let Some(condition) = finished else {
        return false;
    };
    let (succeeded, failed) = uncounted(status);
    if !succeeded.is_empty() || !failed.is_empty() || terminating > 0 {
        return false;
    }
    let list = status.conditions.get_or_insert_with(Vec::new);
    conditions::ensure(
        list,
        &condition.type_,
        &condition.status,
        condition.reason.as_deref().unwrap_or_default(),
        condition.message.as_deref().unwrap_or_default(),
        now,
    );
    if condition.type_ == COMPLETE {
        status.completion_time = conditions::find(list, COMPLETE)
            .and_then(|c| c.last_transition_time.clone())
            .or(Some(Time(now)));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::conditions::{MESSAGE_COMPLETIONS_REACHED, REASON_COMPLETIONS_REACHED};
    use crate::job::indexes::COMPLETION_INDEX;
    use crate::job::pods::TRACKING_FINALIZER;
    use k8s_openapi::api::batch::v1::JobSpec;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::core::v1::PodStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn job(indexed: bool, completions: i32) -> Job {
        Job {
            spec: Some(JobSpec {
                completions: Some(completions),
                completion_mode: Some(if indexed { "Indexed" } else { "NonIndexed" }.into()),
                ..Default::default()
            }),
            status: Some(JobStatus::default()),
            ..Default::default()
        }
    }

    fn pod(id: &str, phase: &str, finalizer: bool, index: Option<i32>) -> Arc<CachedPod> {
        Arc::new(CachedPod::from(Pod {
            metadata: ObjectMeta {
                name: Some(id.into()),
                uid: Some(id.into()),
                finalizers: finalizer.then(|| vec![TRACKING_FINALIZER.to_string()]),
                annotations: index.map(|i| [(COMPLETION_INDEX.to_string(), i.to_string())].into()),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
        }))
    }

    fn now() -> jiff::Timestamp {
        jiff::Timestamp::from_second(100).unwrap()
    }

    fn names(pods: &[Arc<CachedPod>]) -> Vec<String> {
        pods.iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect()
    }

    #[test]
    fn finished_pods_are_counted_once_through_the_uncounted_list() {
        let j = job(false, 2);
        let pods = [
            pod("s1", "Succeeded", true, None),
            pod("f1", "Failed", true, None),
            pod("r1", "Running", true, None),
            pod("old", "Succeeded", false, None),
        ];
        let none = HashSet::new();
        let (s, f) = new_finished(&j, &pods, &none);
        assert_eq!(
            (names(&s), names(&f)),
            (vec!["s1".to_string()], vec!["f1".to_string()])
        );

        let mut status = j.status.clone().unwrap();
        let t = track(
            &j,
            &mut status,
            &pods,
            &none,
            None,
            &Intervals::default(),
            Intervals::default(),
            false,
            now(),
        );
        assert!(t.needs_flush);
        assert_eq!(names(&t.remove_finalizer), ["s1", "f1"]);
        let (us, uf) = uncounted(&status);
        assert!(us.contains("s1") && uf.contains("f1"));

        // Once s1 lost its finalizer (f1 not yet), s1 is counted and f1 stays uncounted.
        let with_finalizer: HashSet<String> = ["f1".to_string(), "r1".to_string()].into();
        assert!(clean_uncounted(&mut status, &with_finalizer));
        assert_eq!(status.succeeded, Some(1));
        assert_eq!(status.failed, None);
        let (us, uf) = uncounted(&status);
        assert!(us.is_empty() && uf.contains("f1"));
        assert!(!enact_finished(
            &mut status,
            Some(&conditions::new_condition(COMPLETE, "r", "m", now())),
            0,
            now()
        ));

        // A Job recorded as having f1 uncounted does not see it as new again.
        let mut j2 = j.clone();
        j2.status = Some(status.clone());
        let (_, f) = new_finished(&j2, &pods, &none);
        assert!(f.is_empty());
        // Nor does a Pod whose finalizer removal is expected.
        let expected: HashSet<String> = ["s1".to_string()].into();
        let (s, _) = new_finished(&j, &pods, &expected);
        assert!(s.is_empty());
    }

    #[test]
    fn failure_moves_through_failure_target_and_counts_active_pods_as_failed() {
        let j = job(false, 1);
        let pods = [pod("r1", "Running", true, None)];
        let mut status = j.status.clone().unwrap();
        let target = conditions::new_condition(FAILURE_TARGET, "BackoffLimitExceeded", "m", now());
        let t = track(
            &j,
            &mut status,
            &pods,
            &HashSet::new(),
            Some(target),
            &Intervals::default(),
            Intervals::default(),
            false,
            now(),
        );
        assert_eq!(names(&t.remove_finalizer), ["r1"]);
        assert_eq!(t.finished.as_ref().unwrap().type_, FAILED);
        assert_eq!(
            t.finished.as_ref().unwrap().reason.as_deref(),
            Some("BackoffLimitExceeded")
        );
        assert_eq!(status.conditions.as_ref().unwrap()[0].type_, FAILURE_TARGET);
        assert!(uncounted(&status).1.contains("r1"));
        assert!(clean_uncounted(&mut status, &HashSet::new()));
        assert_eq!(status.failed, Some(1));
        assert!(!enact_finished(&mut status, t.finished.as_ref(), 1, now()));
        assert!(enact_finished(&mut status, t.finished.as_ref(), 0, now()));
        assert!(conditions::find(status.conditions.as_ref().unwrap(), FAILED).is_some());
        assert_eq!(status.completion_time, None);
    }

    #[test]
    fn success_sets_criteria_met_then_complete() {
        let j = job(false, 1);
        let pods = [pod("s1", "Succeeded", false, None)];
        let mut status = JobStatus {
            succeeded: Some(1),
            ..Default::default()
        };
        let met = conditions::new_condition(
            SUCCESS_CRITERIA_MET,
            REASON_COMPLETIONS_REACHED,
            MESSAGE_COMPLETIONS_REACHED,
            now(),
        );
        let t = track(
            &j,
            &mut status,
            &pods,
            &HashSet::new(),
            Some(met),
            &Intervals::default(),
            Intervals::default(),
            false,
            now(),
        );
        assert!(t.needs_flush);
        let complete = t.finished.unwrap();
        assert_eq!(complete.type_, COMPLETE);
        assert_eq!(
            complete.message.as_deref(),
            Some(MESSAGE_COMPLETIONS_REACHED)
        );
        assert!(enact_finished(&mut status, Some(&complete), 0, now()));
        let list = status.conditions.as_ref().unwrap();
        assert_eq!(
            list.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(),
            [SUCCESS_CRITERIA_MET, COMPLETE]
        );
        assert_eq!(status.completion_time, Some(Time(now())));
    }

    #[test]
    fn indexed_jobs_record_indexes_not_uids() {
        let j = job(true, 4);
        let pods = [
            pod("a", "Succeeded", true, Some(0)),
            pod("b", "Succeeded", true, Some(2)),
            pod("c", "Succeeded", true, Some(9)),
            pod("d", "Failed", true, Some(1)),
        ];
        let (recorded, all) = succeeded_indexes(&j, &pods);
        assert_eq!(all.to_string(), "0,2");
        let mut status = j.status.clone().unwrap();
        let t = track(
            &j,
            &mut status,
            &pods,
            &HashSet::new(),
            None,
            &recorded,
            all,
            false,
            now(),
        );
        assert_eq!(status.completed_indexes.as_deref(), Some("0,2"));
        assert_eq!(status.succeeded, Some(2));
        let (us, uf) = uncounted(&status);
        assert!(us.is_empty());
        assert_eq!(uf, HashSet::from(["d".to_string()]));
        // The out-of-range Pod loses its finalizer without being counted.
        assert_eq!(names(&t.remove_finalizer), ["a", "d", "b", "c"]);
    }
}
