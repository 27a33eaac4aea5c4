//! The embedded backend, end to end in memory: ingest, queries, repeats, reopening, retention,
//! tasks, limits, and damage.

use std::collections::HashMap;

use ember_profile::{Frame, FrameKind};

use super::*;
use crate::store::tasks::TaskSlice;
use crate::store::{Labels, NewSample, NewSeries};

fn frame(name: &str) -> Frame {
    Frame {
        text: format!("{name} (app.py)"),
        function: name.into(),
        file: "app.py".into(),
        kind: FrameKind::Python,
        interpreter_plumbing: false,
        line: None,
    }
}

fn labels(service: &str) -> Labels {
    [("service".to_string(), service.to_string()), ("pid".into(), "1".into())].into()
}

/// `n` samples 10 ms apart from `start_ms`: stack 0 (main;a) twice as often as 1 (main;b).
fn batch(agent: &str, seq: u64, service: &str, start_ms: i64, n: usize) -> NewBatch {
    let samples = (0..n)
        .map(|i| NewSample {
            stack: u32::from(i % 3 == 2),
            tid: 7,
            time_unix_ns: (start_ms + 10 * i as i64) * 1_000_000,
            weight: 1,
        })
        .collect();
    NewBatch {
        agent_id: agent.into(),
        sequence: seq,
        frames: vec![frame("main"), frame("a"), frame("b")],
        stacks: vec![vec![0, 1], vec![0, 2]],
        series: vec![NewSeries { labels: labels(service), samples, ..NewSeries::default() }],
    }
}

fn all() -> Selector {
    Selector::default()
}

const T0: i64 = 1_700_000_000_000;

#[test]
fn ingest_then_query() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), None).expect("opens");
    assert_eq!(
        store.ingest(&batch("a", 1, "checkout", T0, 300)).expect("stores"),
        IngestOutcome::Stored { samples: 300 }
    );
    let range = TimeRange { from_ms: T0 - 60_000, to_ms: T0 + 60_000 };
    let counts = store.stack_counts(&all(), range).expect("query");
    assert_eq!(counts.total(), 300);
    let by_leaf: HashMap<String, u64> = counts
        .stacks
        .iter()
        .map(|(ids, c)| (counts.frames[*ids.last().expect("leaf") as usize].function.clone(), *c))
        .collect();
    assert_eq!(by_leaf["a"], 200);
    assert_eq!(by_leaf["b"], 100);
    let series = store.series(&Selector::parse(r#"{service="checkout"}"#).expect("sel"), range).expect("series");
    assert_eq!(series.len(), 1);
    assert_eq!(series[0].samples, 300);
    assert!(store
        .stack_counts(&Selector::parse(r#"{service="other"}"#).expect("sel"), range)
        .expect("q")
        .stacks
        .is_empty());
}

#[test]
fn repeats_are_recognised_and_not_counted_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), None).expect("opens");
    let b = batch("agent-1", 5, "s", T0, 50);
    assert!(matches!(store.ingest(&b), Ok(IngestOutcome::Stored { .. })));
    assert_eq!(store.ingest(&b).expect("ok"), IngestOutcome::Duplicate);
    // Same sequence from another agent is a different batch.
    assert!(matches!(store.ingest(&batch("agent-2", 5, "s", T0, 50)), Ok(IngestOutcome::Stored { .. })));
    let range = TimeRange { from_ms: T0, to_ms: T0 + 60_000 };
    assert_eq!(store.stack_counts(&all(), range).expect("q").total(), 100);
}

#[test]
fn everything_survives_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = EmbeddedStore::open(dir.path(), None).expect("opens");
        store.ingest(&batch("a", 1, "s", T0, 90)).expect("stores");
        store.ingest(&batch("a", 2, "t", T0 + 20_000, 30)).expect("stores");
    }
    let store = EmbeddedStore::open(dir.path(), None).expect("reopens");
    let range = TimeRange { from_ms: T0, to_ms: T0 + 60_000 };
    assert_eq!(store.stack_counts(&all(), range).expect("q").total(), 120);
    assert_eq!(store.ingest(&batch("a", 2, "t", T0, 30)).expect("ok"), IngestOutcome::Duplicate);
    store.ingest(&batch("a", 3, "t", T0, 30)).expect("stores after reopen");
    assert_eq!(store.series(&all(), range).expect("series").len(), 2);
}

#[test]
fn time_ranges_select_whole_buckets_and_series_counts_per_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), None).expect("opens");
    // 100 samples in each of three consecutive buckets.
    for i in 0..3 {
        store.ingest(&batch("a", i + 1, "s", T0 + i as i64 * 10_000, 100)).expect("stores");
    }
    let second = TimeRange { from_ms: T0 + 10_000, to_ms: T0 + 20_000 };
    assert_eq!(store.stack_counts(&all(), second).expect("q").total(), 100);
    let points = store.timeseries(&all(), TimeRange { from_ms: T0, to_ms: T0 + 30_000 }, 10_000).expect("ts");
    assert_eq!(points.iter().map(|p| p.1).collect::<Vec<_>>(), vec![100, 100, 100]);
    let raw = store.raw_samples(&all(), TimeRange { from_ms: T0 + 10_000, to_ms: T0 + 10_500 }).expect("raw");
    assert_eq!(raw.len(), 50, "exact times, 10 ms apart");
}

