//! Two ClickHouse shards behind `Distributed` tables (`--clickhouse-cluster`), each a real
//! Debian 18.16 server on loopback, with `ON CLUSTER` DDL through a real ZooKeeper: collectors
//! on either server answer as the embedded store does, each batch counts once, the real
//! agent's tasks make their timeline, and retention drops old days and carries running tasks on
//! every shard.

use std::time::Duration;

use crate::clickhouse::{check_retention_carry, on_clickhouse, profile, series_total, stacks};
use crate::common::*;
use ember_testkit::clickhouse::Cluster;

const DAY_NS: u64 = 86_400_000_000_000;

fn service_profile(collector: &Collector, service: &str) -> (u16, String) {
    let selector = format!(r#"{{service="{service}"}}"#);
    collector.get(&format!("/api/v1/profile?format=collapsed&from=now-1h&query={}", encode(&selector)))
}

fn count_on_each(cluster: &Cluster, sql: &str) -> Vec<u64> {
    cluster.shards.iter().map(|shard| shard.count(sql)).collect()
}

#[test]
fn two_shards_answer_as_one_server() {
    let _serial = serial();
    let cluster = Cluster::start_two_shards();
    let db = "ember_sharded";
    let on_cluster = ["--clickhouse-cluster", cluster.name];
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let first = on_clickhouse(&dirs[0], &cluster.store(0, db), &on_cluster);
    let second = on_clickhouse(&dirs[1], &cluster.store(1, db), &on_cluster);
    let embedded = Collector::start(dirs[2].path(), &[]);

    // Batches through either collector; the same ones to the embedded store.
    let mut total = 0;
    for sequence in 1..=12u64 {
        let service = ["web", "worker", "cron"][sequence as usize % 3];
        let n = 10 + sequence as usize;
        let batch = stacks_batch(sequence, 4000 + sequence as u32, service, &stacks(service, n));
        let via = if sequence % 2 == 0 { &first } else { &second };
        assert!(!push_batch(&via.grpc, None, batch.clone()).expect("stored").duplicate);
        assert!(!push_batch(&embedded.grpc, None, batch).expect("stored").duplicate);
        total += n as u64;
    }
    // A batch resent through the other collector is known there as already stored.
    let resent = stacks_batch(2, 4002, "cron", &stacks("cron", 12));
    assert!(push_batch(&second.grpc, None, resent).expect("acked").duplicate);

    // Both shards hold samples, and together exactly what was sent.
    let local = count_on_each(&cluster, &format!("SELECT count() FROM {db}.ember_samples_local"));
    assert!(local.iter().all(|&n| n > 0), "samples per shard: {local:?}");
    assert_eq!(local.iter().sum::<u64>(), total, "samples per shard: {local:?}");
    let expected = profile(&embedded);
    assert_eq!(expected.values().sum::<u64>(), total);
    for collector in [&first, &second] {
        assert_eq!(profile(collector), expected);
        assert_eq!(series_total(collector), series_total(&embedded));
        assert_eq!(service_profile(collector, "web"), service_profile(&embedded, "web"));
        let targets = |c: &Collector| parse_json(&c.get("/api/v1/targets?from=now-1h").1);
        assert_eq!(targets(collector), targets(&embedded));
    }

    // The real agent's asyncio tasks, streamed through one collector and read through the other.
    let sent = crate::tasks_e2e::stream_asyncio(&first, "tasks", &[]);
    crate::tasks_e2e::check_tasks(&second, "tasks", sent);
    // (Which shards its batches land on follows from the agent's random id.)
    let slices = count_on_each(&cluster, &format!("SELECT count() FROM {db}.ember_slices_local"));
    assert!(slices.iter().sum::<u64>() > 0, "slices per shard: {slices:?}");

    // Ten-day-old batches, then a collector keeping two days: the old days go on every shard,
    // the rest stays.
    let old_day = format!(
        "SELECT (SELECT count() FROM {db}.ember_samples_local WHERE day < today() - 5) + \
         (SELECT count() FROM {db}.ember_counts_local WHERE day < today() - 5)"
    );
    for sequence in 101..=108u64 {
        let mut batch = stacks_batch(sequence, 4100, "old", &stacks("old", 5));
        batch.samples[0].base_time_nanos = now_ns() - 10 * DAY_NS;
        assert!(!push_batch(&first.grpc, None, batch).expect("stored").duplicate);
    }
    let old = count_on_each(&cluster, &old_day);
    assert!(old.iter().all(|&n| n > 0), "old samples per shard: {old:?}");
    let recent = format!("SELECT count() FROM {db}.ember_samples_local WHERE day >= today() - 5");
    let before = count_on_each(&cluster, &recent);
    let _keeping = on_clickhouse(
        &dirs[3],
        &cluster.store(0, db),
        &[&on_cluster[..], &["--retention", "2d", "--retention-interval", "1s"]].concat(),
    );
    wait_until(Duration::from_secs(60), "retention to drop the old days on both shards", || {
        count_on_each(&cluster, &old_day).iter().all(|&n| n == 0)
    });
    assert_eq!(count_on_each(&cluster, &recent), before);
    for service in ["web", "worker", "cron"] {
        assert_eq!(
            service_profile(&second, service),
            service_profile(&embedded, service),
            "{service} is all still there"
        );
    }
}

/// The single server's retention test on two shards: listing, carrying (`GLOBAL IN` over the
/// distributed tables) and dropping each day on every shard.
#[test]
fn retention_carries_running_tasks_on_two_shards() {
    let cluster = Cluster::start_two_shards();
    let db = "ember_sharded_carry";
    let shards: Vec<&ember_testkit::clickhouse::ClickHouse> = cluster.shards.iter().collect();
    check_retention_carry(&shards, "_local", &cluster.store(0, db), db, &["--clickhouse-cluster", cluster.name]);
}
