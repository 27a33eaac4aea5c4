use super::*;
use crate::interp::layout::LAYOUT_3_12;
use crate::interp::objects::CodeInfo;

fn python(addr: u64, previous: u64, name: &str, code_addr: u64) -> ChainFrame {
    let python = Some(PyFrame { code: CodeInfo::named(name), unit: None });
    ChainFrame { addr, previous, owner: 0, python, code_addr }
}

fn shim(addr: u64, previous: u64) -> ChainFrame {
    ChainFrame { addr, previous, owner: FIRST_SHIM_OWNER, python: None, code_addr: 0 }
}

const SP: u64 = 0x7fff_0000;

/// leaf ← [shim] ← b ← [shim at SP+0x800] ← c ← [shim beyond the copy] ← main; the copy is
/// 0x1000 bytes and the walk's outermost trampoline (b's) runs at SP+0x900.
fn chain() -> Vec<ChainFrame> {
    vec![
        python(0x1000, SP + 0x100, "leaf", 0xa000),
        shim(SP + 0x100, 0x1100),
        python(0x1100, SP + 0x800, "b", 0xb000),
        shim(SP + 0x800, 0x1200),
        python(0x1200, SP + 0x4000, "c", 0xc000),
        shim(SP + 0x4000, 0x1300),
        python(0x1300, 0, "main", 0xd000),
    ]
}

/// The copy as the sample took it: the shims at their addresses with their `previous`.
fn copy(chain: &[ChainFrame]) -> Vec<u8> {
    let mut stack = vec![0u8; 0x1000];
    for f in chain.iter().filter(|f| f.python.is_none() && f.addr < SP + 0x1000) {
        let at = (f.addr - SP) as usize;
        stack[at + 8..at + 16].copy_from_slice(&f.previous.to_le_bytes());
        stack[at + 70] = f.owner;
    }
    stack
}

fn sample(stack: &[u8]) -> CutSample<'_> {
    CutSample { sp: SP, stack, trampoline_sp: SP + 0x900, trampoline: 0xb_7000 }
}

fn names(frames: &[PyFrame]) -> Vec<&str> {
    frames.iter().map(|f| f.code.qualname.as_str()).collect()
}

fn b_runs_under(trampoline: u64) -> impl FnOnce(u64) -> Vec<u64> {
    move |code| if code == 0xb000 { vec![0, trampoline] } else { Vec::new() }
}

#[test]
fn stitches_the_callers_of_the_sampled_call() {
    let chain = chain();
    let stack = copy(&chain);
    let joined = outer_frames(&chain, &WalkEnd::Root, &LAYOUT_3_12, sample(&stack), b_runs_under(0xb_7000));
    assert_eq!(joined.as_deref().map(names), Ok(vec!["c", "main"]));
}

#[test]
fn a_thread_that_moved_on_is_not_stitched() {
    let chain = chain();
    let stack = copy(&chain);
    // b returned and another call took the shim's slot: the copy holds the old caller.
    let mut moved = chain.clone();
    moved[3].previous = 0x1250;
    let joined = outer_frames(&moved, &WalkEnd::Root, &LAYOUT_3_12, sample(&stack), b_runs_under(0xb_7000));
    assert_eq!(joined.map(|_| ()), Err(Refusal::ShimChanged));
    // The slot's shim is the same, but its call runs other code than the trampoline's.
    let joined = outer_frames(&chain, &WalkEnd::Root, &LAYOUT_3_12, sample(&stack), b_runs_under(0xe_7000));
    assert_eq!(joined.map(|_| ()), Err(Refusal::OtherCode));
    // The thread returned past the sampled call: no shim below the trampoline is left.
    let shallow = chain[4..].to_vec();
    let joined = outer_frames(&shallow, &WalkEnd::Root, &LAYOUT_3_12, sample(&stack), b_runs_under(0xb_7000));
    assert_eq!(joined.map(|_| ()), Err(Refusal::NoShimInCopy));
}

#[test]
fn an_incomplete_chain_is_not_stitched() {
    let chain = chain();
    let stack = copy(&chain);
    for end in [WalkEnd::TooDeep, WalkEnd::Loop] {
        let joined = outer_frames(&chain, &end, &LAYOUT_3_12, sample(&stack), b_runs_under(0xb_7000));
        assert_eq!(joined.map(|_| ()), Err(Refusal::ChainIncomplete));
    }
}

