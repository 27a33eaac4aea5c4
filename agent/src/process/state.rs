//! Everything ember tracks about one target process: its threads, its executable
//! mappings (with their unwind modules) and its perf map.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use framehop::Unwinder;

use super::access::{LiveTarget, TargetAccess};
use super::code::CodeFacts;
use super::ids::{NsPid, Pid, Tid};
use super::procfs;
use super::python::{self, Runtime};
use super::target_file::Owner;
use crate::intern::{Interner, StrId};
use crate::interp::Slot;
use crate::symbolize::perf_map::{MapLocation, PerfMapReader, PerfMapTable};
use crate::unwind::{
    ElfCache, ElfImage, FileIdentity, ImageId, NativeUnwinder, StackCompleter, TrampolineKind, UnwindCache,
};

#[path = "state_extend.rs"]
mod extend;
#[path = "state_join.rs"]
mod join;
#[path = "state_unwind.rs"]
mod sample;
pub use extend::Beyond;
pub use sample::SampleUnwind;

/// How much code at an entry point counts as the entry code: ld.so's `_start` calls
/// `_dl_start`, then `_dl_init`, and jumps to the program within its first 64 bytes.
const ENTRY_CODE_BYTES: u64 = 64;
/// Largest anonymous region read to check trampolines (CPython's arenas are 64 KiB).
const MAX_ARENA_READ: u64 = 1 << 20;
/// Most bytes of arenas kept per process (256 of CPython's 64 KiB arenas); past it the cache
/// starts over, so a target mapping many executable regions costs reads, not memory.
const MAX_ARENA_CACHE: usize = 16 << 20;

/// An executable mapping.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub end: u64,
    pub pgoff: u64,
    pub path: String,
    /// Device and inode of a mapped file, which identify its image.
    pub dev_inode: Option<(u32, u32, u64)>,
    pub image: Option<Arc<ElfImage>>,
}

/// What a sampled address is, before symbolization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrameKey {
    /// A perf-map symbol: a Python function (`py::…`) or another JIT's code.
    MapSymbol(StrId),
    /// A Python function (its perf-map name) at a source line (`record --lines`).
    PythonLine {
        name: StrId,
        line: u32,
    },
    /// Code in an ELF file, by file offset of the looked-up address.
    Native {
        image: ImageId,
        file_offset: u64,
    },
    /// Code with nothing to name it by: an address in a region (`[anon]`, `[vdso]`, a path).
    Unknown {
        region: StrId,
        addr: u64,
    },
    Kernel(u64),
    /// Root marker for stacks whose outer frames could not be recovered.
    Truncated,
}

pub struct ProcessState {
    pub pid: Pid,
    pub ns_pid: NsPid,
    pub comm: String,
    pub runtime: Runtime,
    mappings: BTreeMap<u64, Mapping>,
    pub unwinder: NativeUnwinder,
    pub cache: UnwindCache,
    pub perf_map: PerfMapTable,
    pub perf_map_reader: PerfMapReader,
    pub completer: StackCompleter,
    arena_bytes: HashMap<u64, Option<Vec<u8>>>,
    /// The first bytes at each mapped image's entry point (avma), keyed by start.
    entry_code: BTreeMap<u64, u64>,
    /// Where mappings, memory and mapped files are read from.
    access: Arc<dyn TargetAccess>,
    /// The code addresses the last walk asked about (see [`ProcessCode`]).
    consulted: Vec<u64>,
    /// Answers about code kept across samples, forgotten when mappings or perf map change.
    code_facts: CodeFacts,
    pub exited: bool,
    /// The interpreter's frames read from memory, for samples cut short (see `state_join.rs`).
    interpreter: Slot,
    /// `--no-interpreter-reads`, kept across exec.
    interpreter_reads_off: bool,
    /// `record --lines`: every Python frame with its line, kept across exec.
    pub lines: bool,
    /// Thread ids in the process's own PID namespace, when it has its own.
    ns_tids: HashMap<Tid, u64>,
    /// Frame text of the code objects read from memory.
    python_names: join::PythonNames,
    /// Each thread's last join with the interpreter's frames.
    recent_joins: HashMap<Tid, join::ThreadJoins>,
    /// Each thread's recent walks continued beyond the copy.
    continuations: extend::Continuations,
    /// Keys the hashes of the callers' stacks recent joins are known by.
    callers_hasher: std::collections::hash_map::RandomState,
    /// Created (forked, exec'd or first seen) after the last poll of every map, which comes
    /// before each batch of events: the lines it wrote since are unread, so its map is polled
    /// before each of its samples until the next batch.
    pub(crate) new_in_batch: bool,
    /// Whether calls without a trampoline frame may run Python code (the trampoline was turned
    /// on while they ran): every sample's Python frames outside its outermost trampoline call
    /// are then read from memory.
    pub(crate) names_untrampolined: bool,
    /// A request to turn the trampoline on that the target has not answered yet (`activate`).
    pub(crate) activation: Option<crate::activate::Activation>,
    /// How long the target took to answer it, once it has.
    pub(crate) activated_after: Option<std::time::Duration>,
}

