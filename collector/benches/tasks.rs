//! asyncio task data in the collector: ingest cost, bytes per slice, and the queries that join
//! samples to tasks (`/api/v1/timeline`, task-filtered flame graphs), against reading the raw
//! samples alone, the part of the join no index can avoid.
//!
//!     cargo bench -p ember-collector --bench tasks [-- --minutes 10]
//!
//! The workload is one busy asyncio service: every 10 s batch carries 2,000 short-lived
//! `handle-request` tasks (5 slices of ~200 µs each), one long-lived `reporter` task, and
//! 990 samples of the loop thread at 99 Hz; the loop is busy 20% of the time, so about a
//! fifth of the samples fall inside a task.

use std::time::{Duration, Instant};

use ember_collector::http::api::stack_counts;
use ember_collector::ingest::validate;
use ember_collector::query::tasks::Attribution;
use ember_collector::query::{Selector, TimeRange};
use ember_collector::store::embedded::EmbeddedStore;
use ember_collector::store::Store;
use ember_proto::v1;

const TASKS_PER_BATCH: u64 = 2_000;
const SLICES_PER_TASK: u64 = 5;
const SAMPLES_PER_BATCH: u64 = 990;
const WINDOW_NS: u64 = 10_000_000_000;
const TID: u32 = 4242;

fn batch(sequence: u64, window_start: u64) -> v1::Batch {
    let strings: Vec<String> =
        ["", "handle (app.py)", "handle", "app.py", "handle-request", "reporter", "report"].map(String::from).to_vec();
    let frame = |text, function| v1::Frame {
        text,
        function,
        file: 3,
        kind: v1::FrameKind::Python as i32,
        ..Default::default()
    };
    let mut block = v1::TaskBlock { process: 1, ..Default::default() };
    let first_id = sequence * (TASKS_PER_BATCH + 1);
    // Tasks start one after another; each runs 5 slices of 200 µs with 800 µs waits between.
    let spacing = WINDOW_NS / TASKS_PER_BATCH;
    for i in 0..TASKS_PER_BATCH {
        let created = window_start + i * spacing;
        let id = first_id + i + 1;
        for k in 0..SLICES_PER_TASK {
            let start = created + 10_000 + k * 1_000_000 / SLICES_PER_TASK;
            block.slice_task.push(id);
            block.slice_tid.push(TID);
            block.slice_start_nanos.push(start);
            block.slice_duration_nanos.push(200_000);
            block.slice_ready_nanos.push(start - 5_000);
        }
        block.tasks.push(v1::TaskInfo {
            id,
            name: 4,
            coro: 2,
            parent: 1,
            created_nanos: created,
            done_nanos: created + 1_000_000,
            state: v1::TaskState::Finished as i32,
            exception: 0,
        });
    }
    if sequence == 1 {
        block.tasks.push(v1::TaskInfo {
            id: 1,
            name: 5,
            coro: 6,
            created_nanos: window_start,
            state: v1::TaskState::Pending as i32,
            ..Default::default()
        });
    }
    // Samples every 10.1 ms: most land inside a slice, the rest in the loop between tasks.
    let step = WINDOW_NS / SAMPLES_PER_BATCH;
    let mut samples = v1::SampleBlock { process: 1, base_time_nanos: window_start + 20_000, ..Default::default() };
    for i in 0..SAMPLES_PER_BATCH {
        samples.stack.push((i % 2) as u32);
        samples.tid.push(TID);
        samples.time_delta.push(if i == 0 { 0 } else { step });
    }
    v1::Batch {
        agent_id: "bench".into(),
        sequence,
        strings,
        frames: vec![frame(1, 2), frame(6, 6)],
        stacks: vec![v1::Stack { frames: vec![0] }, v1::Stack { frames: vec![0, 1] }],
        processes: vec![v1::Process { id: 1, pid: 77, service: "api".into(), ..Default::default() }],
        samples: vec![samples],
        tasks: vec![block],
        monotonic_to_unix_nanos: 0,
        rate_hz: 99,
    }
}

