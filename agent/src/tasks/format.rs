//! The task ring's format (docs/TASK_RING.md): the one Rust home of its constants. The agent's
//! reader (`ring.rs`, `shared.rs`) uses them, and `_ember_accel` (agent/accel/, compiled by
//! build.rs outside cargo) includes this file as its `format` module. The monitor's Python copy
//! (`agent/python/ember_monitor/_ring.py`) and the table in docs/TASK_RING.md are checked
//! against this file by `format_check.rs`.
//!
//! Plain `const` items only, with no `use`: the accel crate has no dependencies.

/// Header word 0.
pub const MAGIC: &[u8; 8] = b"EMBRING2";
/// Header word 1, bits 0-31; bits 32-63 hold RECORD_SIZE.
pub const VERSION: u64 = 2;
pub const HEADER_SIZE: u64 = 64;
pub const RECORD_SIZE: u64 = 16;
/// Bounds on the number of slots (header word 2), a power of two.
pub const MIN_SLOTS: u64 = 64;
pub const MAX_SLOTS: u64 = 1 << 24;

// Header words.
pub const MAGIC_WORD: usize = 0;
pub const LAYOUT: usize = 1;
pub const SLOTS: usize = 2;
/// The last published slot of this lap, or -1.
pub const PUBLISHED: usize = 3;
pub const LAP: usize = 4;
pub const WRITER_PID: usize = 5;
pub const FLAGS: usize = 6;
/// CLOCK_MONOTONIC ns when the ring was made; a new value means a new ring.
pub const CREATED: usize = 7;

// Bits of header word FLAGS.
/// READY records are written (event-loop lag).
pub const FLAG_LAG: u64 = 1;
/// The records are written by `_ember_accel`, the monitor's native fast path.
pub const FLAG_NATIVE: u64 = 2;

/// Tagged words have bit 62 set; a first word below it is a bare STOP, i.e. a time.
pub const TAG: u64 = 1 << 62;
// Fields of a tagged word: kind in bits 0-7, then these.
pub const FLAGS_SHIFT: u32 = 8;
pub const ID_SHIFT: u32 = 16;
/// Bits 48-61: per kind (CREATE: the loop id).
pub const EXTRA_SHIFT: u32 = 48;
pub const KIND_BITS: u32 = 8;
pub const FLAGS_BITS: u32 = 8;
pub const ID_BITS: u32 = 32;
pub const EXTRA_BITS: u32 = 14;

// Record kinds (0 and 6 are unused).
pub const START: u64 = 1;
pub const STOP: u64 = 2;
pub const DONE: u64 = 3;
pub const CREATE: u64 = 4;
pub const TASK: u64 = 5;
pub const NAME: u64 = 7;
pub const STRING: u64 = 8;
pub const STRING_DATA: u64 = 9;
pub const LOOP: u64 = 10;
pub const THREAD: u64 = 11;
pub const MODE: u64 = 12;
pub const READY: u64 = 13;
/// A loop that is not one of asyncio's (uvloop): its class, and what is not followed there.
pub const LOOP_INFO: u64 = 14;

// Per-kind flags, as the flags field holds them.
/// START: the step was resumed by `throw()` (cancellation).
pub const THROWN: u64 = 1;
/// CREATE: the name is asyncio's default `Task-N`, and the TASK record holds N.
pub const DEFAULT_NAME: u64 = 1;
/// STOP: how the step ended (0: it yielded).
pub const HOW_RETURN: u64 = 1;
pub const HOW_RAISE: u64 = 2;
/// DONE: how the task ended (0: a result).
pub const OUT_EXCEPTION: u64 = 1;
pub const OUT_CANCELLED: u64 = 2;
/// LOOP_INFO: no READY records (event-loop lag) for the loop's tasks.
pub const NO_LAG: u64 = 1;
/// LOOP_INFO: the eager first step of a task built with `asyncio.Task()` is not seen.
pub const NO_EAGER: u64 = 2;

/// Strings are at most this long (the writer truncates).
pub const MAX_STRING: u64 = 4096;
