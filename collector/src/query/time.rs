//! Time parameters: Unix milliseconds, or `now`, `now-1h`, `now-30m`, `now-7d`, `now-15s`.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    /// Inclusive, Unix milliseconds.
    pub from_ms: i64,
    /// Exclusive, Unix milliseconds.
    pub to_ms: i64,
}

impl TimeRange {
    pub fn duration_ms(&self) -> i64 {
        self.to_ms - self.from_ms
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Parses one time value relative to `now_ms`.
pub fn parse_time(text: &str, now_ms: i64) -> Result<i64, String> {
    let t = text.trim();
    if let Ok(ms) = t.parse::<i64>() {
        return Ok(ms);
    }
    let Some(rest) = t.strip_prefix("now") else {
        return Err(format!("{t:?} is neither Unix milliseconds nor now-<duration> (like now-1h)"));
    };
    if rest.is_empty() {
        return Ok(now_ms);
    }
    let (sign, rest) = match rest.as_bytes()[0] {
        b'-' => (-1, &rest[1..]),
        b'+' => (1, &rest[1..]),
        _ => return Err(format!("{t:?}: expected now-<duration> or now+<duration>")),
    };
    Ok(now_ms + sign * parse_duration_ms(rest)?)
}

/// `30s`, `5m`, `1h`, `7d`, `500ms`.
pub fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: i64 = number.parse().map_err(|_| format!("{t:?} is not a duration like 30s, 5m, 1h or 7d"))?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return Err(format!("{t:?}: unknown unit {unit:?}; use ms, s, m, h, d or w")),
    };
    n.checked_mul(scale).ok_or_else(|| format!("{t:?} is too long"))
}

/// `from` and `to` are both optional; the default is the last hour.
pub fn parse_range(from: Option<&str>, to: Option<&str>, now_ms: i64) -> Result<TimeRange, (&'static str, String)> {
    let to_ms = match to {
        Some(t) if !t.is_empty() => parse_time(t, now_ms).map_err(|e| ("to", e))?,
        _ => now_ms,
    };
    let from_ms = match from {
        Some(f) if !f.is_empty() => parse_time(f, now_ms).map_err(|e| ("from", e))?,
        _ => to_ms - 3_600_000,
    };
    if from_ms >= to_ms {
        return Err(("from", format!("from ({from_ms}) must be before to ({to_ms})")));
    }
    Ok(TimeRange { from_ms, to_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_and_absolute() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_time("now", now), Ok(now));
        assert_eq!(parse_time("now-1h", now), Ok(now - 3_600_000));
        assert_eq!(parse_time("now-7d", now), Ok(now - 7 * 86_400_000));
        assert_eq!(parse_time("123", now), Ok(123));
        assert!(parse_time("yesterday", now).is_err());
        assert!(parse_time("now-1y", now).is_err());
        assert!(parse_time("now*2", now).is_err());
    }

    #[test]
    fn ranges_default_to_the_last_hour() {
        let now = 10_000_000;
        assert_eq!(parse_range(None, None, now), Ok(TimeRange { from_ms: now - 3_600_000, to_ms: now }));
        assert_eq!(parse_range(Some("now-5m"), None, now).map(|r| r.duration_ms()), Ok(300_000));
        assert_eq!(parse_range(Some("now"), Some("now-1m"), now).map_err(|e| e.0), Err("from"));
        assert_eq!(parse_range(None, Some("x"), now).map_err(|e| e.0), Err("to"));
    }
}
