//! Go's `time.Duration` text form: parsing (`time.ParseDuration`) and formatting
//! (`Duration.String()`).
//!
//! Kite uses Go durations in environment variables (`KITE_TIMEOUT=15s`, PROTOCOL.md 7.1) and
//! in error messages that travel on the wire (`token is expired by 1m40s`, 6.2), so both
//! directions follow Go exactly.
//!
//! ```
//! use std::time::Duration;
//! use kite::config::duration::{format_duration, parse_duration, parse_go_duration};
//!
//! assert_eq!(parse_duration("1m40s").unwrap(), Duration::from_secs(100));
//! assert_eq!(parse_duration("1h2m3.5s").unwrap(), Duration::from_millis(3_723_500));
//! assert_eq!(parse_go_duration("-5m").unwrap(), -300_000_000_000);
//! assert_eq!(format_duration(Duration::from_secs(100)), "1m40s");
//! assert_eq!(format_duration(Duration::from_millis(300)), "300ms");
//! assert_eq!(format_duration(Duration::from_secs(3600)), "1h0m0s");
//! ```

use std::time::Duration;

/// Why a duration string was rejected. The texts follow Go's `time.ParseDuration`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not of the form `[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+`.
    #[error("time: invalid duration {0}")]
    Invalid(String),
    /// A number without a unit, e.g. `"5"`.
    #[error("time: missing unit in duration {0}")]
    MissingUnit(String),
    /// A unit other than `ns`, `us`, `µs`, `μs`, `ms`, `s`, `m`, `h`.
    #[error("time: unknown unit {unit} in duration {input}")]
    UnknownUnit {
        /// The unit as written (Go-quoted).
        unit: String,
        /// The whole input (Go-quoted).
        input: String,
    },
    /// The value does not fit in a signed 64-bit count of nanoseconds.
    #[error("time: invalid duration {0}")]
    Overflow(String),
    /// A negative value where only non-negative durations make sense.
    #[error("time: negative duration {0}")]
    Negative(String),
}

const NANOS_PER_SEC: u64 = 1_000_000_000;

fn unit_nanos(unit: &str) -> Option<u64> {
    Some(match unit {
        "ns" => 1,
        "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => NANOS_PER_SEC,
        "m" => 60 * NANOS_PER_SEC,
        "h" => 3600 * NANOS_PER_SEC,
        _ => return None,
    })
}

/// Quotes a string the way Go's `%q` / `strconv.Quote` does for the common cases: printable
/// characters as they are, `"` and `\` escaped, control characters as `\n`, `\t`, `\xNN`,
/// `\u00NN`.
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Parses a Go duration string into signed nanoseconds, exactly like Go's
/// `time.ParseDuration`: an optional sign, then one or more `<number><unit>` pairs where the
/// number may have a fraction (`1.5h`, `.5s`, `1h2m3.5s`). `"0"` alone is allowed.
///
/// ```
/// use kite::config::duration::parse_go_duration;
/// assert_eq!(parse_go_duration("300ms"), Ok(300_000_000));
/// assert_eq!(parse_go_duration("-1.5h"), Ok(-5_400_000_000_000));
/// assert!(parse_go_duration("5").is_err());
/// assert!(parse_go_duration("").is_err());
/// ```
pub fn parse_go_duration(input: &str) -> Result<i64, DurationError> {
    let quoted = || go_quote(input);
    let mut s = input;
    let mut neg = false;
    if let Some(first) = s.as_bytes().first() {
        if *first == b'-' || *first == b'+' {
            neg = *first == b'-';
            s = &s[1..];
        }
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(DurationError::Invalid(quoted()));
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        let bytes = s.as_bytes();
        if !(bytes[0] == b'.' || bytes[0].is_ascii_digit()) {
            return Err(DurationError::Invalid(quoted()));
        }
        // Integer part.
        let int_len = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
        let mut value: u64 = 0;
        for b in &bytes[..int_len] {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(b - b'0')))
                .filter(|v| *v <= 1 << 63)
                .ok_or_else(|| DurationError::Invalid(quoted()))?;
        }
        s = &s[int_len..];
        let pre = int_len > 0;
        // Fraction.
        let mut frac: u64 = 0;
        let mut scale: f64 = 1.0;
        let mut post = false;
        if s.as_bytes().first() == Some(&b'.') {
            s = &s[1..];
            let frac_len = s.bytes().take_while(|b| b.is_ascii_digit()).count();
            let mut overflow = false;
            for b in &s.as_bytes()[..frac_len] {
                if overflow {
                    continue;
                }
                if frac > (i64::MAX as u64 - 9) / 10 {
                    overflow = true;
                    continue;
                }
                frac = frac * 10 + u64::from(b - b'0');
                scale *= 10.0;
            }
            post = frac_len > 0;
            s = &s[frac_len..];
        }
        if !pre && !post {
            return Err(DurationError::Invalid(quoted()));
        }
        // Unit.
        let unit_len = s
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(s.len(), |(i, _)| i);
        if unit_len == 0 {
            return Err(DurationError::MissingUnit(quoted()));
        }
        let unit = &s[..unit_len];
        s = &s[unit_len..];
        let unit_ns = unit_nanos(unit).ok_or_else(|| DurationError::UnknownUnit {
            unit: go_quote(unit),
            input: quoted(),
        })?;
        if value > (1u64 << 63) / unit_ns {
            return Err(DurationError::Overflow(quoted()));
        }
        value *= unit_ns;
        if frac > 0 {
            // Go: float64 arithmetic, truncated.
            let add = (frac as f64 * (unit_ns as f64 / scale)) as u64;
            value = value
                .checked_add(add)
                .filter(|v| *v <= 1 << 63)
                .ok_or_else(|| DurationError::Overflow(quoted()))?;
        }
        total = total
            .checked_add(value)
            .filter(|v| *v <= 1 << 63)
            .ok_or_else(|| DurationError::Overflow(quoted()))?;
    }
    if neg {
        // total <= 2^63, so the negation fits.
        return Ok((total as i128).wrapping_neg() as i64);
    }
    i64::try_from(total).map_err(|_| DurationError::Overflow(quoted()))
}

