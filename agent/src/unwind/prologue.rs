//! Unwind rules for code without CFI, derived from its function's prologue.
//!
//! Hand-written assembly (OpenBLAS's kernels) has no FDE, but its prologue says where the
//! return address is: `sub $0x60,%rsp` (saved registers), then perhaps `mov %rsp,%rbx` and
//! `sub $0x7080,%rsp; and $-4096,%rsp` (a page-aligned buffer, after which only rbx knows the
//! frame). ember decodes the instructions from the function's start up to the sampled
//! instruction, or to the end of the prologue, and tracks where the return address lies: a
//! known offset from rsp, or from the register that saved rsp. The body is assumed to leave
//! the stack pointer as the prologue set it, which such kernels do; the return address the
//! rule finds is still checked like any other.

/// How to find the caller's frame at one instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub cfa: CfaRule,
    /// The caller's rbp was saved at CFA - this.
    pub rbp_saved_at: Option<u64>,
}

/// Where the canonical frame address (the stack pointer before the call, return address at
/// CFA - 8) is, from the registers at the sampled instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CfaRule {
    /// CFA = rsp + offset.
    Sp(u64),
    /// CFA = rbx + offset.
    Bx(u64),
    /// CFA = rbp + offset.
    Bp(u64),
}

const RBX: u8 = 3;
const RSP: u8 = 4;
const RBP: u8 = 5;

/// What decoding knows about the frame at one instruction.
#[derive(Debug, Clone, Copy)]
struct Frame {
    /// rsp = CFA - 8 - below, while `rsp_known`.
    below: u64,
    rsp_known: bool,
    /// A register (number, with REX.B) holding CFA - offset.
    saved_sp: Option<(u8, u64)>,
    /// The caller's rbp is at CFA - this.
    rbp_saved_at: Option<u64>,
}

/// Most bytes of prologue decoded: real prologues are a few dozen.
const MAX_PROLOGUE: usize = 256;
/// The code a rule can need from a function's start: its longest prologue and one more
/// instruction (at most 15 bytes).
pub const PROLOGUE_BYTES: u64 = MAX_PROLOGUE as u64 + 16;

/// The CFA rule at `code.len()` bytes into a function whose code starts at `code[0]`.
/// `None` if the prologue does something this does not follow.
pub fn rule_at(code: &[u8]) -> Option<Rule> {
    let mut frame = Frame { below: 0, rsp_known: true, saved_sp: None, rbp_saved_at: None };
    let mut at = 0;
    while at < code.len() {
        if at >= MAX_PROLOGUE {
            return None; // longer than any real prologue: not one this follows
        }
        match step(&code[at..], &mut frame) {
            Step::Next(len) => at += len,
            // The prologue is over: the body runs with the frame as it is now.
            Step::End => break,
            Step::Lost => return None,
        }
    }
    let cfa = if frame.rsp_known {
        CfaRule::Sp(frame.below + 8)
    } else {
        match frame.saved_sp? {
            (RBX, offset) => CfaRule::Bx(offset),
            (RBP, offset) => CfaRule::Bp(offset),
            _ => return None,
        }
    };
    Some(Rule { cfa, rbp_saved_at: frame.rbp_saved_at })
}

enum Step {
    Next(usize),
    End,
    /// An instruction that moves the frame in a way not followed.
    Lost,
}

