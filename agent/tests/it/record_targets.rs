//! Targets in other namespaces, and kernel frames.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

/// The host PID of the only child of `pid`.
fn only_child(pid: u32) -> u32 {
    let path = format!("/proc/{pid}/task/{pid}/children");
    let mut child = None;
    wait_until(Duration::from_secs(10), "the namespaced child to start", || {
        child = std::fs::read_to_string(&path).ok().and_then(|s| s.split_whitespace().next()?.parse().ok());
        child.is_some()
    });
    child.unwrap_or_default()
}

/// Runs `fixture` with python3.12 as PID 1 of a new PID namespace with a private /tmp, like a
/// container, once it has printed "ready 1". Returns the wrapper and the target's host PID.
/// Files are read before the private /tmp hides them (the checkout may live under /tmp); with
/// `with_monitor`, every file of the ember_monitor package is copied into the new /tmp, which
/// is put on PYTHONPATH.
fn spawn_in_namespace(fixture_name: &str, with_monitor: bool) -> (Target, u32) {
    let install_monitor = if with_monitor {
        let package = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/ember_monitor");
        let mut files: Vec<_> = std::fs::read_dir(&package)
            .expect("the monitor's package")
            .map(|entry| entry.expect("a file of the monitor's package").path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "py"))
            .collect();
        files.sort();
        // Each file into a shell variable before the new /tmp hides it, then out again.
        let read: Vec<String> =
            files.iter().enumerate().map(|(i, path)| format!("f{i}=$(cat {})", path.display())).collect();
        let write: Vec<String> = files
            .iter()
            .enumerate()
            .map(|(i, path)| {
                let name = path.file_name().expect("a file name").to_string_lossy();
                format!("printf '%s\\n' \"$f{i}\" > /tmp/ember/ember_monitor/{name}")
            })
            .collect();
        format!(
            "{} && mount -t tmpfs tmpfs /tmp && mkdir -p /tmp/ember/ember_monitor && {} && export PYTHONPATH=/tmp/ember",
            read.join(" && "),
            write.join(" && ")
        )
    } else {
        "mount -t tmpfs tmpfs /tmp".to_string()
    };
    let script = format!(
        "code=$(cat {}) && {install_monitor} && exec env PYTHONPERFSUPPORT=1 {} -c \"$code\" 30",
        fixture(fixture_name).display(),
        python312().display()
    );
    let wrapper = Target::spawn(Command::new("unshare").args([
        "--pid",
        "--fork",
        "--mount",
        "--mount-proc",
        "--",
        "sh",
        "-c",
        &script,
    ]));
    let ready = wrapper.wait_for("ready", Duration::from_secs(20));
    assert_eq!(ready, "ready 1", "the target sees itself as PID 1");
    let host_pid = only_child(wrapper.pid());
    (wrapper, host_pid)
}

/// Removes a file planted by a test, even when the test fails.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_target_in_its_own_pid_and_mount_namespace() {
    let _serial = serial();
    // Its perf map is /tmp/perf-1.map inside. The host's /tmp/perf-<host pid>.map belongs to
    // whoever had that PID before (CPython leaves its maps behind), so a decoy planted there
    // must be ignored.
    let (_wrapper, host_pid) = spawn_in_namespace("serve.py", false);
    let host_map = std::path::PathBuf::from(format!("/tmp/perf-{host_pid}.map"));
    let decoy = (!host_map.exists()).then(|| {
        std::fs::write(&host_map, "0 7fffffffffff decoy_from_the_hosts_tmp\n").expect("the decoy map");
        RemoveOnDrop(host_map.clone())
    });

    let out = run(ember().args(["record", "--duration", "2", "--pid", &host_pid.to_string()]));
    drop(decoy);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("trampoline is off"), "the map was found through /proc/PID/root: {err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("decoy"), "the host's /tmp was read");
    let folded = Folded::from_output(&out);
    let named = folded.share(|s| {
        let names: Vec<&str> = s.iter().map(|f| function(f)).collect();
        names.starts_with(&["<module>", "main", "handle_request", "compute"])
    });
    assert!(named >= 90.0, "{named:.1}% of samples with the full Python stack\n{err}");
}

#[test]
fn task_slices_of_a_target_in_its_own_pid_namespace_join_its_samples() {
    let _serial = serial();
    // The target starts the monitor itself; its ring is in its own /tmp and its thread ids are
    // those of its namespace, which the agent must translate to join them with samples.
    let (_wrapper, host_pid) = spawn_in_namespace("asyncio_serve.py", true);
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("ns.trace.json");
    let out = run(ember()
        .args(["record", "--rate", "199", "--duration", "2", "--pid", &host_pid.to_string(), "-o"])
        .arg(&trace));
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let trace: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).expect("trace")).expect("JSON");
    let events = trace["traceEvents"].as_array().expect("traceEvents");
    assert!(events.iter().any(|e| e["cat"] == "task" && e["name"] == "spin"), "spin's slices were read: {err}");
    let samples: Vec<_> = events.iter().filter(|e| e["cat"] == "sample").collect();
    let in_spin = samples.iter().filter(|s| s["args"]["task"] == "spin").count();
    assert!(
        in_spin * 10 >= samples.len() * 8 && !samples.is_empty(),
        "{in_spin} of {} samples attributed to spin: thread ids were translated",
        samples.len()
    );
}

#[test]
fn kernel_frames_with_kernel_flag() {
    let _serial = serial();
    let code = "import time\nend = time.monotonic() + 1.5\nf = open('/dev/urandom', 'rb', buffering=0)\n\
                def read_random():\n    return f.read(1 << 16)\n\
                while time.monotonic() < end:\n    read_random()\n";
    let out = run(ember().args(["record", "--kernel", "--"]).arg(python312()).args(["-c", code]));
    assert!(out.status.success(), "{}", stderr(&out));
    let folded = Folded::from_output(&out);
    let in_kernel = folded.share(|s| {
        has_frame(s, "read_random")
            && s.last().is_some_and(|leaf| leaf.ends_with(" [kernel]"))
            && function(&s[0]) == "<module>"
    });
    assert!(in_kernel >= 50.0, "{in_kernel:.1}% of samples end in kernel frames under read_random");
    // Without --kernel there are no kernel frames.
    let out = run(ember().args(["record", "--"]).arg(python312()).args(["-c", code]));
    assert_eq!(Folded::from_output(&out).count(|s| s.iter().any(|f| f.ends_with("[kernel]"))), 0);
}
