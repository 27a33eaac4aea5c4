//! Queries that would take more than the collector can give: bounded in number and memory,
//! answered 503 with Retry-After; and batches of new frames that no longer grow memory.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use crate::common::*;

/// `n` samples of a handful of stacks, spread over threads.
fn many_samples(sequence: u64, n: usize) -> ember_proto::v1::Batch {
    let stacks: Vec<Vec<String>> = (0..n).map(|i| vec!["main".into(), format!("leaf{}", i % 5)]).collect();
    let mut b = stacks_batch(sequence, 1, "busy", &stacks);
    b.samples[0].tid = (0..n as u32).map(|i| 100 + i % 4).collect();
    b.samples[0].time_delta = vec![10_000; n];
    b
}

#[test]
fn a_query_over_the_memory_bound_gets_503_with_retry_after_and_gives_it_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(dir.path(), &["--query-memory", "64KB"]);
    push_batch(&collector.grpc, None, many_samples(1, 20_000)).expect("stored");
    // Samples outside any task need every raw sample read: 20,000 of them do not fit in 64 KB.
    let path = format!("/api/v1/profile?from=now-10m&query={}", encode(r#"{task=""}"#));
    let (status, head, body) = http_get_with(&collector.http, &path, &[]);
    assert_eq!(status, 503, "{body}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
    assert!(body.contains("--query-memory"), "{body}");
    // What the refused query held is back: small queries keep working, again and again.
    for _ in 0..3 {
        assert_eq!(collector.total("{}", "now-10m"), 20_000);
    }
    assert!(collector.metric("ember_collector_queries_refused_total") >= 1);
}

#[test]
fn queries_over_the_concurrency_bound_get_503_with_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(dir.path(), &["--query-concurrency", "1"]);
    push_batch(&collector.grpc, None, many_samples(1, 50_000)).expect("stored");
    let path = format!("/api/v1/profile?from=now-10m&format=collapsed&query={}", encode(r#"{task=""}"#));
    let http = collector.http.clone();
    let mut refused = 0;
    let mut rounds = 0;
    // Parallel heavy queries until one finds the only slot taken (polls; no timing assumed).
    while refused == 0 {
        rounds += 1;
        assert!(rounds <= 50, "50 rounds of 8 parallel queries never overlapped");
        let barrier = Arc::new(Barrier::new(8));
        let answers: Vec<(u16, String, String)> = (0..8)
            .map(|_| {
                let (barrier, http, path) = (barrier.clone(), http.clone(), path.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    http_get_with(&http, &path, &[])
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        for (status, head, body) in answers {
            match status {
                200 => assert_eq!(Folded::parse(&body).total(), 50_000),
                503 => {
                    assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
                    assert!(body.contains("--query-concurrency"), "{body}");
                    refused += 1;
                }
                other => panic!("unexpected {other}: {body}"),
            }
        }
    }
    assert!(collector.metric("ember_collector_queries_refused_total{endpoint=\"profile\"}") >= refused);
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

#[test]
fn batches_of_new_frames_do_not_grow_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(dir.path(), &["--store-cache", "16MB"]);
    let pid = collector.process.pid();
    let frames_per_batch = 40_000;
    let mut rss = Vec::new();
    for batch in 0..8u64 {
        // Every frame is new: a long, distinct name, one stack each.
        let stacks: Vec<Vec<String>> =
            (0..frames_per_batch).map(|i| vec![format!("module_{batch}.handler_{i}.process_request")]).collect();
        push_batch(&collector.grpc, None, stacks_batch(batch + 1, 1, "frames", &stacks)).expect("stored");
        rss.push(rss_kb(pid));
    }
    // In-memory dictionaries grew by 500-1,000 bytes per new frame (120-240 MB over the last
    // six batches); now the only growth left is allocator slack and bounded caches.
    let growth_mb = rss[7].saturating_sub(rss[1]) / 1024;
    eprintln!("RSS after each batch (kB): {rss:?}");
    assert!(growth_mb < 80, "RSS grew {growth_mb} MB over 6 batches of 40k new frames: {rss:?} kB");
    // Samples run a millisecond apart from the time of each push, into the next minutes.
    let (status, body) = collector.get("/api/v1/profile?from=now-10m&to=now%2B10m&format=collapsed");
    assert_eq!(status, 200);
    assert_eq!(Folded::parse(&body).total(), 8 * frames_per_batch as u64);
    wait_until(Duration::from_secs(5), "the collector to be ready", || collector.get("/readyz").0 == 200);
}

#[test]
fn out_of_range_time_parameters_get_400_naming_the_parameter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(dir.path(), &[]);
    let cases = [
        ("/api/v1/profile?from=-9223372036854775808", "from"),
        ("/api/v1/profile?from=-1", "from"),
        ("/api/v1/profile?to=9223372036854775807", "to"),
        ("/api/v1/profile?to=99999999999999999999", "to"),
        ("/api/v1/profile?from=now-9999999999999d", "from"),
        ("/api/v1/targets?to=now%2B500000w", "to"),
        ("/api/v1/series?step=18446744073709552", "step"),
        ("/api/v1/series?step=18446744073709552ms", "step"),
        ("/api/v1/series?step=9223372036854775807s", "step"),
        ("/api/v1/diff?base_from=-9223372036854775808&base_to=now", "base_from"),
        ("/api/v1/timeline?from=-9223372036854775808", "from"),
    ];
    for (path, param) in cases {
        let (status, body) = collector.get(path);
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(parse_json(&body)["param"], param, "{path}: {body}");
    }
    // The widest range accepted still answers, and a step longer than the range is the range
    // (one step, or two when the range does not start on a step).
    assert_eq!(collector.get("/api/v1/profile?from=0&to=253402300799999").0, 200);
    let (status, body) = collector.get("/api/v1/series?from=now-1h&step=2h");
    assert_eq!(status, 200, "{body}");
    assert_eq!(parse_json(&body)["step_ms"], 3_600_000);
    assert!(parse_json(&body)["points"].as_array().is_some_and(|p| p.len() <= 2), "{body}");
    assert_eq!(collector.get("/healthz").0, 200);
}
