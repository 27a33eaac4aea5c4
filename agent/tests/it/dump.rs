//! `ember-agent dump` against real interpreters: pyenv's 3.12 and 3.13, and Debian's stock
//! 3.13-3.15 (non-PIE, stripped) in a chroot. The fixture's threads sit at known functions
//! and lines; the dump must show exactly those chains, innermost first.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// The line of `dump_threads.py` marked `# marker`.
fn line_of(marker: &str) -> u64 {
    line_in("dump_threads.py", marker)
}

/// The line of a fixture marked `# marker`.
fn line_in(fixture_name: &str, marker: &str) -> u64 {
    let text = std::fs::read_to_string(fixture(fixture_name)).expect("fixture");
    let found = text.lines().position(|l| l.trim_end().ends_with(&format!("# {marker}")));
    found.map(|i| i as u64 + 1).unwrap_or_else(|| panic!("no line marked {marker}"))
}

fn dump(pid: u32) -> Result<Value, String> {
    dump_with(pid, &[])
}

fn dump_with(pid: u32, extra: &[&str]) -> Result<Value, String> {
    let out =
        ember().args(["dump", "--json", "--pid", &pid.to_string()]).args(extra).output().expect("ember-agent runs");
    if !out.status.success() {
        return Err(stderr(&out));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("not JSON: {e}"))
}

