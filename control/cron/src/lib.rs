//! Cron schedules as Kubernetes CronJobs read them (upstream parses `spec.schedule` with
//! robfig/cron's standard parser): five fields (minute, hour, day of month, month, day of
//! week) with `*`, `?`, lists, ranges, steps and month and weekday names; the descriptors
//! `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly` and
//! `@every DURATION`; an optional `TZ=ZONE ` or `CRON_TZ=ZONE ` prefix. Errors carry
//! upstream's texts, since users see them in the API server's answers. Around daylight
//! saving changes it fires as upstream does: a time the clocks skip does not fire that day,
//! and a time the clocks repeat fires twice.
//!
//! Written here rather than taken from a crate: the cron crates either read six or seven
//! fields with Quartz's weekday numbers and always AND the two day fields (`cron`,
//! `jiff-cron`), or work on chrono and need chrono-tz for zones (`croner`); CronJobs need the
//! five-field reading where the two day fields are ORed when both are restricted, in a zone
//! from the bundled tz database.

mod duration;
mod fields;
mod next;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use fields::Fields;

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    when: When,
    /// The zone named by a `TZ=`/`CRON_TZ=` prefix.
    zone: Option<TimeZone>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum When {
    /// Minute, hour, day of month, month and day of week.
    Fields(Fields),
    /// `@every`: a fixed delay in whole seconds (at least one).
    Every(i64),
}

/// A schedule could not be parsed; the texts are robfig/cron's, as upstream reports them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseScheduleError {
    #[error("empty spec string")]
    Empty,
    #[error("provided bad location {name}: unknown time zone {name}")]
    BadLocation { name: String },
    #[error("unrecognized descriptor: {0}")]
    UnrecognizedDescriptor(String),
    #[error("failed to parse duration {descriptor}: {message}")]
    BadEvery { descriptor: String, message: String },
    #[error("expected exactly 5 fields, found {}: [{}]", .0.len(), .0.join(" "))]
    FieldCount(Vec<String>),
    #[error("too many hyphens: {0}")]
    TooManyHyphens(String),
    #[error("too many slashes: {0}")]
    TooManySlashes(String),
    #[error("failed to parse int from {text}: strconv.Atoi: parsing {text:?}: {reason}")]
    NotANumber { text: String, reason: &'static str },
    #[error("negative number ({value}) not allowed: {text}")]
    Negative { value: i64, text: String },
    #[error("beginning of range ({start}) below minimum ({min}): {expr}")]
    BelowMinimum { start: i64, min: i64, expr: String },
    #[error("end of range ({end}) above maximum ({max}): {expr}")]
    AboveMaximum { end: i64, max: i64, expr: String },
    #[error("beginning of range ({start}) beyond end of range ({end}): {expr}")]
    BeyondEnd { start: i64, end: i64, expr: String },
    #[error("step of range should be a positive number: {0}")]
    ZeroStep(String),
}

/// A time zone name the tz database does not know (Go's `time.LoadLocation` text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown time zone {0}")]
pub struct UnknownTimeZone(pub String);

/// Looks a zone up in the bundled tz database, by its exact name (as Go's `LoadLocation`
/// on Linux: `america/new_york` is not `America/New_York`); "" and "UTC" are UTC, as in Go.
pub fn time_zone(name: &str) -> Result<TimeZone, UnknownTimeZone> {
    if name.is_empty() || name == "UTC" {
        return Ok(TimeZone::UTC);
    }
    jiff::tz::db()
        .get(name)
        .ok()
        .filter(|zone| zone.iana_name() == Some(name))
        .ok_or_else(|| UnknownTimeZone(name.to_string()))
}

