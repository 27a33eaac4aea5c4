//! Real-world fidelity (issue 12): code loaded after start-up, pre-forked workers, the largest
//! stack copy and the first instructions of a process must all give whole stacks.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

/// Checks the samples of `late_extension.py`: the ones in `_sha2`'s C code, a library
/// dlopen'ed after ember started, carry the whole Python stack and no unknown frame.
fn assert_late_extension_stacks(folded: &Folded, err: &str) {
    let in_sha2 = |s: &[String]| s.last().is_some_and(|leaf| leaf.contains("[_sha2.cpython-312"));
    let hashing = folded.count(in_sha2);
    assert!(hashing >= 100, "only {hashing} samples in _sha2's code\n{err}\n{:?}", folded.stacks);
    let whole = folded.count(|s| {
        let python: Vec<&str> = s.iter().filter(|f| f.ends_with(".py)")).map(|f| function(f)).collect();
        in_sha2(s) && python == ["<module>", "main", "hash_blocks"] && function(&s[0]) == "<module>"
    });
    assert_eq!(whole, hashing, "every sample in _sha2 is rooted at <module> -> main -> hash_blocks\n{err}");
    let unknown = folded.count(|s| s.iter().any(|f| f.contains("[unknown]") || f == "[truncated]"));
    assert!(unknown <= 2, "{unknown} samples with an unknown or truncated frame\n{:?}", folded.stacks);
}

#[test]
fn a_library_loaded_after_launch_is_unwound_through() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("late.folded");
    // The fixture prints to stdout, so the profile goes to a file.
    let out = run(ember()
        .args(["record", "--rate", "199", "-o"])
        .arg(&out_path)
        .arg("--")
        .arg(python312())
        .arg(fixture("late_extension.py")));
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let folded = Folded::parse(&std::fs::read_to_string(&out_path).expect("the profile"));
    assert_late_extension_stacks(&folded, &err);
}

#[test]
fn a_library_loaded_after_attach_is_unwound_through() {
    let _serial = serial();
    let mut target = Target::spawn(
        Command::new(python312())
            .arg("-X")
            .arg("perf")
            .arg(fixture("late_extension.py"))
            .arg("--wait")
            .stdin(Stdio::piped()),
    );
    target.wait_for("ready", Duration::from_secs(20));
    let pid = target.pid().to_string();
    let mut agent = RunningAgent::start(&["record", "--rate", "199", "--pid", &pid]);
    agent.wait_for_stderr("recording", Duration::from_secs(20));
    // Only now does the target dlopen _sha2.
    let mut stdin = target.child.stdin.take().expect("piped stdin");
    writeln!(stdin, "go").expect("the target reads stdin");
    let out = agent.finish();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_late_extension_stacks(&Folded::from_output(&out), &err);
}

/// The stack every worker sample of `prefork.py` must have: the frames from before the fork,
/// named only in the master's map, then the worker's own.
const WORKER_STACK: [&str; 5] = ["<module>", "main", "Arbiter.run", "Arbiter.spawn_worker", "Worker.run"];

fn worker_sample(s: &[String]) -> bool {
    has_frame(s, "handle_request") || has_frame(s, "only_in_worker")
}

fn whole_worker_stack(s: &[String]) -> bool {
    let python: Vec<&str> = s.iter().filter(|f| f.ends_with(".py)")).map(|f| function(f)).collect();
    python.starts_with(&WORKER_STACK) && !s.iter().any(|f| f == "[truncated]" || f.contains("[anon]"))
}

/// `prefork.py` with two workers, waiting; returns it and its workers' PIDs.
fn start_prefork() -> (Target, Vec<String>) {
    let target =
        Target::spawn(Command::new(python312()).args(["-X", "perf"]).arg(fixture("prefork.py")).stdin(Stdio::piped()));
    let ready = target.wait_for("ready", Duration::from_secs(20));
    let workers: Vec<String> = ready.split_whitespace().skip(1).map(str::to_string).collect();
    assert_eq!(workers.len(), 2, "{ready}");
    (target, workers)
}

/// Attaches with `args`, then lets the workers work; returns ember's output.
fn record_prefork(target: &mut Target, args: &[&str]) -> std::process::Output {
    let mut full = vec!["record"];
    full.extend_from_slice(args);
    let mut agent = RunningAgent::start(&full);
    agent.wait_for_stderr("recording", Duration::from_secs(20));
    let mut stdin = target.child.stdin.take().expect("piped stdin");
    writeln!(stdin, "go").expect("the master reads stdin");
    agent.finish()
}