/// Polls the dump until `ready` holds for it (the program has reached its known state).
fn dump_when(pid: u32, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = dump(pid);
        if let Ok(value) = &last {
            if ready(value) {
                return value.clone();
            }
        }
        assert!(Instant::now() < deadline, "the dump never showed {what}; last: {last:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `(function, line)` of a thread's frames, innermost first.
fn frames(thread: &Value) -> Vec<(String, Option<u64>)> {
    let frames = thread["frames"].as_array().cloned().unwrap_or_default();
    frames.iter().map(|f| (f["function"].as_str().unwrap_or("?").to_string(), f["line"].as_u64())).collect()
}

/// The threads that run Python (`dump --native` also lists the others).
fn python_threads(dump: &Value) -> Vec<Value> {
    let threads = dump["threads"].as_array().cloned().unwrap_or_default();
    threads.into_iter().filter(|t| t["python"] == true).collect()
}

fn all_spinning(dump: &Value) -> bool {
    let threads = python_threads(dump);
    threads.len() == 3 && threads.iter().all(|t| frames(t).first().is_some_and(|(f, _)| f == "spin"))
}

/// The fixture at `depth` under `python` (a command), checked thread by thread.
fn check_threads(mut python: Command, depth: usize, version_prefix: &str) {
    let _serial = serial();
    let target = Target::spawn(python.arg(depth.to_string()));
    target.wait_for("ready", Duration::from_secs(30));
    let pid = target.pid();
    let dump = dump_when(pid, "every thread in spin", all_spinning);
    assert!(dump["python"].as_str().is_some_and(|v| v.starts_with(version_prefix)), "{}", dump["python"]);
    assert_eq!(dump["stopped"], false);
    let threads = dump["threads"].as_array().expect("threads");
    assert!(threads.iter().all(|t| t["python"] == true), "a thread without Python listed: {threads:?}");
    let spin_lines = [Some(line_of("spin-loop")), Some(line_of("spin-body"))];
    let mut workers = Vec::new();
    for thread in threads {
        let frames = frames(thread);
        assert!(thread["incomplete"].is_null(), "{thread}");
        assert!(spin_lines.contains(&frames[0].1), "spin's line {:?}", frames[0]);
        if thread["tid"] == pid {
            let mut expected = vec![("recurse".to_string(), Some(line_of("recurse-bottom")))];
            expected.extend((1..depth).map(|_| ("recurse".to_string(), Some(line_of("recurse-call")))));
            expected.push(("main".into(), Some(line_of("main-call"))));
            expected.push(("<module>".into(), Some(line_of("module-call"))));
            assert_eq!(frames[1..], expected[..], "the main thread");
        } else {
            let outer: Vec<&str> = frames[2..].iter().map(|(f, _)| f.as_str()).collect();
            assert_eq!(outer, ["Thread.run", "Thread._bootstrap_inner", "Thread._bootstrap"]);
            // threading's names: read from memory on 3.12/3.13, from the OS on 3.14+.
            assert_eq!(thread["name"].as_str(), Some(frames[1].0.as_str()), "{thread}");
            workers.push(frames[1].clone());
        }
    }
    workers.sort();
    assert_eq!(workers, [("work_a".into(), Some(line_of("work-a"))), ("work_b".into(), Some(line_of("work-b")))]);
    let holders = threads.iter().filter(|t| t["holds_gil"] == true).count();
    assert!(holders <= 1, "{holders} threads hold the one GIL");
}

#[test]
fn dumps_the_threads_of_pyenv_3_12() {
    let mut python = Command::new(python312());
    python.arg(fixture("dump_threads.py"));
    check_threads(python, 3, "3.12.");
}

#[test]
fn dumps_the_threads_of_pyenv_3_13() {
    let mut python = Command::new(python_version("3.13"));
    python.arg(fixture("dump_threads.py"));
    check_threads(python, 3, "3.13.");
}

#[test]
fn dumps_the_threads_of_debian_s_stripped_3_13_to_3_15() {
    for minor in ["3.13", "3.14", "3.15"] {
        check_threads(debian_python(minor, "dump_threads.py"), 3, &format!("{minor}."));
    }
}

/// A stack far deeper than a perf sample's copy holds, whole: 700 frames on 3.12, 4,000 on
/// 3.13+ (see the reference on 3.12's recursion limit under the trampoline).
#[test]
fn dumps_deep_stacks_whole() {
    let mut python = Command::new(python312());
    python.arg(fixture("dump_threads.py"));
    check_threads(python, 700, "3.12.");
    let mut python = Command::new(python_version("3.13"));
    python.arg(fixture("dump_threads.py"));
    check_threads(python, 4000, "3.13.");
    check_threads(debian_python("3.15", "dump_threads.py"), 4000, "3.15.");
}

/// `dump --native` on the threads fixture: each thread's Python frames, whole and in order,
/// sit among its native frames in place of the eval loop's calls, with native frames outside
/// them (the main thread's reach `Py_RunMain`); the process was stopped briefly and runs on.
fn check_native(mut python: Command, version_prefix: &str) {
    let _serial = serial();
    let target = Target::spawn(python.arg("3"));
    target.wait_for("ready", Duration::from_secs(30));
    let pid = target.pid();
    let deadline = Instant::now() + Duration::from_secs(60);
    let dump = loop {
        let last = dump_with(pid, &["--native"]);
        let python_only = last.as_ref().map(|d| {
            let mut d = d.clone();
            for thread in d["threads"].as_array_mut().into_iter().flatten() {
                let frames = thread["frames"].as_array().cloned().unwrap_or_default();
                thread["frames"] = frames.into_iter().filter(|f| f["native"] == false).collect();
            }
            d
        });
        if python_only.as_ref().is_ok_and(all_spinning) {
            break last.expect("a dump");
        }
        assert!(Instant::now() < deadline, "the native dump never showed every thread in spin; last: {last:#?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(dump["python"].as_str().is_some_and(|v| v.starts_with(version_prefix)), "{}", dump["python"]);
    assert_eq!(dump["stopped"], true);
    let stopped_us = dump["stopped_for_us"].as_u64().expect("how long it was stopped");
    assert!(stopped_us < 1_000_000, "stopped for {stopped_us} µs");
    // faulthandler's watchdog, which never ran Python: listed with its native frames only.
    let threads = dump["threads"].as_array().expect("threads");
    let native_only: Vec<&Value> = threads.iter().filter(|t| t["python"] == false).collect();
    assert_eq!(native_only.len(), 1, "{threads:#?}");
    let watchdog = native_only[0]["frames"].as_array().cloned().unwrap_or_default();
    assert!(!watchdog.is_empty() && watchdog.iter().all(|f| f["native"] == true), "{watchdog:#?}");
    for thread in python_threads(&dump).iter() {
        let frames = thread["frames"].as_array().cloned().unwrap_or_default();
        let function = |f: &Value| f["function"].as_str().unwrap_or("?").to_string();
        let python: Vec<String> = frames.iter().filter(|f| f["native"] == false).map(function).collect();
        assert_eq!(python[0], "spin", "{thread}");
        assert_eq!(
            python.last().map(String::as_str),
            Some(if thread["tid"] == pid { "<module>" } else { "Thread._bootstrap" })
        );
        let last_python = frames.iter().rposition(|f| f["native"] == false).expect("Python frames");
        let outside: Vec<String> = frames[last_python + 1..].iter().map(function).collect();
        assert!(!outside.is_empty(), "no native frames outside the Python ones: {thread}");
        if thread["tid"] == pid {
            assert!(outside.iter().any(|f| f == "Py_RunMain"), "{outside:?}");
        }
    }
    // Let go: not left in a tracing stop, and still running its Python code.
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the target lives");
    let state = state.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()).unwrap_or("?");
    assert!(state == "R" || state == "S", "the target is in state {state} after the dump");
    dump_when(pid, "every thread in spin after the native dump", all_spinning);
}

#[test]
fn dumps_native_frames_around_the_python_ones() {
    let mut pyenv312 = Command::new(python312());
    pyenv312.arg(fixture("dump_threads.py"));
    check_native(pyenv312, "3.12.");
    for minor in ["3.13", "3.14", "3.15"] {
        check_native(debian_python(minor, "dump_threads.py"), &format!("{minor}."));
    }
}

/// A task tree as `name[children]`, siblings in the dump's order (by name).
fn task_shape(tasks: &Value) -> String {
    let nodes = tasks.as_array().cloned().unwrap_or_default();
    let parts: Vec<String> = nodes
        .iter()
        .map(|t| {
            let name = t["name"].as_str().unwrap_or("?");
            match task_shape(&t["children"]) {
                children if children.is_empty() => name.to_string(),
                children => format!("{name}[{children}]"),
            }
        })
        .collect();
    parts.join(",")
}

/// The task named `name`, anywhere in the tree.
fn find_task<'a>(tasks: &'a Value, name: &str) -> Option<&'a Value> {
    tasks.as_array()?.iter().find_map(|t| if t["name"] == name { Some(t) } else { find_task(&t["children"], name) })
}

/// `asyncio_tree.py` under `python`: the dump must give its exact tree, each task's coroutine
/// chain with lines, and what each awaits.
fn check_task_tree(mut python: Command, version_prefix: &str) {
    const TREE: &str = "main[outer-a[inner-1,inner-2],outer-b[gathered-1,gathered-2],outer-c[awaited]]";
    let _serial = serial();
    let target = Target::spawn(&mut python);
    target.wait_for("ready", Duration::from_secs(30));
    let dump = dump_when(target.pid(), "the task tree", |d| task_shape(&d["tasks"]) == TREE);
    assert!(dump["python"].as_str().is_some_and(|v| v.starts_with(version_prefix)), "{}", dump["python"]);
    assert!(dump["tasks_error"].is_null(), "{}", dump["tasks_error"]);
    let tasks = &dump["tasks"];
    let task = |name: &str| find_task(tasks, name).unwrap_or_else(|| panic!("no task {name}"));
    let chain = |name: &str| {
        let frames = task(name)["coroutine_stack"].as_array().cloned().unwrap_or_default();
        frames
            .iter()
            .map(|f| (f["function"].as_str().unwrap_or("?").to_string(), f["line"].as_u64()))
            .collect::<Vec<_>>()
    };
    let line = |marker| Some(line_in("asyncio_tree.py", marker));
    for leaf in ["inner-1", "inner-2", "gathered-1", "gathered-2", "awaited"] {
        let frames = chain(leaf);
        assert_eq!(frames.len(), 3, "{leaf}: {frames:?}");
        assert_eq!(frames[0].0, "Event.wait", "{leaf}");
        assert_eq!(frames[1..], [("wait_forever".into(), line("leaf-wait")), ("inner".into(), line("inner-call"))]);
        assert_eq!(task(leaf)["awaiting"], "_asyncio.Future", "{leaf}");
    }
    let outermost = |name: &str| chain(name).last().cloned();
    assert_eq!(outermost("main"), Some(("main".into(), line("main-group"))));
    assert_eq!(outermost("outer-a"), Some(("outer_a".into(), line("outer-a-group"))));
    assert_eq!(outermost("outer-b"), Some(("outer_b".into(), line("outer-b-gather"))));
    assert_eq!(outermost("outer-c"), Some(("outer_c".into(), line("outer-c-await"))));
    // Later patch releases move the body of `__aexit__` into `_aexit`.
    for in_group in ["main", "outer-a"] {
        let functions: Vec<String> = chain(in_group).into_iter().map(|(f, _)| f).collect();
        assert!(
            functions[0].starts_with("TaskGroup.") && functions.contains(&"TaskGroup.__aexit__".into()),
            "{functions:?}"
        );
    }
    assert_eq!(task("outer-b")["awaiting"], "_GatheringFuture");
    assert_eq!(task("outer-c")["awaiting"], "task awaited");
    assert_eq!(task("outer-c")["awaiting_task"], task("awaited")["id"]);
}

#[test]
fn dumps_the_asyncio_task_tree_of_pyenv_3_12_and_3_13() {
    for (python, prefix) in [(python312(), "3.12."), (python_version("3.13"), "3.13.")] {
        let mut command = Command::new(python);
        command.arg(fixture("asyncio_tree.py"));
        check_task_tree(command, prefix);
    }
}

#[test]
fn dumps_the_asyncio_task_tree_of_debian_s_stripped_3_13_to_3_15() {
    for minor in ["3.13", "3.14", "3.15"] {
        check_task_tree(debian_python(minor, "asyncio_tree.py"), &format!("{minor}."));
    }
}

#[test]
fn a_process_that_is_not_python_gets_a_clear_error() {
    let mut sleeper = Command::new("sleep").arg("60").spawn().expect("sleep starts");
    let pid = sleeper.id();
    let err = dump(pid).expect_err("not Python");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(err.contains("exports _PyRuntime") && err.contains("not a CPython process"), "{err}");
    let dead = dead_pid();
    let gone = dump(dead).expect_err("no process");
    assert!(gone.contains(&format!("cannot read process {dead}")), "{gone}");
}

/// A program that passes for CPython 3.13 and lies (`hostile_runtime.c`): looping thread and
/// frame lists, a terabyte-long name, an offset no build publishes, two versions, a code pointer
/// whose fields lie past the end of the address space. Each dump must
/// end within seconds with a marked stack or an error that says why.
#[test]
fn a_process_that_lies_about_its_interpreter_gets_marked_stacks_or_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = dir.path().join("hostile_runtime");
    let cc = Command::new("cc")
        .args(["-rdynamic", "-O1", "-o"])
        .arg(&exe)
        .arg(fixture("hostile_runtime.c"))
        .status()
        .expect("a C compiler (cc) is installed");
    assert!(cc.success());
    let expected = [
        ("loop", Ok("loops back on itself")),
        ("huge", Ok("longer than any name")),
        ("offsets", Err("an offset larger than 64 KiB")),
        ("version", Err("disagrees with itself")),
        ("wild", Ok("could not be read further")),
    ];
    for (mode, want) in expected {
        let target = Target::spawn(Command::new(&exe).arg(mode));
        target.wait_for("ready", Duration::from_secs(10));
        let mut agent = ember()
            .args(["dump", "--pid", &target.pid().to_string()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ember-agent runs");
        let deadline = Instant::now() + Duration::from_secs(20);
        while agent.try_wait().expect("waitable").is_none() {
            assert!(Instant::now() < deadline, "dump hung on a {mode} process");
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = agent.wait_with_output().expect("output");
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), stderr(&out));
        match want {
            Ok(mark) => assert!(out.status.success() && stdout.contains(mark), "{mode}: {stdout}{stderr}"),
            Err(why) => assert!(!out.status.success() && stderr.contains(why), "{mode}: {stdout}{stderr}"),
        }
    }
}

/// The state letter of `/proc/PID/stat` (R, S, T, t, ...).
fn process_state(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the target lives");
    stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()).unwrap_or("?").to_string()
}

