//! Helpers for the collector's end-to-end tests: a real collector on loopback, the real agent
//! binary, a minimal HTTP client, and a raw gRPC client for malformed input.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use ember_testkit::*;

pub fn collector_cmd() -> Command {
    binary(env!("CARGO_BIN_EXE_ember-collector"))
}

/// The agent binary, built next to the collector by `cargo test --workspace`.
pub fn agent_path() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_ember-collector")).with_file_name("ember-agent");
    assert!(path.exists(), "{} is missing: run the tests with `cargo test --workspace`", path.display());
    path
}

pub fn agent_cmd() -> Command {
    binary(&agent_path().display().to_string())
}

/// A collector running on loopback.
pub struct Collector {
    pub process: Running,
    pub grpc: String,
    pub http: String,
    pub data_dir: PathBuf,
    extra: Vec<String>,
}

impl Collector {
    /// Starts on fresh ports and waits (by reading its log) until it listens.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let grpc = format!("127.0.0.1:{}", free_port());
        let http = format!("127.0.0.1:{}", free_port());
        Self::start_on(data_dir, &grpc, &http, extra)
    }

    /// Under `EMBER_TEST_STORE` (CI's second pass), a collector not given `--store` keeps its
    /// data in a ClickHouse database of its own, named after its data directory.
    pub fn start_on(data_dir: &Path, grpc: &str, http: &str, extra: &[&str]) -> Self {
        let store = match extra.contains(&"--store") {
            true => Vec::new(),
            false => ember_testkit::clickhouse::test_store_args(&data_dir.display().to_string()),
        };
        let extra: Vec<&str> = extra.iter().copied().chain(store.iter().map(String::as_str)).collect();
        let extra = &extra[..];
        let mut cmd = collector_cmd();
        cmd.arg("--data-dir").arg(data_dir).args(["--grpc-listen", grpc, "--http-listen", http]).args(extra);
        let mut process = Running::start(&mut cmd);
        // A collector on a ClickHouse cluster first creates its tables on every shard.
        process.wait_for_stderr("listening grpc=", Duration::from_secs(60));
        Collector {
            process,
            grpc: grpc.to_string(),
            http: http.to_string(),
            data_dir: data_dir.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Starts again on the same ports and data directory.
    pub fn restart(self) -> Self {
        let (dir, grpc, http, extra) =
            (self.data_dir.clone(), self.grpc.clone(), self.http.clone(), self.extra.clone());
        drop(self);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        // The old process is gone; the port may take a moment to be free again.
        let mut attempt = 0;
        loop {
            let mut cmd = collector_cmd();
            cmd.arg("--data-dir").arg(&dir).args(["--grpc-listen", &grpc, "--http-listen", &http]).args(&extra);
            let mut process = Running::start(&mut cmd);
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                process.wait_for_stderr("listening grpc=", Duration::from_secs(5));
            }));
            if ok.is_ok() {
                return Collector {
                    process,
                    grpc,
                    http,
                    data_dir: dir,
                    extra: extra.iter().map(|s| s.to_string()).collect(),
                };
            }
            attempt += 1;
            assert!(attempt < 10, "the collector did not restart");
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn get(&self, path_and_query: &str) -> (u16, String) {
        http_get(&self.http, path_and_query)
    }

    /// Total samples of a profile query.
    pub fn total(&self, query: &str, from: &str) -> u64 {
        let (status, body) = self.get(&format!("/api/v1/profile?format=collapsed&from={from}&query={}", encode(query)));
        assert_eq!(status, 200, "{body}");
        Folded::parse(&body).total()
    }

    /// The value of a metric line (first match), 0 if absent.
    pub fn metric(&self, name: &str) -> u64 {
        let (_, body) = self.get("/metrics");
        body.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    }
}

/// Percent-encodes a query parameter value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// How long a test waits for an answer before calling the collector hung. Only a guard: the
/// largest query in these tests (320,000 distinct frames, debug build) takes 11 s alone, and CI
/// runs it next to a browser and other collectors.
pub const ANSWER_GUARD: Duration = Duration::from_secs(180);

/// A minimal HTTP/1.1 GET: status and body (content-length or chunked).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("collector HTTP reachable");
    stream.set_read_timeout(Some(ANSWER_GUARD)).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("request sent");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("response read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let body = if chunked { dechunk(body) } else { body.to_string() };
    (status, body)
}

pub fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Pulls `sent N samples` out of the agent's final line.
pub fn sent_samples(agent_stderr: &str) -> u64 {
    agent_stderr
        .lines()
        .find_map(|l| l.split("sent ").nth(1)?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no `sent N samples` line in:\n{agent_stderr}"))
}

/// `ember-agent stream` into `collector`, flushing every second, with `extra` flags and
/// optionally a command to launch.
pub fn stream_cmd(collector: &Collector, extra: &[&str], command: &[&str]) -> Command {
    let mut cmd = agent_cmd();
    cmd.args(["stream", "--collector", &collector.url(), "--flush-interval", "1s"]).args(extra);
    if !command.is_empty() {
        cmd.arg("--").args(command);
    }
    cmd
}

/// [`stream_cmd`], started.
pub fn stream(collector: &Collector, extra: &[&str], command: &[&str]) -> Running {
    Running::start(&mut stream_cmd(collector, extra, command))
}

pub fn parse_json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("invalid JSON ({e}): {}", &text[..text.len().min(300)]))
}