impl std::fmt::Debug for ProcessState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessState")
            .field("pid", &self.pid)
            .field("comm", &self.comm)
            .field("runtime", &self.runtime)
            .field("mappings", &self.mappings.len())
            .field("perf_map", &self.perf_map.len())
            .finish()
    }
}

impl ProcessState {
    /// Starts tracking a live process from `/proc`.
    pub fn from_proc(pid: Pid, elf: &mut ElfCache) -> Result<Self, procfs::ProcfsError> {
        let (ns_pid, uids) = procfs::identity(pid)?;
        let comm = procfs::comm(pid, Tid(pid.0)).unwrap_or_default();
        let mut map = Self::live_map(pid, ns_pid, uids);
        if let Some(start) = procfs::started_at(pid) {
            map.set_process_start(start);
        }
        let mut state = Self::empty(pid, ns_pid, comm, map, Arc::new(LiveTarget(pid)));
        state.refresh_maps(elf)?;
        let exe = procfs::exe(pid).map(|p| p.display().to_string());
        state.runtime = python::detect(exe.as_deref(), state.mappings.values().map(|m| m.path.as_str()));
        Ok(state)
    }

    /// A process known only from a recording: its mappings and memory come from `access`,
    /// its perf-map lines are fed to [`ProcessState::perf_map_reader`] by the caller.
    pub(crate) fn recorded(pid: Pid, comm: String, access: Arc<dyn TargetAccess>) -> Self {
        let mut state = Self::empty(pid, NsPid(pid.0), comm, PerfMapReader::detached(), access);
        // A recording holds no interpreter memory: replays complete from history as recorded.
        state.interpreter = Slot::Unavailable;
        state
    }

    fn live_map(pid: Pid, ns_pid: NsPid, uids: Vec<u32>) -> PerfMapReader {
        PerfMapReader::new(MapLocation { pid, file_name: format!("perf-{ns_pid}.map"), owner: Owner::OneOf(uids) })
    }

    fn empty(
        pid: Pid,
        ns_pid: NsPid,
        comm: String,
        perf_map_reader: PerfMapReader,
        access: Arc<dyn TargetAccess>,
    ) -> Self {
        Self {
            pid,
            ns_pid,
            comm,
            runtime: Runtime::NotPython,
            mappings: BTreeMap::new(),
            unwinder: NativeUnwinder::new(),
            cache: UnwindCache::new(),
            perf_map: PerfMapTable::default(),
            perf_map_reader,
            completer: StackCompleter::default(),
            arena_bytes: HashMap::new(),
            entry_code: BTreeMap::new(),
            access,
            consulted: Vec::new(),
            code_facts: CodeFacts::default(),
            exited: false,
            interpreter: Slot::NotTried,
            interpreter_reads_off: false,
            lines: false,
            ns_tids: HashMap::new(),
            python_names: join::PythonNames::default(),
            recent_joins: HashMap::new(),
            continuations: HashMap::new(),
            callers_hasher: Default::default(),
            new_in_batch: true,
            names_untrampolined: false,
            activation: None,
            activated_after: None,
        }
    }

