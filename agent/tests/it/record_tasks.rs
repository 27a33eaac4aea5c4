//! `record` with the asyncio task monitor bootstrapped into the launched command, and the
//! Chrome trace output joining tasks and samples.

use std::collections::HashMap;

use crate::common::*;

#[test]
fn a_trace_has_a_track_per_task_and_samples_attributed_to_tasks() {
    let _serial = serial();
    let (err, events) = record_cpu(&python312(), &[]);
    assert!(err.contains("ember: asyncio: 23 tasks, "), "the summary counts the tasks: {err}");

    // Ten TaskGroups, each with a heavy and a light task of ten steps plus the final resume.
    let mut slices: HashMap<String, usize> = HashMap::new();
    for e in events.iter().filter(|e| e["ph"] == "X" && e["cat"] == "task") {
        *slices.entry(e["name"].as_str().unwrap_or("").to_string()).or_default() += 1;
        assert!(e["dur"].as_f64().is_some_and(|d| d >= 0.0));
    }
    assert_eq!(slices.get("heavy"), Some(&110), "{slices:?}");
    assert_eq!(slices.get("light"), Some(&110), "{slices:?}");
    let tracks = events
        .iter()
        .filter(|e| e["ph"] == "M" && e["args"]["name"].as_str().is_some_and(|n| n.starts_with("task heavy")))
        .count();
    assert_eq!(tracks, 10, "one track per heavy task");

    // Samples carry the running task: heavy gets about twice light's samples.
    let mut by_task: HashMap<String, u64> = HashMap::new();
    let samples: Vec<_> = events.iter().filter(|e| e["cat"] == "sample").collect();
    for s in &samples {
        *by_task.entry(s["args"]["task"].as_str().unwrap_or("(none)").to_string()).or_default() += 1;
        assert!(s["args"]["stack"].as_str().is_some_and(|st| !st.is_empty()));
    }
    let (heavy, light) =
        (by_task.get("heavy").copied().unwrap_or(0) as f64, by_task.get("light").copied().unwrap_or(0) as f64);
    assert!(heavy > 100.0 && light > 50.0, "{by_task:?}");
    let ratio = heavy / light;
    assert!((1.6..=2.5).contains(&ratio), "heavy/light = {ratio:.2}: {by_task:?}");
    // A sample attributed to a task really is in that task's code.
    let misattributed = samples
        .iter()
        .filter(|s| s["args"]["task"] == "heavy" || s["args"]["task"] == "light")
        .filter(|s| !s["args"]["stack"].as_str().unwrap_or("").contains("stepper ("))
        .count();
    assert!(misattributed * 20 <= samples.len(), "{misattributed} task samples outside stepper()");
}

#[test]
fn no_tasks_leaves_the_monitor_out() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("run.trace.json");
    let out = run(ember()
        .args(["record", "--no-tasks", "--rate", "499", "-o"])
        .arg(&path)
        .arg("--")
        .arg(python312())
        .arg(fixture("asyncio_cpu.py")));
    assert!(out.status.success(), "{}", stderr(&out));
    let trace: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).expect("trace written")).expect("JSON");
    let events = trace["traceEvents"].as_array().expect("traceEvents");
    assert_eq!(events.iter().filter(|e| e["cat"] == "task").count(), 0);
    assert!(events.iter().filter(|e| e["cat"] == "sample").count() > 100, "samples are still there");
}

#[test]
fn a_program_without_asyncio_pays_nothing() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("out.folded");
    let code = "import sys\nmapped = 'ember-task-ring' in open('/proc/self/maps').read()\n\
                print('asyncio' in sys.modules, mapped, flush=True)";
    let out = run(ember().args(["record", "-o"]).arg(&path).arg("--").arg(python312()).args(["-c", code]));
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut fields = stdout.split_whitespace();
    assert_eq!(fields.next(), Some("False"), "the monitor must not import asyncio: {stdout}");
    assert_eq!(fields.next(), Some("False"), "no ring is mapped without asyncio: {stdout}");
}

/// `record -o X.trace.json` of asyncio_cpu.py with `args`: its stderr and trace events.
fn record_cpu(python: &std::path::Path, args: &[&str]) -> (String, Vec<serde_json::Value>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("run.trace.json");
    let out = run(ember()
        .args(["record", "--rate", "499", "-o"])
        .arg(&path)
        .arg("--")
        .arg(python)
        .arg(fixture("asyncio_cpu.py"))
        .args(args));
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let trace: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).expect("trace written")).expect("JSON");
    (err, trace["traceEvents"].as_array().expect("traceEvents").clone())
}