#[test]
fn retention_removes_old_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), None).expect("opens");
    store.ingest(&batch("a", 1, "old", T0, 100)).expect("stores");
    store.ingest(&batch("a", 2, "new", T0 + 3_600_000, 100)).expect("stores");
    let report = store.apply_retention(T0 + 1_800_000, T0 + 1_800_000).expect("retention");
    assert_eq!(report.series_removed, 1);
    assert!(report.blobs_removed >= 1);
    let everything = TimeRange { from_ms: 0, to_ms: i64::MAX / 2 };
    assert_eq!(store.stack_counts(&all(), everything).expect("q").total(), 100);
    assert_eq!(store.series(&all(), everything).expect("s").len(), 1);
}

fn task(id: u64, done_ms: Option<i64>) -> crate::store::TaskRecord {
    crate::store::TaskRecord {
        id,
        name: format!("worker-{id}"),
        coro: "worker".into(),
        parent: 0,
        created_ns: T0 * 1_000_000,
        done_ns: done_ms.map(|d| d * 1_000_000),
        state: if done_ms.is_some() { crate::store::TaskState::Finished } else { crate::store::TaskState::Pending },
        exception: String::new(),
        record_lost: false,
    }
}

fn with_tasks(seq: u64, tasks: Vec<crate::store::TaskRecord>, slices: Vec<(u64, i64)>) -> NewBatch {
    let mut b = batch("a", seq, "s", T0, 0);
    b.series[0].tasks = crate::store::NewTasks {
        tasks,
        slices: slices
            .into_iter()
            .map(|(task, ms)| TaskSlice {
                task,
                tid: 7,
                start_ns: ms * 1_000_000,
                end_ns: ms * 1_000_000 + 500_000,
                ready_ns: None,
            })
            .collect(),
        lost_records: 0,
    };
    b
}

#[test]
fn tasks_are_updated_in_place_and_expire_with_raw_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), None).expect("opens");
    // A batch with task activity and no samples still makes a series.
    store.ingest(&with_tasks(1, vec![task(1, None), task(2, None)], vec![(1, T0 + 5), (2, T0 + 6)])).expect("ok");
    store.ingest(&with_tasks(2, vec![task(1, Some(T0 + 20))], vec![(1, T0 + 15)])).expect("ok");
    let range = TimeRange { from_ms: T0, to_ms: T0 + 60_000 };
    let found = store.tasks(&all(), range).expect("tasks");
    assert_eq!(found.len(), 1, "one series");
    let first = found[0].tasks.iter().find(|t| t.id == 1).expect("task 1");
    assert_eq!(first.done_ns, Some((T0 + 20) * 1_000_000), "the later record replaced the first");
    assert_eq!(found[0].slices.iter().filter(|s| s.task == 1).count(), 2);
    // A range after task 1 finished shows only the live task 2 (no slices there).
    let later = store.tasks(&all(), TimeRange { from_ms: T0 + 30, to_ms: T0 + 60_000 }).expect("tasks");
    assert_eq!(later[0].tasks.iter().map(|t| t.id).collect::<Vec<_>>(), vec![2]);
    // Raw retention drops finished tasks and slices; live tasks stay with their series.
    // A slice of a task whose record was lost still shows, under a placeholder.
    store.ingest(&with_tasks(3, vec![], vec![(9, T0 + 16)])).expect("ok");
    let found = store.tasks(&all(), range).expect("tasks");
    let orphan = found[0].tasks.iter().find(|t| t.id == 9).expect("placeholder for task 9");
    assert!(orphan.record_lost && orphan.name.is_empty(), "the store marks it; query names it");
    let attribution = crate::query::tasks::Attribution::new(found.clone());
    let named = attribution.task_at_id(found[0].series, 9).expect("task 9");
    assert_eq!(named.name, "(task 9, record lost)");
    let report = store.apply_retention(T0 - 1, T0 + 20_000).expect("retention");
    assert_eq!(report.tasks_removed, 1);
    let left = store.tasks(&all(), range).expect("tasks");
    assert_eq!(left[0].tasks.iter().map(|t| t.id).collect::<Vec<_>>(), vec![2]);
    assert!(left[0].slices.is_empty());
}

#[test]
fn max_disk_stops_writes_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), Some(1)).expect("opens");
    let err = store.ingest(&batch("a", 1, "s", T0, 10)).expect_err("full");
    assert!(err.is_full(), "{err}");
    assert!(err.to_string().contains("--max-disk"), "{err}");
}
