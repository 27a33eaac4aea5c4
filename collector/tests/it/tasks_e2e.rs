//! asyncio task timelines end to end: the real agent launches a real python3.12 asyncio
//! program with the task monitor, streams samples and task activity into a real collector, and
//! the HTTP API answers per-task questions.

use std::collections::HashMap;

use crate::common::*;

/// TaskGroups of one heavy and one light task the fixture runs.
const ROUNDS: usize = 25;

pub fn stream_asyncio(collector: &Collector, service: &str, args: &[&str]) -> u64 {
    let py = python312().display().to_string();
    let script = fixture("asyncio_cpu.py").display().to_string();
    let mut command = vec![py.as_str(), script.as_str()];
    command.extend_from_slice(args);
    // Long enough for several one-second batches, so tasks and their slices straddle batch
    // boundaries. (Not a shorter flush interval: the sampler resolves symbols on its own
    // thread, and in a debug build that stalls it long enough for perf buffers to overflow.)
    let mut cmd = stream_cmd(collector, &["--rate", "499", "--service", service], &command);
    cmd.env("EMBER_FIXTURE_ROUNDS", ROUNDS.to_string());
    let out = Running::start(&mut cmd).finish();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let batches: u64 = err
        .split(" samples in ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no batch count in {err}"));
    assert!(batches >= 2, "several batches: {err}");
    sent_samples(&err)
}

fn profile_total(collector: &Collector, query: &str) -> (u64, Folded) {
    let (status, body) =
        collector.get(&format!("/api/v1/profile?format=collapsed&from=now-1h&query={}", encode(query)));
    assert_eq!(status, 200, "{body}");
    let folded = Folded::parse(&body);
    (folded.total(), folded)
}

