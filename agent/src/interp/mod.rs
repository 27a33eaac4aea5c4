//! Stage **interp**: CPython's own state, read from the target's memory with
//! `process_vm_readv`: every thread's Python frames, with code objects and line numbers. The
//! perf sample is exact for the native stack it copied; this reader supplies what the copy
//! cannot hold or name (frames beyond it, frames without a trampoline, lines) and serves
//! `ember-agent dump`.
//!
//! Nothing read is trusted: layouts come from the target's own `_Py_DebugOffsets` (3.13+) or a
//! table checked on attach (3.12), and every object is type-checked and bounded (objects.rs).

mod blocks;
mod join;
mod layout;
mod linetable;
mod locate;
mod modules;
mod objects;
mod pending;
mod remote_exec;
mod walk;

#[cfg(test)]
mod fake;

pub use join::{CallersCheck, CutSample, Refusal, SampledCall};
pub use layout::{LayoutError, PyVersion};
pub use locate::functions;
pub use modules::{AsyncTask, Awaiting, TasksError};
pub use objects::{CodeInfo, ObjectError};
pub use pending::PendingLock;
pub use remote_exec::{
    send as send_remote_exec, withdraw as withdraw_remote_exec, AddressSpace, Prepared, RemoteExecError, Requested,
};

pub use walk::{PyFrame, PyThread, WalkEnd, MAX_FRAMES};

use std::collections::HashMap;
use std::sync::Arc;

use crate::process::access::TargetAccess;
use crate::process::ProcessState;
use objects::ObjectReader;

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(
        "no mapped file of process {pid} exports _PyRuntime, PyCode_Type and the other symbols ember starts \
         from: not a CPython process, or one whose interpreter hides its symbols"
    )]
    NoRuntime { pid: crate::process::Pid },
    // `cause`, not `source`: the message says it, and a chain printed whole would say it twice.
    #[error("cannot read the interpreter in {image}: {cause}")]
    Layout { image: String, cause: LayoutError },
    #[error("{image} exports _PyRuntime but no Py_Version and no debug offsets, so its version is unknown")]
    NoVersion { image: String },
    #[error(
        "{image} says Python {published} in its debug offsets but {exported} in Py_Version; not reading an \
         interpreter that disagrees with itself"
    )]
    VersionMismatch { image: String, published: PyVersion, exported: PyVersion },
    #[error("reading the interpreter of {image} (Python {version}) failed its check: {cause}")]
    Check { image: String, version: PyVersion, cause: ObjectError },
}

/// A reader attached to one process's interpreter.
pub struct Interpreter {
    runtime: u64,
    reader: ObjectReader,
    image: String,
    builtins: Option<modules::BuiltinTypes>,
    /// Per thread, the memory blocks its last read used: most of them hold its next chain too,
    /// so the next read starts by reading them all in one call.
    hints: HashMap<u64, Vec<u64>>,
}

/// Threads whose hints are kept before they start over.
const MAX_HINTS: usize = 4096;

impl Interpreter {
    /// Finds the runtime, learns its layout and proves it by walking every thread once.
    pub fn attach(process: &ProcessState) -> Result<Self, AttachError> {
        let (symbols, image) = locate::find(process).ok_or(AttachError::NoRuntime { pid: process.pid })?;
        let access = process.access();
        let layout = read_layout(access.as_ref(), &symbols, &image)?;
        let version = layout.version;
        let mut interpreter = Interpreter {
            runtime: symbols.runtime,
            reader: ObjectReader::new(access, layout, symbols.types),
            image,
            builtins: symbols.builtins,
            hints: HashMap::new(),
        };
        interpreter.threads().map_err(|cause| AttachError::Check {
            image: interpreter.image.clone(),
            version,
            cause,
        })?;
        Ok(interpreter)
    }

    pub fn version(&self) -> PyVersion {
        self.reader.layout().version
    }

    /// The file the interpreter lives in (libpython or the executable).
    pub fn image(&self) -> &str {
        &self.image
    }

    /// Every thread's Python stack, as it is now, and whether the read saw the process at one
    /// moment (see [`ObjectReader::at_once`]).
    pub fn threads(&mut self) -> Result<(Vec<PyThread>, bool), ObjectError> {
        let runtime = self.runtime;
        let (threads, at_once) = self.reader.at_once(|reader| walk::threads(reader, runtime));
        threads.map(|t| (t, at_once))
    }

    /// Checks, reading only, that the target can be asked to run a script whose path is
    /// `path_len` bytes long, through PEP 768's remote execution (3.14+).
    pub fn prepare_remote_exec(&mut self, path_len: usize) -> Result<Prepared, RemoteExecError> {
        remote_exec::prepare(&mut self.reader, self.runtime, path_len)
    }

    /// The lock the main thread's pending calls are queued under (3.12/3.13), found and checked.
    pub fn pending_lock(&self) -> Result<PendingLock, ObjectError> {
        pending::lock(&self.reader, self.runtime)
    }

    /// `sys.getrecursionlimit()` of a 3.12 target; `None` on other versions.
    pub fn recursion_limit(&self) -> Result<Option<i32>, ObjectError> {
        pending::recursion_limit(&self.reader, self.runtime)
    }

