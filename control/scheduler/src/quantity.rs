//! Kubernetes resource quantities (`100m`, `1Gi`, `2`, `1e3`, `500Mi`) as integers, rounded up
//! the way `resource.Quantity`'s `Value()` and `MilliValue()` round.

/// `text` in thousandths of a unit (CPU millicores), rounded up; `None` when malformed.
pub fn parse_milli(text: &str) -> Option<i64> {
    parse_scaled(text, 1000)
}

/// `text` in whole units (bytes, counts), rounded up; `None` when malformed.
pub fn parse_value(text: &str) -> Option<i64> {
    parse_scaled(text, 1)
}

/// The value of `text` times `scale`, rounded towards positive infinity and saturated to `i64`.
fn parse_scaled(text: &str, scale: u128) -> Option<i64> {
    let text = text.trim();
    let (negative, body) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let number_end = body
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(number_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return None;
    }
    // The digits as one integer, and how many of them were after the decimal point.
    let mut mantissa: u128 = 0;
    let mut fraction_digits: i32 = 0;
    let mut seen_point = false;
    let mut saturated = false;
    for c in number.chars() {
        if c == '.' {
            seen_point = true;
            continue;
        }
        let digit = u128::from(c as u8 - b'0');
        match mantissa.checked_mul(10).and_then(|m| m.checked_add(digit)) {
            Some(m) if !saturated => {
                mantissa = m;
                if seen_point {
                    fraction_digits += 1;
                }
            }
            // Too many digits: drop the rest (before the point, they still scale the value).
            _ => {
                saturated = true;
                if !seen_point {
                    fraction_digits -= 1;
                }
            }
        }
    }
    let (power_of_ten, power_of_two) = suffix_exponents(suffix)?;
    let exponent10 = power_of_ten - fraction_digits;
    let mut numerator = Some(mantissa.saturating_mul(scale));
    let mut denominator: u128 = 1;
    if exponent10 >= 0 {
        for _ in 0..exponent10 {
            numerator = numerator.and_then(|n| n.checked_mul(10));
        }
    } else {
        for _ in 0..(-exponent10) {
            match denominator.checked_mul(10) {
                Some(d) => denominator = d,
                // Smaller than anything an i64 can tell apart from zero.
                None => return Some(if negative || mantissa == 0 { 0 } else { 1 }),
            }
        }
    }
    for _ in 0..power_of_two {
        numerator = numerator.and_then(|n| n.checked_mul(2));
    }
    let Some(numerator) = numerator else {
        return Some(if negative { i64::MIN } else { i64::MAX });
    };
    let magnitude = if negative {
        // Rounding up a negative number truncates its magnitude.
        numerator / denominator
    } else {
        numerator.div_ceil(denominator)
    };
    let magnitude = i64::try_from(magnitude).unwrap_or(i64::MAX);
    Some(if negative { -magnitude } else { magnitude })
}

/// The (power of ten, power of two) a suffix stands for.
fn suffix_exponents(suffix: &str) -> Option<(i32, u32)> {
    Some(match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        _ => {
            let exponent = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))?;
            let value: i32 = exponent.parse().ok()?;
            if !(-40..=40).contains(&value) {
                return None;
            }
            (value, 0)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::{parse_milli, parse_value};

    #[test]
    fn cpu_in_millicores() {
        assert_eq!(parse_milli("100m"), Some(100));
        assert_eq!(parse_milli("2"), Some(2000));
        assert_eq!(parse_milli("0.5"), Some(500));
        assert_eq!(parse_milli("1.5k"), Some(1_500_000));
        assert_eq!(parse_milli("1e3"), Some(1_000_000));
        assert_eq!(parse_milli("250u"), Some(1), "rounds up");
        assert_eq!(parse_milli("0"), Some(0));
    }

    #[test]
    fn bytes() {
        assert_eq!(parse_value("1Gi"), Some(1 << 30));
        assert_eq!(parse_value("500Mi"), Some(500 << 20));
        assert_eq!(parse_value("128974848"), Some(128_974_848));
        assert_eq!(parse_value("129e6"), Some(129_000_000));
        assert_eq!(parse_value("123M"), Some(123_000_000));
        assert_eq!(parse_value("1.5Ki"), Some(1536));
        assert_eq!(parse_value("100m"), Some(1), "fractions round up");
        assert_eq!(parse_value("1E"), Some(1_000_000_000_000_000_000));
        assert_eq!(parse_value("+5"), Some(5));
        assert_eq!(parse_value("-5"), Some(-5));
    }

    #[test]
    fn huge_values_saturate() {
        assert_eq!(parse_value("100Ei"), Some(i64::MAX));
        assert_eq!(
            parse_milli("99999999999999999999999999999999999999999"),
            Some(i64::MAX)
        );
    }

    #[test]
    fn malformed() {
        for bad in ["", "m", "1x", "1.2.3", "abc", "1e", "--1", "1 Gi"] {
            assert_eq!(parse_value(bad), None, "{bad:?}");
        }
    }
}
