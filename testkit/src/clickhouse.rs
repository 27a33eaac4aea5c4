//! Real ClickHouse servers (Debian's 18.16) for tests and benchmarks, each in a temporary
//! directory on free loopback ports; and a real ZooKeeper (Debian's 3.8) for a cluster's
//! `ON CLUSTER` DDL.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_until};

/// A clickhouse-server of its own.
#[derive(Debug)]
pub struct ClickHouse {
    child: Child,
    pub http_port: u16,
    pub tcp_port: u16,
    _dir: tempfile::TempDir,
}

fn server_binary() -> PathBuf {
    ["/usr/bin/clickhouse-server", "/usr/sbin/clickhouse-server", "/usr/bin/clickhouse"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("clickhouse-server is not installed: apt-get install clickhouse-server (Debian's 18.16)")
}

impl ClickHouse {
    pub fn start() -> Self {
        Self::start_with(free_port(), free_port(), "")
    }

    /// A server on the given ports, with `extra` XML (clusters, ZooKeeper) in its config.
    pub fn start_with(http_port: u16, tcp_port: u16, extra: &str) -> Self {
        Self::start_with_users(http_port, tcp_port, extra, "")
    }

    /// As [`Self::start_with`], with `users` XML (more users, beside the password-less
    /// `default` the harness itself queries as) in its users file.
    pub fn start_with_users(http_port: u16, tcp_port: u16, extra: &str, users: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().display().to_string();
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
  <mark_cache_size>536870912</mark_cache_size>
  <timezone>UTC</timezone>
  {extra}
</yandex>
"#
        );
        let users = format!(
            r#"<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default>{users}</users>
  <quotas><default></default></quotas>
</yandex>
"#
        );
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
        let server = ClickHouse { child, http_port, tcp_port, _dir: dir };
        wait_until(Duration::from_secs(60), "ClickHouse to answer", || {
            server.try_query("SELECT 1").is_some_and(|a| a.trim() == "1")
        });
        server
    }

    pub fn try_query(&self, sql: &str) -> Option<String> {
        query_at(self.http_port, sql)
    }

    pub fn query(&self, sql: &str) -> String {
        self.try_query(sql).unwrap_or_else(|| panic!("ClickHouse refused {sql}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A query's single number.
    pub fn count(&self, sql: &str) -> u64 {
        let answer = self.query(sql);
        answer.trim().parse().unwrap_or_else(|_| panic!("{sql} answered {answer:?}"))
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

/// Runs `sql` on the ClickHouse server whose HTTP interface is on loopback `http_port`; its
/// answer, or None if it refused or could not be reached.
pub fn query_at(http_port: u16, sql: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", http_port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let request = format!(
        // HTTP/1.0: the answer comes whole, never chunked.
        "POST / HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{sql}",
        sql.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    head.split(' ').nth(1).is_some_and(|status| status == "200").then(|| body.to_string())
}

/// What runs the collector's API and end-to-end tests on ClickHouse instead of the embedded
/// store: `EMBER_TEST_STORE=clickhouse://127.0.0.1:PORT`, set by
/// `cargo run -p ember-testkit --example with-clickhouse -- COMMAND…`.
pub const TEST_STORE_VAR: &str = "EMBER_TEST_STORE";

/// With [`TEST_STORE_VAR`] set, `--store` for a fresh database named after `key`; else nothing.
pub fn test_store_args(key: &str) -> Vec<String> {
    let Ok(base) = std::env::var(TEST_STORE_VAR) else { return Vec::new() };
    let port: u16 = base
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("{TEST_STORE_VAR}={base}: expected clickhouse://127.0.0.1:PORT"));
    let name: String = key.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let database = format!("test_{name}");
    query_at(port, &format!("CREATE DATABASE IF NOT EXISTS {database}"))
        .unwrap_or_else(|| panic!("ClickHouse at {base} did not create {database}"));
    vec!["--store".into(), format!("{}/{database}", base.trim_end_matches('/'))]
}

/// A standalone ZooKeeper server (Debian's `zookeeper` package, run with the JVM directly).
#[derive(Debug)]
pub struct ZooKeeper {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl ZooKeeper {
    pub fn start() -> Self {
        let jar = PathBuf::from("/usr/share/java/zookeeper.jar");
        assert!(jar.exists(), "ZooKeeper is not installed: apt-get install zookeeper (Debian's 3.8)");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = format!(
            "tickTime=2000\ndataDir={}/data\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
             admin.enableServer=false\n4lw.commands.whitelist=ruok\n",
            dir.path().display()
        );
        std::fs::write(dir.path().join("zoo.cfg"), config).expect("zoo.cfg");
        let log = std::fs::File::create(dir.path().join("out.log")).expect("log");
        let child = Command::new("java")
            .args(["-Xmx256m", "-cp", "/usr/share/java/zookeeper.jar:/usr/share/java/*"])
            .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
            .arg(dir.path().join("zoo.cfg"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("java starts ZooKeeper");
        let zookeeper = ZooKeeper { child, port, _dir: dir };
        wait_until(Duration::from_secs(60), "ZooKeeper to answer ruok", || zookeeper.ruok());
        zookeeper
    }

    fn ruok(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        // A ZooKeeper still starting can take the connection and never answer: ask again.
        let bound = Some(Duration::from_secs(2));
        if stream.set_read_timeout(bound).is_err() || stream.set_write_timeout(bound).is_err() {
            return false;
        }
        let mut answer = String::new();
        stream.write_all(b"ruok").is_ok() && stream.read_to_string(&mut answer).is_ok() && answer == "imok"
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two ClickHouse servers, each one shard of the cluster `name`, with distributed DDL through
/// one ZooKeeper.
#[derive(Debug)]
pub struct Cluster {
    pub name: &'static str,
    pub shards: Vec<ClickHouse>,
    _zookeeper: ZooKeeper,
}

impl Cluster {
    pub fn start_two_shards() -> Self {
        let name = "ember_two_shards";
        let zookeeper = ZooKeeper::start();
        let ports: Vec<(u16, u16)> = (0..2).map(|_| (free_port(), free_port())).collect();
        let shards: String = ports
            .iter()
            .map(|(_, tcp)| format!("<shard><replica><host>127.0.0.1</host><port>{tcp}</port></replica></shard>"))
            .collect();
        let extra = format!(
            "<remote_servers><{name}>{shards}</{name}></remote_servers>\n  \
             <zookeeper><node><host>127.0.0.1</host><port>{}</port></node></zookeeper>\n  \
             <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>",
            zookeeper.port
        );
        let shards = ports.iter().map(|&(http, tcp)| ClickHouse::start_with(http, tcp, &extra)).collect();
        Cluster { name, shards, _zookeeper: zookeeper }
    }

    /// `--store` on shard `i`'s server for database `name`, created on every server.
    pub fn store(&self, i: usize, name: &str) -> String {
        for shard in &self.shards {
            shard.store(name);
        }
        self.shards[i].store(name)
    }
}
