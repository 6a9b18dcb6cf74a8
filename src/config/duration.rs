//! Go duration strings (`90s`, `2m0s`, `1h30m`, `250ms`), the format of every MetalLB timer field.
//!
//! MetalLB stores timers as `metav1.Duration`, so the API server accepts any string and only the Go parser decides
//! what is valid. This module parses that grammar into [`std::time::Duration`] and prints durations the way Go's
//! `Duration.String` does, which the ConfigMap migration needs to reproduce MetalLB's output (`120s` becomes `2m0s`).
//! It knows nothing about which timer a value belongs to; the BGP rules live in validation.

use std::fmt::Write as _;
use std::time::Duration;

/// Why a string is not a usable Go duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(
        "{0:?} is not a duration: expected a number followed by a unit (ns, us, ms, s, m, h), as in \"90s\" or \"1m30s\""
    )]
    Syntax(String),
    #[error("{0:?} has an unknown unit: use ns, us, ms, s, m or h")]
    UnknownUnit(String),
    #[error("{0:?} is negative")]
    Negative(String),
    #[error("{0:?} is too large")]
    Overflow(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Parses a Go duration string. Negative durations are refused: no MetalLB timer can be negative.
pub fn parse(text: &str) -> Result<Duration> {
    let syntax = || Error::Syntax(text.to_string());
    let mut rest = text;
    if let Some(r) = rest.strip_prefix('-') {
        // Go accepts "-0" and "-0s"; every other negative value is meaningless for a timer.
        return match parse(r) {
            Ok(d) if d.is_zero() => Ok(d),
            Ok(_) => Err(Error::Negative(text.to_string())),
            Err(_) => Err(syntax()),
        };
    }
    rest = rest.strip_prefix('+').unwrap_or(rest);
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(syntax());
    }
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.bytes().take_while(u8::is_ascii_digit).count();
                a.split_at(n)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(syntax());
        }
        let unit_len = after
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(after.len(), |(i, _)| i);
        let (unit, after) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(syntax()),
            _ => return Err(Error::UnknownUnit(text.to_string())),
        };
        let overflow = || Error::Overflow(text.to_string());
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| overflow())?
        };
        let mut nanos = int.checked_mul(scale).ok_or_else(overflow)?;
        // Fractions are scaled digit by digit, truncating below a nanosecond as Go does.
        let mut place = scale;
        for digit in frac_part.bytes().map(|b| u128::from(b - b'0')) {
            place /= 10;
            if place == 0 {
                break;
            }
            nanos += digit * place;
        }
        total_nanos = total_nanos.checked_add(nanos).ok_or_else(overflow)?;
        rest = after;
    }
    // Go durations are int64 nanoseconds.
    if total_nanos > i64::MAX as u128 {
        return Err(Error::Overflow(text.to_string()));
    }
    Ok(Duration::from_nanos(total_nanos as u64))
}

/// Formats a duration as Go's `time.Duration.String` does: `0s`, `250ms`, `1.5s`, `1m30s`, `2h0m0s`.
pub fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    if nanos < 1_000_000_000 {
        let (scale, unit) = if nanos < 1_000 {
            (1, "ns")
        } else if nanos < 1_000_000 {
            (1_000, "µs")
        } else {
            (1_000_000, "ms")
        };
        return format!("{}{unit}", decimal(nanos, scale));
    }
    let hours = nanos / 3_600_000_000_000;
    let minutes = nanos / 60_000_000_000 % 60;
    let seconds = nanos % 60_000_000_000;
    let mut out = String::new();
    if hours > 0 {
        let _ = write!(out, "{hours}h");
    }
    if hours > 0 || minutes > 0 {
        let _ = write!(out, "{minutes}m");
    }
    let _ = write!(out, "{}s", decimal(seconds, 1_000_000_000));
    out
}

/// `value / scale` with the fraction printed without trailing zeros.
fn decimal(value: u128, scale: u128) -> String {
    let int = value / scale;
    let frac = value % scale;
    if frac == 0 {
        return int.to_string();
    }
    let width = scale.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{int}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_metallb_users_write() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("2m0s"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse(".5m"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("3us"), Ok(Duration::from_micros(3)));
        assert_eq!(parse("3µs"), Ok(Duration::from_micros(3)));
        assert_eq!(parse("+9m"), Ok(Duration::from_secs(540)));
        assert_eq!(parse("-0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_what_go_rejects_and_negative_timers() {
        assert!(matches!(parse(""), Err(Error::Syntax(_))));
        assert!(matches!(parse("90"), Err(Error::Syntax(_))));
        assert!(matches!(parse("s"), Err(Error::Syntax(_))));
        assert!(matches!(parse("1.s5"), Err(Error::Syntax(_))));
        assert!(matches!(parse("abc"), Err(Error::Syntax(_))));
        assert!(matches!(parse("10d"), Err(Error::UnknownUnit(_))));
        assert!(matches!(parse("5 s"), Err(Error::UnknownUnit(_))));
        assert!(matches!(parse("-5s"), Err(Error::Negative(_))));
        assert!(matches!(parse("3000000h"), Err(Error::Overflow(_))));
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format(Duration::from_secs(120)), "2m0s");
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
        assert_eq!(format(Duration::from_secs(30)), "30s");
        assert_eq!(format(Duration::from_secs(540)), "9m0s");
        assert_eq!(format(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(format(Duration::ZERO), "0s");
        assert_eq!(format(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format(Duration::from_millis(250)), "250ms");
        assert_eq!(format(Duration::from_nanos(1)), "1ns");
    }

    #[test]
    fn format_then_parse_round_trips() {
        for secs in [0, 1, 3, 59, 60, 61, 3599, 3600, 86_399, 1_000_000] {
            let d = Duration::from_secs(secs);
            assert_eq!(parse(&format(d)), Ok(d), "{secs}s");
        }
    }
}
