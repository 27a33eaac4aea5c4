//! Owned, decoded perf records. Decoding is pure (bytes in, values out) so it can be
//! property-tested without a kernel.

use perf_event_data::endian::Native;
use perf_event_data::parse::{ParseConfig, Parser};
use perf_event_data::{Comm, Exit, Lost, Mmap2, RecordMetadata, Sample, Visitor};
use perf_event_open_sys::bindings::{perf_event_header, PERF_RECORD_MISC_COMM_EXEC};

use crate::process::ids::{Pid, Tid};

/// Bit positions of the x86_64 user registers we ask the kernel for (`PERF_REG_X86_*`).
pub const REG_BX: u32 = 1;
pub const REG_BP: u32 = 6;
pub const REG_SP: u32 = 7;
pub const REG_IP: u32 = 8;
/// `sample_regs_user` mask: what DWARF CFI on x86_64 needs to find return addresses (ip, sp,
/// bp), and rbx, which assembly without CFI uses to keep its frame while it realigns rsp
/// (see `unwind::prologue`).
pub const USER_REGS_MASK: u64 = (1 << REG_BX) | (1 << REG_BP) | (1 << REG_SP) | (1 << REG_IP);

/// The most user stack one of ember's samples can carry. A record's size is a u16, so the
/// kernel fits the copy into what the other fields leave (`perf_sample_ustack_size`): 65535
/// minus the fields before the stack (header, ip, tid, time, cpu, the register ABI word and
/// the registers) and the stack's two size words, rounded down to 8. The kernel accepts a
/// request of up to 65528 but silently copies less than this bound; with `--kernel` the
/// callchain takes its share too, which the decoder notices per sample.
pub const MAX_STACK_COPY: u32 = (u16::MAX as u32 - SAMPLE_BYTES_BEFORE_STACK - 16) / 8 * 8;
const SAMPLE_BYTES_BEFORE_STACK: u32 = 8 + 4 * 8 + 8 + 8 * USER_REGS_MASK.count_ones();

/// The user-space registers captured with a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserRegs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    pub bx: u64,
}

/// One CPU sample of one thread.
#[derive(Debug, Clone)]
pub struct SampleEvent {
    pub pid: Pid,
    pub tid: Tid,
    /// CLOCK_MONOTONIC nanoseconds.
    pub time: u64,
    pub cpu: u32,
    /// `None` for samples of kernel threads, which have no user context.
    pub regs: Option<UserRegs>,
    /// The copied user stack, starting at `regs.sp`.
    pub stack: Vec<u8>,
    /// The kernel filled the whole requested copy, so the stack may continue beyond it.
    pub stack_filled: bool,
    /// Kernel frames, leaf first (only with `--kernel`).
    pub kernel_chain: Vec<u64>,
}

/// A new executable mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmapEvent {
    pub pid: Pid,
    pub time: u64,
    pub start: u64,
    pub len: u64,
    pub pgoff: u64,
    pub path: String,
    pub dev_inode: Option<(u32, u32, u64)>,
}

/// Everything the pipeline consumes from the ring buffers.
#[derive(Debug, Clone)]
pub enum PerfEvent {
    Sample(SampleEvent),
    Mmap(MmapEvent),
    Comm { pid: Pid, tid: Tid, time: u64, name: String, exec: bool },
    Fork { pid: Pid, ppid: Pid, tid: Tid, time: u64 },
    Exit { pid: Pid, tid: Tid, time: u64 },
    Lost { count: u64, time: u64 },
}

impl PerfEvent {
    pub fn time(&self) -> u64 {
        match self {
            PerfEvent::Sample(s) => s.time,
            PerfEvent::Mmap(m) => m.time,
            PerfEvent::Comm { time, .. }
            | PerfEvent::Fork { time, .. }
            | PerfEvent::Exit { time, .. }
            | PerfEvent::Lost { time, .. } => *time,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed perf record of type {ty}: {source}")]
    Malformed {
        ty: u32,
        #[source]
        source: perf_event_data::parse::ParseError,
    },
}

/// Turns raw ring-buffer records into [`PerfEvent`]s using the event's attributes.
#[derive(Clone)]
pub struct Decoder {
    config: ParseConfig<Native>,
    stack_request: usize,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").field("stack_request", &self.stack_request).finish()
    }
}

impl Decoder {
    pub fn new(config: ParseConfig<Native>, stack_request: usize) -> Self {
        Self { config, stack_request }
    }

    /// Decodes one record body (the bytes after the header). Record types ember has no use
    /// for yield `Ok(None)`.
    pub fn decode(&self, ty: u32, misc: u16, body: &[u8]) -> Result<Option<PerfEvent>, DecodeError> {
        let size = body.len() + std::mem::size_of::<perf_event_header>();
        let header = perf_event_header { type_: ty, misc, size: u16::try_from(size).unwrap_or(u16::MAX) };
        let mut parser = Parser::new(body, self.config.clone());
        parser
            .parse_record_with_header(EventVisitor { stack_request: self.stack_request, body }, header)
            .map_err(|source| DecodeError::Malformed { ty, source })
    }
}

struct EventVisitor<'b> {
    stack_request: usize,
    /// The record's bytes, where the stack copy's reserved size is read.
    body: &'b [u8],
}

