//! A damaged store: values that fail their checksum are left out, counted, logged, and make
//! /readyz report the store degraded; damage redb can see, and files that are not an ember
//! store, stop the start with a clear error. No answer carries internal error text.

use std::path::Path;
use std::time::Duration;

use redb::ReadableTable;

use crate::common::*;

/// Runs the collector on `dir` and expects it to refuse to start; returns its error line.
fn refused_start(dir: &Path) -> String {
    let mut cmd = collector_cmd();
    cmd.arg("--data-dir").arg(dir).args(["--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]);
    let mut process = Running::start(&mut cmd);
    let line = process.wait_for_stderr("ember-collector: error", Duration::from_secs(60));
    let out = process.finish();
    assert!(!out.status.success());
    let all = stderr(&out);
    assert!(!all.contains("panicked"), "{all}");
    line
}

fn stop(collector: Collector) {
    let Collector { process, .. } = collector;
    process.signal(15);
    process.wait();
}

#[test]
fn an_empty_or_foreign_file_is_a_startup_error_and_is_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("ember.redb");
    std::fs::write(&file, b"").expect("write");
    let line = refused_start(dir.path());
    assert!(line.contains("is empty (0 bytes)"), "{line}");
    assert_eq!(std::fs::metadata(&file).expect("still there").len(), 0, "not turned into a new store");

    std::fs::write(&file, b"these are someone's notes, not a database\n".repeat(100)).expect("write");
    let line = refused_start(dir.path());
    assert!(line.contains("not a readable redb database"), "{line}");
    assert!(std::fs::read(&file).expect("read").starts_with(b"these are"), "left alone");

    // A redb database of some other program.
    std::fs::remove_file(&file).expect("rm");
    {
        let db = redb::Database::create(&file).expect("redb");
        let txn = db.begin_write().expect("txn");
        {
            let def: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("settings");
            txn.open_table(def).expect("table").insert("x", 1).expect("insert");
        }
        txn.commit().expect("commit");
    }
    let line = refused_start(dir.path());
    assert!(line.contains("not an ember store"), "{line}");
}

#[test]
fn a_damaged_value_is_left_out_counted_logged_and_reported_degraded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(dir.path(), &[]);
    push_batch(&collector.grpc, None, stacks_batch(1, 1, "first", &vec![vec!["a".into()]; 10])).expect("stored");
    push_batch(&collector.grpc, None, stacks_batch(2, 2, "second", &vec![vec!["b".into()]; 20])).expect("stored");
    assert_eq!(collector.total("{}", "now-10m"), 30);
    let http = collector.http.clone();
    let grpc = collector.grpc.clone();
    stop(collector);

    // Flip one bit of the first aggregated blob (the first series'), as a bad disk or a
    // stray writer would, behind redb's page checksums.
    {
        let db = redb::Database::open(dir.path().join("ember.redb")).expect("opens");
        let agg: redb::TableDefinition<(u32, i64, u64), &[u8]> = redb::TableDefinition::new("agg");
        let txn = db.begin_write().expect("txn");
        {
            let mut table = txn.open_table(agg).expect("agg");
            let (key, mut value) = {
                let first = table.first().expect("read").expect("a blob");
                (first.0.value(), first.1.value().to_vec())
            };
            value[0] ^= 0x04;
            table.insert(key, value.as_slice()).expect("write");
        }
        txn.commit().expect("commit");
    }

    let mut collector = Collector::start_on(dir.path(), &grpc, &http, &[]);
    assert_eq!(collector.total("{}", "now-10m"), 20, "the damaged blob is left out, not misread");
    assert_eq!(collector.total(r#"{service="second"}"#, "now-10m"), 20);
    let (status, body) = collector.get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("degraded"), "{body}");
    assert_eq!(collector.metric("ember_collector_store_corrupt_records"), 1, "counted once, however often read");
    collector.process.wait_for_stderr("store damage", Duration::from_secs(10));
    // The rest keeps working: new batches are stored and served.
    push_batch(&collector.grpc, None, stacks_batch(3, 3, "third", &vec![vec!["c".into()]; 5])).expect("stored");
    assert_eq!(collector.total("{}", "now-10m"), 25);
    let (_, series) = collector.get("/api/v1/series?from=now-10m");
    assert!(!series.contains("panicked") && !series.contains("redb"), "{series}");
}

#[test]
fn bits_flipped_in_the_file_are_found_when_it_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(dir.path(), &[]);
    let marker = "UNMISTAKABLE_FRAME_NAME_FOR_THE_DAMAGE_TEST";
    push_batch(&collector.grpc, None, stacks_batch(1, 1, "s", &vec![vec![marker.into()]; 10])).expect("stored");
    stop(collector);
    let path = dir.path().join("ember.redb");
    let mut bytes = std::fs::read(&path).expect("read");
    let found: Vec<usize> =
        bytes.windows(marker.len()).enumerate().filter(|(_, w)| *w == marker.as_bytes()).map(|(i, _)| i).collect();
    assert!(!found.is_empty(), "the frame text is in the file");
    for at in found {
        bytes[at + 3] ^= 0x01;
    }
    std::fs::write(&path, &bytes).expect("write");
    let line = refused_start(dir.path());
    assert!(line.contains("damaged"), "{line}");
}
