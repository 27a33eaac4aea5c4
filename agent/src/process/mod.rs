//! Stage 2, **process**: what ember knows about each target: ids, threads, executable
//! mappings, the Python runtime, and launching commands under the profiler.

pub mod ids;
pub mod launch;
pub mod memory;
pub mod procfs;
pub mod python;
pub mod state;
pub mod target_file;

pub use ids::{NsPid, Pid, Tid};
pub use state::{FrameKey, ProcessState};