    /// Every asyncio task, read at (nearly) one moment (see [`ObjectReader::at_once`]); the
    /// flag says whether it was.
    pub fn tasks(&mut self) -> Result<(Vec<AsyncTask>, bool), TasksError> {
        let (runtime, builtins) = (self.runtime, self.builtins);
        let (tasks, at_once) = self.reader.at_once(|reader| modules::tasks(reader, runtime, builtins.as_ref()));
        tasks.map(|t| (t, at_once))
    }

    /// The names `threading` gives the threads, by native id (see [`modules::thread_names`]);
    /// empty if they cannot be read.
    pub fn thread_names(&mut self) -> HashMap<u64, String> {
        let (runtime, Some(builtins)) = (self.runtime, self.builtins) else { return HashMap::new() };
        let (names, _) = self.reader.at_once(|reader| modules::thread_names(reader, runtime, &builtins));
        names.unwrap_or_else(|e| {
            tracing::debug!("reading threading's thread names failed: {e}");
            HashMap::new()
        })
    }

    /// Reads the chain of the thread `native_id` now, with the stack memory from `sp` for
    /// `len` bytes and up to `beyond` more (as far as it is mapped), at one moment: what a
    /// later [`join_snapshot`](Self::join_snapshot) needs. Taken before the sample is unwound,
    /// it is read as soon after the sample as can be.
    pub fn snapshot(
        &mut self,
        native_id: u64,
        sp: u64,
        len: usize,
        beyond: usize,
    ) -> Result<ChainSnapshot, JoinOutcome> {
        let runtime = self.runtime;
        let hint = self.hints.get(&native_id).map(Vec::as_slice).unwrap_or_default();
        let (read, at_once) = self.reader.at_once_from(hint, |reader| {
            let mut stack = if len == 0 { Vec::new() } else { reader.bytes_at(sp, len)? };
            let mut at = sp.saturating_add(len as u64);
            let end = at.saturating_add(beyond as u64);
            while at < end {
                let piece = (blocks::BLOCK - at % blocks::BLOCK).min(end - at) as usize;
                let Ok(bytes) = reader.bytes_at(at, piece) else { break };
                stack.extend_from_slice(&bytes);
                at += piece as u64;
            }
            let innermost = walk::innermost_of(reader, runtime, native_id)?;
            Ok::<_, ObjectError>(innermost.map(|frame| (walk::chain(reader, frame), stack)))
        });
        if self.hints.len() >= MAX_HINTS {
            self.hints.clear();
        }
        self.hints.insert(native_id, self.reader.touched());
        match read {
            Ok(Some(((chain, end), stack))) if at_once => Ok(ChainSnapshot { chain, end, sp, stack }),
            Ok(Some(_)) => Err(JoinOutcome::Refused(Refusal::ChangedWhileRead)),
            Ok(None) => Err(JoinOutcome::Unreadable),
            Err(e) => {
                tracing::debug!("reading thread {native_id}'s frames failed: {e}");
                Err(JoinOutcome::Unreadable)
            }
        }
    }

    /// Joins a snapshot with the sample it was taken for (see [`join`]).
    pub fn join_snapshot(&self, snapshot: &ChainSnapshot, sample: CutSample<'_>, check: CallersCheck) -> JoinOutcome {
        match self.anchor(snapshot, sample, check) {
            Ok(from) => JoinOutcome::Joined(OuterFrames::of(&snapshot.chain[from..])),
            Err(refusal) => JoinOutcome::Refused(refusal),
        }
    }

    /// Whether the thread, as `snapshot` read it, still runs the call `sample`'s trampoline
    /// names as its innermost Python call, under the callers the sample holds byte for byte:
    /// its first frame is the one that call entered.
    pub fn runs_innermost(&self, snapshot: &ChainSnapshot, sample: CutSample<'_>) -> bool {
        // The callers begin after the innermost frame and its entry shim.
        self.anchor(snapshot, sample, CallersCheck::Bytes) == Ok(2)
    }

    fn anchor(&self, snapshot: &ChainSnapshot, sample: CutSample<'_>, check: CallersCheck) -> Result<usize, Refusal> {
        // As much as the sample holds: the snapshot may have read beyond it.
        let held = sample.callers().map_or(0, <[u8]>::len);
        let callers_now = sample
            .trampoline_sp
            .checked_sub(snapshot.sp)
            .and_then(|from| snapshot.stack.get(usize::try_from(from).ok()?..))
            .map(|now| &now[..now.len().min(held)])
            .unwrap_or_default();
        let reader = &self.reader;
        let extras = |code| reader.code_extras(code).unwrap_or_default();
        join::anchor(&snapshot.chain, &snapshot.end, reader.layout(), sample, callers_now, check, extras)
    }
}

/// A thread's frame chain and a stretch of its stack, read at one moment.
#[derive(Debug)]
pub struct ChainSnapshot {
    chain: Vec<walk::ChainFrame>,
    end: WalkEnd,
    /// Where `stack` was read from.
    sp: u64,
    stack: Vec<u8>,
}

