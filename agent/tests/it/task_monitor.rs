//! The asyncio task monitor (agent/python/ember_monitor/) in real python3.12 programs,
//! read back through the agent's ring reader.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::*;
use std::sync::Arc;

use ember_agent::tasks::ring::Outcome;
use ember_agent::tasks::shared::{SharedRing, RING_FD_ENV};
use ember_agent::tasks::timeline::Timeline;

/// How the monitor writes its records.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Writer {
    /// `_ember_accel`, the native fast path the agent ships.
    Native,
    /// The monitor alone, as in a program that imports it without the agent.
    Python,
}

/// Runs a fixture that starts the monitor, on a ring made for it as the agent makes one for a
/// command it launches; returns its stdout and the timeline read back from the ring.
fn run_fixture(name: &str, args: &[&str], writer: Writer) -> (String, Timeline) {
    run_fixture_in(&python312(), name, args, writer)
}

fn run_fixture_in(python: &Path, name: &str, args: &[&str], writer: Writer) -> (String, Timeline) {
    use std::os::unix::process::CommandExt;
    let ring = Arc::new(SharedRing::create(1 << 17).expect("a ring"));
    let python_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
    let mut command = Command::new(python);
    command
        .arg(fixture(name))
        .args(args)
        .env("PYTHONPATH", format!("{}:{}", python_dir.display(), env!("EMBER_ACCEL_DIR")))
        .env(RING_FD_ENV, ring.fd().to_string())
        .env("EMBER_MONITOR_ACCEL", if writer == Writer::Native { "1" } else { "0" })
        // CPython's memory debug hooks: a reference the native writer got wrong shows up as a
        // use of freed memory.
        .env("PYTHONMALLOC", "debug");
    let child_ring = ring.clone();
    // SAFETY: prepare_child makes only async-signal-safe calls.
    unsafe {
        command.pre_exec(move || {
            child_ring.prepare_child();
            Ok(())
        });
    }
    let child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("python3.12 runs");
    let pid = child.id();
    let out = child.wait_with_output().expect("python3.12 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut reader = ring.reader().expect("the ring reads");
    assert_eq!(reader.native().expect("ring header"), writer == Writer::Native, "the writer asked for");
    assert_eq!(reader.writer_pid().expect("ring header"), u64::from(pid), "the monitor took the ring");
    let mut events = Vec::new();
    reader.poll(&mut events).expect("ring reads");
    assert_eq!(reader.lost_records, 0);
    let mut timeline = Timeline::default();
    timeline.apply(events);
    assert_eq!(timeline.unmatched, 0, "every stop matched a running task");
    (String::from_utf8_lossy(&out.stdout).into_owned(), timeline)
}

fn record(eager: bool, writer: Writer) -> Timeline {
    run_fixture("asyncio_tasks.py", if eager { &["eager"] } else { &[] }, writer).1
}

fn check(timeline: &Timeline) {
    let main = timeline.tasks.values().find(|t| t.coro == "main").expect("the main task of asyncio.run");
    for i in 0..5 {
        let name = format!("worker-{i}");
        let tasks = timeline.by_name(&name);
        assert_eq!(tasks.len(), 1, "{name} recorded once");
        let t = tasks[0];
        // worker(3): the first step, then one resume after each of the three awaits.
        assert_eq!(t.slices.len(), 4, "{name}: {:?}", t.slices);
        assert_eq!(t.parent, Some(main.id), "{name} was created by main");
        assert_eq!(t.coro, "worker");
        assert!(matches!(t.done, Some((_, Outcome::Result, None))));
        assert!(t.slices.windows(2).all(|w| w[0].end <= w[1].start), "slices in order");
        assert!(t.slices.iter().all(|s| s.start <= s.end));
    }
    let group = &timeline.by_name("child-group")[0];
    let grandchild = &timeline.by_name("grandchild")[0];
    assert_eq!(grandchild.parent, Some(group.id), "nested TaskGroup: parent ids");
    assert_eq!(group.parent, Some(main.id));
    let sleeper = &timeline.by_name("sleeper")[0];
    assert!(matches!(sleeper.done, Some((_, Outcome::Cancelled, None))), "{:?}", sleeper.done);
    assert_eq!(sleeper.slices.len(), 2, "first step, then the step resumed by throw(): {:?}", sleeper.slices);
    let failing = &timeline.by_name("failing")[0];
    assert_eq!(
        failing.done.as_ref().map(|d| (d.1, d.2.clone())),
        Some((Outcome::Exception, Some("ValueError".into())))
    );
    // Event-loop lag: a step scheduled through call_soon knows when it became ready.
    let worker = &timeline.by_name("worker-0")[0];
    let with_ready: Vec<_> = worker.slices.iter().filter_map(|s| s.ready.map(|r| (r, s.start))).collect();
    assert!(with_ready.len() >= 3, "the resumed steps carry their ready time: {:?}", worker.slices);
    assert!(with_ready.iter().all(|(ready, start)| ready <= start));
    // Slices of different tasks on one thread never overlap: an eager child splits its parent.
    let mut all: Vec<_> = timeline.tasks.values().flat_map(|t| t.slices.iter().copied()).collect();
    all.sort_by_key(|s| s.start);
    assert!(all.windows(2).all(|w| w[0].end <= w[1].start), "one task at a time per thread");
}

#[test]
fn tasks_under_a_task_group() {
    check(&record(false, Writer::Native));
}

#[test]
fn eager_tasks_under_a_task_group() {
    check(&record(true, Writer::Native));
}

#[test]
fn tasks_under_a_task_group_pure_python() {
    check(&record(false, Writer::Python));
}

#[test]
fn eager_tasks_under_a_task_group_pure_python() {
    check(&record(true, Writer::Python));
}

#[test]
fn each_loop_thread_gets_its_own_slices() {
    loop_threads(Writer::Native);
}

#[test]
fn each_loop_thread_gets_its_own_slices_pure_python() {
    loop_threads(Writer::Python);
}

fn loop_threads(writer: Writer) {
    let (stdout, timeline) = run_fixture("asyncio_threads.py", &[], writer);
    let ids: serde_json::Value = serde_json::from_str(stdout.trim()).expect("thread ids as JSON");
    for side in ["main", "side"] {
        let thread = ids[side].as_u64().expect("a thread id");
        for i in 0..3 {
            let tasks = timeline.by_name(&format!("{side}-{i}"));
            assert_eq!(tasks.len(), 1, "{side}-{i}");
            // worker(20): the first step and one resume per await.
            assert_eq!(tasks[0].slices.len(), 21, "{side}-{i}: {:?}", tasks[0].slices);
            assert!(tasks[0].slices.iter().all(|s| s.thread == thread), "{side}-{i} ran on its loop's thread");
            assert!(matches!(tasks[0].done, Some((_, Outcome::Result, None))));
        }
        let mut on_thread: Vec<_> =
            timeline.tasks.values().flat_map(|t| t.slices.iter().copied()).filter(|s| s.thread == thread).collect();
        on_thread.sort_by_key(|s| s.start);
        assert!(on_thread.windows(2).all(|w| w[0].end <= w[1].start), "one task at a time on {side}");
    }
}

#[test]
fn native_fast_path_frees_every_task_and_refuses_bad_calls() {
    let (stdout, timeline) = run_fixture("accel_checks.py", &[], Writer::Native);
    let created: usize = stdout.trim().parse().expect("the fixture prints its task count");
    let workers = timeline.tasks.values().filter(|t| t.coro == "work").count();
    assert_eq!(workers, created, "every task recorded");
    let after = timeline.tasks.values().find(|t| t.coro == "after").expect("recorded after the refused calls");
    assert_eq!(after.slices.len(), 2);
}

#[test]
fn native_fast_path_on_python_3_13() {
    // The module is built for the stable ABI of 3.12, so the same file loads in later versions.
    let (_, timeline) = run_fixture_in(&python_version("3.13"), "asyncio_tasks.py", &[], Writer::Native);
    check(&timeline);
}

#[test]
fn a_child_forked_before_asyncio_leaves_its_parents_ring_alone() {
    for writer in [Writer::Native, Writer::Python] {
        let (_, timeline) = run_fixture("asyncio_fork.py", &[], writer);
        for i in 0..3 {
            assert_eq!(timeline.by_name(&format!("parent-{i}")).len(), 1, "{writer:?}: the parent's tasks");
            assert!(
                timeline.by_name(&format!("child-{i}")).is_empty(),
                "{writer:?}: a child's task in the parent's ring"
            );
        }
    }
}
