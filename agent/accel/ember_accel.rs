//! `_ember_accel`: the asyncio task monitor's per-step work in native code, an optional fast
//! path for `agent/python/ember_monitor/`, which works the same without it.
//!
//! Why it exists: in pure Python, a sys.monitoring callback costs a Python call, and every
//! step of every task fires two of them (start and end), plus a `call_soon` wrapper for the
//! event-loop lag. That makes the worst case (tasks that do nothing but await) far costlier
//! than builtin callbacks (measured in docs/BENCHMARKS.md).
//!
//! What it is: a CPython extension module for the stable ABI (abi3) of 3.12+, GIL builds only.
//! `agent/build.rs` compiles this crate with rustc (no crates: a build script cannot link
//! a dependency into a second artifact without a nested cargo build), the agent embeds the
//! library and writes it next to the monitor. It declares the few stable-ABI functions it
//! calls itself; Python is not linked, the interpreter provides them when it loads the module.
//!
//! It writes exactly the records the pure-Python writer writes (docs/TASK_RING.md) and owns
//! the ring's write position, so once `init` is called every record goes through here.
//! All state is global and touched only with the GIL held (every entry point is called by
//! Python); between reserving a slot and publishing it no Python code runs, so records from
//! different threads never interleave. Nothing here raises into the monitored program: the
//! sys.monitoring callbacks swallow errors and record nothing instead.
//!
//! The crate's modules (rustc follows `mod` from this root file, so it is still one crate):
//! - [`ffi`]: the hand-declared C-API and thin helpers over it;
//! - [`ring`]: the ring writer, the process's one ring and its write position;
//! - [`format`]: the ring format's constants (`agent/src/tasks/format.rs`, shared with the agent);
//! - [`entry`]: the module's builtin functions and `PyInit__ember_accel`.

mod entry;
mod ffi;
// The ring format's constants, shared with the agent's reader: one home for both.
#[allow(dead_code)]
#[path = "../src/tasks/format.rs"]
mod format;
mod ring;

pub use entry::PyInit__ember_accel;
