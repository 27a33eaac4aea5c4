//! Issue 10: nothing a target or another local user does to the files ember reads may make a
//! root agent leak a file, hang, crash, or overwrite anything. The hostile user is uid 65534,
//! for real: planted files are made through `setpriv`, and the hostile targets drop to it
//! themselves. Targets get a private /tmp (`unshare --mount`), so nothing leaks into the host's.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

const NOBODY: &str = "65534";

/// `hostile_target.py` in its own mount namespace with a private /tmp, as uid 65534.
fn hostile_target(mode: &str, seconds: &str) -> (Target, u32) {
    hostile_target_with(mode, seconds, "")
}

/// The same, with `extra` arguments: "fork" makes the process to sample a child of the one
/// whose map is hostile.
fn hostile_target_with(mode: &str, seconds: &str, extra: &str) -> (Target, u32) {
    let script = format!(
        "code=$(cat {}) && mount -t tmpfs tmpfs /tmp && printf '%s\\n' \"$code\" > /tmp/hostile.py \
         && exec {} /tmp/hostile.py {mode} {seconds} {extra}",
        fixture("hostile_target.py").display(),
        python312().display()
    );
    let target = Target::spawn(Command::new("unshare").args(["--mount", "--", "sh", "-c", &script]));
    let ready = target.wait_for("ready", Duration::from_secs(20));
    let pid = ready.trim_start_matches("ready ").parse().expect("ready <pid>");
    (target, pid)
}

/// Peak resident memory of a running process so far, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

fn assert_nothing_leaked(out: &std::process::Output, folded: &str) {
    let err = stderr(out);
    for secret in ["LEAKED_SECRET", "SECRETHASH", "root:$6$"] {
        assert!(!folded.contains(secret), "the secret reached the profile: {folded}");
        assert!(!err.contains(secret), "the secret reached the log: {err}");
    }
}

#[test]
fn a_perf_map_that_links_to_a_root_file_is_not_read() {
    let _serial = serial();
    for (mode, reason) in [("symlink", "symbolic link"), ("hardlink", "hard links"), ("bindmount", "mount point")] {
        let (_target, pid) = hostile_target(mode, "30");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.folded");
        let out = run(ember().args(["record", "--pid", &pid.to_string(), "--duration", "1", "-o"]).arg(&path));
        assert!(out.status.success(), "{}", stderr(&out));
        let folded = std::fs::read_to_string(&path).expect("profile written");
        assert!(!folded.is_empty(), "the target was still sampled");
        assert_nothing_leaked(&out, &folded);
        assert!(stderr(&out).contains(reason), "{mode}: says why the map was refused: {}", stderr(&out));
    }
}

#[test]
fn a_fifo_perf_map_neither_hangs_the_agent_nor_starves_other_targets() {
    let _serial = serial();
    let (_fifo_target, fifo_pid) = hostile_target("fifo", "60");
    let good = serve_target("60", true);
    let good_pid = good.pid().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("out.folded");
    // SIGTERM must be honoured as well as --duration: stop it by signal once it records.
    let mut agent = RunningAgent::start(&[
        "record",
        "--pid",
        &fifo_pid.to_string(),
        "--pid",
        &good_pid,
        "--threads",
        "-o",
        path.to_str().expect("utf-8 path"),
    ]);
    agent.wait_for_stderr("recording", Duration::from_secs(30));
    // Let the good target be sampled for a while, then stop the agent: before the fix its
    // sampler sat in open() on the FIFO and ignored SIGTERM for good.
    std::thread::sleep(Duration::from_secs(1));
    agent.signal(15);
    let pid = agent.pid();
    wait_until(Duration::from_secs(20), "the agent to exit after SIGTERM", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
    });
    let out = agent.finish();
    let err = stderr(&out);
    assert!(err.contains("not a regular file"), "says why the FIFO was refused: {err}");
    let folded = Folded::parse(&std::fs::read_to_string(&path).expect("profile written"));
    assert!(
        folded.count(|s| has_frame(s, "compute")) > 0,
        "the other target's Python frames were still recorded:\n{err}"
    );
}