/// A flame tree as `/api/v1/profile` and `/api/v1/diff` serve it (docs/API.md): flat arrays,
/// nodes depth first. Checked for shape when made.
pub struct FlatTree {
    names: Vec<String>,
    kinds: Vec<String>,
    frame: Vec<usize>,
    parent: Vec<i64>,
    counts: std::collections::HashMap<String, Vec<u64>>,
}

impl FlatTree {
    /// The `tree` of a response.
    pub fn of(response: &serde_json::Value) -> FlatTree {
        let tree = &response["tree"];
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array().expect("array").iter().map(|s| s.as_str().expect("string").to_string()).collect()
        };
        let numbers = |key: &str| -> Option<Vec<u64>> {
            Some(tree[key].as_array()?.iter().map(|n| n.as_u64().expect("count")).collect())
        };
        let frame: Vec<usize> = numbers("frame").expect("frame").into_iter().map(|f| f as usize).collect();
        let parent: Vec<i64> =
            tree["parent"].as_array().expect("parent").iter().map(|p| p.as_i64().expect("int")).collect();
        let names = strings(&tree["frames"]["name"]);
        let counts: std::collections::HashMap<String, Vec<u64>> = ["self", "total", "base_self", "base_total"]
            .into_iter()
            .filter_map(|key| Some((key.to_string(), numbers(key)?)))
            .collect();
        assert_eq!(parent.len(), frame.len());
        assert!(counts.values().all(|c| c.len() == frame.len()), "one count per node");
        assert_eq!(parent.first(), Some(&-1), "node 0 is the root");
        for (i, &p) in parent.iter().enumerate().skip(1) {
            assert!(p >= 0 && (p as usize) < i, "node {i}: parent {p} is not an earlier node");
        }
        assert!(frame.iter().all(|&f| f < names.len()), "frames in the table");
        FlatTree { kinds: strings(&tree["frames"]["kind"]), names, frame, parent, counts }
    }

    pub fn len(&self) -> usize {
        self.frame.len()
    }

    pub fn name(&self, node: usize) -> &str {
        &self.names[self.frame[node]]
    }

    pub fn kind(&self, node: usize) -> &str {
        &self.kinds[self.frame[node]]
    }

    /// `self`, `total`, `base_self` or `base_total` of a node.
    pub fn count(&self, key: &str, node: usize) -> u64 {
        self.counts[key][node]
    }

    pub fn children(&self, node: usize) -> Vec<usize> {
        (node + 1..self.len()).filter(|&i| self.parent[i] == node as i64).collect()
    }

    /// The root's parent is `None`.
    pub fn parent(&self, node: usize) -> Option<usize> {
        usize::try_from(self.parent[node]).ok()
    }
}

pub fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// A valid batch: one process (`pid`, `service`) with one sample of each stack, given as frame
/// names root first, taken just now.
pub fn stacks_batch(sequence: u64, pid: u32, service: &str, stacks: &[Vec<String>]) -> ember_proto::v1::Batch {
    use ember_proto::v1;
    let mut strings = vec![String::new()];
    let mut frames = Vec::new();
    let mut ids = std::collections::HashMap::new();
    let mut table = Vec::new();
    for stack in stacks {
        let mut frame_ids = Vec::with_capacity(stack.len());
        for name in stack {
            let id = *ids.entry(name.clone()).or_insert_with(|| {
                strings.push(format!("{name} (deep.py)"));
                strings.push(name.clone());
                frames.push(v1::Frame {
                    text: strings.len() as u32 - 2,
                    function: strings.len() as u32 - 1,
                    file: 0,
                    kind: v1::FrameKind::Python as i32,
                    interpreter_plumbing: false,
                    line: 0,
                });
                frames.len() as u32 - 1
            });
            frame_ids.push(id);
        }
        table.push(v1::Stack { frames: frame_ids });
    }
    let n = stacks.len();
    v1::Batch {
        agent_id: "test-agent".into(),
        sequence,
        strings,
        frames,
        stacks: table,
        processes: vec![v1::Process { id: 1, pid, service: service.into(), ..Default::default() }],
        samples: vec![v1::SampleBlock {
            process: 1,
            base_time_nanos: now_ns() - 1_000_000_000,
            stack: (0..n as u32).collect(),
            tid: vec![pid; n],
            time_delta: vec![1_000_000; n],
            weight: vec![],
        }],
        monotonic_to_unix_nanos: 0,
        rate_hz: 99,
        tasks: Vec::new(),
    }
}

/// Pushes one batch over gRPC, with a bearer token if given.
pub fn push_batch(
    grpc: &str,
    token: Option<&str>,
    batch: ember_proto::v1::Batch,
) -> Result<ember_proto::v1::Ack, tonic::Status> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut client = ember_proto::v1::ingest_client::IngestClient::connect(format!("http://{grpc}"))
            .await
            .map_err(|e| tonic::Status::unavailable(format!("cannot connect: {e}")))?
            .max_encoding_message_size(usize::MAX);
        let mut request = tonic::Request::new(batch);
        if let Some(t) = token {
            request.metadata_mut().insert("authorization", format!("Bearer {t}").parse().expect("ascii"));
        }
        client.push(request).await.map(tonic::Response::into_inner)
    })
}

/// An HTTP GET with extra request headers; returns status, response head and body.
pub fn http_get_with(addr: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).expect("collector HTTP reachable");
    stream.set_read_timeout(Some(ANSWER_GUARD)).expect("timeout");
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n").expect("request sent");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let body = if chunked { dechunk(body) } else { body.to_string() };
    (status, head.to_string(), body)
}
