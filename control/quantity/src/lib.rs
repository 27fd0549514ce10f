//! Kubernetes resource quantities (`100m`, `1.5Gi`, `2e3`) read as integers the way
//! apimachinery's `Quantity.Value()` and `MilliValue()` do: exact, rounded up. Shared by the
//! scheduler (requests against allocatable) and the kubelet (limits, env, flags).

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

const NANOS_PER_UNIT: i128 = 1_000_000_000;
const NANOS_PER_MILLI: i128 = 1_000_000;
/// More digits than this cannot be held exactly; such quantities are refused.
const MAX_DIGITS: usize = 30;

/// The amount of a quantity in billionths (`1` is `1_000_000_000`), rounded up; `None` when the
/// text is not a quantity or is out of range.
pub fn parse_nanos(text: &str) -> Option<i128> {
    let text = text.trim();
    let (negative, rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let number_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return None;
    }
    if whole.len() + fraction.len() > MAX_DIGITS {
        return None;
    }
    let mut mantissa: i128 = 0;
    for digit in whole.bytes().chain(fraction.bytes()) {
        mantissa = mantissa * 10 + i128::from(digit - b'0');
    }
    // amount = mantissa * binary * 10^decimal_exp / 10^fraction_len
    let (binary, decimal_exp): (i128, i32) = match suffix {
        "" => (1, 0),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        "n" => (1, -9),
        "u" => (1, -6),
        "m" => (1, -3),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        exponent => {
            let digits = exponent
                .strip_prefix('e')
                .or_else(|| exponent.strip_prefix('E'))?;
            let value: i32 = digits.parse().ok()?;
            if !(-40..=40).contains(&value) {
                return None;
            }
            (1, value)
        }
    };
    let fraction_len = i32::try_from(fraction.len()).ok()?;
    let up = 9 + decimal_exp.max(0);
    let down = fraction_len + (-decimal_exp).max(0);
    let numerator = mantissa
        .checked_mul(binary)?
        .checked_mul(10i128.checked_pow(u32::try_from(up).ok()?)?)?;
    let denominator = 10i128.checked_pow(u32::try_from(down).ok()?)?;
    let magnitude = ceil_div(numerator, denominator);
    Some(if negative { -magnitude } else { magnitude })
}

fn ceil_div(numerator: i128, denominator: i128) -> i128 {
    let quotient = numerator / denominator;
    if numerator % denominator > 0 {
        quotient + 1
    } else {
        quotient
    }
}

fn scaled(text: &str, unit: i128) -> Option<i64> {
    let nanos = parse_nanos(text)?;
    let value = if nanos >= 0 {
        ceil_div(nanos, unit)
    } else {
        -((-nanos) / unit)
    };
    i64::try_from(value).ok()
}

/// `text` in thousandths of a unit (CPU millicores), rounded up; `None` when malformed.
pub fn parse_milli(text: &str) -> Option<i64> {
    scaled(text, NANOS_PER_MILLI)
}

/// `text` in whole units (bytes, counts), rounded up; `None` when malformed.
pub fn parse_value(text: &str) -> Option<i64> {
    scaled(text, NANOS_PER_UNIT)
}

/// `Quantity.Value()`: whole units, rounded up (0 for a malformed quantity).
pub fn value(quantity: &Quantity) -> i64 {
    scaled(&quantity.0, NANOS_PER_UNIT).unwrap_or(0)
}

/// `Quantity.MilliValue()`: thousandths, rounded up (0 for a malformed quantity).
pub fn milli_value(quantity: &Quantity) -> i64 {
    scaled(&quantity.0, NANOS_PER_MILLI).unwrap_or(0)
}

/// Exact amount in billionths, for comparing and summing quantities (0 when malformed).
pub fn nanos(quantity: &Quantity) -> i128 {
    parse_nanos(&quantity.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> Quantity {
        Quantity(text.to_string())
    }

    #[test]
    fn values_round_up_like_apimachinery() {
        let cases: &[(&str, i64, i64)] = &[
            // text, Value(), MilliValue()
            ("1", 1, 1000),
            ("100m", 1, 100),
            ("1500m", 2, 1500),
            ("0.5", 1, 500),
            (".5", 1, 500),
            ("2.", 2, 2000),
            ("1Ki", 1024, 1_024_000),
            ("1.5Gi", 1_610_612_736, 1_610_612_736_000),
            ("128M", 128_000_000, 128_000_000_000),
            ("1k", 1000, 1_000_000),
            ("1e3", 1000, 1_000_000),
            ("1E-3", 1, 1),
            ("250u", 1, 1),
            ("1n", 1, 1),
            ("0", 0, 0),
            ("+3", 3, 3000),
            ("-2", -2, -2000),
            ("1Ei", 1_152_921_504_606_846_976, 0),
        ];
        for (text, v, m) in cases {
            assert_eq!(value(&q(text)), *v, "Value({text})");
            if *text != "1Ei" {
                assert_eq!(milli_value(&q(text)), *m, "MilliValue({text})");
            }
        }
    }

    #[test]
    fn malformed_quantities_are_refused() {
        for text in ["", "abc", "1.2.3", "1Q", "1e", "Mi", "-", "1 Gi", "1e99"] {
            assert_eq!(parse_nanos(text), None, "{text:?}");
        }
        assert_eq!(value(&q("junk")), 0);
    }

    #[test]
    fn equal_amounts_in_different_notation_compare_equal() {
        assert_eq!(nanos(&q("1")), nanos(&q("1000m")));
        assert_eq!(nanos(&q("1Ki")), nanos(&q("1024")));
        assert_eq!(nanos(&q("0.1")), nanos(&q("100m")));
        assert!(nanos(&q("1Gi")) > nanos(&q("1G")));
    }
}
