//! A process's code as the unwind walk asks about it: where its trampolines are, whether an
//! address follows a call, whether unwind info covers it. Answers come from the mappings, the
//! mapped files' bytes and the verified perf map; the addresses asked about are logged, so a
//! replay recording can keep what the walk read.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use super::state::Mapping;
use crate::symbolize::perf_map::PerfMapTable;
use crate::unwind::call_site::{find_call, CallBefore, LONGEST_CALL};
use crate::unwind::coverage::cfi_covers;
use crate::unwind::prologue::PROLOGUE_BYTES;
use crate::unwind::stack::CodeLookup;
use crate::unwind::{ElfImage, TrampolineKind};

pub struct ProcessCode<'a> {
    pub mappings: &'a BTreeMap<u64, Mapping>,
    pub perf_map: &'a PerfMapTable,
    /// Addresses the walk asked about, for a replay recording.
    pub consulted: RefCell<Vec<u64>>,
    pub facts: RefCell<CodeFacts>,
}

/// Answers about addresses, kept across samples: the same return addresses come back in
/// nearly every sample, and an FDE lookup costs a binary search and a parse. They hold until
/// the mappings or the perf map change ([`CodeFacts::clear`]).
#[derive(Debug, Default)]
pub struct CodeFacts {
    cfi: HashMap<u64, bool>,
    calls: HashMap<u64, Option<CallBefore>>,
}

/// Most answers kept of each kind; past it they start over.
const MAX_FACTS: usize = 1 << 16;

impl CodeFacts {
    pub fn clear(&mut self) {
        self.cfi.clear();
        self.calls.clear();
    }
}

fn remember<V: Copy>(map: &mut HashMap<u64, V>, key: u64, value: V) -> V {
    if map.len() >= MAX_FACTS {
        map.clear();
    }
    map.insert(key, value);
    value
}

impl ProcessCode<'_> {
    fn mapping_at(&self, addr: u64) -> Option<(u64, &Mapping)> {
        let (&start, m) = self.mappings.range(..=addr).next_back()?;
        (addr < m.end).then_some((start, m))
    }

    /// The function symbol containing `addr`: its image-relative start and name, and the
    /// image and load bias.
    fn function_at(&self, addr: u64) -> Option<(u64, &str, &ElfImage, u64)> {
        let (start, m) = self.mapping_at(addr)?;
        let image = m.image.as_deref()?;
        let bias = image.load_bias(start, m.pgoff);
        let f = image.function_at(addr.wrapping_sub(bias))?;
        Some((f.start, &f.name, image, bias))
    }

    fn find_call_before(&self, addr: u64) -> Option<CallBefore> {
        if let Some((start, kind)) = self.perf_map.trampoline_at(addr.wrapping_sub(1)) {
            return kind.returns_at(addr - start).then_some(CallBefore::Indirect);
        }
        // The call's last byte decides the mapping: a call can end a mapping.
        let (start, m) = self.mapping_at(addr.checked_sub(1)?)?;
        match &m.image {
            Some(image) => {
                let offset = addr - start + m.pgoff;
                find_call(addr, image.file_bytes(offset.saturating_sub(LONGEST_CALL as u64)..offset))
            }
            // Executable memory whose bytes ember does not hold (JIT code, an image it could
            // not load): a return address there cannot be checked further.
            None => Some(CallBefore::Indirect),
        }
    }

    fn find_cfi(&self, lookup_addr: u64) -> bool {
        let Some((start, m)) = self.mapping_at(lookup_addr) else { return false };
        let Some(image) = &m.image else { return false };
        cfi_covers(image, lookup_addr.wrapping_sub(image.load_bias(start, m.pgoff)))
    }

    /// The name of the PLT stub at `addr`, without `@plt`.
    fn plt_stub(&self, addr: u64) -> Option<&str> {
        let (start, m) = self.mapping_at(addr)?;
        let name = m.image.as_ref()?.plt.name_at(addr - start + m.pgoff)?;
        Some(name.strip_suffix("@plt").unwrap_or(name))
    }
}

impl CodeLookup for ProcessCode<'_> {
    fn trampoline_at(&self, addr: u64) -> Option<(u64, TrampolineKind)> {
        self.perf_map.trampoline_at(addr)
    }

    fn call_before(&self, addr: u64) -> Option<CallBefore> {
        self.consulted.borrow_mut().push(addr);
        if let Some(&known) = self.facts.borrow().calls.get(&addr) {
            return known;
        }
        let call = self.find_call_before(addr);
        remember(&mut self.facts.borrow_mut().calls, addr, call)
    }

    fn has_cfi(&self, lookup_addr: u64) -> bool {
        self.consulted.borrow_mut().push(lookup_addr.wrapping_add(1));
        if let Some(&known) = self.facts.borrow().cfi.get(&lookup_addr) {
            return known;
        }
        let covered = self.find_cfi(lookup_addr);
        remember(&mut self.facts.borrow_mut().cfi, lookup_addr, covered)
    }

    fn may_enter(&self, target: u64, pc: u64) -> bool {
        // One past, as the log holds return addresses: a replay needs the stub's code.
        self.consulted.borrow_mut().push(target.wrapping_add(1));
        let Some((start, name, _, bias)) = self.function_at(pc) else { return false };
        // A stub's name may carry a symbol version (`memcpy@GLIBC_2.14`).
        let stub_enters = || self.plt_stub(target).is_some_and(|stub| stub.split('@').next() == Some(name));
        target == start.wrapping_add(bias) || stub_enters()
    }

    fn function_code(&self, pc: u64) -> Option<&[u8]> {
        let (start, _, image, bias) = self.function_at(pc)?;
        let from = image.offset_of_svma(start)?;
        let to = image.offset_of_svma(pc.wrapping_sub(bias))?;
        Some(image.file_bytes(from..to.min(from.saturating_add(PROLOGUE_BYTES))))
    }
}
