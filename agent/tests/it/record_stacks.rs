//! `record` against real Python 3.12 processes: the stacks must be complete and right.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

#[test]
fn nested_chain_has_known_shares_and_module_at_the_root() {
    let _serial = serial();
    let out = run(ember()
        .args(["record", "--rate", "499", "--"])
        .arg(python312())
        .arg(fixture("nested.py"))
        .env("EMBER_FIXTURE_SECONDS", "4"));
    assert!(out.status.success(), "{}", stderr(&out));
    let folded = Folded::from_output(&out);
    assert!(folded.total() > 1500, "expected ~2000 samples, got {}", folded.total());

    // Samples of the program itself (not interpreter start-up or shutdown, when no Python
    // code runs) must carry the whole stack down to <module>.
    let in_program = |s: &[String]| s.iter().any(|f| f.contains("nested.py"));
    let programs = folded.count(in_program);
    let rooted = folded.count(|s| in_program(s) && s[0] == format!("<module> ({})", fixture("nested.py").display()));
    assert!(rooted as f64 >= 0.99 * programs as f64, "{rooted} of {programs} samples rooted at <module>");
    let with_python = folded.count(|s| s.iter().any(|f| f.contains(".py)")));
    assert!(programs as f64 >= 0.97 * with_python as f64);

    let chain = |leaf: &'static str| {
        move |s: &[String]| {
            let names: Vec<&str> = s.iter().map(|f| function(f)).collect();
            names.windows(4).any(|w| w == ["<module>", "outer", "middle", leaf])
        }
    };
    let a = folded.share(chain("leaf_a"));
    let b = folded.share(chain("leaf_b"));
    let own = folded.share(|s| {
        let names: Vec<&str> = s.iter().filter(|f| f.ends_with(".py)")).map(|f| function(f)).collect();
        names == ["<module>", "outer", "middle", "spin"]
    });
    assert!((a - 60.0).abs() <= 5.0, "leaf_a {a:.1}% (expected 60)");
    assert!((b - 30.0).abs() <= 5.0, "leaf_b {b:.1}% (expected 30)");
    assert!((own - 10.0).abs() <= 5.0, "middle's own spin {own:.1}% (expected 10)");
}

#[test]
fn a_150_deep_recursion_comes_out_whole() {
    let _serial = serial();
    let out = run(ember().args(["record", "--rate", "199", "--"]).arg(python312()).arg(fixture("deep.py")));
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let folded = Folded::from_output(&out);
    let recursion = |s: &[String]| has_frame(s, "recurse");
    let depth = |s: &[String]| s.iter().filter(|f| function(f) == "recurse").count();
    let total = folded.count(recursion);
    let rooted = folded.count(|s| recursion(s) && function(&s[0]) == "<module>");
    assert!(rooted as f64 >= 0.99 * total as f64, "{rooted} of {total} recursion samples reach <module>\n{err}");
    // The bottom of the recursion: all 151 levels, root to leaf.
    let deepest = folded.count(|s| depth(s) == 151 && function(&s[0]) == "<module>");
    assert!(deepest >= 100, "only {deepest} samples with the full 151-level stack\n{err}");
    assert!(folded.count(|s| depth(s) > 151) == 0, "no sample may have more levels than exist");
    // It only works because truncated samples were completed; the summary says so.
    assert!(err.contains("truncated by the stack copy"), "{err}");
    assert!(!err.contains(" 0 truncated"), "deep stacks must have been truncated: {err}");
}

#[test]
fn busy_threads_including_one_started_before_attach() {
    let _serial = serial();
    let mut target = Target::spawn(
        Command::new(python312())
            .arg(fixture("threads.py"))
            .arg("3")
            .env("PYTHONPERFSUPPORT", "1")
            .stdin(Stdio::piped()),
    );
    target.wait_for("ready", Duration::from_secs(20));
    let pid = target.pid().to_string();
    let mut agent = RunningAgent::start(&["record", "--pid", &pid, "--threads"]);
    agent.wait_for_stderr("recording", Duration::from_secs(20));
    // Now the late thread starts, after ember attached.
    let mut stdin = target.child.stdin.take().expect("piped stdin");
    writeln!(stdin, "go").expect("target reads stdin");
    target.wait_for("late started", Duration::from_secs(10));
    let out = agent.finish();
    assert!(out.status.success());
    let folded = Folded::from_output(&out);
    let thread_roots: std::collections::HashSet<&str> =
        folded.stacks.iter().map(|(s, _)| s[0].as_str()).filter(|r| r.starts_with("thread ")).collect();
    assert!(thread_roots.len() >= 3, "main, early and late threads: {thread_roots:?}");
    for worker in ["early_worker", "late_worker"] {
        let n = folded.count(|s| {
            has_frame(s, worker) && s.iter().any(|f| function(f) == "Thread._bootstrap") && s[0].starts_with("thread ")
        });
        assert!(n >= 50, "{worker}: {n} samples with its whole stack");
    }
}

