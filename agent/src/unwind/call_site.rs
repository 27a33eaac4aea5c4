//! Is this a return address? A return address points just past a `call` instruction, so the
//! bytes before it must decode as one. Used to reject what an unwind rule read from a stack slot
//! that held data (a double in an OpenBLAS kernel's frame), and to pick callers when scanning.

/// The call instruction that ends exactly at a return address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallBefore {
    /// `call rel32`, with the address it calls.
    Direct { target: u64 },
    /// `call *r/m64`: the callee cannot be known from the bytes.
    Indirect,
}

/// Bytes a call instruction can take: a REX or `notrack` prefix, `FF /2`, ModRM, SIB, disp32.
/// (With both prefixes that form takes 9 and is missed: a lost frame, never a false one.)
pub const LONGEST_CALL: usize = 8;

/// Finds the call that ends at `return_address`, given the code bytes just before it (the last
/// byte of `before` is at `return_address - 1`). `None` if no call ends there.
pub fn find_call(return_address: u64, before: &[u8]) -> Option<CallBefore> {
    let n = before.len();
    if let Some(&[0xe8, a, b, c, d]) = n.checked_sub(5).and_then(|at| before.get(at..)) {
        let rel = i32::from_le_bytes([a, b, c, d]);
        return Some(CallBefore::Direct { target: return_address.wrapping_add(i64::from(rel) as u64) });
    }
    (2..=LONGEST_CALL)
        .filter_map(|len| n.checked_sub(len))
        .any(|start| is_indirect_call(&before[start..]))
        .then_some(CallBefore::Indirect)
}

/// Whether `insn` is exactly one `FF /2`: an optional `notrack` (0x3e, CET builds) and an
/// optional REX (0x40-0x4f) prefix, the opcode, then its operand.
fn is_indirect_call(insn: &[u8]) -> bool {
    let insn = insn.strip_prefix(&[0x3e]).unwrap_or(insn);
    let insn = match insn {
        [0x40..=0x4f, rest @ ..] => rest,
        _ => insn,
    };
    matches!(insn, [0xff, operand @ ..] if call_operand_len(operand) == Some(operand.len()))
}

/// Length of an `FF /2` operand (ModRM, SIB, displacement), or `None` if its ModRM is not that
/// of an indirect near call.
fn call_operand_len(operand: &[u8]) -> Option<usize> {
    let &modrm = operand.first()?;
    let (md, reg, rm) = (modrm >> 6, (modrm >> 3) & 7, modrm & 7);
    if reg != 2 {
        return None;
    }
    let has_sib = md != 3 && rm == 4;
    let base = if has_sib { operand.get(1)? & 7 } else { rm };
    let disp = match md {
        3 => 0,
        // mod 0 with base 5: RIP-relative without a SIB; with one, no base but a disp32, as in
        // a non-PIE interpreter's `call *table(,%rax,8)`.
        0 if base == 5 => 4,
        0 => 0,
        1 => 1,
        _ => 4,
    };
    Some(1 + usize::from(has_sib) + disp)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RA: u64 = 0x1000;

    #[test]
    fn direct_call_and_its_target() {
        // call +0x20 → target RA + 0x20; call -0x100.
        assert_eq!(find_call(RA, &[0x90, 0xe8, 0x20, 0, 0, 0]), Some(CallBefore::Direct { target: RA + 0x20 }));
        let back = (-0x100i32).to_le_bytes();
        let code = [0xe8, back[0], back[1], back[2], back[3]];
        assert_eq!(find_call(RA, &code), Some(CallBefore::Direct { target: RA - 0x100 }));
    }

    #[test]
    fn indirect_calls_of_every_addressing_form() {
        let forms: [&[u8]; 10] = [
            &[0xff, 0xd1],                            // call *%rcx
            &[0x41, 0xff, 0xd3],                      // call *%r11
            &[0xff, 0x15, 1, 2, 3, 4],                // call *disp32(%rip)
            &[0xff, 0x50, 0x18],                      // call *0x18(%rax)
            &[0xff, 0x54, 0x24, 0x08],                // call *0x8(%rsp), with SIB
            &[0xff, 0x90, 1, 2, 3, 4],                // call *disp32(%rax)
            &[0x41, 0xff, 0x94, 0x24, 1, 2, 3, 4],    // call *disp32(%r12), REX + SIB
            &[0x3e, 0xff, 0xd0],                      // notrack call *%rax
            &[0xff, 0x14, 0xc5, 0xe0, 0x6b, 0x92, 0], // call *0x926be0(,%rax,8), no base
            &[0x3e, 0x41, 0xff, 0xd3],                // notrack call *%r11
        ];
        for code in forms {
            let padded: Vec<u8> = [0x90; 4].iter().chain(code).copied().collect();
            assert_eq!(find_call(RA, &padded), Some(CallBefore::Indirect), "{code:02x?}");
        }
    }

    #[test]
    fn data_is_not_a_call() {
        // The double 0x3f49d7fb1e8907b2 that a no-CFI kernel's frame held, read as code, and
        // other bytes that end in what would be an operand.
        for code in [&0x3f49_d7fb_1e89_07b2_u64.to_le_bytes()[..], &[0; 8], &[0xff, 0xe0], &[0xff, 0xd9], &[0xc3]] {
            assert_eq!(find_call(RA, code), None, "{code:02x?}");
        }
        // `jmp *%rax` is FF /4, `push` is FF /6.
        assert_eq!(find_call(RA, &[0xff, 0xe0]), None);
        assert_eq!(find_call(RA, &[0xff, 0x30]), None);
        assert_eq!(find_call(RA, &[]), None);
    }
}
