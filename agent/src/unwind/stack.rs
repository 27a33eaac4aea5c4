//! The unwind loop: framehop (DWARF CFI) for native frames an FDE covers, the prologue rule or a
//! checked scan for those none covers (`no_cfi`), and the fixed trampoline rule for CPython's
//! perf trampolines. Every return address must follow a call instruction (`call_site`).

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{Error as FramehopError, ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder};

use super::call_site::CallBefore;
use super::elf::{ElfImage, SectionBytes};
use super::no_cfi::{self, FrameRegs, Outcome};
use super::trampoline::{self, TrampolineError, TrampolineKind};
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
    /// A return address that is not right after a call in executable code: the unwind rule
    /// read data (or the stack is corrupt), so the walk stops there instead of inventing a frame.
    BadReturnAddress,
    /// Code without unwind info, whose caller a scan of its frame could not find for certain.
    NoCfi,
}

#[derive(Debug, Clone)]
pub struct UnwoundStack {
    /// Leaf first.
    pub frames: Vec<RawFrame>,
    pub end: StackEnd,
    /// Bytes at the start of the copy the walk read: a replay recording keeps only these.
    pub stack_read: usize,
    /// Frames of code without unwind info whose caller was found (see [`no_cfi`]).
    pub without_cfi: usize,
}

/// What the walk must know about the target's code besides its unwind tables.
pub trait CodeLookup {
    /// The start address and variant of the perf trampoline containing `addr`.
    fn trampoline_at(&self, addr: u64) -> Option<(u64, TrampolineKind)>;
    /// The call that `addr`, as a return address, returns from: `None` if `addr` is not in
    /// executable code or no call ends there. Code whose bytes cannot be read counts as an
    /// indirect call.
    fn call_before(&self, addr: u64) -> Option<CallBefore>;
    /// Whether unwind info (an FDE) covers `lookup_addr`. Where ember cannot tell, `true`:
    /// framehop then decides, as it would without this check.
    fn has_cfi(&self, lookup_addr: u64) -> bool;
    /// Whether a direct call to `target` entered the function running at `pc`: `target` is
    /// its start, or a PLT stub of its name.
    fn may_enter(&self, target: u64, pc: u64) -> bool;
    /// The code of the function containing `pc` (by its symbol), from its start up to `pc`.
    fn function_code(&self, pc: u64) -> Option<&[u8]>;
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

/// Why a frame's caller was not found by an unwind rule.
pub(super) enum StepError {
    /// No unwind info covers the frame: only a search ([`no_cfi`]) can find its caller.
    NoCfi,
    /// The frame is at an offset of a trampoline that no rule covers.
    Trampoline,
    Framehop(FramehopError),
}

/// What every step of a walk consults: the unwind tables, framehop's cache and the target's code.
pub(super) struct Rules<'a, C> {
    pub unwinder: &'a NativeUnwinder,
    pub cache: &'a mut UnwindCache,
    pub code: &'a C,
}

impl<C: CodeLookup> Rules<'_, C> {
    /// The caller of the frame at `address` by its rule: the trampoline's fixed one or its FDE's.
    /// On success `regs` hold the caller's stack and frame pointers; `None` means the root.
    pub(super) fn step(
        &mut self,
        address: FrameAddress,
        regs: &mut UnwindRegsX86_64,
        read_stack: &mut impl FnMut(u64) -> Result<u64, ()>,
    ) -> Result<Option<u64>, StepError> {
        let pc = address.address();
        match self.code.trampoline_at(pc) {
            Some((start, kind)) => match trampoline::unwind(kind, pc - start, regs.sp(), regs.bp(), read_stack) {
                Ok(caller) => {
                    regs.set_sp(caller.sp);
                    regs.set_bp(caller.bp);
                    Ok(Some(caller.return_address))
                }
                Err(TrampolineError::CouldNotReadStack(a)) => {
                    Err(StepError::Framehop(FramehopError::CouldNotReadStack(a)))
                }
                Err(TrampolineError::BadOffset(_)) => Err(StepError::Trampoline),
            },
            None if self.code.has_cfi(address.address_for_lookup()) => {
                self.unwinder.unwind_frame(address, regs, self.cache, read_stack).map_err(StepError::Framehop)
            }
            None => Err(StepError::NoCfi),
        }
    }

    /// Whether `return_address`, resuming with `caller_sp`, can be the caller of a frame whose
    /// stack pointer was `callee_sp`: it must follow a call in executable code, and the caller's
    /// frame must sit above its callee's (the stack grows down).
    pub(super) fn check_caller(
        &self,
        return_address: u64,
        caller_sp: u64,
        callee_sp: u64,
    ) -> Result<(), UnwindFailure> {
        if self.code.call_before(return_address).is_none() {
            return Err(UnwindFailure::BadReturnAddress);
        }
        if caller_sp < callee_sp {
            return Err(UnwindFailure::Loop);
        }
        Ok(())
    }
}