/// Parses a non-negative Go duration string into a [`Duration`].
///
/// ```
/// use std::time::Duration;
/// use kite::config::duration::parse_duration;
/// assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
/// assert!(parse_duration("-5m").is_err());
/// ```
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let nanos = parse_go_duration(input)?;
    u64::try_from(nanos)
        .map(Duration::from_nanos)
        .map_err(|_| DurationError::Negative(go_quote(input)))
}

/// Formats signed nanoseconds like Go's `Duration.String()`: `0s`, `1.5µs`, `300ms`,
/// `1m40s`, `2h0m0s`, `-1s`.
///
/// ```
/// use kite::config::duration::format_go_duration;
/// assert_eq!(format_go_duration(0), "0s");
/// assert_eq!(format_go_duration(1_500), "1.5µs");
/// assert_eq!(format_go_duration(-1_000_000_000), "-1s");
/// assert_eq!(format_go_duration(173_400_000_000_000), "48h10m0s");
/// ```
pub fn format_go_duration(nanos: i64) -> String {
    let neg = nanos < 0;
    let mut u = nanos.unsigned_abs();
    // Built back to front, like Go.
    let mut rev: Vec<char> = Vec::with_capacity(24);
    if u < NANOS_PER_SEC {
        if u == 0 {
            return "0s".to_owned();
        }
        rev.push('s');
        let prec = if u < 1_000 {
            rev.push('n');
            0
        } else if u < 1_000_000 {
            rev.push('µ');
            3
        } else {
            rev.push('m');
            6
        };
        u = push_frac(&mut rev, u, prec);
        push_int(&mut rev, u);
    } else {
        rev.push('s');
        u = push_frac(&mut rev, u, 9);
        push_int(&mut rev, u % 60);
        u /= 60;
        if u > 0 {
            rev.push('m');
            push_int(&mut rev, u % 60);
            u /= 60;
            if u > 0 {
                rev.push('h');
                push_int(&mut rev, u);
            }
        }
    }
    if neg {
        rev.push('-');
    }
    rev.iter().rev().collect()
}

