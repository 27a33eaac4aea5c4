//! ember-agent: samples Python 3.12+ processes with `perf_event_open`, unwinds every sample
//! through native code and CPython's perf trampolines, and writes complete mixed stacks.
//!
//! The pipeline, one module per stage (see ARCHITECTURE.md):
//! [`perf`] → [`process`] → [`unwind`] → [`symbolize`] → [`aggregate`] → [`export`].
//! [`sampling`] runs it; [`record`] and [`stream`] are the front ends that drive it. An attached
//! target started without the perf trampoline gets it turned on first ([`activate`]).

pub(crate) mod activate;
pub(crate) mod aggregate;
pub mod cli;
pub mod dump;
pub mod intern;
pub(crate) mod interp;
pub mod perf;
pub mod process;
pub mod record;
pub mod replay;
pub(crate) mod sampling;
pub mod stream;
pub mod symbolize;
pub mod tasks;
pub mod unwind;

pub use ember_profile::export;