fn step(insn: &[u8], frame: &mut Frame) -> Step {
    if insn.starts_with(&[0xf3, 0x0f, 0x1e, 0xfa]) {
        return Step::Next(4); // endbr64
    }
    if insn.starts_with(&[0xc5, 0xf8, 0x77]) {
        return Step::Next(3); // vzeroupper
    }
    let (rex, rest) = match insn {
        [r @ 0x40..=0x4f, rest @ ..] => (*r, rest),
        _ => (0, insn),
    };
    let prefix = usize::from(rex != 0);
    let (rex_w, rex_r, rex_b) = (rex & 8 != 0, (rex >> 2) & 1, rex & 1);
    match *rest {
        // push r64
        [op @ 0x50..=0x57, ..] => {
            let reg = (op - 0x50) | (rex_b << 3);
            frame.below += 8;
            if reg == RBP && frame.rsp_known && frame.rbp_saved_at.is_none() {
                frame.rbp_saved_at = Some(frame.below + 8);
            }
            Step::Next(prefix + 1)
        }
        // sub/add/and $imm, %rsp
        [op @ (0x83 | 0x81), modrm, ..] if rex_w && modrm >> 6 == 3 && modrm & 7 == RSP && rex_b == 0 => {
            let len = prefix + 2 + if op == 0x83 { 1 } else { 4 };
            let Some(imm) = immediate(rest.get(2..), op == 0x83) else { return Step::Lost };
            match (modrm >> 3) & 7 {
                5 if imm >= 0 => frame.below += imm as u64, // sub
                4 => frame.rsp_known = false,               // and: aligned, only a saved rsp knows
                _ => return Step::End,                      // add (an epilogue) or anything else
            }
            Step::Next(len)
        }
        // mov %reg, r/m64 (a store, or a register move)
        [0x89, modrm, ..] if rex_w => {
            let (src, dst) = (((modrm >> 3) & 7) | (rex_r << 3), (modrm & 7) | (rex_b << 3));
            if modrm >> 6 != 3 {
                let Some(n) = modrm_len(&rest[1..]) else { return Step::End };
                if let (RBP, Some(disp), true, None) =
                    (src, rsp_displacement(&rest[1..]), frame.rsp_known, frame.rbp_saved_at)
                {
                    // Stored at rsp + disp = CFA - 8 - below + disp.
                    frame.rbp_saved_at = (frame.below + 8).checked_sub(disp);
                }
                return Step::Next(prefix + 1 + n);
            }
            if dst == RSP {
                return Step::End;
            }
            clobber(frame, dst);
            if src == RSP && frame.rsp_known {
                frame.saved_sp = Some((dst, frame.below + 8));
            }
            Step::Next(prefix + 2)
        }
        // mov r/m64, %reg (a load into a register)
        [0x8b, modrm, ..] if rex_w => {
            let dst = ((modrm >> 3) & 7) | (rex_r << 3);
            if dst == RSP {
                return Step::Lost; // a stack switch
            }
            clobber(frame, dst);
            modrm_len(&rest[1..]).map_or(Step::End, |n| Step::Next(prefix + 1 + n))
        }
        _ => Step::End,
    }
}

/// A register written: it no longer holds the saved stack pointer.
fn clobber(frame: &mut Frame, reg: u8) {
    if frame.saved_sp.is_some_and(|(r, _)| r == reg) {
        frame.saved_sp = None;
    }
}

/// The displacement of an `disp(%rsp)` operand (ModRM with a SIB of base rsp, no index).
fn rsp_displacement(bytes: &[u8]) -> Option<u64> {
    let (modrm, sib) = (*bytes.first()?, *bytes.get(1)?);
    if modrm & 7 != 4 || sib != 0x24 {
        return None;
    }
    match modrm >> 6 {
        0 => Some(0),
        1 => Some(u64::from(*bytes.get(2)?)),
        2 => Some(u64::from(u32::from_le_bytes(bytes.get(2..6)?.try_into().ok()?))),
        _ => None,
    }
}

fn immediate(bytes: Option<&[u8]>, short: bool) -> Option<i64> {
    let bytes = bytes?;
    if short {
        Some(i64::from(*bytes.first()? as i8))
    } else {
        Some(i64::from(i32::from_le_bytes(bytes.get(..4)?.try_into().ok()?)))
    }
}

