//! Go's duration syntax (`time.ParseDuration`), which `@every` takes: a sequence of decimal
//! numbers, each with a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), e.g. `1h30m`, `1.5s`.

/// Nanoseconds per unit.
const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Parses a duration into nanoseconds (negative ones count as zero: `@every` rounds them up
/// to a second anyway); the error is Go's text.
pub fn parse_go(text: &str) -> Result<u128, String> {
    let invalid = || format!("time: invalid duration {text:?}");
    let mut rest = text;
    let negative = rest.starts_with('-');
    if let Some(unsigned) = rest.strip_prefix(['-', '+']) {
        rest = unsigned;
    }
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let whole_len = digits(rest);
        let whole: u128 = if whole_len == 0 {
            0
        } else {
            rest[..whole_len].parse().map_err(|_| invalid())?
        };
        rest = &rest[whole_len..];
        let mut fraction = (0u128, 1u128);
        if let Some(after_dot) = rest.strip_prefix('.') {
            let fraction_len = digits(after_dot);
            // Go keeps about 19 digits; 18 keep the product below u128's limit.
            for d in after_dot[..fraction_len].bytes().take(18) {
                fraction = (fraction.0 * 10 + u128::from(d - b'0'), fraction.1 * 10);
            }
            rest = &after_dot[fraction_len..];
            if whole_len == 0 && fraction_len == 0 {
                return Err(invalid());
            }
        } else if whole_len == 0 {
            return Err(invalid());
        }
        let unit_len = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        if unit.is_empty() {
            return Err(format!("time: missing unit in duration {text:?}"));
        }
        let Some((_, per)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(format!("time: unknown unit {unit:?} in duration {text:?}"));
        };
        rest = &rest[unit_len..];
        total = whole
            .checked_mul(*per)
            .and_then(|w| w.checked_add(fraction.0 * per / fraction.1))
            .and_then(|v| total.checked_add(v))
            .filter(|v| *v <= i64::MAX as u128)
            .ok_or_else(invalid)?;
    }
    Ok(if negative { 0 } else { total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go("1h30m"), Ok(5_400_000_000_000));
        assert_eq!(parse_go("1.5s"), Ok(1_500_000_000));
        assert_eq!(parse_go(".5m"), Ok(30_000_000_000));
        assert_eq!(parse_go("250ms"), Ok(250_000_000));
        // Long fractions are cut, never overflow.
        assert_eq!(
            parse_go("0.99999999999999999999999999999999h"),
            Ok(3_599_999_999_999)
        );
        assert_eq!(parse_go("0"), Ok(0));
        assert_eq!(parse_go("-5m"), Ok(0));
        assert_eq!(
            parse_go("5"),
            Err("time: missing unit in duration \"5\"".into())
        );
        assert_eq!(parse_go("."), Err("time: invalid duration \".\"".into()));
        assert_eq!(parse_go(""), Err("time: invalid duration \"\"".into()));
        assert_eq!(
            parse_go("3w"),
            Err("time: unknown unit \"w\" in duration \"3w\"".into())
        );
        assert_eq!(
            parse_go("999999999h"),
            Err("time: invalid duration \"999999999h\"".into())
        );
    }
}
