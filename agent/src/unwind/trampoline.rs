//! CPython's perf trampolines: recognising their code and unwinding through them.
//!
//! A trampoline is `sub $8,%rsp; call *%rcx; add $8,%rsp; ret` (3.12), optionally preceded by
//! `endbr64` (CET builds), or `push %rbp; mov %rsp,%rbp; call *%rcx; pop %rbp; ret` (3.13).
//! No CFI covers it, so ember decodes these few instructions and derives the unwind rule for
//! every offset from their effect on the stack, instead of trusting any one layout.

use std::sync::OnceLock;

/// The instructions a trampoline is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Insn {
    Endbr64,
    SubRsp8,
    AddRsp8,
    PushRbp,
    MovRspRbp,
    CallRcx,
    PopRbp,
    Ret,
}

const ENCODINGS: [(Insn, &[u8]); 8] = [
    (Insn::Endbr64, &[0xf3, 0x0f, 0x1e, 0xfa]),
    (Insn::SubRsp8, &[0x48, 0x83, 0xec, 0x08]),
    (Insn::AddRsp8, &[0x48, 0x83, 0xc4, 0x08]),
    (Insn::PushRbp, &[0x55]),
    (Insn::MovRspRbp, &[0x48, 0x89, 0xe5]),
    (Insn::CallRcx, &[0xff, 0xd1]),
    (Insn::PopRbp, &[0x5d]),
    (Insn::Ret, &[0xc3]),
];

/// The known trampoline variants, by their exact bytes.
const KNOWN: [&[u8]; 4] = [
    // 3.12, 11 bytes.
    &[0x48, 0x83, 0xec, 0x08, 0xff, 0xd1, 0x48, 0x83, 0xc4, 0x08, 0xc3],
    // 3.12.11+ built with -fcf-protection, 15 bytes.
    &[0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x83, 0xec, 0x08, 0xff, 0xd1, 0x48, 0x83, 0xc4, 0x08, 0xc3],
    // 3.13 push-rbp form, 8 bytes.
    &[0x55, 0x48, 0x89, 0xe5, 0xff, 0xd1, 0x5d, 0xc3],
    // 3.13 push-rbp form with endbr64, 12 bytes.
    &[0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5, 0xff, 0xd1, 0x5d, 0xc3],
];

/// A verified trampoline variant (an index into the known layouts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrampolineKind(u8);

/// Where the caller's frame is, for one instruction offset inside a trampoline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// CFA = rsp + this.
    pub cfa_from_sp: u64,
    /// The caller's rbp was pushed at CFA - 16 and must be restored from there.
    pub rbp_saved: bool,
}

/// One decoded instruction with the rule that holds before it executes.
#[derive(Debug, Clone, Copy)]
struct Step {
    offset: u8,
    len: u8,
    rule: Rule,
}

#[derive(Debug, Clone)]
struct Layout {
    len: u8,
    /// Offset just past the call: where the trampoline's callee returns to.
    call_end: u8,
    steps: Vec<Step>,
}

fn decode_one(bytes: &[u8]) -> Option<(Insn, usize)> {
    ENCODINGS.iter().find(|(_, enc)| bytes.starts_with(enc)).map(|(insn, enc)| (*insn, enc.len()))
}

/// Decodes a trampoline and simulates its stack effect. Returns `None` unless the bytes are a
/// well-formed trampoline: one indirect call, a balanced stack and a final `ret`.
fn layout_of(bytes: &[u8]) -> Option<Layout> {
    let mut steps = Vec::new();
    let mut offset = 0usize;
    let mut depth: u64 = 0; // bytes the trampoline has pushed below its return address
    let mut rbp_saved = false;
    let mut calls = 0;
    let mut call_end = 0;
    loop {
        let (insn, len) = decode_one(bytes.get(offset..)?)?;
        let rule = Rule { cfa_from_sp: 8 + depth, rbp_saved };
        steps.push(Step { offset: u8::try_from(offset).ok()?, len: u8::try_from(len).ok()?, rule });
        match insn {
            Insn::Endbr64 | Insn::MovRspRbp => {}
            Insn::SubRsp8 => depth += 8,
            Insn::AddRsp8 => depth = depth.checked_sub(8)?,
            Insn::PushRbp => {
                depth += 8;
                rbp_saved = true;
            }
            Insn::PopRbp => {
                depth = depth.checked_sub(8)?;
                rbp_saved = false;
            }
            Insn::CallRcx => {
                calls += 1;
                call_end = u8::try_from(offset + len).ok()?;
            }
            Insn::Ret => {
                let total = offset + len;
                return (calls == 1 && depth == 0).then_some(Layout { len: total as u8, call_end, steps });
            }
        }
        offset += len;
    }
}

