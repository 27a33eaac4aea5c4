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
