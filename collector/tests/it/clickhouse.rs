//! The ClickHouse backend against a real `clickhouse-server` (Debian's 18.16) on loopback:
//! the same answers as the embedded store, exactly-once across collectors sharing a database,
//! and task timelines streamed by the real agent.

use std::path::PathBuf;
use std::time::Duration;

use crate::common::*;
use ember_testkit::clickhouse::ClickHouse;

/// Where every collector of these tests logs its SQL, for `collector/tests/clickhouse_sql_check.py`
/// to run on a current ClickHouse (chdb) in CI.
pub fn sql_log_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("clickhouse-sql");
    std::fs::create_dir_all(&dir).expect("the SQL log directory");
    dir
}

/// A collector on ClickHouse; its data directory is unused but must exist.
pub fn on_clickhouse(dir: &tempfile::TempDir, store: &str, extra: &[&str]) -> Collector {
    let log = sql_log_of(dir).display().to_string();
    let mut args = vec!["--store", store, "--clickhouse-sql-log", &log];
    args.extend_from_slice(extra);
    Collector::start(dir.path(), &args)
}

/// The SQL log of the collector [`on_clickhouse`] starts in `dir`.
fn sql_log_of(dir: &tempfile::TempDir) -> PathBuf {
    let name = dir.path().file_name().and_then(|n| n.to_str()).unwrap_or("c").trim_start_matches('.');
    sql_log_dir().join(format!("{name}.sql"))
}

pub fn stacks(prefix: &str, n: usize) -> Vec<Vec<String>> {
    (0..n).map(|i| vec!["<module>".to_string(), format!("{prefix}_{}", i % 7), format!("leaf_{}", i % 3)]).collect()
}

pub fn profile(collector: &Collector) -> std::collections::BTreeMap<String, u64> {
    let (status, body) = collector.get("/api/v1/profile?format=collapsed&from=now-1h");
    assert_eq!(status, 200, "{body}");
    Folded::parse(&body).stacks.into_iter().map(|(stack, n)| (stack.join(";"), n)).collect()
}

pub fn series_total(collector: &Collector) -> u64 {
    let (status, body) = collector.get("/api/v1/series?from=now-1h&step=10s");
    assert_eq!(status, 200, "{body}");
    parse_json(&body)["points"].as_array().expect("points").iter().map(|p| p[1].as_u64().unwrap_or(0)).sum()
}

