//! The agent's test helpers: the shared testkit plus a command for this crate's binary.

use std::process::Command;

pub use ember_testkit::*;

pub fn ember() -> Command {
    binary(env!("CARGO_BIN_EXE_ember-agent"))
}

/// `ember-agent` running in the background.
pub struct RunningAgent;

impl RunningAgent {
    #[allow(clippy::new_ret_no_self)]
    pub fn start(args: &[&str]) -> Running {
        Running::start(ember().args(args))
    }
}

/// `ember-agent record --pid` on `target` (plus `args`) until the target exits; returns
/// ember's output and the CPU seconds the target used while ember was recording it, which
/// is what the sample count follows from.
pub fn record_until_exit(target: &Target, args: &[&str]) -> (std::process::Output, f64) {
    let pid = target.pid().to_string();
    let mut full = vec!["record", "--pid", pid.as_str()];
    full.extend_from_slice(args);
    let mut agent = RunningAgent::start(&full);
    agent.wait_for_stderr("recording", std::time::Duration::from_secs(30));
    let cpu_at_attach = cpu_seconds(target.pid());
    let out = agent.finish();
    (out, target.final_cpu() - cpu_at_attach)
}

/// The python3.12 of `target/venv-realworld-3.12`, a venv with the third-party packages pinned
/// in `bench/realworld/requirements.txt` (aiohttp, uvloop) installed from PyPI. Made once, and
/// again when the pins change; tests that need real third-party code run under it.
pub fn realworld_python() -> std::path::PathBuf {
    use std::path::Path;
    use std::sync::Mutex;
    static MADE: Mutex<()> = Mutex::new(());
    let _once = MADE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let requirements = root.join("bench/realworld/requirements.txt");
    let venv = root.join("target/venv-realworld-3.12");
    let python = venv.join("bin/python");
    let pins = std::fs::read_to_string(&requirements).expect("bench/realworld/requirements.txt");
    let stamp = venv.join("requirements.txt");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(pins.as_str()) && python.exists() {
        return python;
    }
    let made = Command::new(python312()).args(["-m", "venv", "--clear"]).arg(&venv).status().expect("venv runs");
    assert!(made.success(), "python3.12 -m venv {}", venv.display());
    let installed = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(&requirements)
        .status()
        .expect("pip runs");
    assert!(installed.success(), "pip install -r {} (PyPI must be reachable)", requirements.display());
    std::fs::write(&stamp, pins).expect("stamp written");
    python
}
