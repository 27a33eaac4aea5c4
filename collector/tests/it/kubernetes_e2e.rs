//! `stream --all-python --kubernetes` (issue 15's node agent): Python processes placed in real
//! cgroups, made in the layouts the kubelet makes (cgroupfs and systemd drivers, cgroup v1 and
//! v2), are labelled in the collector with the pod, namespace and container names the pods
//! endpoint gives for their cgroup's pod UID and container id, and with the node's name.
//!
//! The API server is a **stand-in**: a minimal HTTPS server in this test that speaks the one
//! endpoint the agent uses (`GET /api/v1/pods?fieldSelector=spec.nodeName=NODE`, bearer token,
//! its CA given as the service account's), answering a fixed pod list. It checks what a real
//! API server would: the token, the path, the node selector.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;

const TOKEN: &str = "stand-in-token";
const NODE: &str = "node-7";

/// A cgroup made for the test, removed (leaf first) when dropped.
struct MadeCgroup {
    dirs: Vec<PathBuf>,
    /// A cgroup2 mount the test made, unmounted last.
    mount: Option<tempfile::TempDir>,
}

impl MadeCgroup {
    /// Makes `path` (relative) under `root`, each level that does not exist yet.
    fn make(root: &Path, path: &str, mount: Option<tempfile::TempDir>) -> Self {
        let mut dirs = Vec::new();
        let mut at = root.to_path_buf();
        for part in path.split('/') {
            at.push(part);
            if !at.exists() {
                std::fs::create_dir(&at).unwrap_or_else(|e| panic!("mkdir {}: {e}", at.display()));
                dirs.push(at.clone());
            }
        }
        assert!(!dirs.is_empty() || at.exists());
        MadeCgroup { dirs, mount }
    }

    fn leaf(&self) -> &Path {
        self.dirs.last().expect("made at least the leaf")
    }

    fn take(&self, pid: u32) {
        let procs = self.leaf().join("cgroup.procs");
        std::fs::write(&procs, pid.to_string()).unwrap_or_else(|e| panic!("{}: {e}", procs.display()));
    }
}

impl Drop for MadeCgroup {
    fn drop(&mut self) {
        for dir in self.dirs.iter().rev() {
            // Its processes were killed; the kernel may take a moment to let the cgroup go.
            for _ in 0..200 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if let Some(mount) = &self.mount {
            let _ = Command::new("umount").arg(mount.path()).status();
        }
    }
}

/// Where cgroup v1 and v2 paths can be made here: a unified /sys/fs/cgroup serves both
/// layouts as v2; on a hybrid host, v1's `pids` hierarchy and a cgroup2 mounted for the test
/// (returned too, to be unmounted last).
fn hierarchies() -> (PathBuf, PathBuf, Option<tempfile::TempDir>) {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        return (PathBuf::from("/sys/fs/cgroup"), PathBuf::from("/sys/fs/cgroup"), None);
    }
    let v1 = PathBuf::from("/sys/fs/cgroup/pids");
    assert!(v1.join("cgroup.procs").exists(), "no cgroup v1 pids hierarchy at {}", v1.display());
    let dir = tempfile::tempdir().expect("temp dir");
    let mounted = Command::new("mount").args(["-t", "cgroup2", "none"]).arg(dir.path()).status();
    assert!(mounted.is_ok_and(|s| s.success()), "cannot mount cgroup2 (the test needs root)");
    (v1, dir.path().to_path_buf(), Some(dir))
}

/// A pod UID of this run (the time makes it new, so a cgroup left by an earlier run is no match).
fn uid(n: u8) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{n:08x}-1111-4222-8333-{:012x}", now.as_nanos() as u64 & 0xffff_ffff_ffff)
}

