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
        assert!(text.contains("4 (2.0%) passed code without unwind info"), "{text}");
        let text = Stats { tasks: 3, task_slices: 12, lost_task_records: 2, ..stats }.summary(2.0, 99);
        assert!(text.contains("asyncio: 3 tasks, 12 run slices; 2 task records lost"), "{text}");
    }
}
