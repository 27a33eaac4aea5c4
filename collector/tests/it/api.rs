//! The HTTP API's answers to bad input, the gRPC service's answers to malformed, oversized
//! and unauthenticated batches, retention, and a full disk. A raw gRPC client stands in for
//! agents that misbehave.

use std::time::Duration;

use crate::common::*;
use ember_proto::v1::ingest_client::IngestClient;
use ember_proto::v1::{self, Batch};
use tonic::Code;

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// A valid batch of `n` samples of one stack, `age` before now, for service `service`.
fn batch(sequence: u64, service: &str, age: Duration, n: usize, padding: usize) -> Batch {
    Batch {
        agent_id: "test-agent".into(),
        sequence,
        strings: vec!["".into(), "main (app.py)".into(), "main".into(), format!("app.py{}", "x".repeat(padding))],
        frames: vec![v1::Frame {
            text: 1,
            function: 2,
            file: 3,
            kind: v1::FrameKind::Python as i32,
            interpreter_plumbing: false,
            line: 0,
        }],
        stacks: vec![v1::Stack { frames: vec![0] }],
        processes: vec![v1::Process { id: 1, pid: 7, service: service.into(), ..Default::default() }],
        samples: vec![v1::SampleBlock {
            process: 1,
            base_time_nanos: now_ns() - age.as_nanos() as u64,
            stack: vec![0; n],
            tid: vec![7; n],
            time_delta: vec![1_000_000; n],
            weight: vec![],
        }],
        monotonic_to_unix_nanos: 0,
        rate_hz: 99,
        tasks: Vec::new(),
    }
}

async fn push(collector: &Collector, token: Option<&str>, b: Batch) -> Result<v1::Ack, tonic::Status> {
    let mut client = IngestClient::connect(collector.url()).await.expect("connects");
    let mut request = tonic::Request::new(b);
    if let Some(t) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {t}").parse().expect("ascii"));
    }
    client.push(request).await.map(tonic::Response::into_inner)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

#[test]
fn bad_http_parameters_get_400_naming_the_parameter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(dir.path(), &[]);
    let cases = [
        ("/api/v1/profile?from=yesterday", "from"),
        ("/api/v1/profile?to=soon", "to"),
        ("/api/v1/profile?from=now&to=now-1h", "from"),
        ("/api/v1/profile?query=service%3D%22x%22", "query"),
        ("/api/v1/profile?query=%7Bservice%3D~%22(%22%7D", "query"),
        ("/api/v1/profile?format=png", "format"),
        ("/api/v1/profile?native=maybe", "native"),
        ("/api/v1/series?step=-5s", "step"),
        ("/api/v1/series?step=fast", "step"),
        ("/api/v1/targets?query=%7B", "query"),
        ("/api/v1/diff?base_from=x", "base_from"),
        ("/api/v1/diff?format=pprof", "format"),
        ("/api/v1/diff?base_query=%7Ba%7D", "base_query"),
    ];
    for (path, param) in cases {
        let (status, body) = collector.get(path);
        assert_eq!(status, 400, "{path}: {body}");
        let json = parse_json(&body);
        assert_eq!(json["param"], param, "{path}: {body}");
        assert!(!json["error"].as_str().unwrap_or("").is_empty());
    }
    let (status, body) = collector.get("/api/v1/nope");
    assert_eq!(status, 404, "{body}");
    assert_eq!(collector.get("/healthz").0, 200);
    assert_eq!(collector.get("/readyz").0, 200);
}

#[test]
fn diff_series_and_every_profile_format_render() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(dir.path(), &[]);
    let rt = runtime();
    rt.block_on(push(&collector, None, batch(1, "s", Duration::from_secs(120), 100, 0))).expect("stored");
    rt.block_on(push(&collector, None, batch(2, "s", Duration::from_secs(5), 300, 0))).expect("stored");
    let (status, body) = collector.get("/api/v1/diff?from=now-1m&to=now&base_from=now-3m&base_to=now-1m");
    assert_eq!(status, 200, "{body}");
    let diff = parse_json(&body);
    assert_eq!((diff["total"].as_u64(), diff["base_total"].as_u64()), (Some(300), Some(100)));
    let tree = FlatTree::of(&diff);
    assert_eq!(tree.count("base_total", tree.children(0)[0]), 100);
    let (status, svg) = collector.get("/api/v1/diff?from=now-1m&base_from=now-3m&base_to=now-1m&format=svg");
    assert_eq!(status, 200);
    assert!(svg.contains("<svg") && svg.contains("main (app.py)"), "{}", &svg[..svg.len().min(300)]);
    for format in ["json", "collapsed", "svg", "speedscope", "pprof"] {
        let (status, body) = collector.get(&format!("/api/v1/profile?from=now-10m&format={format}"));
        assert_eq!(status, 200, "{format}: {body}");
        assert!(!body.is_empty(), "{format}");
    }
    let (_, body) = collector.get("/api/v1/series?from=now-5m&step=60s");
    let json = parse_json(&body);
    assert_eq!(json["step_ms"], 60_000);
    let sum: u64 = json["points"].as_array().expect("points").iter().map(|p| p[1].as_u64().unwrap_or(0)).sum();
    assert_eq!(sum, 400);
}