#[test]
fn a_forked_child_keeps_the_frames_from_before_the_fork() {
    let _serial = serial();
    let out = run(ember().args(["record", "--subprocesses", "--"]).arg(python312()).arg(fixture("fork_child.py")));
    assert!(out.status.success(), "{}", stderr(&out));
    let folded = Folded::from_output(&out);
    let child_stack = |s: &[String]| {
        let names: Vec<&str> = s.iter().skip(1).filter(|f| f.ends_with(".py)")).map(|f| function(f)).collect();
        names.starts_with(&["<module>", "main", "child_part", "shared_spin"])
    };
    let parent_stack = |s: &[String]| {
        let names: Vec<&str> = s.iter().skip(1).filter(|f| f.ends_with(".py)")).map(|f| function(f)).collect();
        names.starts_with(&["<module>", "main", "parent_part", "shared_spin"])
    };
    let child = folded.count(child_stack);
    let parent = folded.count(parent_stack);
    assert!(child >= 150, "child samples with <module> and main from the parent's map: {child}\n{}", stderr(&out));
    assert!(parent >= 70, "parent samples: {parent}");
    let roots: std::collections::HashSet<&str> =
        folded.stacks.iter().filter(|(s, _)| child_stack(s) || parent_stack(s)).map(|(s, _)| s[0].as_str()).collect();
    assert_eq!(roots.len(), 2, "one `process PID (comm)` root per process: {roots:?}");
    assert!(roots.iter().all(|r| r.starts_with("process ")), "{roots:?}");
    // Child samples stay under the child's root, not the parent's.
    let child_roots: std::collections::HashSet<&str> =
        folded.stacks.iter().filter(|(s, _)| child_stack(s)).map(|(s, _)| s[0].as_str()).collect();
    assert_eq!(child_roots.len(), 1);
    // The child's own trampolines (it makes new ones after the fork) are named from its first
    // sample on, even those in the batch of events that announced it.
    let unnamed = folded.count(|s| s.iter().any(|f| f.ends_with("[anon]")));
    assert_eq!(unnamed, 0, "samples with an unnamed trampoline\n{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn attaching_to_a_running_process() {
    let _serial = serial();
    let target = serve_target_cpu("2", true);
    let (out, cpu) = record_until_exit(&target, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let folded = Folded::from_output(&out);
    let expected = samples_for(cpu, 99.0, 0.75);
    assert!(folded.total() >= expected, "{} samples for {cpu:.2} CPU s at 99 Hz", folded.total());
    let full = folded.share(|s| {
        let names: Vec<&str> = s.iter().map(|f| function(f)).collect();
        names.starts_with(&["<module>", "main", "handle_request", "compute"])
    });
    assert!(full >= 95.0, "{full:.1}% of samples with <module> -> main -> handle_request -> compute");
}

/// Each CPU's ring is polled through one of its events, at first the first target's. Once
/// that process has exited, its descriptor reports a hang-up on every poll: the agent must
/// move on to a live event rather than spin while the other target runs.
#[test]
fn the_first_target_exiting_leaves_the_agent_idle() {
    let _serial = serial();
    let idle = "import time\nprint('ready', flush=True)\ntime.sleep(600)";
    let first = Target::spawn(Command::new(python312()).args(["-c", idle]));
    let second = Target::spawn(Command::new(python312()).args(["-c", idle]));
    first.wait_for("ready", Duration::from_secs(20));
    second.wait_for("ready", Duration::from_secs(20));
    let (first_pid, second_pid) = (first.pid().to_string(), second.pid().to_string());
    let mut agent = RunningAgent::start(&["record", "--pid", &first_pid, "--pid", &second_pid]);
    agent.wait_for_stderr("recording", Duration::from_secs(30));
    drop(first);
    // A window of wall time is what is measured here: a spinning agent uses most of it.
    let window = Duration::from_secs(2);
    let cpu_before = cpu_seconds(agent.pid());
    std::thread::sleep(window);
    let used = cpu_seconds(agent.pid()) - cpu_before;
    agent.signal(2);
    let out = agent.finish();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(used < 0.1 * window.as_secs_f64(), "the agent used {used:.2} CPU s in {window:?} with idle targets");
}

#[test]
fn a_native_program_gives_native_stacks_from_cfi() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = dir.path().join("busy");
    let cc = Command::new("cc")
        .args(["-O2", "-g", "-fomit-frame-pointer", "-o"])
        .arg(&exe)
        .arg(fixture("busy.c"))
        .status()
        .expect("a C compiler (cc) is installed");
    assert!(cc.success());
    let out = run(ember().args(["record", "--"]).arg(&exe).arg("2"));
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("is not a Python process"), "{err}");
    let folded = Folded::from_output(&out);
    let full = folded.share(|s| {
        let names: Vec<&str> = s.iter().map(|f| f.as_str()).collect();
        names.windows(3).any(|w| w == ["main [busy]", "outer_work [busy]", "inner_spin [busy]"])
    });
    assert!(full >= 90.0, "{full:.1}% of samples with main -> outer_work -> inner_spin\n{:?}", folded.stacks);
    assert!(folded.share(|s| s[0].contains("_start") || s[0].contains("__libc_start")) >= 90.0);
}

#[test]
fn native_mode_interleaves_interpreter_frames() {
    let _serial = serial();
    let out = run(ember()
        .args(["record", "--native", "--"])
        .arg(python312())
        .arg(fixture("nested.py"))
        .env("EMBER_FIXTURE_SECONDS", "1"));
    assert!(out.status.success());
    let folded = Folded::from_output(&out);
    let interleaved = folded.share(|s| {
        s[0].starts_with("_start")
            && s.iter().any(|f| f.starts_with("_PyEval_EvalFrameDefault ["))
            && has_frame(s, "<module>")
            && has_frame(s, "leaf_a")
    });
    assert!(interleaved >= 30.0, "{interleaved:.1}% of samples from _start through the interpreter to leaf_a");
}
