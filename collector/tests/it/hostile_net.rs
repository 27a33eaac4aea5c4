//! Peers that connect and then do nothing, or send half a request: both servers bound their
//! connections and close idle ones, so file descriptors and memory stay bounded and the
//! agents' (token-protected) ingest keeps working through a flood.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::*;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// True once the server has closed the connection (EOF or reset), without waiting.
fn closed_by_server(stream: &TcpStream) -> bool {
    let _ = stream.set_nonblocking(true);
    let mut stream = stream;
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

fn connect_many(addr: &str, n: usize) -> Vec<TcpStream> {
    (0..n).filter_map(|_| TcpStream::connect(addr).ok()).collect()
}

#[test]
fn idle_http_connections_are_bounded_and_closed_while_ingest_keeps_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(
        dir.path(),
        &[
            "--token",
            "s3cret",
            "--http-max-connections",
            "20",
            "--http-header-timeout",
            "2s",
            "--http-idle-timeout",
            "3s",
        ],
    );
    let pid = collector.process.pid();
    let before = open_fds(pid);
    let idle = connect_many(&collector.http, 300);
    // Half a request: the headers never finish.
    let mut slow = TcpStream::connect(&collector.http).expect("connects");
    let _ = write!(slow, "GET /api/v1/targets HTTP/1.1\r\nHost: x\r\n");
    wait_until(Duration::from_secs(30), "connections over the limit to be refused", || {
        collector_metric(&collector.http, "ember_collector_connections_refused_total{server=\"http\"}") > 0
            || idle.iter().filter(|s| closed_by_server(s)).count() >= 250
    });
    assert!(open_fds(pid) <= before + 20 + 8, "fds: {} before, {} now", before, open_fds(pid));
    // The agents' port is not affected, and its token still holds.
    push_batch(&collector.grpc, Some("s3cret"), stacks_batch(1, 7, "flood", &[vec!["main".into()]]))
        .expect("ingest works during an HTTP flood");
    // Idle connections and the half request are closed by the header deadline.
    wait_until(Duration::from_secs(60), "every idle connection to be closed", || {
        idle.iter().all(closed_by_server) && closed_by_server(&slow)
    });
    wait_until(Duration::from_secs(30), "the API to answer again", || {
        std::panic::catch_unwind(|| collector.get("/healthz").0).is_ok_and(|s| s == 200)
    });
    assert_eq!(collector.total("{}", "now-10m"), 1);
    assert!(collector.metric("ember_collector_connections_refused_total{server=\"http\"}") > 0);

    // A keep-alive connection left idle after its answer is closed too.
    let mut kept = TcpStream::connect(&collector.http).expect("connects");
    write!(kept, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").expect("sent");
    let mut buf = [0u8; 256];
    let n = kept.read(&mut buf).expect("answered");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    wait_until(Duration::from_secs(30), "the idle keep-alive connection to be closed", || closed_by_server(&kept));
}

/// The metric from a fresh connection, 0 while the API cannot answer.
fn collector_metric(http: &str, name: &str) -> u64 {
    let Ok(mut stream) = TcpStream::connect(http) else { return 0 };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(stream, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").is_err() {
        return 0;
    }
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum::<f64>()
        as u64
}

#[test]
fn idle_grpc_connections_are_bounded_and_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(dir.path(), &["--grpc-max-connections", "10", "--grpc-idle-timeout", "2s"]);
    let pid = collector.process.pid();
    let before = open_fds(pid);
    let idle = connect_many(&collector.grpc, 100);
    wait_until(Duration::from_secs(30), "connections over the limit to be closed", || {
        idle.iter().filter(|s| closed_by_server(s)).count() >= 90
    });
    assert!(open_fds(pid) <= before + 10 + 8, "fds: {} before, {} now", before, open_fds(pid));
    wait_until(Duration::from_secs(60), "idle gRPC connections to be closed", || idle.iter().all(closed_by_server));
    // With the slots free again, an agent gets through.
    let mut seq = 0;
    wait_until(Duration::from_secs(30), "a batch to be stored", || {
        seq += 1;
        push_batch(&collector.grpc, None, stacks_batch(seq, 7, "s", &[vec!["main".into()]])).is_ok()
    });
    assert!(collector.metric("ember_collector_connections_refused_total{server=\"grpc\"}") >= 90);
}

/// A raw HTTP/2 gRPC call to Push that announces `announced` bytes and sends only `sent`.
struct Unfinished {
    response: h2::client::ResponseFuture,
    _stream: h2::SendStream<bytes::Bytes>,
}

