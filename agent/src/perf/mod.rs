//! Stage 1, **perf**: opens cpu-clock events with user registers and a user-stack copy,
//! and decodes the records the kernel writes into the per-CPU ring buffers.

pub(crate) mod event;
pub mod session;

pub use event::{Decoder, MmapEvent, PerfEvent, SampleEvent, UserRegs, MAX_STACK_COPY};
pub use session::{PerfError, SamplingConfig, SamplingSession};