impl Schedule {
    /// Parses a schedule the way upstream's CronJob validation and controller do.
    pub fn parse(spec: &str) -> Result<Schedule, ParseScheduleError> {
        if spec.is_empty() {
            return Err(ParseScheduleError::Empty);
        }
        let mut rest = spec;
        let mut zone = None;
        if let Some(prefixed) = spec
            .strip_prefix("TZ=")
            .or_else(|| spec.strip_prefix("CRON_TZ="))
        {
            let (name, after) = prefixed.split_once(' ').unwrap_or((prefixed, ""));
            zone = Some(
                time_zone(name).map_err(|_| ParseScheduleError::BadLocation {
                    name: name.to_string(),
                })?,
            );
            rest = after.trim();
        }
        let when = if rest.starts_with('@') {
            descriptor(rest)?
        } else {
            When::Fields(Fields::parse(rest)?)
        };
        Ok(Schedule { when, zone })
    }

    /// The zone a `TZ=`/`CRON_TZ=` prefix named, if any.
    pub fn zone(&self) -> Option<&TimeZone> {
        self.zone.as_ref()
    }

    /// The first time the schedule fires strictly after `after`, reading its fields in
    /// the prefix's zone, else in `zone`. `None` when it does not fire within five years
    /// (e.g. `0 0 30 2 *`).
    pub fn next_after(&self, after: Timestamp, zone: &TimeZone) -> Option<Timestamp> {
        match &self.when {
            When::Fields(fields) => next::after(fields, after, self.zone.as_ref().unwrap_or(zone)),
            When::Every(seconds) => {
                let whole = Timestamp::from_second(after.as_second()).ok()?;
                whole
                    .checked_add(jiff::SignedDuration::from_secs(*seconds))
                    .ok()
            }
        }
    }
}

impl Schedule {
    /// The first time strictly after `after` in the series that starts with the first fire
    /// after `start`. For five fields that is simply the next fire after `after`; an `@every`
    /// series keeps its own pace (`start` + n × the delay), wherever `after` falls.
    pub fn next_in_series(
        &self,
        start: Timestamp,
        after: Timestamp,
        zone: &TimeZone,
    ) -> Option<Timestamp> {
        match &self.when {
            When::Fields(_) => self.next_after(start.max(after), zone),
            When::Every(seconds) => {
                let first = self.next_after(start, zone)?;
                if first > after {
                    return Some(first);
                }
                let behind = after.as_second() - first.as_second();
                let steps = behind / seconds + 1;
                Timestamp::from_second(
                    first
                        .as_second()
                        .checked_add(steps.checked_mul(*seconds)?)?,
                )
                .ok()
            }
        }
    }
}