/// A worker attached on its own reads its parent's map as an ancestor's (issue 12): that map
/// is the parent's user's to make, and is refused as the target's own would be.
#[test]
fn an_ancestor_s_perf_map_is_held_to_the_same_rules() {
    let _serial = serial();
    for (mode, reason) in [("symlink", "symbolic link"), ("hardlink", "hard links"), ("fifo", "not a regular file")] {
        let (_target, child) = hostile_target_with(mode, "30", "fork");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.folded");
        let child_pid = child.to_string();
        let agent = RunningAgent::start(&[
            "record",
            "--pid",
            &child_pid,
            "--duration",
            "1",
            "-o",
            path.to_str().expect("utf-8"),
        ]);
        let pid = agent.pid();
        // A FIFO opened for reading would block the agent for good.
        wait_until(Duration::from_secs(30), "the agent to finish its one second", || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
        });
        let out = agent.finish();
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        let folded = std::fs::read_to_string(&path).expect("profile written");
        assert!(!folded.is_empty(), "{mode}: the child was still sampled");
        assert_nothing_leaked(&out, &folded);
        let err = stderr(&out);
        assert!(
            err.contains(reason) && err.contains("/tmp/perf-"),
            "{mode}: says why the parent's map was refused: {err}"
        );
    }
}

#[test]
fn a_huge_sparse_perf_map_does_not_exhaust_memory() {
    let _serial = serial();
    let (_target, pid) = hostile_target("huge", "60");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("out.folded");
    let agent = RunningAgent::start(&[
        "record",
        "--pid",
        &pid.to_string(),
        "--duration",
        "3",
        "-o",
        path.to_str().expect("utf-8 path"),
    ]);
    let agent_pid = agent.pid();
    let mut peak = 0;
    while let Some(kib) = peak_rss_kib(agent_pid) {
        peak = peak.max(kib);
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = agent.finish();
    assert!(out.status.success(), "{}", stderr(&out));
    // Before the fix the agent allocated the whole file (1 TiB) and aborted.
    assert!(peak < 300 << 10, "agent peak RSS {} MiB", peak >> 10);
}

/// The monitor's ring: no file to plant, read or truncate.
fn monitored_target() -> (Target, u32, String) {
    let python_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
    let target = Target::spawn(
        Command::new(python312()).arg(fixture("asyncio_serve.py")).arg("60").env("PYTHONPATH", python_dir),
    );
    let pid: u32 = target.wait_for("ready", Duration::from_secs(20)).trim_start_matches("ready ").parse().expect("pid");
    let fd = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .flatten()
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("ember-task-ring")))
        .expect("the monitor's ring is a memfd");
    (target, pid, fd.path().display().to_string())
}

#[test]
fn the_task_ring_cannot_be_truncated_or_read_by_other_users() {
    let _serial = serial();
    let (mut target, pid, ring) = monitored_target();
    // Not even root can shrink it: the memfd is sealed, so the target can never SIGBUS.
    let file = std::fs::OpenOptions::new().write(true).open(&ring).expect("root opens the ring");
    let err = file.set_len(0).expect_err("a sealed ring cannot be truncated");
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    // Another user cannot read it: it has no name in any file system (the 0644 file in /tmp it
    // replaced could be read by anyone), only a descriptor behind /proc/PID/fd.
    let link = std::fs::read_link(&ring).expect("the ring's link");
    assert!(link.to_string_lossy().starts_with("/memfd:ember-task-ring"), "{link:?}");
    let in_tmp = std::fs::read_dir("/tmp")
        .expect("/tmp")
        .flatten()
        .any(|e| e.file_name().to_string_lossy() == format!("ember-{pid}.ring"));
    assert!(!in_tmp, "a ring file in /tmp");
    let other = Command::new("setpriv")
        .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "cat", &ring])
        .output()
        .expect("setpriv runs");
    assert!(!other.status.success(), "uid 65534 read the ring of a root process");
    // The target lives on, and its tasks are still read.
    assert!(target.child.try_wait().expect("wait").is_none(), "the target survived");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("run.trace.json");
    let out = run(ember().args(["record", "--pid", &pid.to_string(), "--duration", "1", "-o"]).arg(&path));
    assert!(out.status.success(), "{}", stderr(&out));
    let trace = std::fs::read_to_string(&path).expect("trace written");
    assert!(trace.contains("\"task spin"), "the spin task's track is in the trace");
}

