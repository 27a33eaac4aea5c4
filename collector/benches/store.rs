//! Collector storage benchmark: ingest throughput on one core, flame-graph query latency at
//! 1M and 10M stored samples, and stored bytes per sample.
//!
//!     cargo bench -p ember-collector --bench store [-- --samples 10000000]
//!
//! The workload looks like real agents: a call tree of 3,000 frames, 2,000 distinct stacks
//! 10-60 frames deep that share prefixes, Zipf-like popularity, 20 series (5 services × 4
//! processes), and batches of one process's 10 s window (4 threads at 99 Hz = 3,960 samples),
//! each carrying its own string, frame and stack tables as the protocol requires.

use std::time::{Duration, Instant};

use ember_collector::ingest::validate;
use ember_collector::query::{tree, Selector, TimeRange};
use ember_collector::store::embedded::EmbeddedStore;
use ember_collector::store::Store;
use ember_proto::v1;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Workload {
    frame_text: Vec<String>,
    stacks: Vec<Vec<u32>>,
    /// Cumulative popularity for picking stacks.
    cumulative: Vec<f64>,
}

fn workload(rng: &mut Rng) -> Workload {
    let frame_text: Vec<String> = (0..3000)
        .map(|i| {
            if i % 3 == 0 {
                format!("_PyEval_EvalFrameDefault_helper_{i} [libpython3.12.so.1.0]")
            } else {
                format!("handler_{i}.process_request (/srv/app/services/module_{}.py)", i % 97)
            }
        })
        .collect();
    // Stacks as random walks down a tree: children of a frame come from a fixed neighbourhood,
    // so stacks share long prefixes as real ones do.
    let stacks: Vec<Vec<u32>> = (0..2000)
        .map(|_| {
            let depth = 10 + rng.below(51) as usize;
            let mut frame = rng.below(20) as u32;
            (0..depth)
                .map(|_| {
                    let f = frame;
                    frame = (frame * 7 + 1 + rng.below(6) as u32) % 3000;
                    f
                })
                .collect()
        })
        .collect();
    let mut total = 0.0;
    let cumulative = (0..stacks.len())
        .map(|i| {
            total += 1.0 / ((i + 1) as f64).powf(1.1);
            total
        })
        .collect();
    Workload { frame_text, stacks, cumulative }
}

const SAMPLES_PER_BATCH: usize = 3960;
const SERIES: usize = 20;

