//! The five fields of a schedule, each a set of allowed values.

use crate::ParseScheduleError;

/// One field: the allowed values as bits, and whether it was written as `*` or `?` (which
/// decides how the two day fields combine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    bits: u64,
    star: bool,
}

impl Field {
    /// Whether `value` is allowed.
    pub fn has(&self, value: u32) -> bool {
        value < 64 && self.bits & (1 << value) != 0
    }
}

/// Minute, hour, day of month, month and day of week (0 is Sunday).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields {
    pub minutes: Field,
    pub hours: Field,
    pub days_of_month: Field,
    pub months: Field,
    pub days_of_week: Field,
}

/// The values a field may take, and the names it accepts.
struct Bounds {
    min: i64,
    max: i64,
    names: &'static [&'static str],
}

const MINUTES: Bounds = Bounds {
    min: 0,
    max: 59,
    names: &[],
};
const HOURS: Bounds = Bounds {
    min: 0,
    max: 23,
    names: &[],
};
const DAYS_OF_MONTH: Bounds = Bounds {
    min: 1,
    max: 31,
    names: &[],
};
/// Names from `jan` (1).
const MONTHS: Bounds = Bounds {
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
/// Names from `sun` (0).
const DAYS_OF_WEEK: Bounds = Bounds {
    min: 0,
    max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

impl Fields {
    /// Parses `minute hour day-of-month month day-of-week`.
    pub fn parse(text: &str) -> Result<Fields, ParseScheduleError> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [minutes, hours, days_of_month, months, days_of_week] = parts[..] else {
            return Err(ParseScheduleError::FieldCount(
                parts.iter().map(|p| p.to_string()).collect(),
            ));
        };
        Ok(Fields {
            minutes: field(minutes, &MINUTES)?,
            hours: field(hours, &HOURS)?,
            days_of_month: field(days_of_month, &DAYS_OF_MONTH)?,
            months: field(months, &MONTHS)?,
            days_of_week: field(days_of_week, &DAYS_OF_WEEK)?,
        })
    }

    /// Whether a day matches: both day fields must when either is `*`, else either may.
    pub fn day_matches(&self, day_of_month: u32, day_of_week: u32) -> bool {
        let by_date = self.days_of_month.has(day_of_month);
        let by_weekday = self.days_of_week.has(day_of_week);
        if self.days_of_month.star || self.days_of_week.star {
            by_date && by_weekday
        } else {
            by_date || by_weekday
        }
    }
}

/// A comma-separated list of ranges.
fn field(text: &str, bounds: &Bounds) -> Result<Field, ParseScheduleError> {
    let mut out = Field {
        bits: 0,
        star: false,
    };
    // Empty items (`1,,5`, `0,30,`) are skipped, as upstream's parser skips them.
    for expr in text.split(',').filter(|e| !e.is_empty()) {
        let part = range(expr, bounds)?;
        out.bits |= part.bits;
        out.star |= part.star;
    }
    Ok(out)
}

/// `*`, `?`, `N`, `N-M`, each optionally `/STEP`; `N/STEP` runs from N to the maximum.
fn range(expr: &str, bounds: &Bounds) -> Result<Field, ParseScheduleError> {
    let mut by_slash = expr.split('/');
    let span = by_slash.next().unwrap_or_default();
    let step_text = by_slash.next();
    if by_slash.next().is_some() {
        return Err(ParseScheduleError::TooManySlashes(expr.to_string()));
    }
    let ends: Vec<&str> = span.split('-').collect();
    let (start, mut end, mut star) = if ends[0] == "*" || ends[0] == "?" {
        (bounds.min, bounds.max, true)
    } else {
        let start = int_or_name(ends[0], bounds)?;
        let end = match ends.len() {
            1 => start,
            2 => int_or_name(ends[1], bounds)?,
            _ => return Err(ParseScheduleError::TooManyHyphens(expr.to_string())),
        };
        (start, end, false)
    };
    let step = match step_text {
        None => 1,
        Some(text) => {
            let step = int(text)?;
            if ends.len() == 1 {
                end = bounds.max;
            }
            if step > 1 {
                star = false;
            }
            step
        }
    };
    let expr = expr.to_string();
    if start < bounds.min {
        return Err(ParseScheduleError::BelowMinimum {
            start,
            min: bounds.min,
            expr,
        });
    }
    if end > bounds.max {
        return Err(ParseScheduleError::AboveMaximum {
            end,
            max: bounds.max,
            expr,
        });
    }
    if start > end {
        return Err(ParseScheduleError::BeyondEnd { start, end, expr });
    }
    if step == 0 {
        return Err(ParseScheduleError::ZeroStep(expr));
    }
    let step = usize::try_from(step).unwrap_or(usize::MAX);
    let bits = (start..=end)
        .step_by(step)
        .fold(0u64, |bits, v| bits | 1 << v);
    Ok(Field { bits, star })
}

fn int_or_name(text: &str, bounds: &Bounds) -> Result<i64, ParseScheduleError> {
    let lower = text.to_ascii_lowercase();
    if let Some(i) = bounds.names.iter().position(|name| *name == lower) {
        // Month names count from 1, weekday names from 0: both from the field's minimum.
        return Ok(bounds.min + i as i64);
    }
    int(text)
}

/// A non-negative decimal integer, with Go's `strconv.Atoi` error texts.
fn int(text: &str) -> Result<i64, ParseScheduleError> {
    let value = text
        .parse::<i64>()
        .map_err(|e| ParseScheduleError::NotANumber {
            text: text.to_string(),
            reason: match e.kind() {
                std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
                    "value out of range"
                }
                _ => "invalid syntax",
            },
        })?;
    if value < 0 {
        return Err(ParseScheduleError::Negative {
            value,
            text: text.to_string(),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_ranges_and_steps() {
        let f = Fields::parse("1,5-7,*/20 */6 1-31/10 feb,Nov ?").unwrap();
        let minutes: Vec<u32> = (0..60).filter(|m| f.minutes.has(*m)).collect();
        assert_eq!(minutes, [0, 1, 5, 6, 7, 20, 40]);
        let hours: Vec<u32> = (0..24).filter(|h| f.hours.has(*h)).collect();
        assert_eq!(hours, [0, 6, 12, 18]);
        let days: Vec<u32> = (1..32).filter(|d| f.days_of_month.has(*d)).collect();
        assert_eq!(days, [1, 11, 21, 31]);
        let months: Vec<u32> = (1..13).filter(|m| f.months.has(*m)).collect();
        assert_eq!(months, [2, 11]);
        // A stepped `*` is no longer `*`; `*/1` and `?` still are.
        assert!(!f.minutes.star && !f.hours.star && f.days_of_week.star);
        assert!(Fields::parse("*/1 * * * *").unwrap().minutes.star);
    }

    #[test]
    fn empty_list_items_are_skipped() {
        let f = Fields::parse("0,30, * * * *").unwrap();
        let minutes: Vec<u32> = (0..60).filter(|m| f.minutes.has(*m)).collect();
        assert_eq!(minutes, [0, 30]);
        assert_eq!(
            Fields::parse("1,,5 * * * *").unwrap(),
            Fields::parse("1,5 * * * *").unwrap()
        );
    }

    #[test]
    fn weekday_names_count_from_sunday() {
        let f = Fields::parse("0 0 * * SUN,sat").unwrap();
        let days: Vec<u32> = (0..7).filter(|d| f.days_of_week.has(*d)).collect();
        assert_eq!(days, [0, 6]);
    }

    #[test]
    fn negative_and_huge_numbers_are_refused() {
        assert_eq!(
            Fields::parse("-1 * * * *").unwrap_err().to_string(),
            "failed to parse int from : strconv.Atoi: parsing \"\": invalid syntax"
        );
        assert_eq!(
            Fields::parse("99999999999999999999 * * * *")
                .unwrap_err()
                .to_string(),
            "failed to parse int from 99999999999999999999: strconv.Atoi: parsing \"99999999999999999999\": value out of range"
        );
        assert_eq!(
            Fields::parse("1/-2 * * * *").unwrap_err().to_string(),
            "negative number (-2) not allowed: -2"
        );
    }
}