    fn perf_map_owner_uids(&self) -> Vec<u32> {
        match self.perf_map_reader.owner() {
            Some(Owner::OneOf(uids)) => uids.clone(),
            _ => Vec::new(),
        }
    }

    /// A forked child: same address space as the parent at fork time. Frames that were on
    /// the stack at the fork return into the parent's trampolines, which only the parent's
    /// map names, so the child starts from the parent's table and adds its own map on top.
    pub fn forked_from(parent: &ProcessState, pid: Pid, elf: &mut ElfCache) -> Self {
        let (ns_pid, uids) = procfs::identity(pid).unwrap_or_else(|_| (NsPid(pid.0), parent.perf_map_owner_uids()));
        let mut child =
            Self::empty(pid, ns_pid, parent.comm.clone(), Self::live_map(pid, ns_pid, uids), Arc::new(LiveTarget(pid)));
        child.runtime = parent.runtime;
        child.perf_map = parent.perf_map.clone();
        child.entry_code = parent.entry_code.clone();
        for (&start, m) in &parent.mappings {
            child.insert_mapping(start, m.clone());
            if let Some(image) = &m.image {
                child.unwinder.add_module(crate::unwind::stack::native_module(image, start, m.end, m.pgoff));
            }
        }
        // The child may already have mapped more than the parent had.
        let _ = child.refresh_maps(elf);
        child
    }

    /// Forget the old address space after `exec`.
    pub fn exec(&mut self, elf: &mut ElfCache) {
        if let Some(activation) = self.activation.take() {
            activation.abandon();
        }
        let pid = self.pid;
        let ns_pid = self.ns_pid;
        // exec may change uids (a setuid program).
        let uids = procfs::identity(pid).map_or_else(|_| self.perf_map_owner_uids(), |(_, uids)| uids);
        let (reads_off, lines) = (self.interpreter_reads_off, self.lines);
        *self = Self::empty(pid, ns_pid, self.comm.clone(), Self::live_map(pid, ns_pid, uids), self.access.clone());
        if reads_off {
            self.without_interpreter_reads();
        }
        self.lines = lines;
        let _ = self.refresh_maps(elf);
        let exe = procfs::exe(pid).map(|p| p.display().to_string());
        self.runtime = python::detect(exe.as_deref(), self.mappings.values().map(|m| m.path.as_str()));
        // The map is read from the start again: lines of the program before exec are stale
        // but harmless, because the new program's own lines replace any they overlap, and
        // only verified trampoline addresses are unwound through.
    }

    fn insert_mapping(&mut self, start: u64, mapping: Mapping) {
        let end = mapping.end;
        let overlapping: Vec<u64> =
            self.mappings.range(..end).rev().take_while(|(_, m)| m.end > start).map(|(&s, _)| s).collect();
        for s in overlapping {
            self.mappings.remove(&s);
            self.unwinder.remove_module(s);
        }
        self.mappings.insert(start, mapping);
        self.code_facts.clear();
    }

