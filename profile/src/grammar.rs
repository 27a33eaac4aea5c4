//! The small grammars the agent's command line and the collector's flags and API share, so a
//! duration or a label name means the same on both sides.
//!
//! Durations are written by hand rather than with `humantime`: the command line has always
//! taken a bare number as seconds (`--duration 30`) and decimals (`1.5s`), which `humantime`
//! does not, and a query string needs only these few units.

use std::time::Duration;

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} is not a duration like 30, 30s, 500ms, 5m, 1h or 7d")]
    Malformed(String),
    #[error("{text:?}: unknown unit {unit:?}; use ms, s, m, h, d or w (a bare number is seconds)")]
    Unit { text: String, unit: String },
    #[error("{0:?} must be more than zero")]
    NotPositive(String),
    #[error("{0:?} is too long")]
    TooLong(String),
}

/// The unit of a duration and how many milliseconds it holds.
fn unit_ms(unit: &str) -> Option<u64> {
    Some(match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return None,
    })
}

/// Parses a positive duration: a number, decimals allowed, then `ms`, `s`, `m`, `h`, `d` or
/// `w`; a bare number is seconds. `30`, `30s`, `1.5s`, `500ms`, `2m`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let malformed = || DurationError::Malformed(t.to_string());
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(malformed());
    }
    let value: f64 = number.parse().map_err(|_| malformed())?;
    let scale = unit_ms(unit).ok_or_else(|| DurationError::Unit { text: t.to_string(), unit: unit.to_string() })?;
    let ms = value * scale as f64;
    if !ms.is_finite() || ms <= 0.0 {
        return Err(DurationError::NotPositive(t.to_string()));
    }
    // Ten thousand years is longer than any range or timeout means.
    if ms > 10_000.0 * 365.25 * 86_400_000.0 {
        return Err(DurationError::TooLong(t.to_string()));
    }
    Ok(Duration::from_secs_f64(ms / 1_000.0))
}

/// A label name: ASCII letters, digits and `_`, not starting with a digit (Prometheus' rule).
pub fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Labels the collector sets itself from a process descriptor, or uses to select asyncio
/// tasks; an agent's own labels may not use them.
pub const RESERVED_LABELS: [&str; 13] = [
    "host",
    "pid",
    "ns_pid",
    "comm",
    "exe",
    "cmdline",
    "service",
    "container",
    "pod",
    "namespace",
    "task",
    "task_id",
    "task_coro",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = |t: &str| parse_duration(t).expect(t);
        assert_eq!(ok("30"), Duration::from_secs(30));
        assert_eq!(ok("30s"), Duration::from_secs(30));
        assert_eq!(ok(" 1.5s "), Duration::from_millis(1500));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("7d"), Duration::from_secs(7 * 86_400));
        assert_eq!(ok("1w"), Duration::from_secs(7 * 86_400));
        for bad in ["", "s", ".5s", "5.s", "1.2.3s", "-5s", "abc", "5 s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(parse_duration("0"), Err(DurationError::NotPositive(_))));
        assert!(matches!(parse_duration("5y"), Err(DurationError::Unit { .. })));
        assert!(matches!(parse_duration("99999999999999999w"), Err(DurationError::TooLong(_))));
    }

    #[test]
    fn label_names() {
        assert!(is_label_name("team") && is_label_name("_x9"));
        assert!(!is_label_name("") && !is_label_name("9x") && !is_label_name("a-b") && !is_label_name("é"));
    }
}
