//! Every way `record` can be given bad input or lose its target: a clear message, the right
//! exit status, no panic, and no lost data.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn assert_no_panic(err: &str) {
    assert!(!err.contains("panicked"), "ember panicked:\n{err}");
}

#[test]
fn no_such_pid() {
    let pid = dead_pid();
    let out = run(ember().args(["record", "--duration", "1", "--pid", &pid.to_string()]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("no process with PID {pid}")), "{err}");
    assert!(err.contains("ps -p"), "says how to check: {err}");
    assert_no_panic(&err);
}

#[test]
fn no_permission_explains_paranoid_and_capabilities() {
    let _serial = serial();
    let target = serve_target("30", true);
    // An unprivileged user may not profile root's process.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_ember-agent"))
        .args(["record", "--duration", "1", "--pid", &target.pid().to_string()])
        .output()
        .expect("setpriv (util-linux) runs");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("permission denied"), "{err}");
    assert!(err.contains("perf_event_paranoid"), "{err}");
    assert!(err.contains("CAP_PERFMON") && err.contains("CAP_SYS_PTRACE"), "{err}");
    assert_no_panic(&err);
}

#[test]
fn python_older_than_3_12_is_profiled_natively_with_a_warning() {
    let _serial = serial();
    let out = run(ember()
        .args(["record", "--"])
        .arg(python_version("3.11"))
        .args(["-c", "import time\nend=time.thread_time()+1\nwhile time.thread_time()<end: pass"]));
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("Python 3.11, which has no perf trampoline"), "{err}");
    let folded = Folded::from_output(&out);
    assert!(folded.share(|s| s.iter().any(|f| f.contains("[libpython3.11"))) > 80.0, "native frames of libpython");
    assert_no_panic(&err);
}

#[test]
fn python_3_12_without_the_trampoline_says_how_to_turn_it_on() {
    let _serial = serial();
    let target = serve_target_cpu("1", false);
    // CPython never deletes its map, so a PID often comes with an earlier process's: that is
    // not this one's trampoline being on (CI reuses PIDs within a run).
    let stale = std::path::PathBuf::from(format!("/tmp/perf-{}.map", target.pid()));
    std::fs::write(&stale, "7f0000001000 b py::gone:/old.py\n").expect("write a stale map");
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options().append(true).open(&stale).and_then(|f| f.set_modified(hour_ago)).expect("age it");
    // Left alone (--no-activate), it gets the advice; activation is record_activate.rs's.
    let (out, cpu) = record_until_exit(&target, &["--no-activate"]);
    let _ = std::fs::remove_file(&stale);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("perf trampoline is off"), "{err}");
    assert!(err.contains("-X perf") && err.contains("PYTHONPERFSUPPORT=1"), "{err}");
    assert!(err.contains("sys.activate_stack_trampoline"), "{err}");
    let total = Folded::from_output(&out).total();
    assert!(total > 0 && total >= samples_for(cpu, 99.0, 0.5), "native samples are still recorded: {total} in {cpu} s");
}

#[test]
fn a_target_that_exits_during_recording_still_gives_its_profile() {
    let _serial = serial();
    let target = serve_target_cpu("1", true);
    let started = std::time::Instant::now();
    let (out, cpu) = record_until_exit(&target, &["--duration", "60"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30), "ember stops when the target exits");
    assert!(err.contains("the target exited"), "{err}");
    let folded = Folded::from_output(&out);
    let captured = folded.count(|s| has_frame(s, "handle_request"));
    assert!(captured > 0 && captured >= samples_for(cpu, 99.0, 0.5), "what was captured is written: {captured}");
}

#[test]
fn corrupt_perf_map_lines_are_skipped_counted_and_warned_once() {
    let _serial = serial();
    // The launched command shares ember's stdout, so the profile goes to a file.
    let dir = tempfile::tempdir().expect("tempdir");
    let folded_path = dir.path().join("cpu.folded");
    let out = run(ember()
        .args(["record", "-o"])
        .arg(&folded_path)
        .arg("--")
        .arg(python312())
        .arg(fixture("serve.py"))
        .args(["1.5", "corrupt"]));
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.matches("skipping corrupt perf-map line").count(), 1, "warned once: {err}");
    assert!(err.contains("2 corrupt perf-map lines skipped"), "{err}");
    let folded = Folded::parse(&std::fs::read_to_string(&folded_path).expect("profile written"));
    assert!(folded.share(|s| function(&s[0]) == "<module>" && has_frame(s, "compute")) > 80.0);
}

#[test]
fn an_unwritable_output_fails_before_recording() {
    let out =
        run(ember().args(["record", "-o", "/nonexistent/dir/cpu.svg", "--"]).arg(python312()).args(["-c", "pass"]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("cannot write the output to /nonexistent/dir/cpu.svg"), "{err}");
    assert!(!err.contains("samples in"), "nothing was recorded: {err}");
    assert_no_panic(&err);
}

#[test]
fn a_failing_command_passes_its_exit_status_through() {
    let out = run(ember().args(["record", "--"]).arg(python312()).args(["-c", "import sys; sys.exit(3)"]));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let out = run(ember()
        .args(["record", "--"])
        .arg(python312())
        .args(["-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]));
    assert_eq!(out.status.code(), Some(128 + 9), "killed by SIGKILL: {}", stderr(&out));
}

#[test]
fn a_command_that_does_not_exist() {
    let out = run(ember().args(["record", "--", "/nonexistent/python9"]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("could not run `/nonexistent/python9`"), "{err}");
    assert_no_panic(&err);
}

#[test]
fn no_target_and_bad_flags_are_usage_errors() {
    let out = run(ember().args(["record"]));
    assert!(stderr(&out).contains("nothing to profile"), "{}", stderr(&out));
    assert_eq!(out.status.code(), Some(1));
    let out = run(ember().args(["record", "--pid", "1", "--stack-bytes", "65536"]));
    assert_eq!(out.status.code(), Some(2), "clap usage error");
    assert!(stderr(&out).contains("multiple of 8 between 8 and 65528"));
}

#[test]
fn ctrl_c_stops_and_writes_the_output() {
    let _serial = serial();
    let target = serve_target("60", true);
    let dir = tempfile::tempdir().expect("tempdir");
    let svg = dir.path().join("cpu.svg");
    let svg_arg = svg.display().to_string();
    let mut agent = RunningAgent::start(&["record", "--pid", &target.pid().to_string(), "-o", &svg_arg]);
    agent.wait_for_stderr("recording", Duration::from_secs(20));
    // Let some samples arrive: wait until the ring buffer has been drained at least once.
    let started = std::time::Instant::now();
    wait_until(Duration::from_secs(5), "one second of recording", || started.elapsed() >= Duration::from_secs(1));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.pid() as i32), nix::sys::signal::Signal::SIGINT)
        .expect("signal ember");
    let out = agent.finish();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("interrupted; writing what was recorded"), "{err}");
    let text = std::fs::read_to_string(&svg).expect("the SVG was written");
    assert!(text.contains("handle_request"), "profile has the target's functions");
}
