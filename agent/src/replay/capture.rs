//! Keeping samples for a replay case during a live recording (`record --capture-replay`):
//! a few samples spread over the run, each with exactly what its unwind touched.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::extents::image_extents;
use super::format::{
    Case, Expected, ImageRecord, MappingRecord, MemoryRecord, SampleRecord, CASE_FILE, FORMAT_VERSION,
};
use super::keys::{end_text, frame_text, hex};
use crate::intern::Interner;
use crate::perf::SampleEvent;
use crate::process::{FrameKey, ProcessState, SampleUnwind};
use crate::unwind::{ElfCache, ImageId, StackEnd};

/// Most samples one case keeps by default: enough variety, small enough to commit.
pub const DEFAULT_SAMPLES: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot create the replay directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("cannot create {path} (it must not exist yet): {source}")]
    Create { path: PathBuf, source: nix::Error },
    #[error(transparent)]
    Format(#[from] super::format::FormatError),
}

/// Keeps every `stride`-th sample offered, doubling the stride (and dropping every other
/// kept sample) whenever more than `limit` are kept, so the kept ones stay spread evenly
/// over a run of any length.
#[derive(Debug)]
struct Spread {
    limit: usize,
    stride: u64,
    seen: u64,
    kept: Vec<(u64, Snapshot)>,
}

impl Spread {
    fn new(limit: usize) -> Self {
        Self { limit, stride: 1, seen: 0, kept: Vec::new() }
    }

    fn wants(&mut self) -> Option<u64> {
        let index = self.seen;
        self.seen += 1;
        (self.limit > 0 && index % self.stride == 0).then_some(index)
    }

    fn keep(&mut self, index: u64, snapshot: Snapshot) {
        self.kept.push((index, snapshot));
        while self.kept.len() > self.limit {
            self.stride *= 2;
            let stride = self.stride;
            self.kept.retain(|(i, _)| i % stride == 0);
        }
    }
}

/// One kept sample, with what of its process it needs (images by id, read at the end).
#[derive(Debug)]
struct Snapshot {
    time: u64,
    record: SampleRecord,
    mappings: Vec<(MappingRecord, Option<ImageId>)>,
    /// The addresses framehop looked up (return addresses less one), to keep their FDEs.
    lookups: Vec<u64>,
    perf_map: Vec<String>,
    memory: Vec<MemoryRecord>,
}

/// The samples kept for one case. Stacks that reached their root and stacks cut short are
/// kept apart, so the rarer failures are not drowned by the rest: the case takes up to half
/// its samples from the cut ones, and fills the rest with whole ones.
#[derive(Debug)]
pub struct Capture {
    dir: PathBuf,
    limit: usize,
    whole: Spread,
    cut: Spread,
}

/// `n` of `items`, evenly spaced.
fn thin<T>(items: Vec<T>, n: usize) -> Vec<T> {
    let len = items.len();
    if len <= n {
        return items;
    }
    let picks: Vec<usize> = (0..n).map(|i| i * len / n).collect();
    items.into_iter().enumerate().filter(|(i, _)| picks.contains(i)).map(|(_, t)| t).collect()
}