fn layouts() -> &'static [Layout] {
    static LAYOUTS: OnceLock<Vec<Layout>> = OnceLock::new();
    LAYOUTS.get_or_init(|| KNOWN.iter().filter_map(|b| layout_of(b)).collect())
}

impl TrampolineKind {
    /// Identifies the trampoline whose code starts with `bytes`.
    pub fn detect(bytes: &[u8]) -> Option<Self> {
        KNOWN.iter().position(|k| bytes.starts_with(k)).map(|i| Self(i as u8))
    }

    /// The variant of this length, for when the bytes can no longer be read (the target
    /// exited before ember could check them).
    pub fn from_len(len: u64) -> Option<Self> {
        let mut matching = KNOWN.iter().enumerate().filter(|(_, k)| k.len() as u64 == len);
        let (i, _) = matching.next()?;
        matching.next().is_none().then_some(Self(i as u8))
    }

    pub fn len(self) -> u64 {
        self.layout().map_or(0, |l| u64::from(l.len))
    }

    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "sub-rsp (11 bytes)",
            1 => "endbr64 + sub-rsp (15 bytes)",
            2 => "push-rbp (8 bytes)",
            _ => "endbr64 + push-rbp (12 bytes)",
        }
    }

    /// Whether `offset` is where the trampoline's call returns to: the only return address a
    /// trampoline can have on the stack.
    pub fn returns_at(self, offset: u64) -> bool {
        self.layout().is_some_and(|l| u64::from(l.call_end) == offset)
    }

    fn layout(self) -> Option<&'static Layout> {
        layouts().get(self.0 as usize)
    }

    /// The unwind rule at `offset` bytes into the trampoline. A return address into the
    /// trampoline points just after the call, where the rule of the next instruction holds.
    pub fn rule_at(self, offset: u64) -> Option<Rule> {
        let layout = self.layout()?;
        layout
            .steps
            .iter()
            .find(|s| offset >= u64::from(s.offset) && offset < u64::from(s.offset) + u64::from(s.len))
            .map(|s| s.rule)
    }
}

/// The caller's registers after unwinding one trampoline frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallerRegs {
    pub return_address: u64,
    pub sp: u64,
    pub bp: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TrampolineError {
    #[error("offset {0} is outside the trampoline")]
    BadOffset(u64),
    #[error("could not read stack memory at {0:#x}")]
    CouldNotReadStack(u64),
}

