//! The asyncio task monitor (agent/python/ember_monitor.py) in real python3.12 programs,
//! read back through the agent's ring reader.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use ember_agent::tasks::ring::{Outcome, RingReader};
use ember_agent::tasks::timeline::Timeline;

fn record(eager: bool) -> Timeline {
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = dir.path().join("tasks.ring");
    let mut cmd = Command::new(python312());
    cmd.arg(fixture("asyncio_tasks.py"))
        .arg(&ring)
        .env("PYTHONPATH", Path::new(env!("CARGO_MANIFEST_DIR")).join("python"));
    if eager {
        cmd.arg("eager");
    }
    let out = cmd.output().expect("python3.12 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut reader = RingReader::open(ring).expect("the monitor wrote a ring");
    let mut events = Vec::new();
    reader.poll(&mut events).expect("ring reads");
    assert_eq!(reader.lost_bytes, 0);
    let mut timeline = Timeline::default();
    timeline.apply(events);
    timeline
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
    // Slices of different tasks on one thread never overlap: an eager child splits its parent.
    let mut all: Vec<_> = timeline.tasks.values().flat_map(|t| t.slices.iter().copied()).collect();
    all.sort_by_key(|s| s.start);
    assert!(all.windows(2).all(|w| w[0].end <= w[1].start), "one task at a time per thread");
}

#[test]
fn tasks_under_a_task_group() {
    check(&record(false));
}

#[test]
fn eager_tasks_under_a_task_group() {
    check(&record(true));
}