fn median_of(runs: usize, mut f: impl FnMut() -> u64) -> (Duration, u64) {
    let mut times = Vec::new();
    let mut result = 0;
    for _ in 0..runs {
        let started = Instant::now();
        result = std::hint::black_box(f());
        times.push(started.elapsed());
    }
    times.sort();
    (times[times.len() / 2], result)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let minutes: u64 =
        args.iter().position(|a| a == "--minutes").and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(10);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), None).expect("store");
    let now_ms = ember_collector::query::now_ms() as u64;
    let start_ns = (now_ms - minutes * 60_000 - 60_000) * 1_000_000;
    let batches = minutes * 6;
    let mut ingest = Duration::ZERO;
    for sequence in 1..=batches {
        let b = batch(sequence, start_ns + (sequence - 1) * WINDOW_NS);
        let started = Instant::now();
        store.ingest(&validate(&b).expect("valid")).expect("stored");
        ingest += started.elapsed();
    }
    let slices = batches * TASKS_PER_BATCH * SLICES_PER_TASK;
    let tasks = batches * TASKS_PER_BATCH;
    let range = TimeRange { from_ms: 0, to_ms: ember_collector::query::now_ms() };
    let all = Selector::parse(r#"{service="api"}"#).expect("selector");
    let (plain, total) = median_of(5, || stack_counts(&store, all.clone(), range, false).expect("profile").total());
    let (raw, _) = median_of(5, || store.raw_samples(&all, range).expect("raw").len() as u64);
    let (task_read, _) = median_of(5, || store.tasks(&all, range).expect("tasks").len() as u64);
    // The common question: the last minute of a long-running service.
    let end_ms = ((start_ns + batches * WINDOW_NS) / 1_000_000) as i64;
    let minute = TimeRange { from_ms: end_ms - 60_000, to_ms: end_ms };
    let (minute_read, minute_tasks) =
        median_of(5, || store.tasks(&all, minute).expect("tasks").iter().map(|s| s.tasks.len() as u64).sum());
    let by_task = Selector::parse(r#"{service="api",task="handle-request"}"#).expect("selector");
    let (filtered, in_tasks) =
        median_of(5, || stack_counts(&store, by_task.clone(), range, false).expect("profile").total());
    let (timeline, found) = median_of(5, || {
        let found = store.tasks(&all, range).expect("tasks");
        let samples = store.raw_samples(&all, range).expect("raw");
        let attribution = Attribution::new(found);
        samples.iter().filter(|(s, r)| attribution.task_at(*s, r.tid, r.time_ns).is_some()).count() as u64
    });
    let bytes_per_slice = store.disk_bytes() as f64 / slices as f64;
    println!("collector task benchmark: {minutes} min of one asyncio service: {tasks} tasks, {slices} slices, {total} samples\n");
    println!("| measure | value | against |");
    println!("| --- | ---: | --- |");
    println!("| ingest, batches with tasks (slices/s, one core) | {:.0} | |", slices as f64 / ingest.as_secs_f64());
    println!("| file bytes per slice (samples and tasks included) | {bytes_per_slice:.1} | |");
    println!("| flame graph without task matchers (ms) | {:.2} | aggregated buckets only |", ms(plain));
    println!("| reading the raw samples (ms) | {:.1} | baseline |", ms(raw));
    println!("| reading tasks and slices (ms) | {:.1} | {:.1}× baseline |", ms(task_read), ms(task_read) / ms(raw));
    println!(
        "| reading the last minute's tasks and slices (ms) | {:.1} | {:.2}× the whole range; {minute_tasks} tasks |",
        ms(minute_read),
        ms(minute_read) / ms(task_read)
    );
    println!(
        "| flame graph of task=\"handle-request\" (ms) | {:.1} | {:.1}× baseline; {in_tasks} of {total} samples |",
        ms(filtered),
        ms(filtered) / ms(raw)
    );
    println!(
        "| timeline attribution (ms) | {:.1} | {:.1}× baseline; {found} samples in tasks |",
        ms(timeline),
        ms(timeline) / ms(raw)
    );
}