    /// Records a new executable mapping and loads its unwind tables.
    pub fn add_mapping(
        &mut self,
        start: u64,
        end: u64,
        pgoff: u64,
        path: &str,
        dev_inode: Option<(u32, u32, u64)>,
        elf: &mut ElfCache,
    ) {
        if let Some(existing) = self.mappings.get(&start) {
            if existing.end == end && existing.pgoff == pgoff && existing.path == path {
                return;
            }
        }
        let is_file = path.starts_with('/') && !path.starts_with("//anon");
        let access = &self.access;
        let image = if path == "[vdso]" {
            // The vDSO is the same code in every process of this kernel; read it once from
            // the target's memory so its CFI and symbols work like a file's.
            elf.load_bytes(FileIdentity::Path("[vdso]".into()), "[vdso]", || {
                access.read_memory(start, (end - start) as usize)
            })
        } else if is_file {
            let identity = match dev_inode {
                Some((maj, min, ino)) if ino != 0 => FileIdentity::DevInode(maj, min, ino),
                _ => FileIdentity::Path(format!("{}:{path}", self.pid)),
            };
            elf.load(identity, path, || access.open_mapped(path, start, end))
        } else {
            None
        };
        let mapping = Mapping { end, pgoff, path: path.to_string(), dev_inode, image: image.clone() };
        self.insert_mapping(start, mapping);
        if let Some(entry) = image.as_ref().and_then(|i| Some(i.entry?.wrapping_add(i.load_bias(start, pgoff)))) {
            if (start..end).contains(&entry) {
                self.entry_code.insert(entry, entry.saturating_add(ENTRY_CODE_BYTES).min(end));
            }
        }
        if let Some(image) = image {
            if image.has_cfi() || image.text.is_some() {
                self.unwinder.add_module(crate::unwind::stack::native_module(&image, start, end, pgoff));
            }
        }
    }

    /// Adds executable mappings from `/proc/PID/maps` that the perf records have not told us
    /// about (mappings made before attach, or records still in another CPU's buffer).
    pub fn refresh_maps(&mut self, elf: &mut ElfCache) -> Result<(), procfs::ProcfsError> {
        for line in self.access.maps()? {
            if line.executable {
                self.add_mapping(line.start, line.end, line.offset, &line.path, line.dev_inode, elf);
            }
        }
        Ok(())
    }

    pub fn is_entry_code(&self, addr: u64) -> bool {
        self.entry_code.range(..=addr).next_back().is_some_and(|(_, &end)| addr < end)
    }

    /// Each executable mapping with its image, and the image's load bias there.
    pub(crate) fn mapped_images(&self) -> impl Iterator<Item = (&Mapping, Arc<ElfImage>, u64)> {
        self.mappings.iter().filter_map(|(&start, m)| {
            let image = m.image.clone()?;
            let bias = image.load_bias(start, m.pgoff);
            Some((m, image, bias))
        })
    }

    /// How this process is read.
    pub(crate) fn access(&self) -> Arc<dyn TargetAccess> {
        self.access.clone()
    }

    pub fn mapping_at(&self, addr: u64) -> Option<(u64, &Mapping)> {
        let (&start, m) = self.mappings.range(..=addr).next_back()?;
        (addr < m.end).then_some((start, m))
    }

