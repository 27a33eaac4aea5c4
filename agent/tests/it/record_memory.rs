//! Issue 14, item 5: when perf events are refused (here by a seccomp filter, as Docker's default
//! profile does without CAP_PERFMON), or with `--memory-only`, ember samples each running
//! thread's Python frames from the interpreter's memory, and says so.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

/// `no_perf.c` built: runs a command with perf_event_open refused (EPERM).
fn no_perf(dir: &std::path::Path) -> std::path::PathBuf {
    let exe = dir.join("no_perf");
    let cc = Command::new("cc").arg("-o").arg(&exe).arg(fixture("no_perf.c")).status();
    assert!(cc.expect("a C compiler (cc) is installed").success());
    exe
}

/// Whole memory stacks of `activate_work.py` and its 75/25 split.
fn check_shares(folded: &Folded, err: &str) {
    let working = |s: &[String]| has_frame(s, "work_a") || has_frame(s, "work_b");
    // In spin, or (rarely) caught in work_a/work_b on the way in or out of it.
    let whole = |s: &[String]| {
        let names: Vec<&str> = s.iter().map(|f| function(f)).collect();
        names.len() >= 3
            && names[..2] == ["<module>", "main"]
            && names[2].starts_with("work_")
            && names[3..].iter().all(|f| *f == "spin")
            && names.len() <= 4
    };
    let total = folded.count(working);
    // 3 s of CPU at 400 Hz: 1,200, less the scheduler's and the reads' slack. (At 100 Hz, 300
    // samples put a 75% share's 5-point bar at two standard deviations.)
    assert!(total >= 600, "only {total} samples in work_a/work_b\n{err}");
    assert_eq!(folded.count(|s| working(s) && !whole(s)), 0, "every memory stack whole\n{err}");
    let a = folded.count(|s| has_frame(s, "work_a")) as f64 / total as f64;
    assert!((a - 0.75).abs() <= 0.05, "work_a has {:.1}% of the samples, spends 75%\n{err}", a * 100.0);
}

#[test]
fn with_perf_events_refused_python_frames_are_sampled_from_memory() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut python = Command::new(python312());
    let target = Target::spawn(python.arg(fixture("activate_work.py")).arg("3"));
    target.wait_for("ready", Duration::from_secs(30));
    let mut agent = Command::new(no_perf(dir.path()));
    agent.arg(env!("CARGO_BIN_EXE_ember-agent")).args(["record", "--rate", "400", "--pid"]);
    let out = run(agent.arg(target.pid().to_string()));
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("perf_event_open was refused"), "{err}");
    assert!(err.contains("samples read from the interpreter's memory"), "{err}");
    check_shares(&Folded::from_output(&out), &err);
}

/// `--memory-only` on Debian's stripped 3.14, started without the trampoline: nothing is
/// asked of the target (no trampoline is needed), and the stacks are whole.
#[test]
fn memory_only_reads_a_stripped_interpreter_and_asks_nothing_of_it() {
    let _serial = serial();
    let target = Target::spawn(debian_python("3.14", "activate_work.py").arg("3"));
    target.wait_for("ready", Duration::from_secs(30));
    let pid = target.pid().to_string();
    let out = run(ember().args(["record", "--memory-only", "--rate", "400", "--pid", &pid]));
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("asked its interpreter") && !err.contains("perf trampoline is off"), "{err}");
    check_shares(&Folded::from_output(&out), &err);
}

#[test]
fn memory_only_needs_a_running_program() {
    let out = ember().args(["record", "--memory-only", "--"]).arg(python312()).args(["-c", "pass"]).output();
    let err = stderr(&out.expect("ember-agent runs"));
    assert!(err.contains("start the program, then attach with --pid"), "{err}");
}
