//! The ClickHouse backend under the same batches: a Debian 18.16 `clickhouse-server` of its
//! own on loopback. Ingest per collector core counts this process's CPU only (validation, ids,
//! encoding, HTTP); the server's CPU is given apart. Bytes per sample are ClickHouse's own
//! sizes of the database's active parts (`bytes_on_disk`, compressed), as written, once every
//! table is merged (`OPTIMIZE … FINAL`), and without `ember_samples` (what `--raw-retention`
//! leaves).

use std::time::Duration;

use ember_collector::store::clickhouse::{ClickHouseStore, Endpoint};
use ember_testkit::clickhouse::ClickHouse;

use super::workload::Workload;
use super::{queries, Feed, Row};

const TABLES: [&str; 10] = [
    "ember_schema",
    "ember_frames",
    "ember_stacks",
    "ember_series",
    "ember_samples",
    "ember_counts",
    "ember_seen",
    "ember_batches",
    "ember_tasks",
    "ember_slices",
];

/// The database's bytes on disk, and those of every table but `ember_samples` (what stays once
/// exact sample times age out after `--raw-retention`).
fn bytes_on_disk(server: &ClickHouse) -> (u64, u64) {
    let parts = "FROM system.parts WHERE database = 'bench' AND active";
    let all = server.count(&format!("SELECT sum(bytes_on_disk) {parts}"));
    (all, all - server.count(&format!("SELECT sum(bytes_on_disk) {parts} AND table = 'ember_samples'")))
}

pub fn run(w: &Workload, checkpoints: &[usize], start_ns: u64) -> Vec<Row> {
    let server = ClickHouse::start();
    let url = server.store("bench");
    let store = ClickHouseStore::open(Endpoint::parse(&url).expect("url"), None).expect("the ClickHouse store opens");
    let mut feed = Feed::new(w, start_ns);
    let (mut samples, mut wall, mut cpu, mut server_cpu) = (0usize, Duration::ZERO, 0.0, 0.0);
    let mut rows = Vec::new();
    println!("ClickHouse store (Debian's 18.16 on loopback):\n");
    println!("| stored samples | ingest (samples/s) | per collector core | server CPU per 1M samples (s) | flame-graph query, all series (ms) | one service (ms) | bytes/sample on disk | merged | merged, raw times expired |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &checkpoint in checkpoints {
        let server_before = ember_testkit::cpu_seconds(server.pid());
        let (w, c) = feed.fill(&store, &mut samples, checkpoint);
        (wall, cpu) = (wall + w, cpu + c);
        server_cpu += ember_testkit::cpu_seconds(server.pid()) - server_before;
        let (all_ms, one_ms) = queries(&store, samples);
        let written = bytes_on_disk(&server).0 as f64 / samples as f64;
        for table in TABLES {
            server.query(&format!("OPTIMIZE TABLE bench.{table} FINAL"));
        }
        let (merged, aged) = bytes_on_disk(&server);
        let (merged, aged) = (merged as f64 / samples as f64, aged as f64 / samples as f64);
        let per_core = samples as f64 / cpu.max(1e-9);
        println!(
            "| {samples} | {:.0} | {per_core:.0} | {:.2} | {all_ms:.0} | {one_ms:.0} | {written:.2} | {merged:.2} | {aged:.2} |",
            samples as f64 / wall.as_secs_f64(),
            server_cpu / samples as f64 * 1e6,
        );
        rows.push(Row { samples, per_core, all_ms, one_ms, bytes: merged, aged_bytes: aged });
    }
    println!();
    rows
}
