//! Counters of a recording, and the summary printed at the end.

use std::fmt::Write;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub samples: u64,
    pub lost_records: u64,
    pub truncated: u64,
    pub completed: u64,
    pub unwind_failures: u64,
    /// Samples whose stack passed through code without unwind info (see `unwind::no_cfi`).
    pub without_cfi: u64,
    /// Truncated samples whose walk went on in the thread's stack read from memory, and those
    /// of them it took to the root.
    pub continued: u64,
    pub continued_whole: u64,
    /// Continued samples given the callers an earlier sample of the same call read.
    pub continued_remembered: u64,
    /// Samples of processes ember does not follow (children without `--subprocesses`).
    pub untracked_samples: u64,
    pub decode_errors: u64,
    pub corrupt_map_lines: u64,
    pub processes: u64,
    pub threads: u64,
    /// asyncio tasks and run slices read from task monitors, and monitor records lost.
    pub tasks: u64,
    pub task_slices: u64,
    pub lost_task_records: u64,
    /// Truncated samples whose outer frames were read from the interpreter (`interp`), those
    /// whose read no longer agreed with the sample, and those whose read failed.
    pub joined: u64,
    /// Joined samples that held the same call as the thread's last read, which served them.
    pub join_reused: u64,
    pub join_moved_on: u64,
    pub join_unreadable: u64,
    /// How long after each sample its interpreter read began.
    pub read_latency: Latencies,
    /// Attached processes ember asked to turn the perf trampoline on, those that did, and the
    /// longest time from the request to the trampoline's first perf-map line.
    pub activations_asked: u64,
    pub activations_done: u64,
    pub activation_slowest: Option<std::time::Duration>,
    /// Whole stacks whose Python frames outside every trampoline call were read from memory,
    /// and those whose read did not agree with the sample (marked `[truncated]`).
    pub outer_named: u64,
    pub outer_refused: u64,
    /// Samples taken by reading the interpreter's memory (no perf events), and rounds in
    /// which a process's threads could not be read.
    pub memory_samples: u64,
    pub memory_unreadable: u64,
}

/// A histogram of latencies in quarter-octave buckets of microseconds: percentiles within 19%.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latencies {
    buckets: [u64; LATENCY_BUCKETS],
}

/// 2^(96/4) µs: 16 s.
const LATENCY_BUCKETS: usize = 96;

impl Default for Latencies {
    fn default() -> Self {
        Latencies { buckets: [0; LATENCY_BUCKETS] }
    }
}

