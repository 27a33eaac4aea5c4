//! Ingest time against processes per batch: one batch with 1k, 10k and 40k processes (10
//! samples each, a shared frame and stack table), validated and stored as the gRPC service
//! does. Throughput in processes/s should stay flat (ingest is linear in series per batch).
//!
//!     cargo bench -p ember-collector --bench ingest_scale

use std::time::Instant;

use ember_collector::ingest::validate;
use ember_collector::store::embedded::EmbeddedStore;
use ember_collector::store::Store;
use ember_proto::v1;

const SAMPLES_PER_PROCESS: usize = 10;

fn batch(processes: usize, now_ns: u64) -> v1::Batch {
    let strings: Vec<String> = std::iter::once(String::new()).chain((0..8).map(|i| format!("f{i} (app.py)"))).collect();
    let frames = (1..=8u32)
        .map(|t| v1::Frame {
            text: t,
            function: t,
            file: 0,
            kind: v1::FrameKind::Python as i32,
            interpreter_plumbing: false,
            line: 0,
        })
        .collect();
    let stacks = (0..4u32).map(|i| v1::Stack { frames: (0..=i + 4).collect() }).collect();
    let processes_table = (0..processes)
        .map(|p| v1::Process {
            id: p as u32 + 1,
            pid: 10_000 + p as u32,
            host: format!("host-{}", p % 16),
            comm: "python3.12".into(),
            service: format!("service-{}", p % 50),
            ..Default::default()
        })
        .collect();
    let samples = (0..processes)
        .map(|p| v1::SampleBlock {
            process: p as u32 + 1,
            base_time_nanos: now_ns,
            stack: (0..SAMPLES_PER_PROCESS as u32).map(|i| i % 4).collect(),
            tid: vec![1; SAMPLES_PER_PROCESS],
            time_delta: vec![10_000_000; SAMPLES_PER_PROCESS],
            weight: vec![],
        })
        .collect();
    v1::Batch {
        agent_id: format!("agent-{processes}"),
        sequence: 1,
        strings,
        frames,
        stacks,
        processes: processes_table,
        samples,
        tasks: Vec::new(),
        monotonic_to_unix_nanos: 0,
        rate_hz: 99,
    }
}

fn main() {
    let now_ns = (ember_collector::query::now_ms() as u64 - 60_000) * 1_000_000;
    println!(
        "ingest of one batch by processes per batch ({SAMPLES_PER_PROCESS} samples each, fresh store, median of 3)\n"
    );
    println!("| processes per batch | ingest (s) | processes/s | samples/s |");
    println!("| ---: | ---: | ---: | ---: |");
    for processes in [1_000usize, 10_000, 40_000] {
        let b = batch(processes, now_ns);
        let mut runs: Vec<f64> = (0..3)
            .map(|_| {
                let dir = tempfile::tempdir().expect("tempdir");
                let store = EmbeddedStore::open(dir.path(), None).expect("store");
                let started = Instant::now();
                let new = validate(&b).expect("valid");
                store.ingest(&new).expect("stored");
                started.elapsed().as_secs_f64()
            })
            .collect();
        runs.sort_by(f64::total_cmp);
        let secs = runs[1];
        let samples = processes * SAMPLES_PER_PROCESS;
        println!("| {processes} | {secs:.3} | {:.0} | {:.0} |", processes as f64 / secs, samples as f64 / secs);
    }
}