/// Where a thread's Python frames stood when read: each frame's address, links and code, and
/// the instruction it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place(Vec<(u64, u64, u8, u64, Option<u64>)>);

impl ChainSnapshot {
    /// The stack read from `from` on.
    pub fn stack_from(&self, from: u64) -> Option<&[u8]> {
        self.stack.get(usize::try_from(from.checked_sub(self.sp)?).ok()?..)
    }

    /// Where the chain stood, if it was read to its root.
    pub fn place(&self) -> Option<Place> {
        let key =
            |f: &walk::ChainFrame| (f.addr, f.previous, f.owner, f.code_addr, f.python.as_ref().and_then(|p| p.unit));
        (self.end == WalkEnd::Root).then(|| Place(self.chain.iter().map(key).collect()))
    }
}

impl Interpreter {
    /// The line of each sampled call (see [`join::lines_of_calls`]), from the thread's chain
    /// read now at once; `None` if it could not be read at one moment.
    pub fn lines(&mut self, native_id: u64, sp: u64, stack: &[u8], calls: &[SampledCall]) -> Option<Vec<Option<u32>>> {
        let snapshot = self.snapshot(native_id, sp, 0, 0).ok()?;
        Some(self.lines_from(&snapshot, sp, stack, calls))
    }

    /// The line of each sampled call, from a snapshot.
    pub fn lines_from(
        &self,
        snapshot: &ChainSnapshot,
        sp: u64,
        stack: &[u8],
        calls: &[SampledCall],
    ) -> Vec<Option<u32>> {
        let reader = &self.reader;
        let extras = |code| reader.code_extras(code).unwrap_or_default();
        join::lines_of_calls(&snapshot.chain, reader.layout(), sp, stack, calls, extras)
    }
}

/// Python frames read from memory, innermost first, each with the address of the entry shim of
/// the eval call that runs it (0 for frames no shim follows): the shim sits on that call's C
/// stack, which places the frame among a sample's native frames.
#[derive(Debug, Clone)]
pub struct OuterFrames {
    pub frames: Arc<[PyFrame]>,
    pub shims: Arc<[u64]>,
}

impl OuterFrames {
    fn of(chain: &[walk::ChainFrame]) -> Self {
        let (mut frames, mut shims) = (Vec::new(), Vec::new());
        let mut unplaced = 0;
        for f in chain {
            match &f.python {
                Some(python) => {
                    frames.push(python.clone());
                    shims.push(0);
                }
                None => {
                    shims[unplaced..].iter_mut().for_each(|s| *s = f.addr);
                    unplaced = shims.len();
                }
            }
        }
        OuterFrames { frames: frames.into(), shims: shims.into() }
    }
}

/// What a join of a sample with the interpreter's frames gave.
#[derive(Debug, Clone)]
pub enum JoinOutcome {
    /// The Python frames outside the sample's outermost trampoline call.
    Joined(OuterFrames),
    /// The chain read no longer agrees with the sample: the thread had moved on.
    Refused(Refusal),
    /// The thread's chain could not be read (it exited, or a read failed).
    Unreadable,
}

/// A process's interpreter reader: attached at the first sample that needs it.
#[derive(Default)]
pub enum Slot {
    #[default]
    NotTried,
    Attached(Box<Interpreter>),
    /// Not CPython, an unknown layout, or a failed check (said once, when tried).
    Unavailable,
}

fn read_layout(
    access: &dyn TargetAccess,
    symbols: &locate::Symbols,
    image: &str,
) -> Result<layout::Layout, AttachError> {
    let unreadable = |addr, len| AttachError::Check {
        image: image.into(),
        version: PyVersion(0),
        cause: ObjectError::Unreadable { addr, len },
    };
    let exported = match symbols.version {
        Some(addr) => {
            let bytes = access.read_memory(addr, 8).ok_or_else(|| unreadable(addr, 8))?;
            Some(PyVersion(u32::try_from(objects::word_in(&bytes, 0)).unwrap_or(0)))
        }
        None => None,
    };
    let head = access.read_memory(symbols.runtime, 16).ok_or_else(|| unreadable(symbols.runtime, 16))?;
    let with_image = |cause| AttachError::Layout { image: image.into(), cause };
    if head.starts_with(b"xdebugpy") {
        let published = PyVersion(u32::try_from(objects::word_in(&head, 8)).unwrap_or(0));
        let size = layout::positions(published).map_err(with_image)?.size;
        let block = access.read_memory(symbols.runtime, size).ok_or_else(|| unreadable(symbols.runtime, size))?;
        let layout = layout::from_debug_offsets(&block).map_err(with_image)?;
        if let Some(exported) = exported.filter(|v| *v != published) {
            return Err(AttachError::VersionMismatch { image: image.into(), published, exported });
        }
        Ok(layout)
    } else {
        let exported = exported.ok_or_else(|| AttachError::NoVersion { image: image.into() })?;
        if exported.minor() >= 13 {
            let cookie = String::from_utf8_lossy(&head[..8]).into_owned();
            return Err(with_image(LayoutError::BadCookie { cookie, version: exported }));
        }
        layout::layout_3_12(exported).map_err(with_image)
    }
}