impl Latencies {
    pub fn add(&mut self, nanos: u64) {
        let micros = (nanos / 1000).max(1) as f64;
        let bucket = (micros.log2() * 4.0) as usize;
        self.buckets[bucket.min(LATENCY_BUCKETS - 1)] += 1;
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The latency below which a `fraction` of them lie, in milliseconds (a bucket's top).
    pub fn percentile_ms(&self, fraction: f64) -> f64 {
        let wanted = (self.count() as f64 * fraction).ceil() as u64;
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= wanted.max(1) {
                return 2f64.powf((i + 1) as f64 / 4.0) / 1000.0;
            }
        }
        0.0
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

impl Stats {
    /// The summary for stderr, one line per topic.
    pub fn summary(&self, duration_secs: f64, rate_hz: u64) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "ember: {} samples in {duration_secs:.1} s at {rate_hz} Hz from {} process{}, {} thread{}",
            self.samples,
            self.processes,
            if self.processes == 1 { "" } else { "es" },
            self.threads,
            if self.threads == 1 { "" } else { "s" },
        );
        let _ = writeln!(
            s,
            "ember: stacks: {} truncated by the stack copy ({:.1}%), {} of them completed ({:.1}%); {} unwind failures ({:.1}%)",
            self.truncated,
            percent(self.truncated, self.samples),
            self.completed,
            percent(self.completed, self.truncated),
            self.unwind_failures,
            percent(self.unwind_failures, self.samples),
        );
        if self.without_cfi > 0 {
            let _ = writeln!(
                s,
                "ember: stacks: {} ({:.1}%) passed code without unwind info, their callers found from its prologue or a checked scan",
                self.without_cfi,
                percent(self.without_cfi, self.samples),
            );
        }
        if self.continued > 0 {
            let _ = writeln!(
                s,
                "ember: stacks: {} truncated stacks ({:.1}%) cut before any Python call went on in the thread's stack \
                 read from memory ({} in a call an earlier read had seen), {} of them to the root",
                self.continued,
                percent(self.continued, self.truncated),
                self.continued_remembered,
                self.continued_whole,
            );
        }
        let reads = self.joined + self.join_moved_on;
        if reads + self.join_unreadable > 0 {
            let _ = writeln!(
                s,
                "ember: stacks: {} truncated stacks ({:.1}%) joined with the interpreter's frames read from memory \
                 ({} in a call the thread's last read had seen; read {:.1} ms median, {:.1} ms p99 after the sample); \
                 {} not joined because the thread had moved on, {} because its frames could not be read",
                self.joined,
                percent(self.joined, self.truncated),
                self.join_reused,
                self.read_latency.percentile_ms(0.5),
                self.read_latency.percentile_ms(0.99),
                self.join_moved_on,
                self.join_unreadable,
            );
        }
        if self.outer_named + self.outer_refused > 0 {
            let _ = writeln!(
                s,
                "ember: stacks: {} whole stacks ({:.1}%) had the frames of calls made before the trampoline was on \
                 read from memory; {} ({:.1}%) did not, as the thread had moved on, and are marked [truncated]",
                self.outer_named,
                percent(self.outer_named, self.samples),
                self.outer_refused,
                percent(self.outer_refused, self.samples),
            );
        }
        if self.memory_samples + self.memory_unreadable > 0 {
            let _ = writeln!(
                s,
                "ember: stacks: {} samples read from the interpreter's memory, without perf events: Python frames \
                 only, of threads the kernel had running; {} rounds skipped for a process that could not be read at one moment",
                self.memory_samples, self.memory_unreadable,
            );
        }
        if self.activations_asked > 0 {
            let slowest = self
                .activation_slowest
                .map_or(String::new(), |d| format!(", the slowest {:.0} ms after it was asked", d.as_secs_f64() * 1e3));
            let _ = writeln!(
                s,
                "ember: activation: asked {} attached process{} to turn the perf trampoline on (3.14+: PEP 768 \
                 remote execution; 3.12/3.13: a pending call queued from a thread borrowed with ptrace); {} \
                 did{slowest}",
                self.activations_asked,
                if self.activations_asked == 1 { "" } else { "es" },
                self.activations_done,
            );
        }
        let _ = write!(s, "ember: lost records: {}", self.lost_records);
        if self.untracked_samples > 0 {
            let _ = write!(
                s,
                "; {} samples from child processes not followed (use --subprocesses)",
                self.untracked_samples
            );
        }
        if self.decode_errors > 0 {
            let _ = write!(s, "; {} undecodable records", self.decode_errors);
        }
        if self.corrupt_map_lines > 0 {
            let _ = write!(s, "; {} corrupt perf-map lines skipped", self.corrupt_map_lines);
        }
        s.push('\n');
        if self.tasks > 0 || self.lost_task_records > 0 {
            let _ = writeln!(
                s,
                "ember: asyncio: {} tasks, {} run slices; {} task records lost (the target outran the agent)",
                self.tasks, self.task_slices, self.lost_task_records
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_names_every_counter() {
        let stats = Stats {
            samples: 200,
            truncated: 10,
            completed: 9,
            unwind_failures: 2,
            lost_records: 1,
            processes: 1,
            threads: 3,
            ..Default::default()
        };
        let text = stats.summary(2.0, 99);
        assert!(text.contains("200 samples in 2.0 s at 99 Hz from 1 process, 3 threads"), "{text}");
        assert!(text.contains("10 truncated by the stack copy (5.0%), 9 of them completed (90.0%)"), "{text}");
        assert!(text.contains("2 unwind failures (1.0%)"), "{text}");
        assert!(text.contains("lost records: 1"), "{text}");
        assert!(!text.contains("asyncio"), "no task line without tasks: {text}");
        assert!(!text.contains("without unwind info"), "no such line without such code: {text}");
        let text = Stats { without_cfi: 4, ..stats }.summary(2.0, 99);
        assert!(!text.contains("went on in the thread's stack"), "{text}");
        assert!(text.contains("4 (2.0%) passed code without unwind info"), "{text}");
        let continued = Stats { truncated: 10, continued: 5, continued_whole: 4, continued_remembered: 3, ..stats };
        let line = "5 truncated stacks (50.0%) cut before any Python call went on in the thread's stack read from \
                    memory (3 in a call an earlier read had seen), 4 of them to the root";
        assert!(continued.summary(2.0, 99).contains(line), "{}", continued.summary(2.0, 99));
        assert!(!text.contains("interpreter"), "no join line without joins: {text}");
        let mut read_latency = Latencies::default();
        (0..99).for_each(|_| read_latency.add(2_000_000));
        read_latency.add(50_000_000);
        let joins = Stats { joined: 8, join_reused: 3, join_moved_on: 1, join_unreadable: 1, read_latency, ..stats };
        let text = joins.summary(2.0, 99);
        assert!(text.contains("8 truncated stacks (80.0%) joined"), "{text}");
        assert!(
            text.contains("(3 in a call the thread's last read had seen; read 2.0 ms median, 2.0 ms p99"),
            "{text}"
        );
        assert!(text.contains("after the sample); 1 not joined"), "{text}");
        let text = Stats { tasks: 3, task_slices: 12, lost_task_records: 2, ..stats }.summary(2.0, 99);
        assert!(text.contains("asyncio: 3 tasks, 12 run slices; 2 task records lost"), "{text}");
    }
}
