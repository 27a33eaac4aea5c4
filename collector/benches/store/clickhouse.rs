//! The ClickHouse backend under the same batches: a Debian 18.16 `clickhouse-server` of its
//! own on loopback. Ingest per collector core counts this process's CPU only (validation, ids,
//! encoding, HTTP); the server's CPU is given apart. Bytes per sample are ClickHouse's own
//! sizes of the database's active parts (`bytes_on_disk`, compressed), as written and once every
//! table is merged (`OPTIMIZE … FINAL`).

use std::time::Duration;

use ember_collector::store::clickhouse::{ClickHouseStore, Endpoint};
use ember_testkit::clickhouse::ClickHouse;

use super::workload::Workload;
use super::{queries, Feed, Row};

const TABLES: [&str; 8] = [
    "ember_schema",
    "ember_frames",
    "ember_stacks",
    "ember_series",
    "ember_samples",
    "ember_batches",
    "ember_tasks",
    "ember_slices",
];

fn bytes_on_disk(server: &ClickHouse) -> u64 {
    server.count("SELECT sum(bytes_on_disk) FROM system.parts WHERE database = 'bench' AND active")
}

pub fn run(w: &Workload, checkpoints: &[usize], start_ns: u64) -> Vec<Row> {
    let server = ClickHouse::start();
    let url = server.store("bench");
    let store = ClickHouseStore::open(Endpoint::parse(&url).expect("url")).expect("the ClickHouse store opens");
    let mut feed = Feed::new(w, start_ns);
    let (mut samples, mut wall, mut cpu, mut server_cpu) = (0usize, Duration::ZERO, 0.0, 0.0);
    let mut rows = Vec::new();
    println!("ClickHouse store (Debian's 18.16 on loopback):\n");
    println!("| stored samples | ingest (samples/s) | per collector core | server CPU per 1M samples (s) | flame-graph query, all series (ms) | one service (ms) | bytes/sample on disk | merged |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &checkpoint in checkpoints {
        let server_before = ember_testkit::cpu_seconds(server.pid());
        let (w, c) = feed.fill(&store, &mut samples, checkpoint);
        (wall, cpu) = (wall + w, cpu + c);
        server_cpu += ember_testkit::cpu_seconds(server.pid()) - server_before;
        let (all_ms, one_ms) = queries(&store, samples);
        let written = bytes_on_disk(&server) as f64 / samples as f64;
        for table in TABLES {
            server.query(&format!("OPTIMIZE TABLE bench.{table} FINAL"));
        }
        let merged = bytes_on_disk(&server) as f64 / samples as f64;
        let per_core = samples as f64 / cpu.max(1e-9);
        println!(
            "| {samples} | {:.0} | {per_core:.0} | {:.2} | {all_ms:.0} | {one_ms:.0} | {written:.2} | {merged:.2} |",
            samples as f64 / wall.as_secs_f64(),
            server_cpu / samples as f64 * 1e6,
        );
        rows.push(Row { samples, per_core, all_ms, one_ms, bytes: merged });
    }
    println!();
    rows
}
