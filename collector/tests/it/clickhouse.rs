//! The ClickHouse backend against a real `clickhouse-server` (Debian's 18.16) on loopback:
//! the same answers as the embedded store, exactly-once across collectors sharing a database,
//! and task timelines streamed by the real agent.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;

/// A clickhouse-server of its own, in a temporary directory, on free loopback ports.
pub struct ClickHouse {
    child: Child,
    pub http_port: u16,
    _dir: tempfile::TempDir,
}

fn server_binary() -> PathBuf {
    ["/usr/bin/clickhouse-server", "/usr/sbin/clickhouse-server", "/usr/bin/clickhouse"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("clickhouse-server is not installed: apt-get install clickhouse-server (Debian's 18.16)")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

impl ClickHouse {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().display().to_string();
        let (http_port, tcp_port) = (free_port(), free_port());
        let config = format!(
            r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{root}/server.log</log><errorlog>{root}/error.log</errorlog><size>10M</size><count>1</count></logger>
  <http_port>{http_port}</http_port>
  <tcp_port>{tcp_port}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{root}/data/</path>
  <tmp_path>{root}/tmp/</tmp_path>
  <users_config>{root}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>5368709120</mark_cache_size>
</yandex>
"#
        );
        let users = r#"<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
"#;
        std::fs::write(dir.path().join("config.xml"), config).expect("config");
        std::fs::write(dir.path().join("users.xml"), users).expect("users");
        let log = std::fs::File::create(dir.path().join("stdout.log")).expect("log");
        let child = Command::new(server_binary())
            .arg(format!("--config-file={root}/config.xml"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("clickhouse-server starts");
        let server = ClickHouse { child, http_port, _dir: dir };
        wait_until(Duration::from_secs(60), "ClickHouse to answer", || {
            server.try_query("SELECT 1").is_some_and(|a| a.trim() == "1")
        });
        server
    }

    fn try_query(&self, sql: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.http_port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
        let request = format!(
            "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{sql}",
            sql.len()
        );
        stream.write_all(request.as_bytes()).ok()?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw).ok()?;
        let (head, body) = raw.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| {
            if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
                dechunk(body)
            } else {
                body.to_string()
            }
        })
    }

    pub fn query(&self, sql: &str) -> String {
        self.try_query(sql).unwrap_or_else(|| panic!("ClickHouse refused {sql}"))
    }

    /// `--store` for a fresh database `name`.
    pub fn store(&self, name: &str) -> String {
        self.query(&format!("CREATE DATABASE IF NOT EXISTS {name}"));
        format!("clickhouse://127.0.0.1:{}/{name}", self.http_port)
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where every collector of these tests logs its SQL, for `collector/tests/clickhouse_sql_check.py`
/// to run on a current ClickHouse (chdb) in CI.
pub fn sql_log_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("clickhouse-sql");
    std::fs::create_dir_all(&dir).expect("the SQL log directory");
    dir
}

/// A collector on ClickHouse; its data directory is unused but must exist.
fn on_clickhouse(dir: &tempfile::TempDir, store: &str) -> Collector {
    let name = dir.path().file_name().and_then(|n| n.to_str()).unwrap_or("c").trim_start_matches('.');
    let log = sql_log_dir().join(format!("{name}.sql"));
    Collector::start(dir.path(), &["--store", store, "--clickhouse-sql-log", &log.display().to_string()])
}

fn stacks(prefix: &str, n: usize) -> Vec<Vec<String>> {
    (0..n).map(|i| vec!["<module>".to_string(), format!("{prefix}_{}", i % 7), format!("leaf_{}", i % 3)]).collect()
}

fn profile(collector: &Collector) -> std::collections::BTreeMap<String, u64> {
    let (status, body) = collector.get("/api/v1/profile?format=collapsed&from=now-1h");
    assert_eq!(status, 200, "{body}");
    Folded::parse(&body).stacks.into_iter().map(|(stack, n)| (stack.join(";"), n)).collect()
}

fn series_total(collector: &Collector) -> u64 {
    let (status, body) = collector.get("/api/v1/series?from=now-1h&step=10s");
    assert_eq!(status, 200, "{body}");
    parse_json(&body)["points"].as_array().expect("points").iter().map(|p| p[1].as_u64().unwrap_or(0)).sum()
}

#[test]
fn the_clickhouse_store_answers_as_the_embedded_one() {
    let server = ClickHouse::start();
    let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let embedded = Collector::start(a.path(), &[]);
    let clickhouse = on_clickhouse(&b, &server.store("ember_alike"));
    for (sequence, (service, n)) in [("web", 40), ("web", 25), ("worker", 30)].into_iter().enumerate() {
        let batch = stacks_batch(sequence as u64 + 1, 4242 + sequence as u32, service, &stacks(service, n));
        for collector in [&embedded, &clickhouse] {
            let ack = push_batch(&collector.grpc, None, batch.clone()).expect("stored");
            assert!(!ack.duplicate);
        }
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
    assert_eq!(parse_json(&targets), parse_json(&embedded.get("/api/v1/targets?from=now-1h").1));
}

#[test]
fn a_batch_resent_through_another_collector_counts_once() {
    let server = ClickHouse::start();
    let store = server.store("ember_once");
    let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let (first, second) = (on_clickhouse(&a, &store), on_clickhouse(&b, &store));
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
}

#[test]
fn streamed_tasks_give_timelines_from_clickhouse() {
    let _serial = serial();
    let server = ClickHouse::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = on_clickhouse(&dir, &server.store("ember_tasks"));
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
    let (first, second) = (on_clickhouse(&a, &store), on_clickhouse(&b, &store));
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
