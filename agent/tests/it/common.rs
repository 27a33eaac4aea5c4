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
