//! Finding the caller of code that has no unwind info (hand-written assembly such as OpenBLAS's
//! kernels, which keep data in rbp, so framehop's frame-pointer guess reads garbage).
//!
//! 1. **The prologue** (see [`prologue`]): from the function's symbol, decode its prologue up to
//!    the sampled instruction and take the return address where it puts it.
//! 2. **A checked scan**, where there is no symbol or the prologue does what ember does not
//!    follow: the frame's stack is read upwards for a word that is a return address. Stale
//!    return addresses of earlier calls lie in unused stack below the live frames and look
//!    just as real, so a word is taken only if its call provably entered the running function:
//!    a direct call to its start (or to a PLT stub of its name), or, for the sampled frame,
//!    the word at the stack pointer itself (the function has pushed nothing yet).
//!
//! Either way the return address must follow a call, and unwinding on from it with unwind
//! info must give return addresses that do too. What passes neither stays unknown.

use framehop::x86_64::UnwindRegsX86_64;
use framehop::{Error as FramehopError, FrameAddress};

use super::call_site::CallBefore;
use super::prologue::{rule_at, CfaRule};
use super::stack::{CodeLookup, Rules, StepError};

/// Most stack bytes scanned above a frame's stack pointer. Assembly kernels can keep large
/// buffers on the stack: OpenBLAS's Haswell DGEMM kernel sits on 28.3–32.3 KiB of its own
/// (`sub $0x7080,%rsp` then page alignment). Words that are not code are rejected by a lookup
/// in the mappings, so the bound is cheap; it stops runaway scans of huge frames.
const SCAN_BYTES: u64 = 40 << 10;
/// Most candidates checked by unwinding on from them, per frame.
const MAX_CANDIDATES: usize = 8;
/// Frames unwound past a candidate to check it.
const CHECK_FRAMES: usize = 3;

pub(super) enum Outcome {
    /// The caller: its return address, and the stack and frame pointers it resumes with.
    Found {
        return_address: u64,
        sp: u64,
        bp: u64,
    },
    /// The search reached the end of the stack copy (at this address) without a caller.
    OutOfCopy(u64),
    NotFound,
}

/// The registers of the frame whose caller is wanted.
pub(super) struct FrameRegs<'a> {
    pub pc: u64,
    pub regs: &'a UnwindRegsX86_64,
    /// rbx as sampled, for the sampled (innermost) frame only: no unwind rule restores it.
    pub sampled_bx: Option<u64>,
}

/// Finds the caller of the frame running code without unwind info at `frame.pc`.
pub(super) fn find_caller(
    rules: &mut Rules<'_, impl CodeLookup>,
    frame: &FrameRegs<'_>,
    read_stack: &mut impl FnMut(u64) -> Result<u64, ()>,
) -> Outcome {
    match from_prologue(rules, frame, read_stack) {
        Some(Outcome::NotFound) | None => scan(rules, frame, read_stack),
        Some(found) => found,
    }
}

/// The caller where the function's prologue put the return address; `None` without a rule.
fn from_prologue(
    rules: &mut Rules<'_, impl CodeLookup>,
    frame: &FrameRegs<'_>,
    read_stack: &mut impl FnMut(u64) -> Result<u64, ()>,
) -> Option<Outcome> {
    let rule = rule_at(rules.code.function_code(frame.pc)?)?;
    let cfa = match rule.cfa {
        CfaRule::Sp(offset) => frame.regs.sp().checked_add(offset)?,
        CfaRule::Bp(offset) => frame.regs.bp().checked_add(offset)?,
        CfaRule::Bx(offset) => frame.sampled_bx?.checked_add(offset)?,
    };
    // The caller's frame lies above this one's stack pointer.
    if cfa <= frame.regs.sp() {
        return Some(Outcome::NotFound);
    }
    let slot = cfa - 8;
    let Ok(word) = read_stack(slot) else { return Some(Outcome::OutOfCopy(slot)) };
    let bp = match rule.rbp_saved_at {
        Some(below) => match read_stack(cfa.checked_sub(below)?) {
            Ok(bp) => bp,
            Err(()) => return Some(Outcome::OutOfCopy(cfa - below)),
        },
        None => frame.regs.bp(),
    };
    Some(if takes(rules.code, word, frame.pc) && continues(rules, word, cfa, bp, read_stack) {
        Outcome::Found { return_address: word, sp: cfa, bp }
    } else {
        Outcome::NotFound
    })
}

