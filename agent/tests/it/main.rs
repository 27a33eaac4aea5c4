//! The agent's integration tests, one binary so they link once: real Python processes, the
//! real kernel's perf events, real namespaces and a real unprivileged user.

// Each test module uses its own share of the helpers.
#[allow(dead_code)]
mod common;

mod dashboards;
mod dump;
mod hostile;
mod properties;
mod record_activate;
mod record_deep;
mod record_errors;
mod record_fidelity;
mod record_lines;
mod record_memory;
mod record_outputs;
mod record_stacks;
mod record_targets;
mod record_tasks;
mod replay;
mod task_monitor;