/// Applies the trampoline's rule: RA = [CFA-8], caller rsp = CFA, rbp restored if pushed.
pub fn unwind(
    kind: TrampolineKind,
    offset: u64,
    sp: u64,
    bp: u64,
    read_stack: &mut impl FnMut(u64) -> Result<u64, ()>,
) -> Result<CallerRegs, TrampolineError> {
    let rule = kind.rule_at(offset).ok_or(TrampolineError::BadOffset(offset))?;
    let cfa = sp.wrapping_add(rule.cfa_from_sp);
    let read = |read_stack: &mut dyn FnMut(u64) -> Result<u64, ()>, at: u64| {
        read_stack(at).map_err(|()| TrampolineError::CouldNotReadStack(at))
    };
    let return_address = read(read_stack, cfa - 8)?;
    let bp = if rule.rbp_saved { read(read_stack, cfa - 16)? } else { bp };
    Ok(CallerRegs { return_address, sp: cfa, bp })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(bytes: &[u8]) -> TrampolineKind {
        TrampolineKind::detect(bytes).expect("known trampoline")
    }

    #[test]
    fn all_known_variants_decode() {
        assert_eq!(layouts().len(), KNOWN.len());
        for (bytes, len) in KNOWN.iter().zip([11, 15, 8, 12]) {
            assert_eq!(kind(bytes).len(), len);
        }
    }

    #[test]
    fn rule_of_the_11_byte_form_matches_the_reference() {
        let k = kind(KNOWN[0]);
        let cfa = |o| k.rule_at(o).map(|r| r.cfa_from_sp);
        assert_eq!(cfa(0), Some(8));
        for o in 4..=9 {
            assert_eq!(cfa(o), Some(16), "offset {o}");
        }
        assert_eq!(cfa(10), Some(8));
        assert_eq!(cfa(11), None);
        // A return address into it points after the call, at offset 6.
        assert_eq!(k.rule_at(6), Some(Rule { cfa_from_sp: 16, rbp_saved: false }));
        assert!(k.returns_at(6) && !k.returns_at(4) && !k.returns_at(0));
        assert!(kind(KNOWN[1]).returns_at(10) && kind(KNOWN[3]).returns_at(10) && kind(KNOWN[2]).returns_at(6));
    }

    #[test]
    fn endbr_form_is_shifted_by_four() {
        let k = kind(KNOWN[1]);
        assert_eq!(k.rule_at(0).map(|r| r.cfa_from_sp), Some(8));
        assert_eq!(k.rule_at(4).map(|r| r.cfa_from_sp), Some(8));
        assert_eq!(k.rule_at(10).map(|r| r.cfa_from_sp), Some(16));
        assert_eq!(k.rule_at(14).map(|r| r.cfa_from_sp), Some(8));
    }

    #[test]
    fn push_rbp_form_restores_rbp() {
        let k = kind(KNOWN[2]);
        assert_eq!(k.rule_at(0), Some(Rule { cfa_from_sp: 8, rbp_saved: false }));
        assert_eq!(k.rule_at(6), Some(Rule { cfa_from_sp: 16, rbp_saved: true }));
        assert_eq!(k.rule_at(7), Some(Rule { cfa_from_sp: 8, rbp_saved: false }));
    }

    #[test]
    fn unwinds_a_return_address_frame() {
        // Stack at sp: [padding pushed by `sub`][return address into the caller].
        let sp = 0x7ffc_0000_1000;
        let stack = [0xdead_u64, 0x5555_0000_1234];
        let mut read = |a: u64| stack.get(((a - sp) / 8) as usize).copied().ok_or(());
        let regs = unwind(kind(KNOWN[0]), 6, sp, 0x42, &mut read).expect("unwinds");
        assert_eq!(regs, CallerRegs { return_address: 0x5555_0000_1234, sp: sp + 16, bp: 0x42 });

        let stack = [0x7ffc_0000_2000_u64, 0x5555_0000_9999];
        let mut read = |a: u64| stack.get(((a - sp) / 8) as usize).copied().ok_or(());
        let regs = unwind(kind(KNOWN[2]), 6, sp, 0x1, &mut read).expect("unwinds");
        assert_eq!(regs, CallerRegs { return_address: 0x5555_0000_9999, sp: sp + 16, bp: 0x7ffc_0000_2000 });
    }

    #[test]
    fn rejects_other_code() {
        assert_eq!(TrampolineKind::detect(&[0x55, 0x48, 0x89, 0xe5, 0xc3]), None);
        assert_eq!(TrampolineKind::detect(&[0x48, 0x83, 0xec, 0x08, 0xff, 0xd1]), None);
        assert!(layout_of(&[0x48, 0x83, 0xec, 0x08, 0xc3]).is_none(), "unbalanced, no call");
        assert_eq!(TrampolineKind::from_len(11), Some(kind(KNOWN[0])));
        assert_eq!(TrampolineKind::from_len(13), None);
    }
}
