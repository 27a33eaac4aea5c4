//! Helpers shared by ember's integration tests: finding interpreters and fixtures, starting
//! processes and waiting (by polling) for them to be ready, parsing folded output.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub mod clickhouse;
mod ports;

pub use ports::free_port;

/// CPU-bound fixtures share two cores; running them one at a time keeps shares meaningful.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn pyenv_python(prefix: &str, exe: &str) -> Option<PathBuf> {
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")))?;
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root.join("versions"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix)))
        .collect();
    versions.sort();
    versions.into_iter().rev().map(|v| v.join("bin").join(exe)).find(|p| p.exists())
}

fn on_path(exe: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(exe)).find(|p| p.exists())
}

/// The Python 3.12 to test with: `EMBER_PYTHON`, then pyenv, then `PATH`.
pub fn python312() -> PathBuf {
    if let Some(p) = std::env::var_os("EMBER_PYTHON") {
        return PathBuf::from(p);
    }
    pyenv_python("3.12", "python3.12").or_else(|| on_path("python3.12")).unwrap_or_else(|| {
        panic!(
            "no python3.12 found: set EMBER_PYTHON=/path/to/python3.12, install it with pyenv \
             (`pyenv install 3.12`), or put python3.12 on PATH"
        )
    })
}

/// Another interpreter version, for the tests of unsupported versions.
pub fn python_version(minor: &str) -> PathBuf {
    let exe = format!("python{minor}");
    pyenv_python(minor, &exe)
        .or_else(|| on_path(&exe))
        .unwrap_or_else(|| panic!("no {exe} found: install it with pyenv (`pyenv install {minor}`) or put it on PATH"))
}

/// A fixture script of the agent's tests (`agent/tests/fixtures`).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/tests/fixtures").join(name)
}

/// A command for one of the workspace's binaries.
pub fn binary(path: &str) -> Command {
    let mut cmd = Command::new(path);
    cmd.env("EMBER_LOG", "info");
    cmd
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("ember-agent runs")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Folded stacks parsed back.
#[derive(Debug, Default)]
pub struct Folded {
    pub stacks: Vec<(Vec<String>, u64)>,
}

impl Folded {
    pub fn parse(text: &str) -> Self {
        let stacks = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (stack, count) = l.rsplit_once(' ').expect("`stack count` line");
                (stack.split(';').map(str::to_string).collect(), count.parse().expect("count"))
            })
            .collect();
        Folded { stacks }
    }

    pub fn from_output(out: &Output) -> Self {
        Self::parse(&String::from_utf8_lossy(&out.stdout))
    }

    pub fn total(&self) -> u64 {
        self.stacks.iter().map(|(_, c)| c).sum()
    }

    pub fn count(&self, pred: impl Fn(&[String]) -> bool) -> u64 {
        self.stacks.iter().filter(|(s, _)| pred(s)).map(|(_, c)| c).sum()
    }

    pub fn share(&self, pred: impl Fn(&[String]) -> bool) -> f64 {
        100.0 * self.count(pred) as f64 / self.total().max(1) as f64
    }
}

/// The function part of a Python frame text `name (file)`.
pub fn function(frame: &str) -> &str {
    frame.split(" (").next().unwrap_or(frame)
}

pub fn has_frame(stack: &[String], name: &str) -> bool {
    stack.iter().any(|f| function(f) == name)
}

/// A target process whose stdout lines can be waited for.
#[derive(Debug)]
pub struct Target {
    pub child: Child,
    lines: Receiver<String>,
}

impl Target {
    pub fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("target starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Target { child, lines }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Blocks until the target prints a line starting with `prefix`.
    pub fn wait_for(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("target did not print {prefix:?} within {timeout:?}"),
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!("target exited before printing {prefix:?}"),
            }
        }
    }
}

