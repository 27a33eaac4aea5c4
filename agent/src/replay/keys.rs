//! The stable text of frame keys, which a case's expected frames are written in. Image ids
//! differ between runs, so native frames are named by the image's build-id (else its path).

use crate::intern::Interner;
use crate::process::FrameKey;
use crate::unwind::stack::{StackEnd, UnwindFailure};
use crate::unwind::ElfCache;

/// `map:<perf-map name>`, `native:<file name>@<build-id>+0x<file offset>`,
/// `unknown:<region>+0x<address>`, `kernel:0x<address>` or `[truncated]`.
pub fn frame_text(key: &FrameKey, strings: &Interner, elf: &ElfCache) -> String {
    match *key {
        FrameKey::MapSymbol(name) => format!("map:{}", strings.get(name)),
        FrameKey::PythonLine { name, line } => format!("map:{}:{line}", strings.get(name)),
        FrameKey::Native { image, file_offset } => match elf.get(image) {
            Some(image) => match &image.build_id {
                Some(id) => format!("native:{}@{}+{file_offset:#x}", image.basename(), hex(id)),
                None => format!("native:{}+{file_offset:#x}", image.path),
            },
            None => format!("native:?+{file_offset:#x}"),
        },
        FrameKey::Unknown { region, addr } => format!("unknown:{}+{addr:#x}", strings.get(region)),
        FrameKey::Kernel(addr) => format!("kernel:{addr:#x}"),
        FrameKey::Truncated => "[truncated]".to_string(),
    }
}

pub fn end_text(end: StackEnd) -> String {
    match end {
        StackEnd::Complete => "complete".into(),
        StackEnd::Truncated => "truncated".into(),
        StackEnd::Failed(why) => format!(
            "failed:{}",
            match why {
                UnwindFailure::NoRegisters => "no-registers",
                UnwindFailure::BadStackRead => "bad-stack-read",
                UnwindFailure::Loop => "loop",
                UnwindFailure::TooDeep => "too-deep",
                UnwindFailure::Trampoline => "trampoline",
                UnwindFailure::BadReturnAddress => "bad-return-address",
                UnwindFailure::NoCfi => "no-cfi",
            }
        ),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
