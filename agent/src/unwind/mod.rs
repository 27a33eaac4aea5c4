//! Stage 3, **unwind**: turns a sample's registers and stack copy into return addresses,
//! through native code (DWARF CFI via framehop) and CPython's perf trampolines, and
//! completes stacks the kernel's copy cut short.

pub mod completion;
pub mod elf;
pub mod stack;
pub mod trampoline;

pub use completion::StackCompleter;
pub use elf::{ElfCache, ElfError, ElfImage, FileIdentity, ImageId};
pub use stack::{unwind_stack, NativeUnwinder, RawFrame, StackEnd, UnwindCache, UnwindFailure, UnwoundStack};
pub use trampoline::TrampolineKind;