pub fn check_tasks(collector: &Collector, service: &str, sent: u64) {
    let query = format!(r#"{{service="{service}"}}"#);
    let (status, body) = collector.get(&format!("/api/v1/timeline?from=now-1h&query={}", encode(&query)));
    assert_eq!(status, 200, "{body}");
    let timeline = parse_json(&body);
    assert_eq!(timeline["time_unit"], "us");
    let tasks = timeline["tasks"].as_array().expect("tasks");
    let by_name = |name: &str| tasks.iter().filter(|t| t["name"] == name).collect::<Vec<_>>();
    let (heavy, light) = (by_name("heavy"), by_name("light"));
    assert_eq!((heavy.len(), light.len()), (ROUNDS, ROUNDS), "TaskGroups of heavy + light: {body:.400}");
    // Every task that is not a stepper, for the messages below: which task is whose parent.
    let others: Vec<String> = tasks
        .iter()
        .filter(|t| t["coro"] != "stepper")
        .map(|t| format!("{} {} {} parent {}", t["id"], t["name"], t["coro"], t["parent"]))
        .collect();
    let mains: Vec<_> = tasks.iter().filter(|t| t["coro"] == "main").collect();
    assert_eq!(mains.len(), 1, "asyncio.run's main task, once: {others:?}");
    let main = mains[0];
    for t in heavy.iter().chain(&light) {
        // Ten steps and the resume that finishes the task.
        assert_eq!(t["slices"].as_array().map(Vec::len), Some(11), "{t}");
        assert_eq!(t["state"], "finished");
        assert_eq!(t["coro"], "stepper");
        assert_eq!(t["parent"], main["id"], "created by main: {t} among {others:?}");
        let created = t["created"].as_i64().expect("created");
        let done = t["done"].as_i64().expect("done");
        for s in t["slices"].as_array().expect("slices") {
            let (start, end) = (s[0].as_i64().expect("start"), s[1].as_i64().expect("end"));
            assert!(created <= start && start <= end && end <= done, "{t}");
        }
        // Event-loop lag: every step after the first was scheduled by call_soon, so its ready
        // time is known, and it is never after the step started.
        let ready: Vec<(i64, i64)> = t["ready"]
            .as_array()
            .expect("ready")
            .iter()
            .zip(t["slices"].as_array().expect("slices"))
            .filter_map(|(r, s)| Some((r.as_i64()?, s[0].as_i64()?)))
            .collect();
        assert!(ready.len() >= 10, "ready times of the resumed steps: {t}");
        assert!(ready.iter().all(|(r, start)| r <= start), "{t}");
    }
    let run_time = |list: &[&serde_json::Value]| list.iter().map(|t| t["running"].as_i64().unwrap_or(0)).sum::<i64>();
    let ratio = run_time(&heavy) as f64 / run_time(&light) as f64;
    // Wide enough for a busy machine preempting a step: the point is which task got the time.
    assert!((1.6..=2.6).contains(&ratio), "heavy runs 4 ms steps, light 2 ms: {ratio:.2}");

    // Per-task flame graphs hold only that task's work, in proportion.
    let (heavy_total, heavy_folded) = profile_total(collector, &format!(r#"{{service="{service}",task="heavy"}}"#));
    let (light_total, light_folded) = profile_total(collector, &format!(r#"{{service="{service}",task="light"}}"#));
    let (outside, _) = profile_total(collector, &format!(r#"{{service="{service}",task=""}}"#));
    let (main_total, _) = profile_total(collector, &format!(r#"{{service="{service}",task_id="{}"}}"#, main["id"]));
    assert!(heavy_total > 100 && light_total > 50, "heavy {heavy_total}, light {light_total}");
    let ratio = heavy_total as f64 / light_total as f64;
    assert!((1.6..=2.5).contains(&ratio), "samples heavy/light = {ratio:.2}");
    assert_eq!(main_total, main["samples"].as_u64().unwrap_or(0), "the timeline counts as the profile does");
    assert_eq!(outside, timeline["samples_outside_tasks"].as_u64().unwrap_or(0));
    let in_tasks: u64 = tasks.iter().map(|t| t["samples"].as_u64().unwrap_or(0)).sum();
    assert_eq!(in_tasks + outside, sent, "every sample counted once, in one task or none");
    for folded in [&heavy_folded, &light_folded] {
        let in_stepper = folded.share(|s| s.iter().any(|f| function(f) == "stepper"));
        assert!(in_stepper >= 95.0, "a task's flame graph is its own work: {in_stepper:.1}% in stepper()");
    }
    // The timeline counts the same samples per task.
    let counted: u64 = heavy.iter().map(|t| t["samples"].as_u64().unwrap_or(0)).sum();
    assert_eq!(counted, heavy_total);
    // And the series endpoint filters the same way.
    let (_, series) = collector.get(&format!(
        "/api/v1/series?from=now-1h&query={}",
        encode(&format!(r#"{{service="{service}",task="heavy"}}"#))
    ));
    let summed: u64 =
        parse_json(&series)["points"].as_array().expect("points").iter().map(|p| p[1].as_u64().unwrap_or(0)).sum();
    assert_eq!(summed, heavy_total);
}

#[test]
fn streamed_tasks_give_timelines_and_per_task_flame_graphs() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(dir.path(), &[]);
    let sent = stream_asyncio(&collector, "tasks", &[]);
    check_tasks(&collector, "tasks", sent);
    // Heavy and light tasks × 11 slices, plus main's.
    assert!(collector.metric("ember_collector_task_slices_total") >= 2 * ROUNDS as u64 * 11);
}

#[test]
fn eager_tasks_are_split_from_their_parent() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(dir.path(), &[]);
    let sent = stream_asyncio(&collector, "eager", &["eager"]);
    check_tasks(&collector, "eager", sent);
}

/// An asyncio service started the ordinary way (Debian's 3.14, no monitor, no trampoline),
/// attached by `stream --pid`: ember starts the task monitor in it (PEP 768), and the
/// collector's timeline has its request tasks with their run slices and samples.
#[test]
fn an_attached_asyncio_service_has_its_request_tasks_in_the_timeline() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(dir.path(), &[]);
    let mut python = debian_python("3.14", "asyncio_service.py");
    let target = Target::spawn(python.arg("600"));
    target.wait_for("ready", std::time::Duration::from_secs(30));
    let pid = target.pid().to_string();
    let out = Running::start(&mut stream_cmd(&collector, &["--rate", "199", "--service", "svc", "--pid", &pid], &[]))
        .finish();
    let err = stderr(&out);
    assert!(out.status.success() && err.contains("to start the task monitor"), "{err}");
    let query = encode(r#"{service="svc"}"#);
    let (status, body) = collector.get(&format!("/api/v1/timeline?from=now-1h&query={query}"));
    assert_eq!(status, 200, "{body}");
    let timeline = parse_json(&body);
    let requests: Vec<_> =
        timeline["tasks"].as_array().expect("tasks").iter().filter(|t| t["name"] == "request").cloned().collect();
    assert!(requests.len() >= 300, "{} request tasks\n{err}", requests.len());
    let finished = requests.iter().filter(|t| t["state"] == "finished").count();
    assert!(finished * 10 >= requests.len() * 9, "{finished} of {} finished", requests.len());
    assert!(requests.iter().all(|t| t["slices"].as_array().is_some_and(|s| !s.is_empty())));
    let sampled: u64 = requests.iter().map(|t| t["samples"].as_u64().unwrap_or(0)).sum();
    assert!(sampled >= 100, "{sampled} samples in request tasks");
}

#[test]
fn timeline_requests_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(dir.path(), &[]);
    let cases: HashMap<&str, &str> = [
        ("/api/v1/timeline?limit=0", "limit"),
        ("/api/v1/timeline?limit=x", "limit"),
        ("/api/v1/timeline?from=yesterday", "from"),
        ("/api/v1/timeline?query=%7Btask%3D", "query"),
    ]
    .into();
    for (path, param) in cases {
        let (status, body) = collector.get(path);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(param), "{path}: {body}");
    }
    let (status, body) = collector.get("/api/v1/timeline?from=now-1h");
    assert_eq!(status, 200);
    assert_eq!(parse_json(&body)["tasks"].as_array().map(Vec::len), Some(0), "an empty store has no tasks");
}