fn container(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

/// The stand-in API server: answers the pods endpoint with `body` over TLS; counts requests.
struct StandIn {
    port: u16,
    requests: Arc<AtomicUsize>,
    ca_dir: tempfile::TempDir,
}

fn start_stand_in(body: String) -> StandIn {
    let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("a certificate");
    let ca_dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(ca_dir.path().join("ca.crt"), key.cert.pem()).expect("ca.crt");
    std::fs::write(ca_dir.path().join("token"), format!("{TOKEN}\n")).expect("token");
    let cert = rustls::pki_types::CertificateDer::from(key.cert.der().to_vec());
    let private = rustls::pki_types::PrivateKeyDer::try_from(key.signing_key.serialize_der()).expect("a key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], private)
        .expect("server config");
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = listener.local_addr().expect("address").port();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let Ok(connection) = rustls::ServerConnection::new(config.clone()) else { continue };
            let mut tls = rustls::StreamOwned::new(connection, stream);
            let mut head = Vec::new();
            {
                let mut reader = BufReader::new(&mut tls);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    head.push(line.trim_end().to_string());
                    line.clear();
                }
            }
            counted.fetch_add(1, Ordering::SeqCst);
            let wanted = format!("GET /api/v1/pods?fieldSelector=spec.nodeName%3D{NODE} HTTP/1.1");
            let authorized = head.iter().any(|h| h.eq_ignore_ascii_case(&format!("authorization: Bearer {TOKEN}")));
            let (status, reply) = match (head.first() == Some(&wanted), authorized) {
                (true, true) => ("200 OK", body.as_str()),
                (_, false) => ("401 Unauthorized", "{}"),
                _ => ("404 Not Found", "{}"),
            };
            let _ = write!(
                tls,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                reply.len()
            );
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    StandIn { port, requests, ca_dir }
}

/// A Python process that burns CPU until killed.
fn busy_python() -> Target {
    let target = Target::spawn(
        Command::new(python312()).args(["-c", "print('ready', flush=True)\nwhile True:\n    sum(range(1000))"]),
    );
    target.wait_for("ready", Duration::from_secs(30));
    target
}

#[test]
fn a_node_agent_labels_processes_with_their_pods_from_cgroups_and_the_api() {
    let _serial = serial();
    let (v1_root, v2_dir, mount) = hierarchies();
    let (uids, ids): (Vec<String>, Vec<String>) = (1..=3).map(|n| (uid(n), container(n))).unzip();
    let underscored = uids[1].replace('-', "_");
    let cgroups = [
        // cgroupfs driver, burstable pod, cgroup v1.
        MadeCgroup::make(&v1_root, &format!("kubepods/burstable/pod{}/{}", uids[0], ids[0]), None),
        // systemd driver, best-effort pod, cgroup v1.
        MadeCgroup::make(
            &v1_root,
            &format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{underscored}.slice/cri-containerd-{}.scope",
                ids[1]
            ),
            None,
        ),
        // cgroupfs driver, guaranteed pod, cgroup v2.
        MadeCgroup::make(&v2_dir, &format!("kubepods/pod{}/{}", uids[2], ids[2]), mount),
    ];
    let pods: Vec<String> = (0..3)
        .map(|i| {
            format!(
                r#"{{"metadata":{{"name":"web-{i}","namespace":"shop-{i}","uid":"{}"}},
                   "status":{{"containerStatuses":[{{"name":"app-{i}","containerID":"containerd://{}"}}]}}}}"#,
                uids[i], ids[i]
            )
        })
        .collect();
    let stand_in = start_stand_in(format!(r#"{{"kind":"PodList","items":[{}]}}"#, pods.join(",")));
    let targets: Vec<Target> = (0..3).map(|_| busy_python()).collect();
    for (cgroup, target) in cgroups.iter().zip(&targets) {
        cgroup.take(target.pid());
        let placed = std::fs::read_to_string(format!("/proc/{}/cgroup", target.pid())).expect("its cgroup");
        assert!(placed.contains("kubepods"), "not moved: {placed}");
    }

    let data = tempfile::tempdir().expect("temp dir");
    let collector = Collector::start(data.path(), &[]);
    let mut agent = stream_cmd(&collector, &["--all-python", "--kubernetes"], &[]);
    agent
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", stand_in.port.to_string())
        .env("NODE_NAME", NODE)
        .env("EMBER_KUBERNETES_SERVICE_ACCOUNT", stand_in.ca_dir.path());
    let mut agent = Running::start(&mut agent);
    agent.wait_for_stderr("streaming", Duration::from_secs(30));
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (status, body) = collector.get("/api/v1/targets");
        assert_eq!(status, 200, "{body}");
        let listed = parse_json(&body);
        let labelled = (0..3).filter(|&i| {
            listed["targets"].as_array().into_iter().flatten().any(|t| {
                let l = &t["labels"];
                l["pid"] == targets[i].pid().to_string().as_str()
                    && l["pod"] == format!("web-{i}").as_str()
                    && l["namespace"] == format!("shop-{i}").as_str()
                    && l["container_name"] == format!("app-{i}").as_str()
                    && l["container"] == ids[i].as_str()
                    && l["node"] == NODE
            })
        });
        if labelled.count() == 3 {
            break;
        }
        if std::time::Instant::now() > deadline {
            agent.signal(15);
            let out = agent.finish();
            panic!(
                "the three processes were not labelled with their pods within 90 s; targets: {body}\nagent: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(stand_in.requests.load(Ordering::SeqCst) >= 1);
    agent.signal(15);
    let out = agent.finish();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("kubernetes: 3 pods on node {NODE}")), "{err}");
    drop(targets);
    drop(cgroups);
}