impl Target {
    /// Every line the target prints from now until it exits.
    pub fn remaining_lines(&self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => out.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return out,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("target still printing after {timeout:?}: {out:?}"),
            }
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` until it holds or the timeout passes.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// CPU time (user + system) process `pid` has used so far, in seconds, from `/proc/PID/stat`.
/// cpu-clock samples are taken per CPU second, so tests derive counts from this.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rfind(')').and_then(|i| stat.get(i + 1..)).unwrap_or("");
    let ticks: u64 = after.split_whitespace().skip(11).take(2).filter_map(|f| f.parse::<u64>().ok()).sum();
    // USER_HZ is 100 on every Linux architecture ember runs on.
    ticks as f64 / 100.0
}

/// Samples a recording at `rate_hz` must hold at least, for `cpu` seconds of the target's CPU
/// time: `share` of the exact count, the rest allowed for scheduler granularity.
pub fn samples_for(cpu: f64, rate_hz: f64, share: f64) -> u64 {
    (cpu * rate_hz * share).floor() as u64
}

impl Target {
    /// The CPU time a fixture reports as it exits (`cpu X`).
    pub fn final_cpu(&self) -> f64 {
        let line = self.wait_for("cpu ", Duration::from_secs(60));
        line.trim_start_matches("cpu ").trim().parse().unwrap_or(0.0)
    }
}

/// A PID that belonged to a process which has exited and been reaped.
pub fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("true runs");
    let pid = child.id();
    child.wait().expect("true exits");
    pid
}

/// A process running in the background, whose stderr can be waited on.
#[derive(Debug)]
pub struct Running {
    child: Option<Child>,
    stderr: Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    pub fn start(cmd: &mut Command) -> Self {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("the process starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child: Some(child), stderr: rx, seen: Vec::new() }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Blocks until the process prints a stderr line containing `needle`; returns the line.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.seen.push(line.clone());
                    if found {
                        return line;
                    }
                }
                Err(_) => {
                    panic!("the process did not print {needle:?} within {timeout:?}; stderr so far: {:?}", self.seen)
                }
            }
        }
    }

    /// Waits for the process to exit; returns its output with the complete stderr.
    pub fn finish(mut self) -> Output {
        let child = self.child.take().expect("still running");
        let mut out = child.wait_with_output().expect("the process exits");
        let mut err = self.seen.join("\n");
        for line in self.stderr.iter() {
            err.push('\n');
            err.push_str(&line);
        }
        out.stderr = err.into_bytes();
        out
    }

    /// Sends a signal (SIGKILL to simulate a crash, SIGTERM or SIGINT to stop).
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status();
        }
    }

    /// Waits for the process to exit after a signal, without collecting output.
    pub fn wait(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `serve.py` running for `seconds`, with the perf trampoline on or off, ready to be attached to.
pub fn serve_target(seconds: &str, trampoline: bool) -> Target {
    serve(seconds, trampoline, false)
}

/// `serve.py` working for `cpu_seconds` of CPU time, then printing `cpu X` and exiting: a fixed
/// amount of work, so sample counts follow from it however busy the machine is.
pub fn serve_target_cpu(cpu_seconds: &str, trampoline: bool) -> Target {
    serve(cpu_seconds, trampoline, true)
}

fn serve(seconds: &str, trampoline: bool, cpu: bool) -> Target {
    let mut cmd = Command::new(python312());
    cmd.arg(fixture("serve.py")).arg(seconds);
    if cpu {
        cmd.env("EMBER_FIXTURE_CPU", "1");
    }
    if trampoline {
        cmd.env("PYTHONPERFSUPPORT", "1");
    } else {
        cmd.env_remove("PYTHONPERFSUPPORT");
    }
    let target = Target::spawn(&mut cmd);
    target.wait_for("ready", Duration::from_secs(20));
    target
}

/// The `ember_*` metric names a Grafana dashboard queries (histogram `_bucket` series are
/// reported under the histogram's name).
pub fn dashboard_metrics(path: &str) -> std::collections::HashSet<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"));
    let mut names = std::collections::HashSet::new();
    for panel in json["panels"].as_array().unwrap_or_else(|| panic!("{path} has no panels")) {
        for target in panel["targets"].as_array().unwrap_or_else(|| panic!("a panel of {path} has no targets")) {
            let expr = target["expr"].as_str().unwrap_or_else(|| panic!("a target of {path} has no expr"));
            for word in
                expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("ember_"))
            {
                names.insert(word.strip_suffix("_bucket").unwrap_or(word).to_string());
            }
        }
    }
    names
}

/// The metric names a Prometheus text exposition declares, as a dashboard queries them:
/// a counter `x` is queried as `x_total`, a histogram by its own name.
pub fn exported_metrics(exposition: &str) -> std::collections::HashSet<String> {
    exposition
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("# TYPE ")?.split_whitespace();
            let (name, kind) = (words.next()?, words.next()?);
            Some(if kind == "counter" && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_string()
            })
        })
        .collect()
}

/// Checks that a dashboard queries every metric a binary exports, and nothing else.
pub fn check_dashboard(path: &str, exposition: &str) {
    let exported = exported_metrics(exposition);
    assert!(!exported.is_empty(), "no metric in the exposition:\n{exposition}");
    let used = dashboard_metrics(path);
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(unknown.is_empty(), "{path} queries metrics that are not exported: {unknown:?}");
    let unused: Vec<_> = exported.difference(&used).collect();
    assert!(unused.is_empty(), "exported metrics missing from {path}: {unused:?}");
}

/// The Debian sid root (made once by `tools/debian-sid.sh`, ~40 s) whose stock python3.13-3.15
/// the tests run: non-PIE, stripped, libpython linked in, as distributions ship them.
pub fn debian_root() -> PathBuf {
    static MADE: Mutex<bool> = Mutex::new(false);
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = workspace.join("target/debian-sid");
    let mut made = MADE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !*made {
        let status = Command::new(workspace.join("tools/debian-sid.sh")).arg(&root).status();
        assert!(
            status.as_ref().is_ok_and(|s| s.success()),
            "tools/debian-sid.sh could not make the Debian root ({status:?}); it needs root and debootstrap"
        );
        *made = true;
    }
    root
}

/// A command running Debian's `python{minor}` in the Debian root on a copy of a fixture, which
/// the interpreter sees as `/opt/ember-tests/NAME`.
pub fn debian_python(minor: &str, fixture_name: &str) -> Command {
    let root = debian_root();
    let dir = root.join("opt/ember-tests");
    std::fs::create_dir_all(&dir).expect("fixture directory in the Debian root");
    std::fs::copy(fixture(fixture_name), dir.join(fixture_name)).expect("fixture copied into the Debian root");
    let mut cmd = Command::new("chroot");
    cmd.arg(&root).arg(format!("python{minor}")).arg(format!("/opt/ember-tests/{fixture_name}"));
    cmd
}