fn wait_for_state(pid: u32, states: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !states.contains(&process_state(pid).as_str()) {
        assert!(Instant::now() < deadline, "process {pid} never reached {states:?}: {}", process_state(pid));
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `dump --native` leaves a target run by another user as it found it: one stopped by SIGSTOP
/// is dumped and stays stopped (and runs again on SIGCONT); one another tracer holds is refused
/// with the reason, and stays with that tracer.
#[test]
fn dump_native_leaves_a_stopped_or_traced_target_as_it_found_it() {
    let _serial = serial();
    let debian = debian_python("3.13", "dump_threads.py");
    let mut nobody = Command::new("chroot");
    nobody.arg("--userspec=65534:65534").args(debian.get_args());
    let target = Target::spawn(&mut nobody);
    target.wait_for("ready", Duration::from_secs(30));
    let pid = target.pid();
    let nix_pid = nix::unistd::Pid::from_raw(pid as i32);

    nix::sys::signal::kill(nix_pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    wait_for_state(pid, &["T"]);
    let stopped = dump_with(pid, &["--native"]).expect("a stopped process is dumped");
    assert_eq!(python_threads(&stopped).len(), 3, "{stopped:#}");
    assert_eq!(process_state(pid), "T", "the dump let a stopped process run");
    nix::sys::signal::kill(nix_pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
    wait_for_state(pid, &["R", "S"]);

    // This test's thread becomes the main thread's tracer, as a debugger would.
    nix::sys::ptrace::seize(nix_pid, nix::sys::ptrace::Options::empty()).expect("seize");
    let refused = dump_with(pid, &["--native"]).expect_err("a traced process is refused");
    assert!(refused.contains("no other tracer"), "{refused}");
    assert_eq!(refused.matches("EPERM").count(), 1, "the cause said once: {refused}");
    let tracer = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let tracer = tracer.lines().find(|l| l.starts_with("TracerPid:")).unwrap_or_default().to_string();
    assert_eq!(tracer.split_whitespace().nth(1), Some(nix::unistd::gettid().to_string().as_str()), "{tracer}");
    assert!(dump(pid).is_ok(), "without --native nothing is stopped, so a traced process is read");
}