/// Walks one sampled stack. Never fails as a whole: whatever was unwound is returned, with
/// the reason the walk stopped.
pub fn unwind_stack(
    unwinder: &NativeUnwinder,
    cache: &mut UnwindCache,
    code: &impl CodeLookup,
    regs: Option<UserRegs>,
    stack: &[u8],
    stack_filled: bool,
) -> UnwoundStack {
    let Some(regs) = regs else {
        return UnwoundStack {
            frames: Vec::new(),
            end: StackEnd::Failed(UnwindFailure::NoRegisters),
            stack_read: 0,
            without_cfi: 0,
        };
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

    let mut rules = Rules { unwinder, cache, code };
    let mut frames = vec![RawFrame { addr: regs.ip, sp: regs.sp }];
    let mut uregs = UnwindRegsX86_64::new(regs.ip, regs.sp, regs.bp);
    let mut address = FrameAddress::from_instruction_pointer(regs.ip);
    let mut without_cfi = 0;
    let end = loop {
        if frames.len() >= MAX_FRAMES {
            break StackEnd::Failed(UnwindFailure::TooDeep);
        }
        let callee_sp = uregs.sp();
        let next = match rules.step(address, &mut uregs, &mut read_stack) {
            Ok(caller) => Ok(caller),
            Err(StepError::Framehop(e)) => Err(e),
            Err(StepError::Trampoline) => break StackEnd::Failed(UnwindFailure::Trampoline),
            // framehop would guess here (the word at rsp, or a frame-pointer chain through a
            // register such code uses for data): find the caller by a checked search instead.
            Err(StepError::NoCfi) => {
                let sampled_bx = (frames.len() == 1).then_some(regs.bx);
                let frame = FrameRegs { pc: address.address(), regs: &uregs, sampled_bx };
                match no_cfi::find_caller(&mut rules, &frame, &mut read_stack) {
                    Outcome::Found { return_address, sp, bp } => {
                        uregs.set_sp(sp);
                        uregs.set_bp(bp);
                        without_cfi += 1;
                        Ok(Some(return_address))
                    }
                    Outcome::OutOfCopy(addr) => Err(FramehopError::CouldNotReadStack(addr)),
                    Outcome::NotFound => break StackEnd::Failed(UnwindFailure::NoCfi),
                }
            }
        };
        match next {
            Ok(Some(return_address)) => {
                let Some(next_address) = FrameAddress::from_return_address(return_address) else {
                    break StackEnd::Complete;
                };
                if let Err(failure) = rules.check_caller(return_address, uregs.sp(), callee_sp) {
                    break StackEnd::Failed(failure);
                }
                frames.push(RawFrame { addr: return_address, sp: uregs.sp() });
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
    UnwoundStack { frames, end, stack_read, without_cfi }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trampolines at the given starts; code without unwind info at `NO_CFI`, whose function
    /// starts there with `prologue` (none: no symbol); every other address is covered by unwind
    /// info, and is after a call if it is a trampoline's return point or listed in `direct`
    /// (return address, call target).
    #[derive(Default)]
    struct TestCode {
        trampolines: Vec<u64>,
        direct: Vec<(u64, u64)>,
        prologue: Option<Vec<u8>>,
    }

    fn one_trampoline(start: u64) -> TestCode {
        TestCode { trampolines: vec![start], ..TestCode::default() }
    }

    const NO_CFI: std::ops::Range<u64> = 0x40_0000..0x40_1000;

    impl CodeLookup for TestCode {
        fn trampoline_at(&self, addr: u64) -> Option<(u64, TrampolineKind)> {
            let kind = sub_form();
            self.trampolines.iter().find(|&&t| addr >= t && addr < t + kind.len()).map(|&t| (t, kind))
        }
        fn call_before(&self, addr: u64) -> Option<CallBefore> {
            if let Some(&(_, target)) = self.direct.iter().find(|(ra, _)| *ra == addr) {
                return Some(CallBefore::Direct { target });
            }
            let (start, kind) = self.trampoline_at(addr.checked_sub(1)?)?;
            kind.returns_at(addr - start).then_some(CallBefore::Indirect)
        }
        fn has_cfi(&self, lookup_addr: u64) -> bool {
            !NO_CFI.contains(&lookup_addr)
        }
        fn may_enter(&self, target: u64, pc: u64) -> bool {
            NO_CFI.contains(&pc) && target == NO_CFI.start
        }
        fn function_code(&self, pc: u64) -> Option<&[u8]> {
            self.prologue.as_deref()?.get(..usize::try_from(pc.checked_sub(NO_CFI.start)?).ok()?)
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
        let lookup = one_trampoline(t);
        let sp = 0x7ffc_0000_0000;
        let stack = stack_bytes(&[0, t + 6, 0]);
        let unwinder = NativeUnwinder::new();
        let mut cache = UnwindCache::new();
        let regs = UserRegs { ip: t + 6, sp, bp: 0, bx: 0 };
        let unwound = unwind_stack(&unwinder, &mut cache, &lookup, Some(regs), &stack, true);
        assert_eq!(unwound.frames[0], RawFrame { addr: t + 6, sp });
        assert_eq!(unwound.frames[1], RawFrame { addr: t + 6, sp: sp + 16 });
        assert_eq!(unwound.end, StackEnd::Truncated, "caller's return address lies past the 24-byte copy");
    }

    #[test]
    fn walking_off_a_short_copy_reaches_the_stack_top() {
        let t = 0x7f00_0000_0000;
        let lookup = one_trampoline(t);
        let unwinder = NativeUnwinder::new();
        let mut cache = UnwindCache::new();
        let regs = UserRegs { ip: t + 6, sp: 0x1000, bp: 0, bx: 0 };
        let unwound = unwind_stack(&unwinder, &mut cache, &lookup, Some(regs), &[0; 8], false);
        assert_eq!(unwound.end, StackEnd::Complete);
        assert_eq!(unwound.frames.len(), 1);
    }

    #[test]
    fn reads_below_the_copy_are_failures() {
        let t = 0x7f00_0000_0000;
        let lookup = one_trampoline(t);
        let unwinder = NativeUnwinder::new();
        let mut cache = UnwindCache::new();
        // CFA-8 lies below sp only if sp wrapped: use an sp whose CFA overflows the copy start.
        let regs = UserRegs { ip: t + 6, sp: u64::MAX - 4, bp: 0, bx: 0 };
        let unwound = unwind_stack(&unwinder, &mut cache, &lookup, Some(regs), &[0; 64], true);
        assert!(matches!(unwound.end, StackEnd::Failed(_)), "{:?}", unwound.end);
    }

    #[test]
    fn no_registers_gives_no_frames() {
        let unwinder = NativeUnwinder::new();
        let mut cache = UnwindCache::new();
        let unwound = unwind_stack(&unwinder, &mut cache, &one_trampoline(0), None, &[], false);
        assert!(unwound.frames.is_empty());
        assert_eq!(unwound.end, StackEnd::Failed(UnwindFailure::NoRegisters));
    }

    #[test]
    fn data_read_as_a_return_address_stops_the_walk() {
        // A trampoline frame whose return address slot holds a double, not code.
        let t = 0x7f00_0000_0000;
        let sp = 0x7ffc_0000_0000;
        let stack = stack_bytes(&[0, 0x3f49_d7fb_1e89_07b2, 0]);
        let regs = UserRegs { ip: t + 6, sp, bp: 0, bx: 0 };
        let unwound =
            unwind_stack(&NativeUnwinder::new(), &mut UnwindCache::new(), &one_trampoline(t), Some(regs), &stack, true);
        assert_eq!(unwound.frames.len(), 1, "the double is not a frame");
        assert_eq!(unwound.end, StackEnd::Failed(UnwindFailure::BadReturnAddress));
    }

    const DOUBLE: u64 = 0x3f49_d7fb_1e89_07b2;

    #[test]
    fn code_without_unwind_info_gets_its_caller_from_its_prologue() {
        let (t1, t2) = (0x7f00_0000_0000, 0x7f00_0000_1000);
        // sub $0x18,%rsp; xor %eax,%eax: the return address is at rsp + 0x18.
        let code = TestCode {
            trampolines: vec![t1, t2],
            prologue: Some(vec![0x48, 0x83, 0xec, 0x18, 0x31, 0xc0]),
            ..TestCode::default()
        };
        let sp = 0x7ffc_0000_0000;
        // A spilled double, then a stale return address a scan would have to judge: the
        // prologue says where the real one is.
        let stack = stack_bytes(&[DOUBLE, t2 + 6, 0x1234, t1 + 6]);
        let regs = UserRegs { ip: NO_CFI.start + 6, sp, bp: DOUBLE, bx: 0 };
        let unwound = unwind_stack(&NativeUnwinder::new(), &mut UnwindCache::new(), &code, Some(regs), &stack, true);
        let addrs: Vec<(u64, u64)> = unwound.frames.iter().map(|f| (f.addr, f.sp)).collect();
        assert_eq!(addrs, vec![(NO_CFI.start + 6, sp), (t1 + 6, sp + 0x20)]);
        assert_eq!(unwound.without_cfi, 1);
        assert_eq!(unwound.end, StackEnd::Truncated, "t1's caller lies past the copy");
    }

    #[test]
    fn a_scan_takes_only_a_call_that_entered_the_function() {
        let t = 0x7f00_0000_0000;
        let (stale, real) = (0x50_0010, 0x50_0020);
        let code =
            TestCode { trampolines: vec![t], direct: vec![(stale, 0x60_0000), (real, NO_CFI.start)], prologue: None };
        let sp = 0x7ffc_0000_0000;
        let stack = stack_bytes(&[
            DOUBLE, // not code
            t + 6,  // after an indirect call, but the function has pushed something: unprovable
            stale,  // a direct call to another function
            real,   // a direct call to this one
            0,
        ]);
        let regs = UserRegs { ip: NO_CFI.start + 0x40, sp, bp: 0, bx: 0 };
        let unwound = unwind_stack(&NativeUnwinder::new(), &mut UnwindCache::new(), &code, Some(regs), &stack, true);
        let addrs: Vec<(u64, u64)> = unwound.frames.iter().map(|f| (f.addr, f.sp)).collect();
        assert_eq!(addrs, vec![(NO_CFI.start + 0x40, sp), (real, sp + 32)]);
        assert_eq!(unwound.end, StackEnd::Complete, "bp 0 ends the walk at the caller");

        // At the function's entry the word at rsp is the return address, whatever the call.
        let stack = stack_bytes(&[t + 6, 0]);
        let regs = UserRegs { ip: NO_CFI.start + 0x40, sp, bp: 0, bx: 0 };
        let unwound = unwind_stack(&NativeUnwinder::new(), &mut UnwindCache::new(), &code, Some(regs), &stack, true);
        assert_eq!(unwound.frames.get(1).map(|f| f.addr), Some(t + 6));
    }

    #[test]
    fn a_scan_that_finds_no_caller_leaves_it_unknown() {
        let sp = 0x7ffc_0000_0000;
        let stack = stack_bytes(&vec![0x1234_5678; 8192]);
        let regs = UserRegs { ip: NO_CFI.start, sp, bp: 0, bx: 0 };
        let unwound =
            unwind_stack(&NativeUnwinder::new(), &mut UnwindCache::new(), &one_trampoline(0), Some(regs), &stack, true);
        assert_eq!(unwound.frames.len(), 1);
        assert_eq!(unwound.end, StackEnd::Failed(UnwindFailure::NoCfi));
        assert!(unwound.stack_read <= 40 << 10, "the scan is bounded: read {}", unwound.stack_read);
    }
}