#[test]
fn a_shim_cut_by_the_end_of_the_copy_is_not_used() {
    let mut chain = chain();
    chain[3].addr = SP + 0x1000 - 16; // its owner byte lies past the copy
    let stack = copy(&chain[..3]);
    let mut cut = sample(&stack);
    cut.trampoline_sp = SP + 0xff8;
    let joined = outer_frames(&chain, &WalkEnd::Root, &LAYOUT_3_12, cut, b_runs_under(0xb_7000));
    // The shim inside the copy is leaf's, whose call is not the trampoline's.
    assert_eq!(joined.map(|_| ()), Err(Refusal::OtherCode));
}

#[test]
fn callers_whose_stack_changed_are_not_stitched() {
    let chain = chain();
    let mut stack = copy(&chain);
    stack[0x950] = 7; // the callers' frames, above the trampoline at SP+0x900
    let now = copy(&chain);
    let cut = sample(&stack);
    let bytes = CallersCheck::Bytes;
    let joined = anchor(&chain, &WalkEnd::Root, &LAYOUT_3_12, cut, &now[0x900..], bytes, b_runs_under(0xb_7000));
    assert_eq!(joined, Err(Refusal::CallersChanged));
    let joined = anchor(&chain, &WalkEnd::Root, &LAYOUT_3_12, cut, &stack[0x900..], bytes, b_runs_under(0xb_7000));
    assert_eq!(joined, Ok(4), "after the shim of b's call");
}

/// A whole stack's outer frames (c and main, in calls entered before the trampoline was on)
/// whose sampled call (leaf's, trampoline at SP+0x200) was left and made again: checked by the
/// shims of the calls outside it, all in the copy.
#[test]
fn a_whole_stack_s_outer_calls_are_checked_shim_by_shim() {
    let mut chain = chain();
    chain[5].addr = SP + 0xc00; // c's call's shim, now inside the copy
    let stack = copy(&chain);
    let whole = CutSample { sp: SP, stack: &stack, trampoline_sp: SP + 0x200, trampoline: 0xa_7000 };
    let shims = CallersCheck::Shims;
    let other_callers = vec![0u8; 0xe00];
    let from = anchor(&chain, &WalkEnd::Root, &LAYOUT_3_12, whole, &other_callers, shims, |_| Vec::new());
    assert_eq!(from, Ok(2), "after the sampled call's shim");
    // The sampled call returned: its caller b runs, and is what lies outside it.
    let returned = chain[2..].to_vec();
    let from = anchor(&returned, &WalkEnd::Root, &LAYOUT_3_12, whole, &other_callers, shims, |_| Vec::new());
    assert_eq!(from, Ok(0));
    // An outer call's shim is not the one the copy holds.
    let mut moved = chain.clone();
    moved[5].previous = 0x1250;
    let from = anchor(&moved, &WalkEnd::Root, &LAYOUT_3_12, whole, &other_callers, shims, |_| Vec::new());
    assert_eq!(from, Err(Refusal::OuterShimChanged));
    // No outer call's shim in the copy: nothing to check them by.
    let from = anchor(&chain[..3], &WalkEnd::Root, &LAYOUT_3_12, whole, &other_callers, shims, |_| Vec::new());
    assert_eq!(from, Err(Refusal::OuterShimChanged));
}

#[test]
fn each_sampled_call_gets_the_line_of_the_frame_its_shim_entered() {
    let mut chain = chain();
    for (i, unit) in [(0, 0), (2, 4), (4, 8)] {
        if let Some(py) = chain[i].python.as_mut() {
            py.unit = Some(unit);
        }
    }
    let stack = copy(&chain);
    // leaf's trampoline runs at SP+0x200, b's at SP+0x900; leaf's code runs under 0xa_7000.
    let calls =
        [SampledCall { sp: SP + 0x200, trampoline: 0xa_7000 }, SampledCall { sp: SP + 0x900, trampoline: 0xb_7000 }];
    let extras = |code| match code {
        0xa000 => vec![0xa_7000],
        0xb000 => vec![0xb_7000],
        _ => Vec::new(),
    };
    // CodeInfo::named puts every unit on line 1.
    assert_eq!(lines_of_calls(&chain, &LAYOUT_3_12, SP, &stack, &calls, extras), [Some(1), Some(1)]);
    let mut moved = chain.clone();
    moved[1].previous = 0x9999; // leaf's shim changed since the sample
    assert_eq!(lines_of_calls(&moved, &LAYOUT_3_12, SP, &stack, &calls, extras), [None, Some(1)]);
    let wrong = |_| vec![0xe_7000];
    assert_eq!(lines_of_calls(&chain, &LAYOUT_3_12, SP, &stack, &calls, wrong), [None, None]);
}
