//! A real agent streaming a real python3.12 target into a real collector on loopback.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn the_flame_graph_over_http_matches_the_workload() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(dir.path(), &[]);
    let py = python312().display().to_string();
    let fixture = fixture("nested.py").display().to_string();
    let mut cmd =
        stream_cmd(&collector, &["--rate", "199", "--service", "nested", "--label", "team=perf"], &[&py, &fixture]);
    cmd.env("EMBER_FIXTURE_SECONDS", "4");
    let out = Running::start(&mut cmd).finish();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let sent = sent_samples(&err);

    let (status, body) = collector
        .get(&format!("/api/v1/profile?format=collapsed&query={}", encode(r#"{service="nested",team="perf"}"#)));
    assert_eq!(status, 200, "{body}");
    let folded = Folded::parse(&body);
    assert_eq!(folded.total(), sent, "every sample the agent sent is there exactly once");
    let chain = |leaf: &'static str| {
        move |s: &[String]| {
            let names: Vec<&str> = s.iter().map(|f| function(f)).collect();
            names.windows(4).any(|w| w == ["<module>", "outer", "middle", leaf])
        }
    };
    let (a, b) = (folded.share(chain("leaf_a")), folded.share(chain("leaf_b")));
    assert!((a - 60.0).abs() <= 5.0 && (b - 30.0).abs() <= 5.0, "leaf_a {a:.1}%, leaf_b {b:.1}%");

    let (_, targets) = collector.get("/api/v1/targets");
    assert!(targets.contains(r#""service":"nested""#) && targets.contains(r#""team":"perf""#), "{targets}");
    let (_, series) = collector.get("/api/v1/series?step=10s");
    let points = parse_json(&series);
    let summed: u64 = points["points"].as_array().expect("points").iter().map(|p| p[1].as_u64().unwrap_or(0)).sum();
    assert_eq!(summed, sent);
    let (status, json) = collector.get("/api/v1/profile?format=json");
    assert_eq!(status, 200);
    let tree = FlatTree::of(&parse_json(&json));
    assert_eq!(tree.count("total", 0), sent);
    // Roots sort by name; a stray native root (a vDSO sample, issue 12) may sort first.
    let module = tree.children(0).into_iter().find(|&c| tree.name(c).starts_with("<module>")).expect("<module>");
    assert_eq!(tree.kind(module), "python");
}

#[test]
fn a_collector_killed_mid_stream_loses_nothing_and_counts_nothing_twice() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut collector = Collector::start(dir.path(), &[]);
    let py = python312().display().to_string();
    let serve = fixture("serve.py").display().to_string();
    let started = Instant::now();
    // 8 s of the target's CPU time: the same work however busy the machine is.
    let agent = Running::start(
        stream_cmd(&collector, &["--service", "crash"], &[&py, &serve, "8"]).env("EMBER_FIXTURE_CPU", "1"),
    );
    wait_until(Duration::from_secs(20), "two stored batches", || {
        collector.metric("ember_collector_batches_total{result=\"stored\"}") >= 2
    });
    collector.process.signal(9);
    let crashed = collector;
    // While the collector is down the agent keeps sampling and retrying.
    wait_until(Duration::from_secs(10), "the outage to last a few flushes", || {
        started.elapsed() >= Duration::from_secs(5)
    });
    collector = crashed.restart();
    let out = agent.finish();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("retrying in"), "the agent noticed the outage: {err}");
    let sent = sent_samples(&err);
    let stored = collector.total(r#"{service="crash"}"#, "now-1h");
    assert_eq!(stored, sent, "every acknowledged and resent batch is stored once");
    // cpu-clock samples per CPU second: compare with the CPU time the target reports.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let cpu: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("cpu ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("the target reports its CPU time: {stdout}"));
    let expected = 99.0 * cpu;
    assert!((stored as f64 - expected).abs() <= 0.05 * expected, "{stored} samples for {cpu:.2} CPU seconds at 99 Hz");
}

#[test]
fn data_arrives_when_the_collector_starts_after_the_agent() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    // Learn two free ports, then start the agent while nothing listens there.
    let probe = Collector::start(dir.path(), &[]);
    let (grpc, http) = (probe.grpc.clone(), probe.http.clone());
    drop(probe);
    let py = python312().display().to_string();
    let serve = fixture("serve.py").display().to_string();
    let mut cmd = agent_cmd();
    cmd.args(["stream", "--collector", &format!("http://{grpc}"), "--flush-interval", "1s", "--service", "late"])
        .args(["--", &py, &serve, "5"])
        .env("EMBER_FIXTURE_CPU", "1");
    let mut agent = Running::start(&mut cmd);
    agent.wait_for_stderr("retrying in", Duration::from_secs(20));
    let collector = Collector::start_on(dir.path(), &grpc, &http, &[]);
    let out = agent.finish();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let sent = sent_samples(&err);
    assert!(sent > 300, "{err}");
    assert_eq!(collector.total(r#"{service="late"}"#, "now-1h"), sent);
}

#[test]
fn all_python_finds_processes_before_and_after_it_starts_and_exits_cleanly_on_sigterm() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(dir.path(), &[]);
    let before = serve_target("30", true);
    let mut agent = stream(&collector, &["--all-python", "--metrics-listen", "127.0.0.1:0"], &[]);
    let metrics_line = agent.wait_for_stderr("metrics at http://", Duration::from_secs(20));
    agent.wait_for_stderr(&format!("attached to {}", ""), Duration::from_secs(20));
    let after = serve_target("30", true);
    let pids = [before.pid().to_string(), after.pid().to_string()];
    wait_until(Duration::from_secs(30), "both targets in /api/v1/targets", || {
        let (_, body) = collector.get("/api/v1/targets");
        pids.iter().all(|p| body.contains(&format!(r#""pid":"{p}""#)))
    });
    // The agent's own metrics endpoint works.
    let addr = metrics_line.split("http://").nth(1).and_then(|s| s.split('/').next()).expect("metrics address");
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("ember_agent_samples_total") && body.contains("ember_agent_targets"), "{body}");
    agent.signal(15);
    let out = agent.finish();
    let err = stderr(&out);
    assert!(out.status.success(), "clean exit after SIGTERM: {err}");
    assert!(sent_samples(&err) > 0);
    assert!(err.contains("0 batches unacknowledged"), "final flush delivered everything: {err}");
}

#[test]
fn tls_with_client_certificates() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path());
    let data = dir.path().join("data");
    let collector = Collector::start(
        &data,
        &["--tls-cert", &pki.server_cert, "--tls-key", &pki.server_key, "--tls-client-ca", &pki.ca_cert],
    );
    let url = format!("https://localhost:{}", collector.grpc.rsplit(':').next().expect("port"));
    let py = python312().display().to_string();
    let code = "import time\nend=time.thread_time()+2\nwhile time.thread_time()<end: pass";
    let run_agent = |identity: bool| {
        let mut cmd = agent_cmd();
        cmd.args([
            "stream",
            "--collector",
            &url,
            "--flush-interval",
            "1s",
            "--final-flush-timeout",
            "3s",
            "--tls-ca",
            &pki.ca_cert,
        ]);
        if identity {
            cmd.args(["--tls-cert", &pki.client_cert, "--tls-key", &pki.client_key]);
        }
        cmd.args(["--service", if identity { "mtls" } else { "anonymous" }, "--", &py, "-c", code]);
        Running::start(&mut cmd).finish()
    };
    let out = run_agent(true);
    assert!(out.status.success(), "{}", stderr(&out));
    let sent = sent_samples(&stderr(&out));
    assert!(sent > 100);
    assert_eq!(collector.total(r#"{service="mtls"}"#, "now-1h"), sent);
    // Without a client certificate the handshake fails and nothing is stored.
    let out = run_agent(false);
    assert!(stderr(&out).contains("retrying in"), "{}", stderr(&out));
    assert_eq!(collector.total(r#"{service="anonymous"}"#, "now-1h"), 0);
}

/// A CA, a server certificate for localhost, and a client certificate, as PEM files.
struct Pki {
    ca_cert: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

impl Pki {
    fn new(dir: &std::path::Path) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write pem");
            path.display().to_string()
        };
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().expect("key");
            let cert = CertificateParams::new(names).expect("params").signed_by(&key, &issuer).expect("signed");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(vec!["localhost".into()]);
        let (client_cert, client_key) = leaf(vec!["agent".into()]);
        Pki {
            ca_cert: write("ca.pem", ca.pem()),
            server_cert: write("server.pem", server_cert),
            server_key: write("server.key", server_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client.key", client_key),
        }
    }
}

#[test]
fn a_wrong_token_is_rejected_and_the_right_one_accepted() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(dir.path(), &["--token", "s3cret"]);
    let py = python312().display().to_string();
    let code = "import time\nend=time.thread_time()+1.5\nwhile time.thread_time()<end: pass";
    let run_agent = |token: &str, service: &str| {
        stream(&collector, &["--final-flush-timeout", "2s", "--token", token, "--service", service], &[&py, "-c", code])
            .finish()
    };
    let out = run_agent("wrong", "intruder");
    let err = stderr(&out);
    assert!(err.contains("Unauthenticated") || err.contains("wrong token"), "{err}");
    assert_eq!(collector.total(r#"{service="intruder"}"#, "now-1h"), 0);
    assert!(collector.metric("ember_collector_batches_total{result=\"unauthenticated\"}") >= 1);
    let out = run_agent("s3cret", "friend");
    assert!(out.status.success());
    assert_eq!(collector.total(r#"{service="friend"}"#, "now-1h"), sent_samples(&stderr(&out)));
    let _ = Command::new("true").status();
}
