//! Batches a hostile or unlucky agent may send: stacks deeper than any thread's stack could
//! recurse over, tens of thousands of processes in one batch, and values at the edges of
//! what the protocol can carry.

use crate::common::*;
use tonic::Code;

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Frames of each stack of a collapsed profile, by leaf name.
fn depth_by_leaf(folded: &str) -> std::collections::HashMap<String, Vec<String>> {
    Folded::parse(folded)
        .stacks
        .into_iter()
        .map(|(frames, _)| (frames.last().map(|f| function(f).to_string()).unwrap_or_default(), frames))
        .collect()
}

/// Depth of the deepest path of a JSON flame tree (the root not counted), and the frame under
/// the root on the way to it.
fn json_depth(body: String) -> (usize, String) {
    let tree = FlatTree::of(&parse_json(&body));
    // Depth first, so a parent's depth and first frame are known before its children's.
    let (mut depth, mut first) = (vec![0usize; tree.len()], vec![0usize; tree.len()]);
    for i in 1..tree.len() {
        let p = tree.parent(i).expect("only the root has no parent");
        depth[i] = depth[p] + 1;
        first[i] = if p == 0 { i } else { first[p] };
    }
    let deepest = (0..tree.len()).max_by_key(|&i| depth[i]).unwrap_or(0);
    let name = if deepest == 0 { String::new() } else { tree.name(first[deepest]).to_string() };
    (depth[deepest], name)
}

#[test]
fn deep_stacks_are_cut_at_the_documented_limit_and_served_in_every_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(dir.path(), &[]);
    // 4,000 frames (what crashed it) stays whole; 20,000 is cut to 16,384 with a marker root.
    let stacks = vec![names("shallow_", 4_000), names("deep_", 20_000)];
    push_batch(&collector.grpc, None, stacks_batch(1, 42, "deep", &stacks)).expect("stored");

    let check = |collector: &Collector| {
        let (status, body) = collector.get("/api/v1/profile?from=now-10m&format=collapsed");
        assert_eq!(status, 200, "{}", &body[..body.len().min(300)]);
        let by_leaf = depth_by_leaf(&body);
        assert_eq!(by_leaf["shallow_3999"].len(), 4_000, "kept whole");
        let deep = &by_leaf["deep_19999"];
        assert_eq!(deep.len(), 16_384, "cut to the limit");
        assert_eq!(deep[0], "[depth limit]", "the marker replaces the root end");
        assert_eq!(function(&deep[1]), "deep_3617", "the leaf end is kept");

        let (status, body) = collector.get("/api/v1/profile?from=now-10m");
        assert_eq!(status, 200);
        assert_eq!(json_depth(body), (16_384, "[depth limit]".to_string()));
        let (status, body) = collector.get("/api/v1/diff?from=now-10m&base_from=now-20m&base_to=now-10m");
        assert_eq!(status, 200, "{}", &body[..body.len().min(300)]);
        assert_eq!(json_depth(body).0, 16_384);
        for format in ["svg", "pprof", "speedscope"] {
            let (status, body) = collector.get(&format!("/api/v1/profile?from=now-10m&format={format}"));
            assert_eq!(status, 200, "{format}");
            assert!(!body.is_empty(), "{format}");
        }
        let (status, svg) = collector.get("/api/v1/diff?from=now-10m&base_from=now-20m&base_to=now-10m&format=svg");
        assert_eq!(status, 200);
        assert!(svg.contains("<svg"));
        let (status, body) = collector.get("/api/v1/profile?from=now-10m&format=json&native=true");
        assert_eq!(status, 200);
        assert_eq!(json_depth(body).0, 16_384);
        assert_eq!(collector.get("/healthz").0, 200, "still running");
    };
    check(&collector);
    // The data persists; the first query after a restart must not crash it either.
    let collector = collector.restart();
    check(&collector);
}

#[test]
fn a_stack_index_outside_the_table_is_still_refused_after_the_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(dir.path(), &[]);
    let mut batch = stacks_batch(1, 42, "deep", &[names("deep_", 20_000)]);
    // The marker is appended after the agent's frames: an index equal to the table's length
    // must not reach it.
    let n = batch.frames.len() as u32;
    batch.stacks.push(ember_proto::v1::Stack { frames: vec![n] });
    let status = push_batch(&collector.grpc, None, batch).expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("stacks[1].frames"), "{}", status.message());
}

#[test]
fn a_batch_of_twenty_thousand_processes_is_stored_whole() {
    use ember_proto::v1;
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(dir.path(), &[]);
    let mut batch = stacks_batch(1, 1, "many", &[names("f", 3)]);
    let template = batch.samples[0].clone();
    let n = 20_000u32;
    // Processes i and i + n/2 carry the same labels, so they are one series.
    batch.processes = (0..n)
        .map(|i| v1::Process { id: i + 1, pid: 10_000 + i % (n / 2), service: "many".into(), ..Default::default() })
        .collect();
    batch.samples = (0..n).map(|i| v1::SampleBlock { process: i + 1, ..template.clone() }).collect();
    let ack = push_batch(&collector.grpc, None, batch).expect("stored");
    assert!(!ack.duplicate);
    assert_eq!(collector.total(r#"{service="many"}"#, "now-10m"), u64::from(n));
    let (status, body) = collector.get("/api/v1/targets?from=now-10m");
    assert_eq!(status, 200);
    let targets = parse_json(&body);
    let targets = targets["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), (n / 2) as usize, "same labels, same series");
    assert!(targets.iter().all(|t| t["samples"] == 2), "each series got both processes' sample");
}

#[test]
fn extreme_weights_times_and_reserved_labels_are_refused_with_the_field_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(dir.path(), &[]);
    let ok = || stacks_batch(1, 7, "edges", &[vec!["main".into()]]);
    let mut cases: Vec<(ember_proto::v1::Batch, &str, &str)> = Vec::new();
    let mut b = ok();
    b.samples[0].weight = vec![u32::MAX];
    cases.push((b, "samples[0].weight", "from 1 to 1000000"));
    // 1677 and 2262: the ends of what i64 nanoseconds can hold.
    let mut b = ok();
    b.samples[0].base_time_nanos = 0;
    b.monotonic_to_unix_nanos = i64::MIN + 10;
    cases.push((b, "samples[0].time_delta", "outside the accepted window"));
    let mut b = ok();
    b.samples[0].base_time_nanos = i64::MAX as u64 - 10_000_000_000;
    cases.push((b, "samples[0].time_delta", "outside the accepted window"));
    let mut b = ok();
    b.samples[0].base_time_nanos = now_ns() + 48 * 3_600_000_000_000;
    cases.push((b, "samples[0].time_delta", "24 h ahead"));
    for reserved in ["pid", "task", "service"] {
        let mut b = ok();
        b.processes[0].labels.insert(reserved.into(), "1".into());
        cases.push((b, "processes[0].labels", "is reserved"));
    }
    for (batch, field, problem) in cases {
        let status = push_batch(&collector.grpc, None, batch).expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {}", status.message());
        assert!(status.message().contains(field), "{}", status.message());
        assert!(status.message().contains(problem), "{}", status.message());
    }
    // Nothing was stored, and the ordinary batch still is.
    assert_eq!(collector.total("{}", "now-1h"), 0);
    let mut b = ok();
    b.samples[0].weight = vec![1_000_000];
    b.processes[0].labels.insert("team".into(), "payments".into());
    push_batch(&collector.grpc, None, b).expect("stored");
    assert_eq!(collector.total(r#"{team="payments"}"#, "now-1h"), 1_000_000);
}