/// Whether `word`, as the return address of the function running at `pc`, follows a call
/// that can have entered it: a direct call must name the function; an indirect one cannot.
fn takes(code: &impl CodeLookup, word: u64, pc: u64) -> bool {
    match code.call_before(word) {
        Some(CallBefore::Direct { target }) => code.may_enter(target, pc),
        Some(CallBefore::Indirect) => true,
        None => false,
    }
}

/// Scans the frame's stack upwards for a return address that provably belongs to it.
fn scan(
    rules: &mut Rules<'_, impl CodeLookup>,
    frame: &FrameRegs<'_>,
    read_stack: &mut impl FnMut(u64) -> Result<u64, ()>,
) -> Outcome {
    let code = rules.code;
    let sp = frame.regs.sp();
    let mut checked = 0;
    for slot in (sp..sp.saturating_add(SCAN_BYTES)).step_by(8) {
        let Ok(word) = read_stack(slot) else { return Outcome::OutOfCopy(slot) };
        // The word at the sampled frame's stack pointer, while it has pushed nothing yet (at
        // its entry, or in a PLT stub, which no symbol covers).
        let at_entry = slot == sp && frame.sampled_bx.is_some();
        let proven = match code.call_before(word) {
            Some(CallBefore::Direct { target }) => {
                code.may_enter(target, frame.pc) || (at_entry && code.function_code(frame.pc).is_none())
            }
            Some(CallBefore::Indirect) => at_entry,
            None => false,
        };
        if !proven {
            continue;
        }
        let caller_sp = slot + 8;
        // A function that pushes rbp first leaves the caller's just below its return address.
        let saved_bp = slot
            .checked_sub(8)
            .filter(|&at| at >= sp)
            .and_then(|at| read_stack(at).ok())
            .filter(|&bp| bp > slot && bp - slot < SCAN_BYTES << 4);
        for bp in saved_bp.into_iter().chain([frame.regs.bp()]) {
            if continues(rules, word, caller_sp, bp, read_stack) {
                return Outcome::Found { return_address: word, sp: caller_sp, bp };
            }
        }
        checked += 1;
        if checked == MAX_CANDIDATES {
            break;
        }
    }
    Outcome::NotFound
}

/// Whether unwinding on from a candidate caller gives return addresses after calls, up the
/// stack, for [`CHECK_FRAMES`] frames, or reaches the root or the end of the copy first.
/// Code without unwind info on the way ends the check: it can neither confirm nor refute.
fn continues(
    rules: &mut Rules<'_, impl CodeLookup>,
    return_address: u64,
    sp: u64,
    bp: u64,
    read_stack: &mut impl FnMut(u64) -> Result<u64, ()>,
) -> bool {
    let mut regs = UnwindRegsX86_64::new(return_address, sp, bp);
    let Some(mut address) = FrameAddress::from_return_address(return_address) else { return false };
    for _ in 0..CHECK_FRAMES {
        let callee_sp = regs.sp();
        match rules.step(address, &mut regs, read_stack) {
            Ok(Some(ra)) => {
                let Some(next) = FrameAddress::from_return_address(ra) else { return true };
                if rules.check_caller(ra, regs.sp(), callee_sp).is_err() {
                    return false;
                }
                address = next;
            }
            Ok(None)
            | Err(StepError::NoCfi)
            | Err(StepError::Framehop(FramehopError::ReturnAddressIsNull | FramehopError::CouldNotReadStack(_))) => {
                return true
            }
            Err(_) => return false,
        }
    }
    true
}
