//! The Jobs of a CronJob: how one is made for a scheduled time, and which finished ones the
//! history limits let go.

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::job::conditions::{COMPLETE, FAILED, finish_condition};
use crate::pod_control::controller_ref;

/// The annotation that records, on each Job, the time it was scheduled for (RFC 3339 in the
/// CronJob's time zone).
pub const SCHEDULED_TIMESTAMP_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// A Job's name: the CronJob's and the scheduled time in minutes since the epoch. Also what
/// keeps two controllers (or a restarted one) from starting the same time twice.
pub fn job_name(cron_job: &str, scheduled: Timestamp) -> String {
    format!("{cron_job}-{}", scheduled.as_second().div_euclid(60))
}

/// `at` as Go's RFC 3339 writes it in `zone`: `Z` when the offset is zero.
pub fn rfc3339_in(at: Timestamp, zone: &TimeZone) -> String {
    let zoned = at.to_zoned(zone.clone());
    if zoned.offset().seconds() == 0 {
        zoned.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        zoned.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
    }
}

/// The Job a CronJob starts for `scheduled`: its template's labels, annotations and spec,
/// the scheduled-time annotation, and the CronJob as controller.
pub fn job_for(cron_job: &CronJob, scheduled: Timestamp, zone: &TimeZone) -> Job {
    let template = cron_job
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let template_meta = template.metadata.unwrap_or_default();
    let mut annotations: BTreeMap<String, String> = template_meta.annotations.unwrap_or_default();
    annotations.insert(
        SCHEDULED_TIMESTAMP_ANNOTATION.to_string(),
        rfc3339_in(scheduled, zone),
    );
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(
                cron_job.metadata.name.as_deref().unwrap_or_default(),
                scheduled,
            )),
            namespace: cron_job.metadata.namespace.clone(),
            labels: template_meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![controller_ref(cron_job)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// The finished Jobs beyond successfulJobsHistoryLimit and failedJobsHistoryLimit, oldest
/// (by start time; never started last, ties by name) first.
pub fn beyond_history_limits<'a>(cron_job: &CronJob, children: &[&'a Job]) -> Vec<&'a Job> {
    let spec = cron_job.spec.as_ref();
    let limits = [
        (COMPLETE, spec.and_then(|s| s.successful_jobs_history_limit)),
        (FAILED, spec.and_then(|s| s.failed_jobs_history_limit)),
    ];
    let mut out = vec![];
    for (outcome, limit) in limits {
        let Some(limit) = limit else { continue };
        let mut finished: Vec<&Job> = children
            .iter()
            .copied()
            .filter(|j| finish_condition(j).is_some_and(|c| c.type_ == outcome))
            .collect();
        let keep = usize::try_from(limit).unwrap_or(0);
        if finished.len() <= keep {
            continue;
        }
        finished.sort_by_key(|j| {
            let started = j.status.as_ref().and_then(|s| s.start_time.as_ref());
            (
                started.is_none(),
                started.map(|t| t.0),
                j.metadata.name.clone(),
            )
        });
        let excess = finished.len() - keep;
        out.extend(finished.into_iter().take(excess));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::conditions::new_condition;
    use k8s_openapi::api::batch::v1::{CronJobSpec, JobSpec, JobStatus, JobTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_job_carries_the_template_and_the_scheduled_time() {
        let mut cj = CronJob {
            spec: Some(CronJobSpec {
                schedule: "* * * * *".into(),
                job_template: JobTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some([("app".to_string(), "report".to_string())].into()),
                        annotations: Some([("team".to_string(), "ops".to_string())].into()),
                        ..Default::default()
                    }),
                    spec: Some(JobSpec {
                        backoff_limit: Some(2),
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            ..Default::default()
        };
        cj.metadata.name = Some("report".into());
        cj.metadata.namespace = Some("ops".into());
        cj.metadata.uid = Some("u-1".into());
        let berlin = baton_cron::time_zone("Europe/Berlin").unwrap();
        let job = job_for(&cj, ts("2026-11-30T10:15:00Z"), &berlin);
        assert_eq!(job.metadata.name.as_deref(), Some("report-29933895"));
        assert_eq!(job.metadata.namespace.as_deref(), Some("ops"));
        assert_eq!(job.metadata.labels.unwrap()["app"], "report");
        let annotations = job.metadata.annotations.unwrap();
        assert_eq!(annotations["team"], "ops");
        assert_eq!(
            annotations[SCHEDULED_TIMESTAMP_ANNOTATION],
            "2026-11-30T11:15:00+01:00"
        );
        let owner = &job.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("CronJob", "u-1", Some(true))
        );
        assert_eq!(job.spec.unwrap().backoff_limit, Some(2));
        assert_eq!(
            rfc3339_in(ts("2026-11-30T10:15:00Z"), &TimeZone::UTC),
            "2026-11-30T10:15:00Z"
        );
    }

    fn finished(name: &str, outcome: &str, started: Option<&str>) -> Job {
        let mut job = Job {
            status: Some(JobStatus {
                start_time: started.map(|s| Time(ts(s))),
                conditions: Some(vec![new_condition(
                    outcome,
                    "r",
                    "m",
                    ts("2026-11-30T10:00:00Z"),
                )]),
                ..Default::default()
            }),
            ..Default::default()
        };
        job.metadata.name = Some(name.into());
        job
    }

    #[test]
    fn history_limits_let_the_oldest_go() {
        let cj = CronJob {
            spec: Some(CronJobSpec {
                successful_jobs_history_limit: Some(1),
                failed_jobs_history_limit: Some(0),
                ..Default::default()
            }),
            ..Default::default()
        };
        let jobs = [
            finished("b", COMPLETE, Some("2026-11-30T09:00:00Z")),
            finished("a", COMPLETE, Some("2026-11-30T09:30:00Z")),
            finished("c", COMPLETE, None),
            finished("f", FAILED, Some("2026-11-30T08:00:00Z")),
            Job::default(),
        ];
        let children: Vec<&Job> = jobs.iter().collect();
        let names: Vec<&str> = beyond_history_limits(&cj, &children)
            .iter()
            .map(|j| j.metadata.name.as_deref().unwrap_or_default())
            .collect();
        // The newest success is the one never started ("c"): it stays.
        assert_eq!(names, ["b", "a", "f"]);
    }
}
