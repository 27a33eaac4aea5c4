//! Monotonic to Unix time. Samples and task records carry CLOCK_MONOTONIC times; each batch says
//! how to turn them into Unix times. The offset is kept steady across batches: measured afresh
//! for every batch, its read-to-read jitter (a microsecond or so) would let a task that straddles
//! two batches appear to start before it was created.

use nix::time::{clock_gettime, ClockId};

/// How far the measured offset may wander before it is taken: beyond this, the wall clock was
/// stepped (settimeofday, an NTP step), and Unix times should follow it.
const STEP_NANOS: i64 = 1_000_000;

#[derive(Debug)]
pub(super) struct UnixOffset {
    nanos: i64,
}

impl UnixOffset {
    pub(super) fn new() -> Self {
        Self { nanos: measure() }
    }

    /// The offset to send with the next batch.
    pub(super) fn current(&mut self) -> i64 {
        self.follow(measure())
    }

    fn follow(&mut self, measured: i64) -> i64 {
        if (measured - self.nanos).abs() > STEP_NANOS {
            self.nanos = measured;
        }
        self.nanos
    }
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC, with the realtime read bracketed by two monotonic reads.
fn measure() -> i64 {
    let now = |clock| clock_gettime(clock).map_or(0, |t| t.tv_sec() * 1_000_000_000 + t.tv_nsec());
    let before = now(ClockId::CLOCK_MONOTONIC);
    let real = now(ClockId::CLOCK_REALTIME);
    let after = now(ClockId::CLOCK_MONOTONIC);
    real - (before + (after - before) / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_ignored_and_steps_are_followed() {
        let mut offset = UnixOffset { nanos: 1_000_000_000 };
        assert_eq!(offset.follow(1_000_000_700), 1_000_000_000, "sub-millisecond jitter");
        assert_eq!(offset.follow(999_999_300), 1_000_000_000);
        assert_eq!(offset.follow(1_005_000_000), 1_005_000_000, "a clock step");
        assert_eq!(offset.follow(1_005_000_100), 1_005_000_000);
    }

    #[test]
    fn the_measured_offset_is_the_wall_clock() {
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let mono = clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |t| t.tv_sec() * 1_000_000_000 + t.tv_nsec());
        let from_offset = i128::from(mono + UnixOffset::new().current());
        assert!((from_offset - unix as i128).abs() < 1_000_000_000, "{from_offset} vs {unix}");
    }
}
