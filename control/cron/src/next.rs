//! When a five-field schedule next fires in a time zone.
//!
//! The search walks civil (wall-clock) minutes forward, skipping whole months, days and
//! hours that cannot match, and turns each match into instants: none when the clocks skip
//! that minute, two when they repeat it. Because a repeated hour runs the civil clock
//! backwards, the search starts again at each such transition before the answer, so that
//! minutes of the second pass are found too.

use jiff::civil::{Date, DateTime};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp};

use crate::fields::Fields;

/// How far ahead the search looks, in years (as upstream's parser).
const YEARS_AHEAD: i16 = 5;

/// The first instant strictly after `after` at which `fields` fire in `zone`.
pub fn after(fields: &Fields, after: Timestamp, zone: &TimeZone) -> Option<Timestamp> {
    let start = zone.to_datetime(after);
    let last_year = start.year().saturating_add(YEARS_AHEAD);
    let mut best = search(fields, after, start, last_year, zone);
    for transition in zone.following(after) {
        let at = transition.timestamp();
        if best.is_some_and(|b| b <= at) || zone.to_datetime(at).year() > last_year {
            break;
        }
        // Only a transition that turns the clocks back can hold an earlier answer.
        let before = zone.to_offset(at.checked_sub(SignedDuration::from_nanos(1)).ok()?);
        if transition.offset() >= before {
            continue;
        }
        // The civil minute before the clock's first reading after the transition.
        let restart = zone
            .to_datetime(at)
            .checked_sub(SignedDuration::from_mins(1))
            .ok()?;
        let found = search(fields, after, restart, last_year, zone);
        best = match (best, found) {
            (Some(b), Some(f)) => Some(b.min(f)),
            (b, f) => b.or(f),
        };
    }
    best
}

/// Walks civil minutes after `from` up to the end of `last_year` and returns the first
/// instant of a matching minute that lies after `after`.
fn search(
    fields: &Fields,
    after: Timestamp,
    from: DateTime,
    last_year: i16,
    zone: &TimeZone,
) -> Option<Timestamp> {
    let mut at = Minute::following(from);
    while at.year <= last_year {
        let month_days = Date::new(at.year, at.month, 1).ok()?.days_in_month();
        if !fields.months.has(at.month as u32) || at.day > month_days {
            at.next_month();
            continue;
        }
        let date = Date::new(at.year, at.month, at.day).ok()?;
        let weekday = date.weekday().to_sunday_zero_offset() as u32;
        if !fields.day_matches(at.day as u32, weekday) {
            at.next_day();
        } else if !fields.hours.has(at.hour as u32) {
            at.next_hour();
        } else if !fields.minutes.has(at.minute as u32) {
            at.next_minute();
        } else {
            let civil = date.at(at.hour, at.minute, 0, 0);
            let found = instants(zone, civil)
                .into_iter()
                .flatten()
                .find(|t| *t > after);
            if found.is_some() {
                return found;
            }
            at.next_minute();
        }
    }
    None
}

/// The instants a civil minute names in `zone`: none in a gap, two in a fold.
fn instants(zone: &TimeZone, civil: DateTime) -> [Option<Timestamp>; 2] {
    match zone.to_ambiguous_timestamp(civil).offset() {
        AmbiguousOffset::Unambiguous { offset } => [offset.to_timestamp(civil).ok(), None],
        AmbiguousOffset::Gap { .. } => [None, None],
        AmbiguousOffset::Fold { before, after } => [
            before.to_timestamp(civil).ok(),
            after.to_timestamp(civil).ok(),
        ],
    }
}

/// A civil minute whose fields may run past their ranges until the search checks them
/// (`day` may exceed the month's length).
#[derive(Debug, Clone, Copy)]
struct Minute {
    year: i16,
    month: i8,
    day: i8,
    hour: i8,
    minute: i8,
}

impl Minute {
    /// The whole minute after `from`'s minute.
    fn following(from: DateTime) -> Minute {
        let mut at = Minute {
            year: from.year(),
            month: from.month(),
            day: from.day(),
            hour: from.hour(),
            minute: from.minute(),
        };
        at.next_minute();
        at
    }

    fn next_month(&mut self) {
        (self.day, self.hour, self.minute) = (1, 0, 0);
        self.month += 1;
        if self.month > 12 {
            self.month = 1;
            self.year = self.year.saturating_add(1);
        }
    }

    /// The next day; past the month's end the search moves on to the next month.
    fn next_day(&mut self) {
        (self.hour, self.minute) = (0, 0);
        self.day += 1;
    }

    fn next_hour(&mut self) {
        self.minute = 0;
        self.hour += 1;
        if self.hour > 23 {
            self.next_day();
        }
    }

    fn next_minute(&mut self) {
        self.minute += 1;
        if self.minute > 59 {
            self.next_hour();
        }
    }
}
