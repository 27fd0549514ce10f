//! What a CronJob's schedule asks for at a given moment, as upstream's controller decides
//! it: nothing (and when to look again), or a Job to start for the most recent scheduled
//! time that has not been started, after deleting the running ones (Replace) or not at all
//! while one runs (Forbid). Pure, so every case is tested without a cluster.

use std::time::Duration;

use baton_cron::Schedule;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::CronJob;

use super::jobs::job_name;

/// More missed start times than this draw a warning (upstream's limit).
const MANY_MISSED: usize = 100;
/// The controller looks again this long after the next scheduled time.
const NEXT_SCHEDULE_DELTA: Duration = Duration::from_millis(100);

/// An event to record about the CronJob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Note {
    fn warning(reason: &'static str, message: String) -> Note {
        Note {
            warning: true,
            reason,
            message,
        }
    }
}

/// What to do now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Events to record, in order.
    pub notes: Vec<Note>,
    /// Start a Job for this scheduled time.
    pub start: Option<Timestamp>,
    /// Delete the running Jobs before starting (concurrencyPolicy Replace).
    pub replace_active: bool,
    /// Look again after this long; `None`: only when the CronJob or its Jobs change.
    pub requeue: Option<Duration>,
    /// The zone the schedule is read in (for the Job's scheduled-timestamp annotation).
    pub zone: Option<TimeZone>,
}

/// Decides for `cron_job`, whose status.active already lists exactly its running Jobs, at
/// `now`. Scheduled times older than startingDeadlineSeconds are never started, as upstream.
pub fn decide(cron_job: &CronJob, now: Timestamp) -> Decision {
    let mut decision = Decision::default();
    let Some(spec) = cron_job.spec.as_ref() else {
        return decision;
    };
    let zone = match spec.time_zone.as_deref() {
        None => TimeZone::UTC,
        Some(name) => match baton_cron::time_zone(name) {
            Ok(zone) => zone,
            Err(e) => {
                decision.notes.push(Note::warning(
                    "UnknownTimeZone",
                    format!("invalid timeZone: {name:?}: {e}"),
                ));
                return decision;
            }
        },
    };
    if spec.suspend == Some(true) {
        return decision;
    }
    let schedule = match Schedule::parse(&spec.schedule) {
        Ok(schedule) => schedule,
        Err(e) => {
            decision.notes.push(Note::warning(
                "UnparseableSchedule",
                format!("unparseable schedule: {:?} : {e}", spec.schedule),
            ));
            return decision;
        }
    };
    let zone = schedule.zone().cloned().unwrap_or(zone);
    decision.zone = Some(zone.clone());
    let status = cron_job.status.as_ref();
    let last_scheduled = status
        .and_then(|s| s.last_schedule_time.as_ref())
        .map(|t| t.0);
    let created = cron_job
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(now, |t| t.0);
    // The series the schedule runs in starts here (`@every` keeps its pace from it).
    let anchor = last_scheduled.unwrap_or(created);
    let mut earliest = anchor;
    if let Some(deadline) = spec.starting_deadline_seconds {
        let oldest_allowed = now
            .checked_sub(SignedDuration::from_secs(deadline))
            .unwrap_or(Timestamp::MIN);
        earliest = earliest.max(oldest_allowed);
    }
    let series = Series {
        schedule: &schedule,
        zone: &zone,
        anchor,
    };
    let Some(unmet) = most_recent_unmet(&series, earliest, now) else {
        decision.notes.push(Note::warning(
            "InvalidSchedule",
            format!(
                "invalid schedule: {} : time difference between two schedules is less than 1 second",
                spec.schedule
            ),
        ));
        return decision;
    };
    if unmet.many_missed {
        decision.notes.push(Note::warning(
            "TooManyMissedTimes",
            "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into(),
        ));
    }
    decision.requeue = series
        .next_after(now)
        .map(|next| duration_until(next, now) + NEXT_SCHEDULE_DELTA);
    let Some(scheduled) = unmet.time else {
        return decision;
    };
    let active = status.and_then(|s| s.active.as_deref()).unwrap_or_default();
    let name = job_name(
        cron_job.metadata.name.as_deref().unwrap_or_default(),
        scheduled,
    );
    if active
        .iter()
        .any(|r| r.name.as_deref() == Some(name.as_str()))
        || last_scheduled == Some(scheduled)
    {
        return decision;
    }
    match spec.concurrency_policy.as_deref() {
        Some("Forbid") if !active.is_empty() => {
            decision.notes.push(Note {
                warning: false,
                reason: "JobAlreadyActive",
                message: "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
            });
            return decision;
        }
        Some("Replace") => decision.replace_active = !active.is_empty(),
        _ => {}
    }
    decision.start = Some(scheduled);
    decision
}

fn duration_until(at: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
}

