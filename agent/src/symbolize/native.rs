//! Native and kernel symbols through blazesym: `.symtab`/`.dynsym`, demangled, with DWARF
//! inline frames where debug info exists.

use blazesym::symbolize::source::{Elf, Kernel, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer};

use crate::unwind::ElfImage;

/// One function of a symbolized address; an address inside inlined code yields several,
/// outermost first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeName {
    pub function: String,
}

#[derive(Debug)]
pub struct NativeSymbolizer {
    inner: Symbolizer,
}

impl Default for NativeSymbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl NativeSymbolizer {
    pub fn new() -> Self {
        // Code info (DWARF lines) is what blazesym needs to report inlined functions.
        let inner =
            Symbolizer::builder().enable_code_info(true).enable_inlined_fns(true).enable_demangling(true).build();
        Self { inner }
    }

    /// Symbolizes file offsets of one image; one entry per offset, empty when unknown. PLT
    /// stubs are named from the image's relocations, the rest by blazesym.
    pub fn symbolize_image(&self, image: &ElfImage, file_offsets: &[u64]) -> Vec<Vec<NativeName>> {
        let mut out = vec![Vec::new(); file_offsets.len()];
        let (mut positions, mut rest) = (Vec::new(), Vec::new());
        for (i, &offset) in file_offsets.iter().enumerate() {
            match image.plt.name_at(offset) {
                Some(stub) => out[i] = vec![NativeName { function: stub.to_string() }],
                None => {
                    positions.push(i);
                    rest.push(offset);
                }
            }
        }
        if rest.is_empty() {
            return out;
        }
        let src = Source::Elf(Elf::new(image.fd_path()));
        match self.inner.symbolize(&src, Input::FileOffset(&rest)) {
            Ok(results) => {
                for (i, r) in positions.into_iter().zip(results) {
                    out[i] = names(&r);
                }
            }
            Err(e) => tracing::debug!(module = %image.path, "symbolization failed: {e}"),
        }
        out
    }

    /// Symbolizes kernel addresses from `/proc/kallsyms`.
    pub fn symbolize_kernel(&self, addrs: &[u64]) -> Vec<Option<String>> {
        let src = Source::Kernel(Kernel::default());
        match self.inner.symbolize(&src, Input::AbsAddr(addrs)) {
            Ok(results) => results
                .into_iter()
                .map(|r| match r {
                    Symbolized::Sym(sym) => Some(sym.name.into_owned()),
                    Symbolized::Unknown(_) => None,
                })
                .collect(),
            Err(e) => {
                tracing::debug!("kernel symbolization failed: {e}");
                vec![None; addrs.len()]
            }
        }
    }
}

fn names(result: &Symbolized<'_>) -> Vec<NativeName> {
    match result {
        Symbolized::Sym(sym) => {
            let mut out = vec![NativeName { function: sym.name.to_string() }];
            for f in sym.inlined.iter() {
                // DWARF sometimes reports a function as inlined into itself; show it once.
                if out.last().is_some_and(|prev| prev.function == f.name) {
                    continue;
                }
                out.push(NativeName { function: f.name.to_string() });
            }
            out
        }
        Symbolized::Unknown(_) => Vec::new(),
    }
}