    /// Reads, once, the perf maps of the ancestors this process was forked from (see
    /// [`ancestors`](super::ancestors)): frames from before the fork return into trampolines
    /// only they name. Called before the process's own map is read, so its own lines, read
    /// later, replace any ancestor line they overlap (an ancestor reuses arena slots after
    /// the fork that the child gives to other code). Lines appended after this read were
    /// written after the fork and are never read. Every line is verified against this
    /// process's own bytes, as its own lines are. Returns the lines added.
    pub fn read_ancestor_maps(&mut self, strings: &mut Interner, elf: &mut ElfCache) -> usize {
        let mut added = 0;
        // Farthest first, so a nearer ancestor's lines replace the ones it reused.
        for location in super::ancestors::perf_maps(self.pid).into_iter().rev() {
            let (ancestor, shown) = (location.pid, location.display());
            let mut reader = PerfMapReader::new(location);
            match reader.read_to_end(&mut self.perf_map, strings) {
                Ok(n) if n > 0 => {
                    tracing::info!(
                        pid = %self.pid,
                        "read {n} lines of the perf map of PID {ancestor}, which it was forked from, for frames from before the fork"
                    );
                    added += n;
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(pid = %self.pid, "cannot read the ancestor's perf map {shown}: {e}"),
            }
            self.perf_map_reader.corrupt_lines += reader.corrupt_lines;
        }
        if added > 0 {
            self.verify_trampolines(elf);
        }
        added
    }

    /// Reads new perf-map lines and checks the bytes behind them. Returns the lines added.
    pub fn poll_perf_map(&mut self, strings: &mut Interner, elf: &mut ElfCache) -> usize {
        let added = match self.perf_map_reader.poll(&mut self.perf_map, strings) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(pid = %self.pid, "perf map read failed: {e}");
                0
            }
        };
        if added > 0 {
            self.verify_trampolines(elf);
        }
        // The trampoline creates its map when it comes on, before any line: a program that
        // enters no new Python function meanwhile has an empty one.
        if self.activation.is_some() && (added > 0 || self.perf_map_reader.has_own_map()) {
            if let Some(activation) = self.activation.take_if(|a| a.taken_up()) {
                let after = activation.done();
                tracing::info!(
                    "PID {}: perf trampoline on, {:.0} ms after ember asked",
                    self.pid,
                    after.as_secs_f64() * 1e3
                );
                self.activated_after = Some(after);
            }
        }
        added
    }

    /// Adds perf-map lines given as bytes (a replay case's) and checks them as [`poll_perf_map`]
    /// does the file's.
    ///
    /// [`poll_perf_map`]: ProcessState::poll_perf_map
    pub(crate) fn add_perf_map_lines(&mut self, bytes: &[u8], strings: &mut Interner, elf: &mut ElfCache) -> usize {
        let added = self.perf_map_reader.consume(bytes, &mut self.perf_map, strings);
        if added > 0 {
            self.verify_trampolines(elf);
        }
        added
    }

    /// Decides, for every new perf-map entry, whether it is a trampoline and which variant,
    /// by reading the code at its address from the target.
    fn verify_trampolines(&mut self, elf: &mut ElfCache) {
        // New lines can name code whose return addresses were judged without them.
        self.code_facts.clear();
        let pending: Vec<(u64, u64)> = self.perf_map.unverified().map(|(s, e)| (s, e.end - s)).collect();
        if pending.iter().any(|&(start, _)| self.mapping_at(start).is_none()) {
            let _ = self.refresh_maps(elf);
        }
        let alive = self.access.alive();
        for (start, size) in pending {
            let kind = match self.mapping_at(start).map(|(s, m)| (s, m.end, m.image.is_none())) {
                Some((arena_start, arena_end, true)) => {
                    let bytes = self.arena(arena_start, arena_end);
                    match bytes {
                        Some(bytes) => bytes
                            .get((start - arena_start) as usize..)
                            .and_then(TrampolineKind::detect)
                            .filter(|k| k.len() == size),
                        // The target is gone: trust the size of the line.
                        None if !alive => TrampolineKind::from_len(size),
                        None => None,
                    }
                }
                // Not in any anonymous executable region: not a trampoline of this process
                // (a stale line from an earlier process with the same PID, or other JIT code).
                Some(_) => None,
                None if !alive => TrampolineKind::from_len(size),
                None => None,
            };
            self.perf_map.set_trampoline(start, kind);
        }
    }

    fn arena(&mut self, start: u64, end: u64) -> Option<&Vec<u8>> {
        let access = &self.access;
        let cached: usize = self.arena_bytes.values().flatten().map(Vec::len).sum();
        if !self.arena_bytes.contains_key(&start) && cached >= MAX_ARENA_CACHE {
            self.arena_bytes.clear();
        }
        self.arena_bytes
            .entry(start)
            .or_insert_with(|| access.read_memory(start, (end - start).min(MAX_ARENA_READ) as usize))
            .as_ref()
    }

    /// The code bytes at `start` that the trampoline check read, for a replay recording.
    pub(crate) fn code_bytes(&mut self, start: u64, len: u64) -> Option<Vec<u8>> {
        let (arena_start, mapping) = self.mapping_at(start)?;
        let arena_end = mapping.end;
        let from = usize::try_from(start - arena_start).ok()?;
        let to = from.checked_add(usize::try_from(len).ok()?)?;
        self.arena(arena_start, arena_end)?.get(from..to).map(<[u8]>::to_vec)
    }
}