#[test]
fn files_planted_in_tmp_are_never_written() {
    let _serial = serial();
    // A private PID namespace makes the launched command's PID predictable (2), and a private
    // /tmp keeps the plants out of the host's. The agent is copied out first: the checkout may
    // live under /tmp. uid 65534 plants links to a root file and
    // world-writable files under every name the monitor or CPython used to use.
    let plant = "for i in $(seq 1 64); do ln -s /tmp/victim /tmp/ember-$i.ring; : > /tmp/ember-$((i+64)).ring; \
                 chmod 666 /tmp/ember-$((i+64)).ring; done";
    let script = format!(
        "code=$(cat {fixture}) && mount -t tmpfs tmpfs /mnt && cp {ember} /mnt/ember-agent \
         && mount -t tmpfs tmpfs /tmp && chmod 1777 /tmp \
         && echo precious > /tmp/victim && chmod 600 /tmp/victim \
         && setpriv --reuid {NOBODY} --regid {NOBODY} --clear-groups sh -c '{plant}' \
         && printf '%s\\n' \"$code\" > /tmp/app.py \
         && /mnt/ember-agent record -o /tmp/run.trace.json -- {python} /tmp/app.py \
         && echo victim=$(cat /tmp/victim) \
         && echo written=$(find /tmp -maxdepth 1 -name 'ember-*.ring' -type f ! -empty | wc -l) \
         && echo links=$(find /tmp -maxdepth 1 -name 'ember-*.ring' -type l | wc -l) \
         && echo tracks=$(grep -o '\"task ' /tmp/run.trace.json | wc -l)",
        fixture = fixture("asyncio_cpu.py").display(),
        ember = env!("CARGO_BIN_EXE_ember-agent"),
        python = python312().display(),
    );
    let out =
        run(Command::new("unshare").args(["--pid", "--fork", "--mount", "--mount-proc", "--", "sh", "-c", &script]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", stderr(&out));
    let value = |key: &str| stdout.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap_or("").to_string();
    assert_eq!(value("victim"), "precious", "the root file behind the links is untouched: {stdout}");
    assert_eq!(value("written"), "0", "no planted file was adopted as a ring: {stdout}");
    assert_eq!(value("links"), "64", "{stdout}");
    let tracks: u32 = value("tracks").parse().unwrap_or(0);
    assert!(tracks >= 20, "the monitor still recorded its tasks: {stdout}");
}

#[test]
fn a_collector_that_never_answers_cannot_hold_the_agent_past_its_final_flush() {
    // A peer that accepts connections and never says a word: every request hangs until the
    // client's own 30 s timeout, and backoff grows between attempts. Before the fix the agent
    // exited 25 s after its target against a 10 s --final-flush-timeout.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let started = std::time::Instant::now();
    let out = run(ember()
        .args(["stream", "--collector", &format!("http://{addr}"), "--final-flush-timeout", "2s", "--"])
        .arg(python312())
        // Half a CPU second of work: samples, so there is a batch the peer never takes.
        .args(["-c", "import time\nend = time.thread_time() + 0.5\nwhile time.thread_time() < end: pass"]));
    let elapsed = started.elapsed();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("giving up on"), "a batch was left to give up on: {err}");
    // 2 s of final flush; the slack is for start-up on a busy machine, far below the 30 s a
    // request may hang.
    assert!(elapsed < Duration::from_secs(20), "exited {elapsed:?} after start with a 2 s final flush\n{err}");
}
