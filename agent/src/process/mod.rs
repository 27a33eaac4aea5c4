//! Stage 2, **process**: what ember knows about each target: ids, threads, executable
//! mappings, the Python runtime, and launching commands under the profiler.

pub(crate) mod access;
pub(crate) mod ancestors;
mod code;
pub(crate) mod ids;
pub(crate) mod launch;
pub(crate) mod memory;
pub(crate) mod procfs;
pub(crate) mod python;
pub(crate) mod state;
pub(crate) mod target_file;

pub use ids::{NsPid, Pid, Tid};
pub use state::FrameKey;
pub(crate) use state::{Beyond, ProcessState, SampleUnwind};
