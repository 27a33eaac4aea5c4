//! Time parameters: Unix milliseconds, or `now`, `now-1h`, `now-30m`, `now-7d`, `now-15s`.
//! All arithmetic is checked, and every time must fall in [`MIN_TIME_MS`, `MAX_TIME_MS`].

use crate::store::BUCKET_MS;

/// 1970-01-01T00:00:00Z: nothing the collector stores is older.
pub const MIN_TIME_MS: i64 = 0;
/// 9999-12-31T23:59:59.999Z: far beyond anything stored, and far from overflowing in ns.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;
/// Most points a series answer has.
pub const MAX_POINTS: i64 = 10_000;

fn in_window(ms: i64, text: &str) -> Result<i64, String> {
    if (MIN_TIME_MS..=MAX_TIME_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(format!(
            "{text:?} is outside the times the collector accepts: Unix milliseconds from {MIN_TIME_MS} (1970) to \
             {MAX_TIME_MS} (year 9999)"
        ))
    }
}

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
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        let ms = t.parse::<i64>().map_err(|_| format!("{t:?} is not a number of Unix milliseconds in range"))?;
        return in_window(ms, t);
    }
    let Some(rest) = t.strip_prefix("now") else {
        return Err(format!("{t:?} is neither Unix milliseconds nor now-<duration> (like now-1h)"));
    };
    if rest.is_empty() {
        return in_window(now_ms, t);
    }
    let shifted = if let Some(d) = rest.strip_prefix('-') {
        now_ms.checked_sub(parse_duration_ms(d)?)
    } else if let Some(d) = rest.strip_prefix('+') {
        now_ms.checked_add(parse_duration_ms(d)?)
    } else {
        return Err(format!("{t:?}: expected now-<duration> or now+<duration>"));
    };
    in_window(shifted.ok_or_else(|| format!("{t:?} is too far from now"))?, t)
}

/// A duration in milliseconds, in the grammar the agent's flags use too
/// ([`ember_profile::grammar::parse_duration`]): `30s`, `5m`, `1h`, `7d`, `500ms`.
pub fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let d = ember_profile::grammar::parse_duration(text).map_err(|e| e.to_string())?;
    i64::try_from(d.as_millis()).map_err(|_| format!("{:?} is too long", text.trim()))
}

/// `from` and `to` are both optional; the default is the last hour.
pub fn parse_range(from: Option<&str>, to: Option<&str>, now_ms: i64) -> Result<TimeRange, (&'static str, String)> {
    let to_ms = match to {
        Some(t) if !t.is_empty() => parse_time(t, now_ms).map_err(|e| ("to", e))?,
        _ => now_ms,
    };
    let from_ms = match from {
        Some(f) if !f.is_empty() => parse_time(f, now_ms).map_err(|e| ("from", e))?,
        _ => to_ms.saturating_sub(3_600_000).max(MIN_TIME_MS),
    };
    if from_ms >= to_ms {
        return Err(("from", format!("from ({from_ms}) must be before to ({to_ms})")));
    }
    Ok(TimeRange { from_ms, to_ms })
}

/// The `step` of a series over `range`: seconds, or a duration like `30s`; by default a 240th
/// of the range. Rounded up to whole buckets, at most the range (one point) and at least a
/// 10,000th of it.
pub fn parse_step(text: Option<&str>, range: TimeRange) -> Result<i64, String> {
    let duration = range.duration_ms().max(1);
    let step = match text {
        None => (duration / 240).max(1),
        Some(s) => match s.trim().parse::<i64>() {
            Ok(seconds) => seconds.checked_mul(1000).ok_or_else(|| format!("{s:?} seconds is too long"))?,
            Err(_) => parse_duration_ms(s)?,
        },
    };
    if step <= 0 {
        return Err("must be positive".into());
    }
    if step > MAX_TIME_MS {
        return Err(format!("a step of {step} ms is longer than any range the collector accepts"));
    }
    let step = step.min(duration).max(duration / MAX_POINTS);
    // Both are at most MAX_TIME_MS, so this cannot overflow.
    Ok((step + BUCKET_MS - 1) / BUCKET_MS * BUCKET_MS)
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

    #[test]
    fn out_of_range_times_and_steps_are_errors_not_wraps() {
        let now = 1_700_000_000_000;
        assert!(parse_time("-9223372036854775808", now).is_err());
        assert!(parse_time("9223372036854775807", now).is_err());
        assert!(parse_time("99999999999999999999", now).is_err());
        assert!(parse_time("-1", now).is_err());
        assert!(parse_time("now-9999999999999d", now).is_err());
        assert!(parse_time("now+500000w", now).is_err());
        let hour = TimeRange { from_ms: now - 3_600_000, to_ms: now };
        assert!(parse_step(Some("18446744073709552"), hour).is_err());
        assert!(parse_step(Some("18446744073709552ms"), hour).is_err());
        assert_eq!(parse_step(Some("2h"), hour), Ok(3_600_000), "longer than the range: one point");
        assert_eq!(parse_step(Some("60"), hour), Ok(60_000));
        assert_eq!(parse_step(None, hour), Ok(20_000));
        assert_eq!(parse_step(Some("1ms"), hour), Ok(BUCKET_MS));
    }
}