/// Tasks built with `asyncio.Task(coro, loop=...)`, which no task factory sees, have their
/// slices and get their samples; so does asyncio.run's main task; no frame of the monitor is in
/// any stack. `first_steps_seen`: whether the first task's first step is recorded (not when it
/// starts eagerly inside Task(), at a call site the monitor has not seen yet).
fn check_direct(err: &str, events: &[serde_json::Value], first_steps_seen: bool) {
    let mut slices: HashMap<String, usize> = HashMap::new();
    for e in events.iter().filter(|e| e["ph"] == "X" && e["cat"] == "task") {
        *slices.entry(e["name"].as_str().unwrap_or("").to_string()).or_default() += 1;
        assert_eq!(e["args"]["task"], e["name"], "a slice names its task by name");
        assert!(e["args"]["task_id"].as_u64().is_some(), "and by id: {e}");
    }
    // Ten rounds of tasks of ten steps, plus the final resume.
    let expected_heavy = if first_steps_seen { 110 } else { 109 };
    assert_eq!(slices.get("heavy"), Some(&expected_heavy), "{slices:?}\n{err}");
    assert_eq!(slices.get("light"), Some(&110), "{slices:?}");
    // asyncio.run's main task runs main(); uvloop.run's runs a wrapper that awaits main().
    let main_id = events
        .iter()
        .find(|e| e["ph"] == "X" && (e["args"]["coro"] == "main" || e["args"]["coro"] == "run.<locals>.wrapper"))
        .map(|e| e["args"]["task_id"].clone())
        .expect("the main task has slices");

    let samples: Vec<_> = events.iter().filter(|e| e["cat"] == "sample").collect();
    let mut by_task: HashMap<String, u64> = HashMap::new();
    for s in &samples {
        *by_task.entry(s["args"]["task"].as_str().unwrap_or("(none)").to_string()).or_default() += 1;
        let stack = s["args"]["stack"].as_str().unwrap_or("");
        assert!(!stack.contains("ember_monitor/"), "a monitor frame in a stack: {stack}");
        let frames: Vec<&str> = stack.split(';').collect();
        let inner = frames.iter().position(|f| *f == "[ember task monitor]");
        assert!(inner.is_none_or(|i| i == frames.len() - 1), "the monitor only as a leaf: {stack}");
        assert!(
            s["args"]["task"].is_null() == s["args"]["task_id"].is_null(),
            "a sample names its task by name and id"
        );
    }
    let in_main = samples
        .iter()
        .filter(|s| {
            s["args"]["task_id"] == main_id && s["args"]["stack"].as_str().unwrap_or("").contains("main_work (")
        })
        .count();
    assert!(in_main > 30, "main_work() runs in asyncio.run's main task: {in_main} samples, {by_task:?}");
    let (heavy, light) =
        (by_task.get("heavy").copied().unwrap_or(0) as f64, by_task.get("light").copied().unwrap_or(0) as f64);
    assert!(heavy > 100.0 && light > 50.0, "{by_task:?}");
    assert!((1.6..=2.5).contains(&(heavy / light)), "heavy/light = {:.2}: {by_task:?}", heavy / light);
    // Every sample in stepper() is charged to the stepper task running it, and back.
    let misattributed = samples
        .iter()
        .filter(|s| {
            let in_stepper = s["args"]["stack"].as_str().unwrap_or("").contains("stepper (");
            in_stepper != (s["args"]["task"] == "heavy" || s["args"]["task"] == "light")
        })
        .count();
    let allowed = if first_steps_seen { samples.len() / 50 } else { samples.len() / 20 };
    assert!(misattributed <= allowed, "{misattributed} of {} samples charged to the wrong task", samples.len());
}

#[test]
fn tasks_built_with_task_directly_get_their_samples() {
    let _serial = serial();
    for python in [python312(), python_version("3.13")] {
        let (err, events) = record_cpu(&python, &["direct"]);
        check_direct(&err, &events, true);
    }
}

#[test]
fn eager_tasks_built_with_task_directly_get_their_samples() {
    let _serial = serial();
    for python in [python312(), python_version("3.13")] {
        let (err, events) = record_cpu(&python, &["direct", "eager"]);
        check_direct(&err, &events, false);
    }
}

#[test]
fn tasks_on_uvloop_are_recorded_and_the_loop_is_named() {
    let _serial = serial();
    let python = realworld_python();
    let (err, events) = record_cpu(&python, &["direct", "uvloop"]);
    check_direct(&err, &events, true);
    assert!(
        err.contains("loop uvloop.Loop: tasks recorded; event-loop lag not recorded"),
        "the summary names the loop the monitor cannot follow fully: {err}"
    );
}
