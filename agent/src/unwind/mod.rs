//! Stage 3, **unwind**: turns a sample's registers and stack copy into return addresses,
//! through native code (DWARF CFI via framehop; the prologue of code without CFI) and CPython's
//! perf trampolines, and completes stacks the kernel's copy cut short.

pub(crate) mod call_site;
pub(crate) mod completion;
pub(crate) mod coverage;
pub(crate) mod elf;
mod no_cfi;
pub(crate) mod prologue;
pub(crate) mod stack;
pub(crate) mod trampoline;

pub(crate) use completion::{Reference, StackCompleter};
pub use elf::{ElfCache, ElfError, ElfImage, FileIdentity, ImageId};
pub(crate) use stack::{unwind_stack, NativeUnwinder, StackEnd, UnwindCache};
pub(crate) use trampoline::TrampolineKind;