/// `@...`: a shorthand for five fields, or `@every DURATION`.
fn descriptor(text: &str) -> Result<When, ParseScheduleError> {
    let fields = match text {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => {
            let Some(delay) = text.strip_prefix("@every ") else {
                return Err(ParseScheduleError::UnrecognizedDescriptor(text.to_string()));
            };
            let nanos =
                duration::parse_go(delay).map_err(|message| ParseScheduleError::BadEvery {
                    descriptor: text.to_string(),
                    message,
                })?;
            // Whole seconds, at least one.
            let seconds = (nanos / 1_000_000_000).max(1);
            return Ok(When::Every(i64::try_from(seconds).unwrap_or(i64::MAX)));
        }
    };
    Ok(When::Fields(Fields::parse(fields)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn err(spec: &str) -> String {
        Schedule::parse(spec).unwrap_err().to_string()
    }

    #[test]
    fn errors_carry_upstream_texts() {
        assert_eq!(err(""), "empty spec string");
        assert_eq!(
            err("* * * *"),
            "expected exactly 5 fields, found 4: [* * * *]"
        );
        assert_eq!(
            err("61 * * * *"),
            "end of range (61) above maximum (59): 61"
        );
        assert_eq!(
            err("* * 0 * *"),
            "beginning of range (0) below minimum (1): 0"
        );
        assert_eq!(
            err("5-2 * * * *"),
            "beginning of range (5) beyond end of range (2): 5-2"
        );
        assert_eq!(
            err("*/0 * * * *"),
            "step of range should be a positive number: */0"
        );
        assert_eq!(err("1-2-3 * * * *"), "too many hyphens: 1-2-3");
        assert_eq!(err("*/2/3 * * * *"), "too many slashes: */2/3");
        assert_eq!(
            err("x * * * *"),
            "failed to parse int from x: strconv.Atoi: parsing \"x\": invalid syntax"
        );
        assert_eq!(err("* * * * 7"), "end of range (7) above maximum (6): 7");
        assert_eq!(err("@fortnightly"), "unrecognized descriptor: @fortnightly");
        assert_eq!(
            err("@every 5d"),
            "failed to parse duration @every 5d: time: unknown unit \"d\" in duration \"5d\""
        );
        assert_eq!(
            err("TZ=Mars/Olympus * * * * *"),
            "provided bad location Mars/Olympus: unknown time zone Mars/Olympus"
        );
    }

    #[test]
    fn every_minute_fires_at_the_next_whole_minute() {
        let s = Schedule::parse("* * * * *").unwrap();
        let utc = TimeZone::UTC;
        assert_eq!(
            s.next_after(ts("2026-11-30T01:02:03.5Z"), &utc),
            Some(ts("2026-11-30T01:03:00Z"))
        );
        // Strictly after: a time on the minute moves to the next one.
        assert_eq!(
            s.next_after(ts("2026-11-30T01:03:00Z"), &utc),
            Some(ts("2026-11-30T01:04:00Z"))
        );
    }

    #[test]
    fn steps_ranges_names_and_descriptors() {
        let utc = TimeZone::UTC;
        let next = |spec: &str, after: &str| {
            Schedule::parse(spec)
                .unwrap()
                .next_after(ts(after), &utc)
                .map(|t| t.to_string())
        };
        assert_eq!(
            next("*/15 * * * *", "2026-11-30T01:16:00Z").as_deref(),
            Some("2026-11-30T01:30:00Z")
        );
        // A start with a step runs to the end of the range.
        assert_eq!(
            next("50/5 * * * *", "2026-11-30T01:56:00Z").as_deref(),
            Some("2026-11-30T02:50:00Z")
        );
        assert_eq!(
            next("0 9 * JAN-mar mon-FRI", "2026-11-30T01:00:00Z").as_deref(),
            Some("2027-01-01T09:00:00Z")
        );
        assert_eq!(
            next("@hourly", "2026-11-30T01:00:00Z").as_deref(),
            Some("2026-11-30T02:00:00Z")
        );
        assert_eq!(
            next("@yearly", "2026-11-30T01:00:00Z").as_deref(),
            Some("2027-01-01T00:00:00Z")
        );
        assert_eq!(
            next("@weekly", "2026-11-30T01:00:00Z").as_deref(),
            Some("2026-12-06T00:00:00Z")
        );
        assert_eq!(
            next("@every 1h30m", "2026-11-30T01:00:00.7Z").as_deref(),
            Some("2026-11-30T02:30:00Z")
        );
        // February 30th never comes.
        assert_eq!(next("0 0 30 2 *", "2026-11-30T01:00:00Z"), None);
        // Leap days come every four years.
        assert_eq!(
            next("0 0 29 2 *", "2026-11-30T01:00:00Z").as_deref(),
            Some("2028-02-29T00:00:00Z")
        );
    }

    #[test]
    fn every_keeps_the_pace_of_its_series() {
        let utc = TimeZone::UTC;
        let every = Schedule::parse("@every 10m").unwrap();
        // Started at 10:00 (first fire 10:10): after 10:33 comes 10:40, not 10:43.
        assert_eq!(
            every.next_in_series(ts("2026-11-30T10:00:00Z"), ts("2026-11-30T10:33:00Z"), &utc),
            Some(ts("2026-11-30T10:40:00Z"))
        );
        assert_eq!(
            every.next_in_series(ts("2026-11-30T10:00:00Z"), ts("2026-11-30T10:05:00Z"), &utc),
            Some(ts("2026-11-30T10:10:00Z"))
        );
        assert_eq!(
            every.next_in_series(ts("2026-11-30T10:00:00Z"), ts("2026-11-30T10:10:00Z"), &utc),
            Some(ts("2026-11-30T10:20:00Z"))
        );
        let fields = Schedule::parse("*/10 * * * *").unwrap();
        assert_eq!(
            fields.next_in_series(ts("2026-11-30T10:00:00Z"), ts("2026-11-30T10:33:00Z"), &utc),
            Some(ts("2026-11-30T10:40:00Z"))
        );
    }

    #[test]
    fn day_fields_are_ored_when_both_are_restricted() {
        let utc = TimeZone::UTC;
        // 2026-12-01 is a Tuesday: the 1st matches the day of month.
        let both = Schedule::parse("0 0 1 * 5").unwrap();
        assert_eq!(
            both.next_after(ts("2026-11-30T01:00:00Z"), &utc),
            Some(ts("2026-12-01T00:00:00Z"))
        );
        // ...and Friday the 4th matches the day of week.
        assert_eq!(
            both.next_after(ts("2026-12-01T00:00:00Z"), &utc),
            Some(ts("2026-12-04T00:00:00Z"))
        );
        // With a `*` day of month, only the weekday counts.
        let friday = Schedule::parse("0 0 * * 5").unwrap();
        assert_eq!(
            friday.next_after(ts("2026-11-30T01:00:00Z"), &utc),
            Some(ts("2026-12-04T00:00:00Z"))
        );
        // `?` is `*`.
        let question = Schedule::parse("0 0 ? * 5").unwrap();
        assert_eq!(
            question.next_after(ts("2026-11-30T01:00:00Z"), &utc),
            Some(ts("2026-12-04T00:00:00Z"))
        );
    }

    #[test]
    fn zones_and_daylight_saving() {
        let new_york = time_zone("America/New_York").unwrap();
        let daily = Schedule::parse("30 2 * * *").unwrap();
        // 2027-03-14: clocks jump from 02:00 to 03:00 EDT; 02:30 does not exist that day
        // and is skipped, as upstream skips it.
        assert_eq!(
            daily.next_after(ts("2027-03-13T12:00:00Z"), &new_york),
            Some(ts("2027-03-15T06:30:00Z"))
        );
        // 2027-11-07: 01:30 happens twice, and runs twice (EDT 05:30Z, EST 06:30Z), as
        // upstream does (kubernetes/kubernetes#121594).
        let fold = Schedule::parse("30 1 * * *").unwrap();
        let first = fold.next_after(ts("2027-11-07T04:00:00Z"), &new_york);
        assert_eq!(first, Some(ts("2027-11-07T05:30:00Z")));
        let second = fold.next_after(first.unwrap(), &new_york);
        assert_eq!(second, Some(ts("2027-11-07T06:30:00Z")));
        assert_eq!(
            fold.next_after(second.unwrap(), &new_york),
            Some(ts("2027-11-08T06:30:00Z"))
        );
        // Every five minutes keeps its pace through the repeated hour.
        let often = Schedule::parse("*/5 * * * *").unwrap();
        assert_eq!(
            often.next_after(ts("2027-11-07T05:55:00Z"), &new_york),
            Some(ts("2027-11-07T06:00:00Z"))
        );
        // A TZ= prefix wins over the zone given.
        let tokyo = Schedule::parse("TZ=Asia/Tokyo 0 9 * * *").unwrap();
        assert_eq!(
            tokyo.next_after(ts("2026-11-30T01:00:00Z"), &TimeZone::UTC),
            Some(ts("2026-12-01T00:00:00Z"))
        );
        assert_eq!(
            time_zone("Nowhere/Else").unwrap_err().to_string(),
            "unknown time zone Nowhere/Else"
        );
        assert!(time_zone("UTC").is_ok() && time_zone("Europe/Berlin").is_ok());
        // Names are exact, as Go's.
        assert!(time_zone("europe/berlin").is_err() && time_zone("utc").is_err());
    }
}