#[test]
fn a_worker_forked_before_attach_has_the_frames_from_before_the_fork() {
    let _serial = serial();
    let (mut target, workers) = start_prefork();
    let out = record_prefork(&mut target, &["--pid", &workers[0]]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let folded = Folded::from_output(&out);
    let working = folded.count(worker_sample);
    assert!(working >= 100, "only {working} samples of the worker's loop\n{err}");
    let whole = folded.count(|s| worker_sample(s) && whole_worker_stack(s));
    assert!(
        whole as f64 >= 0.99 * working as f64,
        "{whole} of {working} worker samples rooted at <module> through the master's frames\n{err}\n{:?}",
        folded.stacks
    );
    assert!(err.contains("which it was forked from"), "the master's map was read: {err}");
}

#[test]
fn subprocesses_with_pid_follow_the_workers_that_already_run() {
    let _serial = serial();
    let (mut target, workers) = start_prefork();
    let master = target.pid().to_string();
    let out = record_prefork(&mut target, &["--subprocesses", "--pid", &master]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let folded = Folded::from_output(&out);
    for worker in &workers {
        let root = format!("process {worker} ");
        let mine = |s: &[String]| s[0].starts_with(&root) && worker_sample(&s[1..]);
        let working = folded.count(mine);
        assert!(working >= 100, "only {working} samples of worker {worker}\n{err}");
        let whole = folded.count(|s| mine(s) && whole_worker_stack(&s[1..]));
        assert!(whole as f64 >= 0.99 * working as f64, "worker {worker}: {whole} of {working} samples whole\n{err}");
    }
}

/// `deep.py` with `args`: its recursion samples must reach <module>, and the summary must count
/// the samples the stack copy cut, however the kernel shortened the copy.
fn assert_deep_recursion_whole(args: &[&str]) -> String {
    let out =
        run(ember().args(["record", "--rate", "199"]).args(args).arg("--").arg(python312()).arg(fixture("deep.py")));
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let folded = Folded::from_output(&out);
    let recursion = folded.count(|s| has_frame(s, "recurse"));
    let rooted = folded.count(|s| has_frame(s, "recurse") && function(&s[0]) == "<module>");
    assert!(recursion >= 300, "only {recursion} recursion samples\n{err}");
    assert!(
        rooted as f64 >= 0.99 * recursion as f64,
        "{rooted} of {recursion} recursion samples reach <module>\n{err}"
    );
    assert!(!err.contains(" 0 truncated"), "the bottom of a 151-deep recursion does not fit in 64 KiB: {err}");
    err
}

#[test]
fn the_largest_stack_copy_is_clamped_and_a_short_copy_counts_as_truncated() {
    let _serial = serial();
    // The kernel takes 65528 but copies at most 65432 bytes; taken as complete, the stacks of
    // the deepest samples were cut silently.
    let err = assert_deep_recursion_whole(&["--stack-bytes", "65528"]);
    assert!(err.contains("--stack-bytes 65528 is more than a perf sample can carry") && err.contains("65432"), "{err}");
    // With kernel frames the callchain takes room too, so the kernel copies less than 65432:
    // the decoder must see that the copy filled the room it had.
    let err = assert_deep_recursion_whole(&["--kernel", "--stack-bytes", "65432"]);
    assert!(!err.contains("more than a perf sample can carry"), "{err}");
}

#[test]
fn samples_in_the_dynamic_loader_at_start_are_rooted_at_its_entry() {
    let _serial = serial();
    // ld.so's _start has no CFI; a walk that reaches it from the loader's work (relocating
    // libpython, all of it with LD_BIND_NOW) at the top of the stack is complete. A launch
    // spends a few ms there, so runs repeat until enough samples were taken in it.
    let (mut rooted, mut cut) = (0, 0);
    for _ in 0..20 {
        let out = run(ember()
            .args(["record", "--rate", "10000", "--"])
            .arg(python312())
            .args(["-c", "pass"])
            .env("LD_BIND_NOW", "1"));
        assert!(out.status.success(), "{}", stderr(&out));
        let folded = Folded::from_output(&out);
        rooted += folded.count(|s| s[0].starts_with("_start [ld-linux"));
        cut += folded.count(|s| s[0] == "[truncated]" && s.get(1).is_some_and(|f| f.starts_with("_start [ld-linux")));
        if rooted + cut >= 20 {
            break;
        }
    }
    assert!(rooted + cut >= 20, "only {} samples in the loader's start-up", rooted + cut);
    assert_eq!(cut, 0, "{cut} loader samples marked [truncated] ({rooted} rooted at _start)");
}

/// Assembly without CFI (`no_cfi.c`, called from Python through ctypes) keeps a double in rbp
/// and, in `kernel_realign`, moves rsp to an aligned buffer: its caller must come from its
/// prologue, never from rbp. Before, every such sample was cut at the kernel or carried the
/// double as a frame (`0x3f49d7fb1e8907b2 [unknown]`).
#[test]
fn code_without_unwind_info_is_unwound_from_its_prologue() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = build_no_cfi(dir.path());
    let out_path = dir.path().join("no_cfi.folded");
    let out = run(ember()
        .args(["record", "--rate", "499", "-o"])
        .arg(&out_path)
        .arg("--")
        .arg(python312())
        .args(["-X", "perf"])
        .arg(fixture("no_cfi.py"))
        .arg(&lib));
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let folded = Folded::parse(&std::fs::read_to_string(&out_path).expect("the profile"));
    let in_kernel = |s: &[String]| s.last().is_some_and(|leaf| leaf.starts_with("kernel_"));
    // 2 s of the thread's CPU time at 499 Hz, nearly all of it in the kernels.
    let kernel = folded.count(in_kernel);
    assert!(kernel >= 500, "only {kernel} samples in the kernels\n{err}\n{:?}", folded.stacks);
    let whole = folded.count(|s| {
        let python: Vec<&str> = s.iter().filter(|f| f.ends_with(".py)")).map(|f| function(f)).collect();
        in_kernel(s)
            && python == ["<module>", "work"]
            && function(&s[0]) == "<module>"
            && s.len() >= 2
            && s[s.len() - 2] == "driver [libnocfi.so]"
            && !s.iter().any(|f| f.contains("[unknown]") || f == "[truncated]")
    });
    assert!(whole * 100 >= kernel * 99, "{whole} of {kernel} kernel samples whole\n{err}\n{:?}", folded.stacks);
    assert!(err.contains("passed code without unwind info"), "{err}");
}

/// `no_cfi.c` built as a shared library in `dir`.
fn build_no_cfi(dir: &Path) -> PathBuf {
    let lib = dir.join("libnocfi.so");
    let cc = Command::new("cc")
        .args(["-O2", "-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(fixture("no_cfi.c"))
        .status()
        .expect("a C compiler (cc) is installed");
    assert!(cc.success());
    lib
}

/// A native frame larger than the stack copy (`kernel_realign`'s 12-16 KiB buffer, with an
/// 8 KiB copy, as OpenBLAS's kernels fill the default one) leaves no Python call in the copy.
/// The walk goes on in the thread's stack read from memory, taken only while the thread's
/// innermost Python call is still the one running: a sample is then whole, or `[truncated]`
/// when the call ended before the read (never another call's frames). Without reads, few are
/// whole.
#[test]
fn a_copy_cut_before_any_python_call_goes_on_in_the_stack_read_from_memory() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = build_no_cfi(dir.path());
    let profile = |extra: &[&str]| {
        let out_path = dir.path().join("cut.folded");
        let out = run(ember()
            .args(["record", "--rate", "499", "--stack-bytes", "8192", "-o"])
            .arg(&out_path)
            .args(extra)
            .arg("--")
            .arg(python312())
            .args(["-X", "perf"])
            .arg(fixture("no_cfi.py"))
            .arg(&lib)
            // Each call ~20-40 ms, so a read a fraction of a millisecond late rarely misses it.
            .env("EMBER_KERNEL_LOOPS", "20000000"));
        let err = stderr(&out);
        assert!(out.status.success(), "{err}");
        (Folded::parse(&std::fs::read_to_string(&out_path).expect("the profile")), err)
    };
    let in_realign = |s: &[String]| s.last().is_some_and(|leaf| leaf == "kernel_realign [libnocfi.so]");
    let whole_in_work = |s: &[String]| {
        let python: Vec<&str> = s.iter().filter(|f| f.ends_with(".py)")).map(|f| function(f)).collect();
        python == ["<module>", "work"]
            && function(&s[0]) == "<module>"
            && s.len() >= 2
            && s[s.len() - 2] == "driver [libnocfi.so]"
            && !s.iter().any(|f| f.contains("[unknown]") || f == "[truncated]")
    };
    let (folded, err) = profile(&[]);
    let realign = folded.count(in_realign);
    assert!(realign >= 200, "only {realign} samples in kernel_realign\n{err}\n{:?}", folded.stacks);
    let whole = folded.count(|s| in_realign(s) && whole_in_work(s));
    let cut = folded.count(|s| in_realign(s) && s.first().is_some_and(|f| f == "[truncated]") && s.len() == 2);
    eprintln!("kernel_realign samples: {whole} whole, {cut} [truncated], of {realign}");
    assert_eq!(whole + cut, realign, "every sample whole or marked\n{err}\n{:?}", folded.stacks);
    assert!(whole * 10 >= realign * 9, "{whole} of {realign} samples whole\n{err}\n{:?}", folded.stacks);
    assert!(err.contains("cut before any Python call went on in the thread's stack read from memory"), "{err}");

    // Without reads, only the thread's history completes a few (after a rare sample whose
    // copy held the whole stack).
    let (folded, err) = profile(&["--no-interpreter-reads"]);
    let (whole, realign) = (folded.count(|s| in_realign(s) && whole_in_work(s)), folded.count(in_realign));
    assert!(realign >= 200, "{err}");
    assert!(whole * 10 <= realign, "{whole} of {realign} whole without reads\n{err}");
    assert!(!err.contains("went on in the thread's stack"), "{err}");
}