async fn unfinished_push(addr: &str, announced: u32, sent: usize) -> Unfinished {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connects");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.expect("ready");
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/ember.v1.Ingest/Push"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (response, mut stream) = client.send_request(request, false).expect("sent");
    let mut data = vec![0u8];
    data.extend_from_slice(&announced.to_be_bytes());
    data.resize(5 + sent, b'x');
    stream.send_data(bytes::Bytes::from(data), false).expect("data queued");
    Unfinished { response, _stream: stream }
}

/// The grpc-status of a finished call, from its headers or trailers.
async fn grpc_status(call: Unfinished) -> Option<String> {
    let response = call.response.await.ok()?;
    if let Some(s) = response.headers().get("grpc-status") {
        return s.to_str().ok().map(str::to_string);
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let _ = chunk.ok()?;
    }
    let trailers = body.trailers().await.ok()??;
    trailers.get("grpc-status")?.to_str().ok().map(str::to_string)
}

#[test]
fn unfinished_grpc_calls_hold_a_bounded_budget_and_expire() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(
        dir.path(),
        &["--max-batch-bytes", "1048576", "--grpc-max-inflight-bytes", "4MB", "--grpc-request-timeout", "4s"],
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let inflight = || collector.metric("ember_collector_grpc_inflight_bytes");
    // One call takes 3 MB of the 4 MB budget and never finishes.
    let first = rt.block_on(unfinished_push(&collector.grpc, 4 << 20, 3 << 20));
    wait_until(Duration::from_secs(30), "the first call to hold 3 MB", || inflight() >= 3 << 20);
    // A second one that needs 2 MB more is refused at once, retryably.
    let second = rt.block_on(unfinished_push(&collector.grpc, 4 << 20, 2 << 20));
    assert_eq!(rt.block_on(grpc_status(second)).as_deref(), Some("14"), "UNAVAILABLE");
    // Small batches still fit beside it.
    push_batch(&collector.grpc, None, stacks_batch(1, 7, "s", &[vec!["main".into()]])).expect("a small batch fits");
    // The deadline ends the unfinished call and gives its bytes back.
    let status = rt.block_on(grpc_status(first));
    assert!(status.as_deref().is_some_and(|s| s != "0"), "the unfinished call failed: {status:?}");
    wait_until(Duration::from_secs(30), "the budget to be free again", || inflight() == 0);
    assert!(collector.metric("ember_collector_batches_total{result=\"busy\"}") >= 1);
    assert_eq!(collector.total("{}", "now-10m"), 1);
}

#[test]
fn the_http_token_guards_the_api_and_the_web_view_but_not_health_or_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(dir.path(), &["--http-token", "s3cret"]);
    push_batch(&collector.grpc, None, stacks_batch(1, 7, "s", &[vec!["main".into()]])).expect("stored");
    let get = |path: &str, headers: &[(&str, &str)]| http_get_with(&collector.http, path, headers);

    let (status, head, body) = get("/api/v1/profile?format=collapsed&from=now-1h", &[]);
    assert_eq!(status, 401, "{body}");
    assert!(head.to_ascii_lowercase().contains("www-authenticate: bearer"), "{head}");
    assert!(body.contains("Authorization: Bearer"), "{body}");
    assert_eq!(get("/api/v1/targets", &[("Authorization", "Bearer wrong")]).0, 401);
    assert_eq!(get("/api/v1/targets", &[("Cookie", "ember_token=wrong")]).0, 401);
    assert_eq!(get("/", &[]).0, 401, "the page needs the token too");
    let (status, _, body) = get("/api/v1/profile?format=collapsed&from=now-1h", &[("Authorization", "Bearer s3cret")]);
    assert_eq!((status, Folded::parse(&body).total()), (200, 1));

    // Open without it: probes, metrics and the page's static files.
    for path in ["/healthz", "/readyz", "/metrics", "/assets/app.js", "/favicon.svg"] {
        assert_eq!(get(path, &[]).0, 200, "{path}");
    }

    // A browser: one visit with ?token= sets the cookie and drops the token from the address.
    assert_eq!(get("/?token=wrong", &[]).0, 401);
    let (status, head, _) = get("/?token=s3cret", &[]);
    assert_eq!(status, 303, "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("set-cookie: ember_token=s3cret;"), "{head}");
    assert!(lower.contains("httponly") && lower.contains("samesite=strict"), "{head}");
    assert!(lower.contains("location: /\r\n") || lower.ends_with("location: /"), "{head}");
    assert_eq!(get("/", &[("Cookie", "ember_token=s3cret")]).0, 200);
    assert_eq!(get("/api/v1/targets?from=now-1h", &[("Cookie", "other=1; ember_token=s3cret")]).0, 200);
}