fn make_batch(w: &Workload, rng: &mut Rng, sequence: u64, series: usize, window_start_ns: u64) -> v1::Batch {
    let total = *w.cumulative.last().unwrap_or(&1.0);
    let mut strings = vec![String::new()];
    let mut string_of = std::collections::HashMap::new();
    let mut frames = Vec::new();
    let mut frame_of = std::collections::HashMap::new();
    let mut stacks = Vec::new();
    let mut stack_of = std::collections::HashMap::new();
    let mut block = v1::SampleBlock { process: 1, base_time_nanos: window_start_ns, ..Default::default() };
    for i in 0..SAMPLES_PER_BATCH {
        let pick = (rng.next() as f64 / u64::MAX as f64) * total;
        let s = w.cumulative.partition_point(|&c| c < pick).min(w.stacks.len() - 1);
        let local = *stack_of.entry(s).or_insert_with(|| {
            let ids = w.stacks[s]
                .iter()
                .map(|&f| {
                    *frame_of.entry(f).or_insert_with(|| {
                        let text = &w.frame_text[f as usize];
                        let t = *string_of.entry(text.clone()).or_insert_with(|| {
                            strings.push(text.clone());
                            strings.len() as u32 - 1
                        });
                        frames.push(v1::Frame {
                            text: t,
                            function: t,
                            file: 0,
                            kind: v1::FrameKind::Python as i32,
                            interpreter_plumbing: false,
                            line: 0,
                        });
                        frames.len() as u32 - 1
                    })
                })
                .collect();
            stacks.push(v1::Stack { frames: ids });
            stacks.len() as u32 - 1
        });
        block.stack.push(local);
        block.tid.push(1000 + (i % 4) as u32);
        block.time_delta.push(if i == 0 {
            0
        } else if i % 4 == 0 {
            10_101_010
        } else {
            0
        });
    }
    v1::Batch {
        agent_id: format!("agent-{series}"),
        sequence,
        strings,
        frames,
        stacks,
        processes: vec![v1::Process {
            id: 1,
            host: format!("host-{}", series % 4),
            pid: 1000 + series as u32,
            comm: "python3.12".into(),
            service: format!("service-{}", series % 5),
            ..Default::default()
        }],
        samples: vec![block],
        tasks: Vec::new(),
        monotonic_to_unix_nanos: 0,
        rate_hz: 99,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn query(store: &EmbeddedStore, selector: &Selector, range: TimeRange) -> (Duration, u64) {
    let runs: Vec<(Duration, u64)> = (0..5)
        .map(|_| {
            let started = Instant::now();
            let counts = store.stack_counts(selector, range).expect("query");
            let json = tree::tree(&counts, false).to_json();
            std::hint::black_box(json);
            (started.elapsed(), counts.total())
        })
        .collect();
    let total = runs[0].1;
    (median(runs.into_iter().map(|r| r.0).collect()), total)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let target: usize = args
        .iter()
        .position(|a| a == "--samples")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), None).expect("store");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let w = workload(&mut rng);
    let start_ns = (ember_collector::query::now_ms() as u64 - 6 * 3_600_000) * 1_000_000;
    let mut ingest_time = Duration::ZERO;
    let mut samples = 0usize;
    let mut sequence = 0u64;
    let mut checkpoints = vec![1_000_000usize, target];
    checkpoints.dedup();
    println!("collector store benchmark: {target} samples, batches of {SAMPLES_PER_BATCH}, {SERIES} series\n");
    println!("| stored samples | ingest (samples/s, one core) | vs target 500k/s | flame-graph query, all series (ms) | one service (ms) | vs target 500 ms | bytes/sample, file as written | compacted | compacted, raw times expired |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for checkpoint in checkpoints {
        while samples < checkpoint {
            let series = (sequence as usize) % SERIES;
            let window = (sequence as usize / SERIES) as u64;
            sequence += 1;
            let batch = make_batch(&w, &mut rng, sequence, series, start_ns + window * 10_000_000_000);
            let started = Instant::now();
            let new = validate(&batch).expect("valid");
            store.ingest(&new).expect("stored");
            ingest_time += started.elapsed();
            samples += SAMPLES_PER_BATCH;
        }
        let rate = samples as f64 / ingest_time.as_secs_f64();
        let range = TimeRange { from_ms: 0, to_ms: ember_collector::query::now_ms() };
        let (all, total) = query(&store, &Selector::default(), range);
        assert_eq!(total as usize, samples);
        let one = Selector::parse(r#"{service="service-1"}"#).expect("selector");
        let (single, _) = query(&store, &one, range);
        let bytes = store.disk_bytes() as f64 / samples as f64;
        let live_copy = tempfile::tempdir().expect("tempdir");
        std::fs::copy(dir.path().join("ember.redb"), live_copy.path().join("ember.redb")).expect("copy");
        let mut live = redb::Database::open(live_copy.path().join("ember.redb")).expect("open");
        let _ = live.compact();
        drop(live);
        let compacted_bytes =
            std::fs::metadata(live_copy.path().join("ember.redb")).map_or(0, |m| m.len()) as f64 / samples as f64;
        // What stays once exact sample times age out (default --raw-retention 1h).
        let copy = tempfile::tempdir().expect("tempdir");
        std::fs::copy(dir.path().join("ember.redb"), copy.path().join("ember.redb")).expect("copy");
        let aged = EmbeddedStore::open(copy.path(), None).expect("copy opens");
        aged.apply_retention(0, ember_collector::query::now_ms()).expect("retention");
        drop(aged);
        let mut compacted = redb::Database::open(copy.path().join("ember.redb")).expect("open");
        let _ = compacted.compact();
        drop(compacted);
        let aged_bytes =
            std::fs::metadata(copy.path().join("ember.redb")).map_or(0, |m| m.len()) as f64 / samples as f64;
        println!(
            "| {samples} | {rate:.0} | {:.2}× | {:.0} | {:.0} | {:.2}× | {bytes:.2} | {compacted_bytes:.2} | {aged_bytes:.2} |",
            rate / 500_000.0,
            all.as_secs_f64() * 1e3,
            single.as_secs_f64() * 1e3,
            all.as_secs_f64() * 1e3 / 500.0,
        );
    }
}