/// Length of a ModRM operand (ModRM, SIB, displacement) starting at `bytes[0]`.
fn modrm_len(bytes: &[u8]) -> Option<usize> {
    let modrm = *bytes.first()?;
    let (md, rm) = (modrm >> 6, modrm & 7);
    let sib = md != 3 && rm == 4;
    let disp = match (md, rm) {
        (0, 5) => 4,
        (0, 4) if bytes.get(1)? & 7 == 5 => 4,
        (0, _) | (3, _) => 0,
        (1, _) => 1,
        _ => 4,
    };
    Some(1 + usize::from(sib) + disp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfa_rule(code: &[u8]) -> Option<CfaRule> {
        rule_at(code).map(|r| r.cfa)
    }

    /// The prologue of OpenBLAS 0.3's `dgemm_kernel_HASWELL`, as objdump shows it.
    const HASWELL: &[u8] = &[
        0x48, 0x83, 0xec, 0x60, // sub $0x60,%rsp
        0x48, 0x89, 0x1c, 0x24, // mov %rbx,(%rsp)
        0x48, 0x89, 0x6c, 0x24, 0x08, // mov %rbp,0x8(%rsp)
        0x4c, 0x89, 0x64, 0x24, 0x10, // mov %r12,0x10(%rsp)
        0x4c, 0x89, 0x6c, 0x24, 0x18, // mov %r13,0x18(%rsp)
        0x4c, 0x89, 0x74, 0x24, 0x20, // mov %r14,0x20(%rsp)
        0x4c, 0x89, 0x7c, 0x24, 0x28, // mov %r15,0x28(%rsp)
        0xc5, 0xf8, 0x77, // vzeroupper
        0x4c, 0x8b, 0x54, 0x24, 0x68, // mov 0x68(%rsp),%r10
        0x48, 0x89, 0xe3, // mov %rsp,%rbx
        0x48, 0x81, 0xec, 0x80, 0x70, 0x00, 0x00, // sub $0x7080,%rsp
        0x48, 0x81, 0xe4, 0x00, 0xf0, 0xff, 0xff, // and $0xfffffffffffff000,%rsp
        0x48, 0x83, 0xff, 0x00, // cmp $0x0,%rdi: the body
        0x0f, 0x84, 0x40, 0x6d, 0x00, 0x00, // je
    ];

    #[test]
    fn follows_the_haswell_kernel_through_its_aligned_buffer() {
        assert_eq!(cfa_rule(&HASWELL[..0]), Some(CfaRule::Sp(8)), "at entry the return address is at rsp");
        assert_eq!(cfa_rule(&HASWELL[..4]), Some(CfaRule::Sp(0x68)));
        assert_eq!(cfa_rule(&HASWELL[..45]), Some(CfaRule::Sp(0x68)), "rbx saved rsp");
        assert_eq!(cfa_rule(&HASWELL[..52]), Some(CfaRule::Sp(0x7080 + 0x68)));
        assert_eq!(cfa_rule(&HASWELL[..59]), Some(CfaRule::Bx(0x68)), "after the alignment only rbx knows");
        assert_eq!(cfa_rule(HASWELL), Some(CfaRule::Bx(0x68)), "and so for the whole body");
        // `mov %rbp,0x8(%rsp)` with rsp = CFA - 0x68: the caller's rbp is at CFA - 0x60.
        assert_eq!(rule_at(HASWELL).and_then(|r| r.rbp_saved_at), Some(0x60));
        assert_eq!(rule_at(&HASWELL[..8]).and_then(|r| r.rbp_saved_at), None, "not saved yet");
    }

    #[test]
    fn pushes_and_frame_pointers() {
        // push %rbp; mov %rsp,%rbp; push %rbx; sub $0x18,%rsp; body.
        let code = [0x55, 0x48, 0x89, 0xe5, 0x53, 0x48, 0x83, 0xec, 0x18, 0x31, 0xc0];
        assert_eq!(cfa_rule(&code), Some(CfaRule::Sp(8 + 8 + 8 + 0x18)));
        assert_eq!(rule_at(&code).and_then(|r| r.rbp_saved_at), Some(16), "push %rbp: just below the return address");
        // push %r12 (REX.B); and $-32,%rsp after mov %rsp,%rbp.
        let code = [0x41, 0x54, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xe4, 0xe0, 0x31, 0xc0];
        assert_eq!(cfa_rule(&code), Some(CfaRule::Bp(16)));
    }

    #[test]
    fn what_it_cannot_follow_gives_no_rule() {
        // and $-32,%rsp with no register holding the old rsp.
        assert_eq!(cfa_rule(&[0x48, 0x83, 0xe4, 0xe0, 0x31, 0xc0]), None);
        // mov %rsp,%rbx, then rbx overwritten, then the alignment.
        let code = [0x48, 0x89, 0xe3, 0x48, 0x89, 0xc3, 0x48, 0x83, 0xe4, 0xe0, 0x90];
        assert_eq!(cfa_rule(&code), None);
        // mov (%rax),%rsp: a stack switch.
        assert_eq!(cfa_rule(&[0x48, 0x8b, 0x20, 0x90]), None);
        // An instruction cut by the sampled address: decoding is out of step with the code.
        assert_eq!(cfa_rule(&[0x48, 0x81, 0xec, 0x80]), None);
    }
}
