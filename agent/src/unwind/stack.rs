//! The unwind loop: framehop (DWARF CFI, frame-pointer fallback where no CFI exists) for
//! native frames, and the fixed trampoline rule for CPython's perf trampolines.

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{Error as FramehopError, ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder};

use super::elf::{ElfImage, SectionBytes};
use super::trampoline::{self, TrampolineKind};
use crate::perf::UserRegs;

pub type NativeUnwinder = UnwinderX86_64<SectionBytes>;
pub type UnwindCache = CacheX86_64;

/// Longest stack ember will walk; protects against loops in corrupt stacks.
pub const MAX_FRAMES: usize = 4096;

/// One frame as found on the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawFrame {
    /// The sampled instruction pointer for the first frame, a return address for the others.
    pub addr: u64,
    /// The stack pointer while this frame runs (its callee's CFA).
    pub sp: u64,
}

impl RawFrame {
    /// The address to symbolize: a return address points after the call, so look one byte
    /// back to land in the calling instruction (and in the right inline scope).
    pub fn lookup_addr(&self, is_first: bool) -> u64 {
        if is_first {
            self.addr
        } else {
            self.addr.saturating_sub(1)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackEnd {
    /// Reached the root (`_start` or a thread's start routine).
    Complete,
    /// Ran out of copied stack: the kernel's copy was full and the stack goes on.
    Truncated,
    /// Could not find the caller for another reason.
    Failed(UnwindFailure),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnwindFailure {
    NoRegisters,
    BadStackRead,
    Loop,
    TooDeep,
    Trampoline,
}

#[derive(Debug, Clone)]
pub struct UnwoundStack {
    /// Leaf first.
    pub frames: Vec<RawFrame>,
    pub end: StackEnd,
    /// Bytes at the start of the copy the walk read: a replay recording keeps only these.
    pub stack_read: usize,
}

/// Where the perf trampolines are; implemented by the perf-map table.
pub trait TrampolineLookup {
    /// The start address and variant of the trampoline containing `addr`.
    fn trampoline_at(&self, addr: u64) -> Option<(u64, TrampolineKind)>;
}

/// Builds the framehop module for one executable mapping of `image`.
pub fn native_module(image: &ElfImage, start: u64, end: u64, pgoff: u64) -> Module<SectionBytes> {
    let svma = |s: &Option<super::elf::Section>| s.as_ref().map(|s| s.svma.clone());
    let bytes = |s: &Option<super::elf::Section>| s.as_ref().map(|s| s.bytes.clone());
    Module::new(
        image.path.clone(),
        start..end,
        image.load_bias(start, pgoff),
        ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: svma(&image.text),
            text: bytes(&image.text),
            stubs_svma: None,
            stub_helper_svma: None,
            got_svma: image.got.clone(),
            unwind_info: None,
            eh_frame_svma: svma(&image.eh_frame),
            eh_frame: bytes(&image.eh_frame),
            eh_frame_hdr_svma: svma(&image.eh_frame_hdr),
            eh_frame_hdr: bytes(&image.eh_frame_hdr),
            debug_frame: bytes(&image.debug_frame),
            text_segment_svma: None,
            text_segment: None,
        },
    )
}

/// Walks one sampled stack. Never fails as a whole: whatever was unwound is returned, with
/// the reason the walk stopped.
pub fn unwind_stack(
    unwinder: &NativeUnwinder,
    cache: &mut UnwindCache,
    trampolines: &impl TrampolineLookup,
    regs: Option<UserRegs>,
    stack: &[u8],
    stack_filled: bool,
) -> UnwoundStack {
    let Some(regs) = regs else {
        return UnwoundStack { frames: Vec::new(), end: StackEnd::Failed(UnwindFailure::NoRegisters), stack_read: 0 };
    };
    let stack_start = regs.sp;
    let stack_end = regs.sp.saturating_add(stack.len() as u64);
    let mut stack_read = 0;
    let mut read_stack = |addr: u64| -> Result<u64, ()> {
        let offset = usize::try_from(addr.checked_sub(stack_start).ok_or(())?).map_err(|_| ())?;
        let read_end = offset.checked_add(8).ok_or(())?;
        let bytes = stack.get(offset..read_end).ok_or(())?;
        stack_read = stack_read.max(read_end);
        Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
    };
    let beyond_copy = |addr: u64| addr >= stack_end;

    let mut frames = vec![RawFrame { addr: regs.ip, sp: regs.sp }];
    let mut uregs = UnwindRegsX86_64::new(regs.ip, regs.sp, regs.bp);
    let mut address = FrameAddress::from_instruction_pointer(regs.ip);
    let end = loop {
        if frames.len() >= MAX_FRAMES {
            break StackEnd::Failed(UnwindFailure::TooDeep);
        }
        let pc = address.address();
        let next = match trampolines.trampoline_at(pc) {
            Some((start, kind)) => {
                match trampoline::unwind(kind, pc - start, uregs.sp(), uregs.bp(), &mut read_stack) {
                    Ok(caller) => {
                        uregs.set_sp(caller.sp);
                        uregs.set_bp(caller.bp);
                        Ok(Some(caller.return_address))
                    }
                    Err(trampoline::TrampolineError::CouldNotReadStack(a)) => Err(FramehopError::CouldNotReadStack(a)),
                    Err(trampoline::TrampolineError::BadOffset(_)) => {
                        break StackEnd::Failed(UnwindFailure::Trampoline)
                    }
                }
            }
            None => unwinder.unwind_frame(address, &mut uregs, cache, &mut read_stack),
        };
        match next {
            Ok(Some(return_address)) => {
                let Some(next_address) = FrameAddress::from_return_address(return_address) else {
                    break StackEnd::Complete;
                };
                let sp = uregs.sp();
                // The stack grows down: a caller's frame must sit above its callee's.
                if frames.last().is_some_and(|f| sp < f.sp) {
                    break StackEnd::Failed(UnwindFailure::Loop);
                }
                frames.push(RawFrame { addr: return_address, sp });
                address = next_address;
            }
            Ok(None) => break StackEnd::Complete,
            Err(FramehopError::CouldNotReadStack(addr)) if beyond_copy(addr) && stack_filled => {
                break StackEnd::Truncated
            }
            // The kernel copied less than asked because it reached the top of the stack, so
            // nothing lies beyond: this frame is the root (ld.so's `_start` has no CFI end mark).
            Err(FramehopError::CouldNotReadStack(addr)) if beyond_copy(addr) => break StackEnd::Complete,
            Err(FramehopError::CouldNotReadStack(_)) => break StackEnd::Failed(UnwindFailure::BadStackRead),
            Err(FramehopError::ReturnAddressIsNull) => break StackEnd::Complete,
            Err(_) => break StackEnd::Failed(UnwindFailure::Loop),
        }
    };
    UnwoundStack { frames, end, stack_read }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct OneTrampoline(u64, TrampolineKind);

    impl TrampolineLookup for OneTrampoline {
        fn trampoline_at(&self, addr: u64) -> Option<(u64, TrampolineKind)> {
            (addr >= self.0 && addr < self.0 + self.1.len()).then_some((self.0, self.1))
        }
    }

    fn sub_form() -> TrampolineKind {
        TrampolineKind::from_len(11).expect("11-byte form")
    }

    fn stack_bytes(words: &[u64]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn steps_through_a_trampoline_and_reports_truncation() {
        // The sampled IP sits inside a trampoline right after its call returned (offset 6),
        // its return address points into a second trampoline, whose caller is beyond the copy.
        let t = 0x7f00_0000_0000;
        let lookup = OneTrampoline(t, sub_form());
        let sp = 0x7ffc_0000_0000;
        let stack = stack_bytes(&[0, t + 6, 0]);
        let unwinder = NativeUnwinder::new();
        let mut cache = UnwindCache::new();
        let regs = UserRegs { ip: t + 6, sp, bp: 0 };
        let unwound = unwind_stack(&unwinder, &mut cache, &lookup, Some(regs), &stack, true);
        assert_eq!(unwound.frames[0], RawFrame { addr: t + 6, sp });
        assert_eq!(unwound.frames[1], RawFrame { addr: t + 6, sp: sp + 16 });
        assert_eq!(unwound.end, StackEnd::Truncated, "caller's return address lies past the 24-byte copy");
    }

    #[test]
    fn walking_off_a_short_copy_reaches_the_stack_top() {
        let t = 0x7f00_0000_0000;
        let lookup = OneTrampoline(t, sub_form());
        let unwinder = NativeUnwinder::new();
        let mut cache = UnwindCache::new();
        let regs = UserRegs { ip: t + 6, sp: 0x1000, bp: 0 };
        let unwound = unwind_stack(&unwinder, &mut cache, &lookup, Some(regs), &[0; 8], false);
        assert_eq!(unwound.end, StackEnd::Complete);
        assert_eq!(unwound.frames.len(), 1);
    }

    #[test]
    fn reads_below_the_copy_are_failures() {
        let t = 0x7f00_0000_0000;
        let lookup = OneTrampoline(t, sub_form());
        let unwinder = NativeUnwinder::new();
        let mut cache = UnwindCache::new();
        // CFA-8 lies below sp only if sp wrapped: use an sp whose CFA overflows the copy start.
        let regs = UserRegs { ip: t + 6, sp: u64::MAX - 4, bp: 0 };
        let unwound = unwind_stack(&unwinder, &mut cache, &lookup, Some(regs), &[0; 64], true);
        assert!(matches!(unwound.end, StackEnd::Failed(_)), "{:?}", unwound.end);
    }

    #[test]
    fn no_registers_gives_no_frames() {
        let unwinder = NativeUnwinder::new();
        let mut cache = UnwindCache::new();
        let unwound = unwind_stack(&unwinder, &mut cache, &OneTrampoline(0, sub_form()), None, &[], false);
        assert!(unwound.frames.is_empty());
        assert_eq!(unwound.end, StackEnd::Failed(UnwindFailure::NoRegisters));
    }
}