/// Formats a [`Duration`] like Go's `Duration.String()` (saturating at Go's maximum of
/// about 292 years).
pub fn format_duration(d: Duration) -> String {
    format_go_duration(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Pushes (reversed) the fraction `v / 10^prec` without trailing zeros, with the dot unless
/// the fraction is zero; returns `v / 10^prec`.
fn push_frac(rev: &mut Vec<char>, mut v: u64, prec: u32) -> u64 {
    let mut printed = false;
    for _ in 0..prec {
        let digit = v % 10;
        printed = printed || digit != 0;
        if printed {
            rev.push(char::from(b'0' + digit as u8));
        }
        v /= 10;
    }
    if printed {
        rev.push('.');
    }
    v
}

/// Pushes (reversed) the decimal digits of `v`.
fn push_int(rev: &mut Vec<char>, mut v: u64) {
    if v == 0 {
        rev.push('0');
        return;
    }
    while v > 0 {
        rev.push(char::from(b'0' + (v % 10) as u8));
        v /= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_examples() {
        let cases: &[(&str, i64)] = &[
            ("0", 0),
            ("-0", 0),
            ("+0", 0),
            ("5s", 5_000_000_000),
            ("30s", 30_000_000_000),
            ("1478s", 1_478_000_000_000),
            ("-5s", -5_000_000_000),
            ("+5s", 5_000_000_000),
            ("5.0s", 5_000_000_000),
            ("5.6s", 5_600_000_000),
            ("5.s", 5_000_000_000),
            (".5s", 500_000_000),
            ("1.004s", 1_004_000_000),
            ("100.00100s", 100_001_000_000),
            ("10ns", 10),
            ("11us", 11_000),
            ("12\u{b5}s", 12_000),
            ("12\u{3bc}s", 12_000),
            ("13ms", 13_000_000),
            ("15m", 900_000_000_000),
            ("16h", 57_600_000_000_000),
            ("3h30m", 12_600_000_000_000),
            ("10.5s4m", 250_500_000_000),
            ("-2m3.4s", -123_400_000_000),
            ("1h2m3s4ms5us6ns", 3_723_004_005_006),
            ("39h9m14.425s", 140_954_425_000_000),
            ("52763797000ns", 52_763_797_000),
            ("0.3333333333333333333h", 1_200_000_000_000),
            ("9007199254740993ns", 9_007_199_254_740_993),
            ("9223372036854775807ns", i64::MAX),
            ("-9223372036854775808ns", i64::MIN),
            ("0.100000000000000000000h", 360_000_000_000),
        ];
        for (input, want) in cases {
            assert_eq!(parse_go_duration(input), Ok(*want), "{input}");
        }
    }

    #[test]
    fn parse_errors() {
        for input in [
            "",
            "3",
            "-",
            "s",
            ".",
            "-.",
            ".s",
            "+.s",
            "1d",
            "\u{85}\u{85}",
            "5m ",
            " 5m",
            "9223372036854775808ns",
            "9223372036854775810ns",
            "3000000h",
        ] {
            assert!(parse_go_duration(input).is_err(), "{input:?} should fail");
        }
        assert_eq!(
            parse_go_duration("3").unwrap_err().to_string(),
            "time: missing unit in duration \"3\""
        );
        assert_eq!(
            parse_go_duration("1d").unwrap_err().to_string(),
            "time: unknown unit \"d\" in duration \"1d\""
        );
        assert_eq!(
            parse_go_duration("").unwrap_err().to_string(),
            "time: invalid duration \"\""
        );
        assert!(matches!(
            parse_duration("-1s"),
            Err(DurationError::Negative(_))
        ));
    }

    #[test]
    fn format_examples() {
        let cases: &[(i64, &str)] = &[
            (0, "0s"),
            (1, "1ns"),
            (1_100, "1.1\u{b5}s"),
            (2_200_000, "2.2ms"),
            (300_000_000, "300ms"),
            (1_000_000_000, "1s"),
            (3_300_000_000, "3.3s"),
            (100_000_000_000, "1m40s"),
            (245_600_000_000, "4m5.6s"),
            (300_000_000_000, "5m0s"),
            (3_723_500_000_000, "1h2m3.5s"),
            (3_723_000_000_001, "1h2m3.000000001s"),
            (-1_000_000_000, "-1s"),
            (-1, "-1ns"),
            (i64::MAX, "2562047h47m16.854775807s"),
            (i64::MIN, "-2562047h47m16.854775808s"),
        ];
        for (nanos, want) in cases {
            assert_eq!(format_go_duration(*nanos), *want, "{nanos}");
        }
    }

    #[test]
    fn round_trip() {
        for s in [
            "1m40s",
            "1h2m3.5s",
            "300ms",
            "5m0s",
            "1.5\u{b5}s",
            "48h10m0s",
        ] {
            let n = parse_go_duration(s).unwrap();
            assert_eq!(format_go_duration(n), s);
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(go_quote("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\x01\"");
    }
}