impl Capture {
    pub fn new(dir: PathBuf, limit: usize) -> Self {
        Self { dir, limit, whole: Spread::new(limit), cut: Spread::new(limit) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Considers one unwound sample of `state`; `keys` are its frame keys as the live agent
    /// made them.
    pub(crate) fn offer(
        &mut self,
        state: &mut ProcessState,
        sample: &SampleEvent,
        unwound: &SampleUnwind,
        keys: &[FrameKey],
        strings: &Interner,
        elf: &ElfCache,
    ) {
        let Some(regs) = sample.regs else { return };
        let spread = if unwound.end == StackEnd::Complete { &mut self.whole } else { &mut self.cut };
        let Some(index) = spread.wants() else { return };
        let mut mappings = Vec::new();
        let mut perf_map = Vec::new();
        let mut memory = Vec::new();
        let mut add_mapping = |state: &ProcessState, addr: u64| {
            if let Some((start, m)) = state.mapping_at(addr) {
                if !mappings.iter().any(|(r, _): &(MappingRecord, _)| r.start == start) {
                    let record = MappingRecord {
                        start,
                        end: m.end,
                        pgoff: m.pgoff,
                        path: m.path.clone(),
                        dev_inode: m.dev_inode,
                        image: None,
                    };
                    mappings.push((record, m.image.as_ref().map(|i| i.id)));
                }
            }
        };
        // The frames, and every other return address the walk checked (scan candidates) or
        // whose unwind info it looked up: a replay must get the same answers for them.
        let consulted = state.consulted().iter().map(|&a| (a, a.wrapping_sub(1)));
        let addrs: Vec<(u64, u64)> =
            unwound.frames.iter().enumerate().map(|(i, f)| (f.addr, f.lookup_addr(i == 0))).chain(consulted).collect();
        let lookups = addrs.iter().map(|&(_, lookup)| lookup).collect();
        for &(addr, lookup) in &addrs {
            add_mapping(state, addr);
            add_mapping(state, lookup);
            let entry = state.perf_map.lookup(addr).or_else(|| state.perf_map.lookup(lookup));
            let Some((start, entry)) = entry.map(|(s, e)| (s, *e)) else { continue };
            let line = format!("{start:x} {:x} {}", entry.end - start, strings.get(entry.name));
            if perf_map.contains(&line) {
                continue;
            }
            perf_map.push(line);
            add_mapping(state, start);
            if let Some(bytes) = state.code_bytes(start, entry.end - start) {
                memory.push(MemoryRecord { addr: start, bytes });
            }
        }
        let stack_read = unwound.stack_read.min(sample.stack.len());
        let record = SampleRecord {
            pid: sample.pid.0,
            tid: sample.tid.0,
            ip: regs.ip,
            sp: regs.sp,
            bp: regs.bp,
            bx: regs.bx,
            stack: sample.stack[..stack_read].to_vec(),
            stack_len: sample.stack.len() as u64,
            stack_filled: sample.stack_filled,
            mappings: Vec::new(),
            perf_map: Vec::new(),
            memory: Vec::new(),
            history: unwound.completed_from.as_ref().map(|h| h.frames.iter().map(|f| [f.addr, f.sp]).collect()),
            expected: Expected {
                end: end_text(unwound.end),
                completed: unwound.completed_from.is_some(),
                frames: keys.iter().map(|k| frame_text(k, strings, elf)).collect(),
            },
        };
        spread.keep(index, Snapshot { time: sample.time, record, mappings, lookups, perf_map, memory });
    }

    /// Builds the case: the kept samples in the order they were taken, with shared tables.
    pub(crate) fn into_case(self, target: &str, elf: &ElfCache) -> Case {
        let (whole, cut) = (self.whole.kept.len(), self.cut.kept.len());
        let cut_n = cut.min(self.limit.saturating_sub(whole).max(self.limit / 2));
        let whole_n = whole.min(self.limit - cut_n);
        let mut kept: Vec<Snapshot> =
            thin(self.whole.kept, whole_n).into_iter().chain(thin(self.cut.kept, cut_n)).map(|(_, s)| s).collect();
        kept.sort_by_key(|s| s.time);
        let mut case = Case {
            format: FORMAT_VERSION,
            target: target.to_string(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            images: Vec::new(),
            mappings: Vec::new(),
            perf_map: Vec::new(),
            memory: Vec::new(),
            samples: Vec::new(),
        };
        // Each image's addresses in all samples, in the file's own address space.
        let mut svmas: HashMap<ImageId, Vec<u64>> = HashMap::new();
        for snapshot in &kept {
            for (m, image) in &snapshot.mappings {
                let Some(loaded) = image.and_then(|id| elf.get(id)) else { continue };
                let bias = loaded.load_bias(m.start, m.pgoff);
                let inside = snapshot.lookups.iter().filter(|&&a| a >= m.start && a < m.end);
                svmas.entry(loaded.id).or_default().extend(inside.map(|a| a.wrapping_sub(bias)));
            }
        }
        let mut images: HashMap<ImageId, Option<usize>> = HashMap::new();
        let mut mappings: HashMap<MappingRecord, usize> = HashMap::new();
        let mut lines: HashMap<String, usize> = HashMap::new();
        let mut memory: HashMap<MemoryRecord, usize> = HashMap::new();
        for snapshot in kept {
            let mut record = snapshot.record;
            for (mut mapping, image) in snapshot.mappings {
                mapping.image = image.and_then(|id| {
                    *images.entry(id).or_insert_with(|| {
                        let image = elf.get(id)?;
                        match image_extents(image, svmas.get(&id).map_or(&[][..], Vec::as_slice)) {
                            Ok((file_len, extents, functions)) => {
                                case.images.push(ImageRecord {
                                    path: image.path.clone(),
                                    build_id: image.build_id.as_deref().map(hex),
                                    file_len,
                                    extents,
                                    functions,
                                });
                                Some(case.images.len() - 1)
                            }
                            Err(e) => {
                                tracing::warn!("the replay case lacks an image: {e}");
                                None
                            }
                        }
                    })
                });
                record.mappings.push(intern(&mut mappings, &mut case.mappings, mapping));
            }
            for line in snapshot.perf_map {
                record.perf_map.push(intern(&mut lines, &mut case.perf_map, line));
            }
            for m in snapshot.memory {
                record.memory.push(intern(&mut memory, &mut case.memory, m));
            }
            case.samples.push(record);
        }
        case
    }

    /// Writes the case as `case.json.gz` in the directory, which is created if needed. The
    /// agent runs as root and the directory may be anyone's: the file must be new, and no
    /// link planted in the directory is followed.
    pub fn write(self, target: &str, elf: &ElfCache) -> Result<PathBuf, CaptureError> {
        use nix::fcntl::{open, openat, OFlag};
        use nix::sys::stat::Mode;
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.dir.clone();
        match std::fs::DirBuilder::new().recursive(true).mode(0o755).create(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(CaptureError::Dir { path: dir, source: e })
            }
            _ => {}
        }
        let path = dir.join(CASE_FILE);
        let create = |source| CaptureError::Create { path: path.clone(), source };
        let dir_fd =
            open(&dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(create)?;
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(dir_fd.as_fd(), CASE_FILE, flags, Mode::from_bits_truncate(0o644)).map_err(create)?;
        let case = self.into_case(target, elf);
        tracing::info!(
            samples = case.samples.len(),
            images = case.images.len(),
            "writing replay case {}",
            path.display()
        );
        case.write_to(File::from(fd), &path)?;
        Ok(path)
    }
}

fn intern<T: Clone + Eq + std::hash::Hash>(index: &mut HashMap<T, usize>, table: &mut Vec<T>, value: T) -> usize {
    *index.entry(value.clone()).or_insert_with(|| {
        table.push(value);
        table.len() - 1
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinning_keeps_an_even_selection() {
        assert_eq!(thin((0..10).collect(), 3), vec![0, 3, 6]);
        assert_eq!(thin((0..2).collect(), 3), vec![0, 1]);
    }

    #[test]
    fn spread_keeps_an_even_selection_of_any_run() {
        let mut spread = Spread::new(4);
        let record = |i: u64| Snapshot {
            time: i,
            record: SampleRecord {
                pid: 1,
                tid: 1,
                ip: i,
                sp: 0,
                bp: 0,
                bx: 0,
                stack: Vec::new(),
                stack_len: 0,
                stack_filled: false,
                mappings: Vec::new(),
                perf_map: Vec::new(),
                memory: Vec::new(),
                history: None,
                expected: Expected { end: "complete".into(), completed: false, frames: Vec::new() },
            },
            mappings: Vec::new(),
            lookups: Vec::new(),
            perf_map: Vec::new(),
            memory: Vec::new(),
        };
        for i in 0..100 {
            if let Some(index) = spread.wants() {
                spread.keep(index, record(i));
            }
        }
        let kept: Vec<u64> = spread.kept.iter().map(|(i, _)| *i).collect();
        assert!(kept.len() <= 4 && kept.len() >= 2, "{kept:?}");
        assert_eq!(kept.first(), Some(&0));
        assert!(kept.last().is_some_and(|&l| l >= 50), "reaches the second half: {kept:?}");
    }
}