#[test]
fn the_clickhouse_store_answers_as_the_embedded_one() {
    let server = ClickHouse::start();
    let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let embedded = Collector::start(a.path(), &[]);
    let clickhouse = on_clickhouse(&b, &server.store("ember_alike"), &[]);
    for (sequence, (service, n)) in [("web", 40), ("web", 25), ("worker", 30)].into_iter().enumerate() {
        let batch = stacks_batch(sequence as u64 + 1, 4242 + sequence as u32, service, &stacks(service, n));
        for collector in [&embedded, &clickhouse] {
            let ack = push_batch(&collector.grpc, None, batch.clone()).expect("stored");
            assert!(!ack.duplicate);
        }
    }
    // A process whose tasks only awaited: no samples, yet listed with its tasks' span.
    let idle = tasks_only_batch(4, 5151, "idle");
    for collector in [&embedded, &clickhouse] {
        assert!(!push_batch(&collector.grpc, None, idle.clone()).expect("stored").duplicate);
    }
    let expected = profile(&embedded);
    assert_eq!(expected.values().sum::<u64>(), 95);
    assert_eq!(profile(&clickhouse), expected);
    assert_eq!(series_total(&clickhouse), series_total(&embedded));
    let query = encode(r#"{service="worker"}"#);
    let path = format!("/api/v1/profile?format=collapsed&from=now-1h&query={query}");
    assert_eq!(clickhouse.get(&path), embedded.get(&path));
    let (status, targets) = clickhouse.get("/api/v1/targets?from=now-1h");
    assert_eq!(status, 200, "{targets}");
    assert!(targets.contains(r#""service":"idle""#), "{targets}");
    assert_eq!(parse_json(&targets), parse_json(&embedded.get("/api/v1/targets?from=now-1h").1));
    // Days with nothing in them: a process seen three days ago and now is listed for the day
    // between; one whose task has waited since three days ago shows it today.
    let gap = stacks_batch(5, 6161, "gap", &stacks("gap", 4));
    let mut old = gap.clone();
    old.sequence = 6;
    old.samples[0].base_time_nanos -= 3 * DAY_NS;
    let mut waiting_since = tasks_only_batch(7, 7171, "waiting");
    waiting_since.tasks[0].tasks[0].created_nanos -= 3 * DAY_NS;
    waiting_since.tasks[0].slice_start_nanos[0] -= 3 * DAY_NS;
    for collector in [&embedded, &clickhouse] {
        for batch in [gap.clone(), old.clone(), waiting_since.clone()] {
            assert!(!push_batch(&collector.grpc, None, batch).expect("stored").duplicate);
        }
    }
    // Absolute times: both collectors answer for the same range.
    let now_ms = now_ns() / 1_000_000;
    let between = format!("/api/v1/targets?from={}&to={}", now_ms - 2 * DAY_MS, now_ms - DAY_MS);
    let (status, listed) = clickhouse.get(&between);
    assert!(status == 200 && listed.contains(r#""service":"gap""#), "{status} {listed}");
    assert_eq!(parse_json(&listed), parse_json(&embedded.get(&between).1));
    let query = encode(r#"{service="waiting"}"#);
    let timeline = format!("/api/v1/timeline?from={}&to={now_ms}&query={query}", now_ms - 3_600_000);
    let (status, tasks) = clickhouse.get(&timeline);
    assert!(status == 200 && tasks.contains(r#""name":"serve""#), "{status} {tasks}");
    assert_eq!(parse_json(&tasks), parse_json(&embedded.get(&timeline).1));
}

const DAY_NS: u64 = 86_400_000_000_000;
const DAY_MS: u64 = 86_400_000;

/// A batch of one process with a task that ran once and no samples.
fn tasks_only_batch(sequence: u64, pid: u32, service: &str) -> ember_proto::v1::Batch {
    use ember_proto::v1;
    let mut batch = stacks_batch(sequence, pid, service, &[]);
    batch.samples.clear();
    batch.strings.extend(["serve".to_string(), "serve()".to_string()]);
    let (name, coro) = (batch.strings.len() as u32 - 2, batch.strings.len() as u32 - 1);
    let created = now_ns() - 3_000_000_000;
    let task = v1::TaskInfo {
        id: 7,
        name,
        coro,
        created_nanos: created,
        state: v1::TaskState::Pending as i32,
        ..Default::default()
    };
    batch.tasks = vec![v1::TaskBlock {
        process: 1,
        tasks: vec![task],
        slice_task: vec![7],
        slice_tid: vec![pid],
        slice_start_nanos: vec![created + 1_000_000],
        slice_duration_nanos: vec![2_000_000],
        ..Default::default()
    }];
    batch
}

/// Raw retention keeps a running task's record (carried from day to day while its process is
/// seen), drops one finished longer ago, and a task of a process gone with its labels.
#[test]
fn retention_keeps_the_records_of_running_tasks() {
    let server = ClickHouse::start();
    let store = server.store("ember_carry");
    check_retention_carry(&[&server], "", &store, "ember_carry", &[]);
}

/// [`retention_keeps_the_records_of_running_tasks`] through collectors on `store` started with
/// `extra`. Rows are aged by moving today's partitions back on every server of `servers` (whose
/// tables end in `suffix`), as ClickHouse has no clock to turn.
pub fn check_retention_carry(servers: &[&ClickHouse], suffix: &str, store: &str, db: &str, extra: &[&str]) {
    use ember_proto::v1;
    // The servers run in UTC (testkit), as the collector counts days.
    let today = servers[0].query("SELECT toString(today())").trim().to_string();
    let age = |table: &str, columns: &str, days: u32| {
        for server in servers {
            server.query(&format!(
                "INSERT INTO {db}.{table}{suffix} SELECT toDate('{today}') - {days}, {columns} \
                 FROM {db}.{table}{suffix} WHERE day = '{today}'"
            ));
            server.query(&format!("ALTER TABLE {db}.{table}{suffix} DROP PARTITION '{today}'"));
        }
    };
    let count = |sql: &str| servers.iter().map(|server| server.count(sql)).sum::<u64>();
    let tasks_columns = "series_id, task_id, name, coro, parent, created_ns, done_ns, state, exception, sequence, \
                         batch, attempt";
    let dir = tempfile::tempdir().expect("tempdir");
    // Its retention runs at start only, not between the moves below.
    let writer = on_clickhouse(&dir, store, &[extra, &["--retention-interval", "1h"]].concat());
    // A process whose labels are older than --retention: gone, with its task.
    assert!(!push_batch(&writer.grpc, None, tasks_only_batch(1, 9191, "gone")).expect("stored").duplicate);
    age("ember_series", "series_id, label_names, label_values", 10);
    age("ember_tasks", tasks_columns, 3);
    // A live process: a task running for three days, and one that finished three days ago.
    let mut live = tasks_only_batch(4, 8181, "live");
    let created = live.tasks[0].tasks[0].created_nanos - 3 * DAY_NS;
    live.strings.push("done".into());
    let block = &mut live.tasks[0];
    block.tasks[0].created_nanos = created;
    block.slice_start_nanos[0] = created + 1_000_000;
    let finished = v1::TaskInfo {
        id: 8,
        name: live.strings.len() as u32 - 1,
        created_nanos: created,
        done_nanos: created + 5_000_000,
        state: v1::TaskState::Finished as i32,
        ..block.tasks[0]
    };
    block.tasks.push(finished);
    assert!(!push_batch(&writer.grpc, None, live).expect("stored").duplicate);
    if servers.len() > 1 {
        // Its labels (placed by series) and its task records (by batch) on different shards:
        // carrying must look across them.
        let on = |sql: &str| servers.iter().map(|server| server.count(sql) > 0).collect::<Vec<_>>();
        let labels = on(&format!("SELECT count() FROM {db}.ember_series{suffix} WHERE has(label_values, '8181')"));
        let records = on(&format!("SELECT count() FROM {db}.ember_tasks{suffix} WHERE day = '{today}'"));
        assert!(labels.iter().zip(&records).all(|(l, r)| l != r), "labels {labels:?}, records {records:?}");
    }
    age("ember_tasks", tasks_columns, 3);
    drop(writer);

    let dir = tempfile::tempdir().expect("tempdir");
    let retention = on_clickhouse(&dir, store, &[extra, &["--retention-interval", "1s"]].concat());
    let old_rows = format!(
        "SELECT (SELECT count() FROM {db}.ember_tasks{suffix} WHERE day < '{today}') \
         + (SELECT count() FROM {db}.ember_series{suffix} WHERE day < toDate('{today}') - 8)"
    );
    ember_testkit::wait_until(Duration::from_secs(60), "retention to drop the old days", || count(&old_rows) == 0);
    // Passes after that carry nothing again: one row, the running task's, copied once.
    let passes =
        || std::fs::read_to_string(sql_log_of(&dir)).unwrap_or_default().matches("table = 'ember_tasks").count();
    let after = passes();
    ember_testkit::wait_until(Duration::from_secs(60), "three more retention passes", || passes() >= after + 3);
    assert_eq!(count(&format!("SELECT count() FROM {db}.ember_tasks{suffix}")), 1);
    let (status, timeline) = retention.get("/api/v1/timeline?from=now-4d");
    assert_eq!(status, 200, "{timeline}");
    let tasks: Vec<(String, String)> = parse_json(&timeline)["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| (t["name"].as_str().unwrap_or_default().into(), t["pid"].as_str().unwrap_or_default().into()))
        .collect();
    assert_eq!(tasks, [("serve".to_string(), "8181".to_string())], "the live process' running task: {timeline}");
}

#[test]
fn max_disk_refuses_batches_while_the_database_is_larger() {
    let server = ClickHouse::start();
    let dir = tempfile::tempdir().expect("tempdir");
    // The schema's own first row makes the database larger than one byte.
    let collector = on_clickhouse(&dir, &server.store("ember_full"), &["--max-disk", "1"]);
    let refused = push_batch(&collector.grpc, None, stacks_batch(1, 9, "svc", &stacks("f", 5))).expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("storage is full"), "{refused:?}");
    assert_eq!(server.count("SELECT count() FROM ember_full.ember_samples"), 0);
}

#[test]
fn a_batch_resent_through_another_collector_counts_once() {
    let server = ClickHouse::start();
    let store = server.store("ember_once");
    let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let (first, second) = (on_clickhouse(&a, &store, &[]), on_clickhouse(&b, &store, &[]));
    let batch = stacks_batch(1, 77, "svc", &stacks("f", 50));
    assert!(!push_batch(&first.grpc, None, batch.clone()).expect("stored").duplicate);
    // The agent did not get the ack and resends the batch to the other collector.
    assert!(push_batch(&second.grpc, None, batch.clone()).expect("acked").duplicate);
    // Two collectors given one batch at the same moment both store it; it still counts once.
    let again = stacks_batch(2, 77, "svc", &stacks("g", 30));
    let racing: Vec<_> = [&first, &second]
        .map(|c| {
            let (grpc, batch) = (c.grpc.clone(), again.clone());
            std::thread::spawn(move || push_batch(&grpc, None, batch).expect("acked"))
        })
        .into_iter()
        .collect();
    for r in racing {
        r.join().expect("pushed");
    }
    for collector in [&first, &second] {
        assert_eq!(profile(collector).values().sum::<u64>(), 80, "each batch once");
        assert_eq!(series_total(collector), 80);
    }
    assert!(server.query("SELECT count() FROM ember_once.ember_samples").trim().parse::<u64>().expect("count") >= 80);
    // A batch whose samples fall on 40 days (a partition each) is refused as such, not retried
    // for ever, and leaves nothing counted.
    let mut scattered = stacks_batch(3, 77, "svc", &stacks("h", 40));
    scattered.samples[0].base_time_nanos = now_ns() - 41 * 86_400_000_000_000;
    scattered.samples[0].time_delta = vec![86_400_000_000_000; 40];
    let rows = "SELECT count() FROM ember_once.ember_samples";
    let before = server.count(rows);
    let refused = push_batch(&first.grpc, None, scattered).expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("fall on 40 different days"), "{refused:?}");
    assert_eq!(server.count(rows), before, "nothing written");
}

#[test]
fn streamed_tasks_give_timelines_from_clickhouse() {
    let _serial = serial();
    let server = ClickHouse::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = on_clickhouse(&dir, &server.store("ember_tasks"), &[]);
    let sent = crate::tasks_e2e::stream_asyncio(&collector, "tasks", &[]);
    crate::tasks_e2e::check_tasks(&collector, "tasks", sent);
}

/// Two collectors on one ClickHouse; the agent streams to both (`--collector` twice), and the
/// first is killed with SIGKILL mid-stream. The agent goes on with the second, resending what
/// the first had not acknowledged, and the store holds exactly what the agent sent: nothing
/// lost, nothing counted twice (a batch the first stored but did not ack is resent too).
#[test]
fn the_agent_fails_over_when_its_collector_is_killed() {
    let _serial = serial();
    let server = ClickHouse::start();
    let store = server.store("ember_failover");
    let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let (first, second) = (on_clickhouse(&a, &store, &[]), on_clickhouse(&b, &store, &[]));
    let mut cmd = agent_cmd();
    cmd.args(["stream", "--collector", &first.url(), "--collector", &second.url(), "--flush-interval", "1s"])
        .args(["--rate", "199", "--service", "failover", "--"])
        .arg(python312())
        .arg(fixture("nested.py"))
        .env("EMBER_FIXTURE_SECONDS", "6");
    let agent = Running::start(&mut cmd);
    let query = r#"{service="failover"}"#;
    wait_until(Duration::from_secs(60), "the first collector to store a batch", || first.total(query, "now-1h") > 0);
    first.process.signal(9);
    let out = agent.finish();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("0 batches unacknowledged"), "{err}");
    let sent = sent_samples(&err);
    assert!(sent >= 500, "6 s of CPU at 199 Hz: {sent}\n{err}");
    assert_eq!(second.total(query, "now-1h"), sent, "{err}");
}

/// HTTPS to ClickHouse, with a private CA, as a user whose password comes from a file; the
/// same from the environment with the wrong password, or without the CA, stops the collector at
/// start-up with ClickHouse's or TLS's reason.
#[test]
fn https_with_a_private_ca_and_a_password() {
    let certs = tempfile::tempdir().expect("tempdir");
    let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("a certificate");
    let (cert, private, password) =
        (certs.path().join("server.pem"), certs.path().join("server.key"), certs.path().join("password"));
    std::fs::write(&cert, key.cert.pem()).expect("cert");
    std::fs::write(&private, key.signing_key.serialize_pem()).expect("key");
    std::fs::write(&password, "s3cret\n").expect("password");
    let https_port = ember_testkit::free_port();
    let tls = format!(
        "<https_port>{https_port}</https_port><openSSL><server><certificateFile>{}</certificateFile>\
         <privateKeyFile>{}</privateKeyFile><verificationMode>none</verificationMode>\
         <loadDefaultCAFile>false</loadDefaultCAFile></server></openSSL>",
        cert.display(),
        private.display()
    );
    let user = "<ember><password>s3cret</password><networks><ip>127.0.0.1</ip></networks>\
                <profile>default</profile><quota>default</quota></ember>";
    let (http_port, tcp_port) = (ember_testkit::free_port(), ember_testkit::free_port());
    let server = ClickHouse::start_with_users(http_port, tcp_port, &tls, user);
    server.query("CREATE DATABASE ember_tls");
    let store = format!("clickhouses://127.0.0.1:{https_port}/ember_tls");
    let (ca, password) = (cert.display().to_string(), password.display().to_string());

    let refused = |args: &[&str], reason: &str| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = collector_cmd();
        cmd.arg("--data-dir").arg(dir.path()).args(["--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]);
        cmd.args(["--store", &store, "--clickhouse-user", "ember"]).args(args);
        let mut collector = Running::start(cmd.env("EMBER_CLICKHOUSE_PASSWORD", "wrong"));
        collector.wait_for_stderr(reason, Duration::from_secs(60));
        assert!(!collector.finish().status.success());
    };
    refused(&["--clickhouse-ca", &ca], "Wrong password for user ember");
    refused(&["--clickhouse-password-file", &password], "UnknownIssuer");

    let dir = tempfile::tempdir().expect("tempdir");
    let trusted = ["--clickhouse-ca", &ca, "--clickhouse-user", "ember", "--clickhouse-password-file", &password];
    let collector = on_clickhouse(&dir, &store, &trusted);
    let batch = stacks_batch(1, 99, "tls", &stacks("t", 20));
    assert!(!push_batch(&collector.grpc, None, batch).expect("stored").duplicate);
    assert_eq!(profile(&collector).values().sum::<u64>(), 20);
    assert_eq!(server.count("SELECT count() FROM ember_tls.ember_samples"), 20);
}