#[test]
fn malformed_oversized_and_unauthenticated_batches_get_the_right_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(dir.path(), &["--token", "t0ken", "--max-batch-bytes", "20000"]);
    let rt = runtime();
    let ok =
        rt.block_on(push(&collector, Some("t0ken"), batch(1, "s", Duration::ZERO, 10, 0))).expect("valid batch stored");
    assert!(!ok.duplicate);
    let again =
        rt.block_on(push(&collector, Some("t0ken"), batch(1, "s", Duration::ZERO, 10, 0))).expect("repeat acked");
    assert!(again.duplicate, "a resend is recognised");

    let mut bad = batch(2, "s", Duration::ZERO, 10, 0);
    bad.samples[0].stack[3] = 9;
    let status = rt.block_on(push(&collector, Some("t0ken"), bad)).expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("samples[0].stack"), "{}", status.message());

    // Task activity for a process the batch does not describe is refused with the field named.
    let mut bad = batch(2, "s", Duration::ZERO, 10, 0);
    bad.tasks.push(v1::TaskBlock { process: 5, ..Default::default() });
    let status = rt.block_on(push(&collector, Some("t0ken"), bad)).expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("tasks[0].process"), "{}", status.message());

    let status =
        rt.block_on(push(&collector, Some("t0ken"), batch(3, "s", Duration::ZERO, 10, 50_000))).expect_err("refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{}", status.message());

    for token in [None, Some("wrong")] {
        let status = rt.block_on(push(&collector, token, batch(4, "s", Duration::ZERO, 10, 0))).expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{token:?}");
    }
    // Nothing of the refused batches was stored, and the valid one only once.
    assert_eq!(collector.total("{}", "now-1h"), 10);
    assert_eq!(collector.metric("ember_collector_batches_total{result=\"duplicate\"}"), 1);
}

#[test]
fn retention_removes_old_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(dir.path(), &["--retention", "1h", "--retention-interval", "1s"]);
    let rt = runtime();
    rt.block_on(push(&collector, None, batch(1, "old", Duration::from_secs(3 * 3600), 50, 0))).expect("stored");
    rt.block_on(push(&collector, None, batch(2, "new", Duration::from_secs(10), 70, 0))).expect("stored");
    wait_until(Duration::from_secs(20), "retention to drop the 3-hour-old samples", || {
        collector.total(r#"{service="old"}"#, "now-4h") == 0
    });
    assert_eq!(collector.total(r#"{service="new"}"#, "now-4h"), 70);
    let (_, targets) = collector.get("/api/v1/targets?from=now-4h");
    assert!(!targets.contains(r#""service":"old""#), "{targets}");
}

#[test]
fn a_full_disk_stops_acks_without_corrupting_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    // A 3 MiB disk for the store, in a private mount namespace.
    let script = format!(
        "mount -t tmpfs -o size=3m tmpfs {d} && exec {bin} --data-dir {d} --grpc-listen 127.0.0.1:{g} --http-listen 127.0.0.1:{h}",
        d = data.display(),
        bin = env!("CARGO_BIN_EXE_ember-collector"),
        g = ember_testkit::free_port(),
        h = ember_testkit::free_port(),
    );
    let mut process =
        Running::start(std::process::Command::new("unshare").args(["--mount", "--", "sh", "-c", &script]));
    let line = process.wait_for_stderr("listening grpc=", Duration::from_secs(20));
    let grpc = line.split("grpc=").nth(1).and_then(|s| s.split(' ').next()).expect("grpc address").to_string();
    let http = line.split("http=http://").nth(1).expect("http address").trim().to_string();
    let collector_url = format!("http://{grpc}");
    let rt = runtime();
    let mut stored = 0u64;
    let mut refusal = None;
    for seq in 1..400u64 {
        // Distinct large frames so every batch needs new space.
        let mut b = batch(seq, "fill", Duration::ZERO, 100, 40_000);
        b.strings[3] = format!("{seq}-{}", "y".repeat(40_000));
        let result = rt.block_on(async {
            let mut client = IngestClient::connect(collector_url.clone()).await.expect("connects");
            client.push(b).await
        });
        match result {
            Ok(_) => stored += 100,
            Err(status) => {
                refusal = Some(status);
                break;
            }
        }
    }
    let status = refusal.expect("the disk filled up");
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(status.message().contains("full"), "{}", status.message());
    assert!(stored > 0);
    // Still alive, still answering, and what was acknowledged is intact.
    let (code, body) = http_get(&http, "/api/v1/profile?format=collapsed&from=now-1h");
    assert_eq!(code, 200, "{body}");
    assert_eq!(Folded::parse(&body).total(), stored);
    let (_, metrics) = http_get(&http, "/metrics");
    assert!(metrics.contains("result=\"storage_full\""), "{metrics}");
    drop(rt);
    process.signal(15);
    process.wait();
}
