//! Collector storage benchmark: ingest throughput per collector core, flame-graph query latency
//! at 1M, 10M and `--samples N` (default 10M) stored samples, and stored bytes per sample; with
//! `--clickhouse`, the same batches also go to the ClickHouse backend (a Debian 18.16
//! `clickhouse-server` started on loopback) in the same run, and the two are compared.
//!
//!     cargo bench -p ember-collector --bench store [-- --samples 10000000] [--clickhouse]
//!
//! The workload looks like real agents: a call tree of 3,000 frames, 2,000 distinct stacks
//! 10-60 frames deep that share prefixes, Zipf-like popularity, 20 series (5 services × 4
//! processes), and batches of one process's 10 s window (4 threads at 99 Hz = 3,960 samples),
//! each carrying its own string, frame and stack tables as the protocol requires.

mod clickhouse;
mod workload;

use std::time::{Duration, Instant};

use ember_collector::ingest::validate;
use ember_collector::query::{tree, Selector, TimeRange};
use ember_collector::store::embedded::EmbeddedStore;
use ember_collector::store::Store;
use workload::{make_batch, workload, Rng, Workload, SAMPLES_PER_BATCH, SERIES};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// What `/api/v1/profile` does: the store's sums, the tree and its JSON; median of 5.
fn query(store: &dyn Store, selector: &Selector, range: TimeRange) -> (Duration, u64) {
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

/// The batches of the run, in order: the same for every backend.
#[derive(Debug)]
pub struct Feed<'a> {
    workload: &'a Workload,
    rng: Rng,
    sequence: u64,
    start_ns: u64,
}

impl<'a> Feed<'a> {
    fn new(workload: &'a Workload, start_ns: u64) -> Self {
        Feed { workload, rng: Rng(0x0123_4567_89ab_cdef), sequence: 0, start_ns }
    }

    /// Stores batches until `samples` reach `until`; returns the wall time and this process's
    /// CPU time (the collector's side: validation, encoding, sending) spent.
    fn fill(&mut self, store: &dyn Store, samples: &mut usize, until: usize) -> (Duration, f64) {
        let (mut wall, cpu_before) = (Duration::ZERO, ember_testkit::cpu_seconds(std::process::id()));
        while *samples < until {
            let series = (self.sequence as usize) % SERIES;
            let window = (self.sequence as usize / SERIES) as u64;
            self.sequence += 1;
            let start = self.start_ns + window * 10_000_000_000;
            let batch = make_batch(self.workload, &mut self.rng, self.sequence, series, start);
            let started = Instant::now();
            let new = validate(&batch).expect("valid");
            store.ingest(&new).expect("stored");
            wall += started.elapsed();
            *samples += SAMPLES_PER_BATCH;
        }
        (wall, ember_testkit::cpu_seconds(std::process::id()) - cpu_before)
    }
}

/// One backend's figures at one size.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    samples: usize,
    per_core: f64,
    all_ms: f64,
    one_ms: f64,
    bytes: f64,
    aged_bytes: f64,
}

/// The flame-graph queries of a filled store: all series, and one service's.
fn queries(store: &dyn Store, samples: usize) -> (f64, f64) {
    let range = TimeRange { from_ms: 0, to_ms: ember_collector::query::now_ms() };
    let (all, total) = query(store, &Selector::default(), range);
    assert_eq!(total as usize, samples);
    let one = Selector::parse(r#"{service="service-1"}"#).expect("selector");
    let (single, _) = query(store, &one, range);
    (all.as_secs_f64() * 1e3, single.as_secs_f64() * 1e3)
}

fn embedded(w: &Workload, checkpoints: &[usize], start_ns: u64) -> Vec<Row> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), None).expect("store");
    let mut feed = Feed::new(w, start_ns);
    let (mut samples, mut wall, mut cpu) = (0usize, Duration::ZERO, 0.0);
    let mut rows = Vec::new();
    println!("embedded store:\n");
    println!("| stored samples | ingest (samples/s, one core) | vs target 500k/s | flame-graph query, all series (ms) | one service (ms) | vs target 500 ms | bytes/sample, file as written | compacted | compacted, raw times expired |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &checkpoint in checkpoints {
        let (w, c) = feed.fill(&store, &mut samples, checkpoint);
        (wall, cpu) = (wall + w, cpu + c);
        let rate = samples as f64 / wall.as_secs_f64();
        let (all_ms, one_ms) = queries(&store, samples);
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
            "| {samples} | {rate:.0} | {:.2}× | {all_ms:.0} | {one_ms:.0} | {:.2}× | {bytes:.2} | {compacted_bytes:.2} | {aged_bytes:.2} |",
            rate / 500_000.0,
            all_ms / 500.0,
        );
        let per_core = samples as f64 / cpu.max(1e-9);
        rows.push(Row { samples, per_core, all_ms, one_ms, bytes: compacted_bytes, aged_bytes });
    }
    println!();
    rows
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let target: usize = args
        .iter()
        .position(|a| a == "--samples")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    let with_clickhouse = args.iter().any(|a| a == "--clickhouse");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let w = workload(&mut rng);
    let start_ns = (ember_collector::query::now_ms() as u64 - 6 * 3_600_000) * 1_000_000;
    let mut checkpoints: Vec<usize> = [1_000_000, 10_000_000].into_iter().filter(|&n| n < target).collect();
    checkpoints.push(target);
    println!("collector store benchmark: {target} samples, batches of {SAMPLES_PER_BATCH}, {SERIES} series\n");
    let embedded_rows = embedded(&w, &checkpoints, start_ns);
    if with_clickhouse {
        let clickhouse_rows = clickhouse::run(&w, &checkpoints, start_ns);
        println!("ClickHouse against the embedded store, same batches, same run:\n");
        println!(
            "| stored samples | ingest per collector core | flame graph, all series | one service | bytes/sample, merged | raw times expired |"
        );
        println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
        for (e, c) in embedded_rows.iter().zip(&clickhouse_rows) {
            println!(
                "| {} | {:.2}× | {:.2}× | {:.2}× | {:.2}× | {:.2}× |",
                e.samples,
                c.per_core / e.per_core,
                c.all_ms / e.all_ms,
                c.one_ms / e.one_ms,
                c.bytes / e.bytes,
                c.aged_bytes / e.aged_bytes
            );
        }
    }
}
