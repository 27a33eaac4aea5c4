//! `record` with the asyncio task monitor bootstrapped into the launched command, and the
//! Chrome trace output joining tasks and samples.

use std::collections::HashMap;

use crate::common::*;

#[test]
fn a_trace_has_a_track_per_task_and_samples_attributed_to_tasks() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("run.trace.json");
    let out = run(ember()
        .args(["record", "--rate", "499", "-o"])
        .arg(&path)
        .arg("--")
        .arg(python312())
        .arg(fixture("asyncio_cpu.py")));
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("ember: asyncio: 23 tasks, "), "the summary counts the tasks: {err}");
    let trace: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).expect("trace written")).expect("JSON");
    let events = trace["traceEvents"].as_array().expect("traceEvents");

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