/// The most recent scheduled time in (earliest, now], if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Unmet {
    time: Option<Timestamp>,
    /// More than [`MANY_MISSED`] times were missed.
    many_missed: bool,
}

/// A schedule's fires from its anchor on, read in its zone.
struct Series<'a> {
    schedule: &'a Schedule,
    zone: &'a TimeZone,
    anchor: Timestamp,
}

impl Series<'_> {
    fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        self.schedule.next_in_series(self.anchor, after, self.zone)
    }
}

/// `None` when the schedule never fires (within the parser's five years).
fn most_recent_unmet(series: &Series<'_>, earliest: Timestamp, now: Timestamp) -> Option<Unmet> {
    let first = series.next_after(earliest)?;
    let latest_from = |mut latest: Timestamp| {
        while let Some(next) = series.next_after(latest).filter(|t| *t <= now) {
            latest = next;
        }
        latest
    };
    if first > now {
        return Some(Unmet {
            time: None,
            many_missed: false,
        });
    }
    let mut latest = first;
    for _ in 0..MANY_MISSED {
        match series.next_after(latest).filter(|t| *t <= now) {
            Some(next) => latest = next,
            None => {
                return Some(Unmet {
                    time: Some(latest),
                    many_missed: false,
                });
            }
        }
    }
    // Many missed: rather than walk them all, look back from now over growing windows for
    // the first that holds a scheduled time, and walk only that.
    const WINDOWS: [i64; 6] = [
        60,
        3_600,
        86_400,
        32 * 86_400,
        366 * 86_400,
        5 * 366 * 86_400,
    ];
    for window in WINDOWS {
        let from = now
            .checked_sub(SignedDuration::from_secs(window))
            .unwrap_or(earliest)
            .max(earliest);
        if let Some(found) = series.next_after(from).filter(|t| *t <= now) {
            latest = found;
            break;
        }
    }
    Some(Unmet {
        time: Some(latest_from(latest)),
        many_missed: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{CronJobSpec, CronJobStatus};
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn cron_job(schedule: &str, created: &str) -> CronJob {
        let mut cj = CronJob {
            spec: Some(CronJobSpec {
                schedule: schedule.into(),
                concurrency_policy: Some("Allow".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        cj.metadata.name = Some("hello".into());
        cj.metadata.creation_timestamp = Some(Time(ts(created)));
        cj
    }

    fn with_status(mut cj: CronJob, last: Option<&str>, active: &[&str]) -> CronJob {
        cj.status = Some(CronJobStatus {
            last_schedule_time: last.map(|l| Time(ts(l))),
            active: (!active.is_empty()).then(|| {
                active
                    .iter()
                    .map(|name| ObjectReference {
                        name: Some(name.to_string()),
                        ..Default::default()
                    })
                    .collect()
            }),
            ..Default::default()
        });
        cj
    }

    #[test]
    fn waits_for_the_first_scheduled_time() {
        let cj = cron_job("*/5 * * * *", "2026-11-30T10:01:00Z");
        let d = decide(&cj, ts("2026-11-30T10:02:30Z"));
        assert_eq!(d.start, None);
        assert!(d.notes.is_empty());
        // Woken 100 ms after 10:05.
        assert_eq!(d.requeue, Some(Duration::from_millis(150_100)));
    }

    #[test]
    fn starts_the_most_recent_missed_time_once() {
        let cj = cron_job("*/5 * * * *", "2026-11-30T10:01:00Z");
        let now = ts("2026-11-30T10:17:00Z");
        let d = decide(&cj, now);
        assert_eq!(d.start, Some(ts("2026-11-30T10:15:00Z")));
        assert_eq!(d.requeue, Some(Duration::from_millis(180_100)));
        // Once it is the last scheduled time, or its Job runs, nothing more starts.
        let started = with_status(cj.clone(), Some("2026-11-30T10:15:00Z"), &[]);
        assert_eq!(decide(&started, now).start, None);
        let running = with_status(cj, None, &["hello-29933895"]);
        assert_eq!(decide(&running, now).start, None);
    }

    #[test]
    fn concurrency_policies() {
        let now = ts("2026-11-30T10:17:00Z");
        let mut cj = with_status(
            cron_job("*/5 * * * *", "2026-11-30T10:01:00Z"),
            Some("2026-11-30T10:10:00Z"),
            &["hello-29933890"],
        );
        // Allow: another one starts beside it.
        let allow = decide(&cj, now);
        assert_eq!(allow.start, Some(ts("2026-11-30T10:15:00Z")));
        assert!(!allow.replace_active);
        cj.spec.as_mut().unwrap().concurrency_policy = Some("Forbid".into());
        let forbid = decide(&cj, now);
        assert_eq!(forbid.start, None);
        assert_eq!(forbid.notes[0].reason, "JobAlreadyActive");
        assert!(forbid.requeue.is_some());
        cj.spec.as_mut().unwrap().concurrency_policy = Some("Replace".into());
        let replace = decide(&cj, now);
        assert_eq!(replace.start, Some(ts("2026-11-30T10:15:00Z")));
        assert!(replace.replace_active);
    }

    #[test]
    fn suspended_unknown_zone_and_bad_schedules_start_nothing() {
        let now = ts("2026-11-30T10:17:00Z");
        let mut cj = cron_job("*/5 * * * *", "2026-11-30T10:01:00Z");
        cj.spec.as_mut().unwrap().suspend = Some(true);
        assert_eq!(decide(&cj, now), Decision::default());
        cj.spec.as_mut().unwrap().suspend = Some(false);
        cj.spec.as_mut().unwrap().time_zone = Some("Mars/Olympus".into());
        let d = decide(&cj, now);
        assert_eq!(
            (d.start, d.notes[0].reason, d.notes[0].message.as_str()),
            (
                None,
                "UnknownTimeZone",
                "invalid timeZone: \"Mars/Olympus\": unknown time zone Mars/Olympus"
            )
        );
        let bad = cron_job("*/0 * * * *", "2026-11-30T10:01:00Z");
        assert_eq!(decide(&bad, now).notes[0].reason, "UnparseableSchedule");
        let never = cron_job("0 0 30 2 *", "2026-11-30T10:01:00Z");
        let d = decide(&never, now);
        assert_eq!((d.start, d.notes[0].reason), (None, "InvalidSchedule"));
    }

    #[test]
    fn a_starting_deadline_skips_old_times() {
        let mut cj = cron_job("0 * * * *", "2026-11-30T07:30:00Z");
        let now = ts("2026-11-30T10:20:00Z");
        assert_eq!(decide(&cj, now).start, Some(ts("2026-11-30T10:00:00Z")));
        // 10:00 is 20 minutes old: outside a 10-minute deadline.
        cj.spec.as_mut().unwrap().starting_deadline_seconds = Some(600);
        assert_eq!(decide(&cj, now).start, None);
        cj.spec.as_mut().unwrap().starting_deadline_seconds = Some(1800);
        assert_eq!(decide(&cj, now).start, Some(ts("2026-11-30T10:00:00Z")));
    }

    #[test]
    fn many_missed_times_warn_and_start_the_latest() {
        let cj = cron_job("* * * * *", "2026-11-20T00:00:00Z");
        let d = decide(&cj, ts("2026-11-30T10:17:30Z"));
        assert_eq!(d.start, Some(ts("2026-11-30T10:17:00Z")));
        assert_eq!(d.notes[0].reason, "TooManyMissedTimes");
        let hourly = cron_job("30 3 * * *", "2026-01-01T00:00:00Z");
        let d = decide(&hourly, ts("2026-11-30T10:17:30Z"));
        assert_eq!(d.start, Some(ts("2026-11-30T03:30:00Z")));
        assert_eq!(d.notes[0].reason, "TooManyMissedTimes");
    }

    #[test]
    fn every_keeps_its_pace_whatever_wakes_the_controller() {
        let cj = with_status(
            cron_job("@every 10m", "2026-11-30T10:00:00Z"),
            Some("2026-11-30T10:10:00Z"),
            &["hello-29933890"],
        );
        // Woken by a Job event at 10:13: the next run is still 10:20.
        let d = decide(&cj, ts("2026-11-30T10:13:00Z"));
        assert_eq!(d.start, None);
        assert_eq!(d.requeue, Some(Duration::from_millis(420_100)));
        // Woken late, at 10:20:30: the 10:20 run starts.
        let d = decide(&cj, ts("2026-11-30T10:20:30Z"));
        assert_eq!(d.start, Some(ts("2026-11-30T10:20:00Z")));
        // Many missed: the latest of the series, not of the look-back window.
        let d = decide(&cj, ts("2026-12-02T10:25:30Z"));
        assert_eq!(d.start, Some(ts("2026-12-02T10:20:00Z")));
        assert_eq!(d.notes[0].reason, "TooManyMissedTimes");
    }

    #[test]
    fn a_huge_starting_deadline_is_no_deadline() {
        let mut cj = cron_job("0 * * * *", "2026-11-30T07:30:00Z");
        cj.spec.as_mut().unwrap().starting_deadline_seconds = Some(i64::MAX);
        let d = decide(&cj, ts("2026-11-30T10:20:00Z"));
        assert_eq!(d.start, Some(ts("2026-11-30T10:00:00Z")));
    }

    #[test]
    fn schedules_read_in_the_time_zone() {
        let mut cj = cron_job("0 9 * * *", "2026-11-29T00:00:00Z");
        cj.spec.as_mut().unwrap().time_zone = Some("Asia/Tokyo".into());
        // 09:00 in Tokyo is 00:00Z.
        let d = decide(&cj, ts("2026-11-30T00:00:30Z"));
        assert_eq!(d.start, Some(ts("2026-11-30T00:00:00Z")));
    }
}