/// Whether the kernel copied all the stack it reserved room for. The record holds the
/// reserved size, then the copy, then what was copied (`dyn_size`): a copy shorter than its
/// room stopped at the top of the stack, while a full one may have been cut by the request
/// or by the record's size limit, which can be less than the request (see
/// [`MAX_STACK_COPY`]). The reserved size is the word just before the copy in `body`.
fn stack_copy_full(body: &[u8], stack: &[u8], stack_request: usize) -> bool {
    let start = (stack.as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
    let reserved = start
        .checked_sub(8)
        .and_then(|at| body.get(at..start))
        .and_then(|word| word.try_into().ok())
        .map(u64::from_ne_bytes)
        .filter(|&reserved| start.checked_add(reserved as usize).is_some_and(|end| end <= body.len()));
    match reserved {
        Some(reserved) => reserved > 0 && stack.len() as u64 >= reserved,
        // Not a view into `body` (a copied record): only the request can tell.
        None => stack_request > 0 && stack.len() >= stack_request,
    }
}

fn meta_time(meta: &RecordMetadata) -> u64 {
    meta.sample_id().time().unwrap_or(0)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl<'a> Visitor<'a> for EventVisitor<'_> {
    type Output = Option<PerfEvent>;

    fn visit_unimplemented(self, _metadata: RecordMetadata) -> Self::Output {
        None
    }

    fn visit_sample(self, record: Sample<'a>, _metadata: RecordMetadata) -> Self::Output {
        let regs = record.regs_user().and_then(|r| {
            // Registers arrive in ascending bit order of the mask: bx, bp, sp, ip.
            match (r.mask == USER_REGS_MASK, &r.regs[..]) {
                (true, &[bx, bp, sp, ip]) => Some(UserRegs { ip, sp, bp, bx }),
                _ => None,
            }
        });
        let stack_filled = record.stack_user().is_some_and(|s| stack_copy_full(self.body, s, self.stack_request));
        let stack = record.stack_user().map(<[u8]>::to_vec).unwrap_or_default();
        let kernel_chain = record
            .callchain()
            .map(|chain| chain.iter().copied().filter(|&a| a < PERF_CONTEXT_MAX_MARKER).collect())
            .unwrap_or_default();
        Some(PerfEvent::Sample(SampleEvent {
            pid: Pid(record.pid().unwrap_or(0)),
            tid: Tid(record.tid().unwrap_or(0)),
            time: record.time().unwrap_or(0),
            cpu: record.cpu().unwrap_or(0),
            regs,
            stack,
            stack_filled,
            kernel_chain,
        }))
    }

    fn visit_mmap2(self, record: Mmap2<'a>, metadata: RecordMetadata) -> Self::Output {
        const PROT_EXEC: u32 = 4;
        if record.prot & PROT_EXEC == 0 {
            return None;
        }
        let dev_inode = match (record.maj(), record.min(), record.ino()) {
            (Some(maj), Some(min), Some(ino)) => Some((maj, min, ino)),
            _ => None,
        };
        Some(PerfEvent::Mmap(MmapEvent {
            pid: Pid(record.pid),
            time: meta_time(&metadata),
            start: record.addr,
            len: record.len,
            pgoff: record.pgoff,
            path: lossy(&record.filename),
            dev_inode,
        }))
    }

    fn visit_comm(self, record: Comm<'a>, metadata: RecordMetadata) -> Self::Output {
        Some(PerfEvent::Comm {
            pid: Pid(record.pid),
            tid: Tid(record.tid),
            time: meta_time(&metadata),
            name: lossy(&record.comm),
            exec: u32::from(metadata.misc()) & PERF_RECORD_MISC_COMM_EXEC != 0,
        })
    }

    fn visit_fork(self, record: Exit, _metadata: RecordMetadata) -> Self::Output {
        Some(PerfEvent::Fork { pid: Pid(record.pid), ppid: Pid(record.ppid), tid: Tid(record.tid), time: record.time })
    }

    fn visit_exit(self, record: Exit, _metadata: RecordMetadata) -> Self::Output {
        Some(PerfEvent::Exit { pid: Pid(record.pid), tid: Tid(record.tid), time: record.time })
    }

    fn visit_lost(self, record: Lost, metadata: RecordMetadata) -> Self::Output {
        Some(PerfEvent::Lost { count: record.lost, time: meta_time(&metadata) })
    }
}

/// Callchain entries at or above this value are context markers (`PERF_CONTEXT_*`), not addresses.
const PERF_CONTEXT_MAX_MARKER: u64 = (-4095i64) as u64;
