use std::sync::Arc;

use super::*;
use crate::interp::fake::{self, FakeTarget};
use crate::interp::layout::LAYOUT_3_12;

const RUNTIME: u64 = 0x100_000;
const INTERP: u64 = 0x200_000;
const GIL: u64 = 0x210_000;

/// Each line its own entry of 4 units: unit 4*k is on line first+k.
const TABLE: [u8; 6] = [0x80 | (13 << 3) | 3, 0, 0x80 | (13 << 3) | 3, 2, 0x80 | (13 << 3) | 3, 2];

/// A 3.12 runtime with one interpreter whose threads are `(tstate, native id, innermost frame)`.
fn runtime(target: &FakeTarget, threads: &[(u64, u64, u64)], gil_holder: Option<u64>) {
    target.put_word(RUNTIME + 40, INTERP);
    let mut interp = vec![0u8; 392];
    interp[72..80].copy_from_slice(&threads.first().map_or(0, |t| t.0).to_le_bytes());
    interp[384..392].copy_from_slice(&GIL.to_le_bytes());
    target.put(INTERP, &interp);
    let mut gil = vec![0u8; 24];
    gil[8..16].copy_from_slice(&gil_holder.unwrap_or(0).to_le_bytes());
    gil[16] = u8::from(gil_holder.is_some());
    target.put(GIL, &gil);
    for (i, &(tstate, native_id, frame)) in threads.iter().enumerate() {
        let mut bytes = vec![0u8; 152];
        let next = threads.get(i + 1).map_or(0, |t| t.0);
        bytes[8..16].copy_from_slice(&next.to_le_bytes());
        bytes[16..24].copy_from_slice(&INTERP.to_le_bytes());
        bytes[56..64].copy_from_slice(&(tstate + 0x1000).to_le_bytes());
        bytes[144..152].copy_from_slice(&native_id.to_le_bytes());
        target.put(tstate, &bytes);
        target.put_word(tstate + 0x1000, frame); // the cframe's current_frame
    }
}

fn reader(target: &Arc<FakeTarget>) -> ObjectReader {
    ObjectReader::new(target.clone(), LAYOUT_3_12, fake::types())
}

/// The Python frames from `innermost` outwards, without the entry shims.
fn frames(reader: &mut ObjectReader, innermost: u64) -> (Vec<PyFrame>, WalkEnd) {
    let (chain, end) = chain(reader, innermost);
    (chain.into_iter().filter_map(|f| f.python).collect(), end)
}

fn names(frames: &[PyFrame]) -> Vec<(String, Option<u32>)> {
    frames.iter().map(|f| (f.code.qualname.clone(), f.line())).collect()
}

#[test]
fn walks_threads_and_frames_skipping_entry_shims() {
    let target = Arc::new(FakeTarget::default());
    target.code(0x10_000, "main", 10, &TABLE);
    target.code(0x20_000, "Server.handle", 50, &TABLE);
    target.code(0x30_000, "shim", 1, &TABLE);
    // handle (line 52) ← shim (C-stack entry) ← main (line 11), and a thread with no frame.
    target.frame(0x500_000, 0x20_000, 0x500_100, 9, 0);
    target.frame(0x500_100, 0x30_000, 0x500_200, 0, FIRST_SHIM_OWNER);
    target.frame(0x500_200, 0x10_000, 0, 4, 0);
    runtime(&target, &[(0x400_000, 101, 0x500_000), (0x410_000, 102, 0)], Some(0x410_000));
    let threads = threads(&mut reader(&target), RUNTIME).expect("readable");
    assert_eq!(threads.len(), 2);
    let (busy, idle) = (&threads[0], &threads[1]);
    assert_eq!((busy.native_id, busy.holds_gil, &busy.end), (101, false, &WalkEnd::Root));
    assert_eq!(names(&busy.frames), [("Server.handle".into(), Some(52)), ("main".into(), Some(11))]);
    assert_eq!((idle.native_id, idle.holds_gil, idle.frames.len()), (102, true, 0));
}

#[test]
fn a_3_12_frame_before_its_first_instruction_is_on_the_first_line() {
    let target = Arc::new(FakeTarget::default());
    target.code(0x10_000, "starting", 7, &TABLE);
    target.frame(0x500_000, 0x10_000, 0, 0, 0);
    target.put_word(0x500_000 + 56, 0x10_000 + 192 - 2);
    let (got, end) = frames(&mut reader(&target), 0x500_000);
    assert_eq!((names(&got), end), (vec![("starting".into(), Some(7))], WalkEnd::Root));
}

#[test]
fn a_broken_or_looping_chain_keeps_what_was_read_and_says_why() {
    let target = Arc::new(FakeTarget::default());
    target.code(0x10_000, "f", 1, &TABLE);
    target.frame(0x500_000, 0x10_000, 0x500_100, 0, 0);
    target.frame(0x500_100, 0x10_000, 0x999_000, 0, 0); // the caller is unmapped
    let (got, end) = frames(&mut reader(&target), 0x500_000);
    assert_eq!((got.len(), matches!(end, WalkEnd::Broken(ObjectError::Unreadable { .. }))), (2, true));

    target.frame(0x600_000, 0x10_000, 0x600_100, 0, 0);
    target.frame(0x600_100, 0x10_000, 0x600_000, 0, 0);
    let (got, end) = frames(&mut reader(&target), 0x600_000);
    assert_eq!((got.len(), end), (2, WalkEnd::Loop));

    target.string(0x20_000, &"not code ".repeat(30));
    target.frame(0x700_000, 0x20_000, 0, 0, 0);
    let (got, end) = frames(&mut reader(&target), 0x700_000);
    assert!(got.is_empty() && matches!(end, WalkEnd::Broken(ObjectError::WrongType { .. })));
}

#[test]
fn a_thread_of_another_interpreter_means_the_layout_is_wrong() {
    let target = Arc::new(FakeTarget::default());
    runtime(&target, &[(0x400_000, 101, 0)], None);
    target.put_word(0x400_000 + 16, 0xdead_0000);
    let err = threads(&mut reader(&target), RUNTIME).expect_err("refused");
    assert!(matches!(err, ObjectError::Malformed { what: "thread state", .. }), "{err}");
}

#[test]
fn thread_lists_that_loop_end() {
    let target = Arc::new(FakeTarget::default());
    runtime(&target, &[(0x400_000, 101, 0), (0x410_000, 102, 0)], None);
    target.put_word(0x410_000 + 8, 0x400_000); // the second thread's next is the first
    let threads = threads(&mut reader(&target), RUNTIME).expect("readable");
    assert_eq!(threads.iter().map(|t| t.native_id).collect::<Vec<_>>(), [101, 102]);
}

/// A chain read while a coroutine yielded: it seems to end at the coroutine's own frame, whose
/// caller link the suspension cleared. That is no root: the frames read are right, the rest is
/// unknown.
#[test]
fn a_chain_ending_at_a_generator_s_frame_is_broken_not_whole() {
    let target = Arc::new(FakeTarget::default());
    target.code(0x10_000, "price_item", 10, &TABLE);
    target.code(0x20_000, "handle_order", 50, &TABLE);
    target.frame(0x500_000, 0x10_000, 0x500_100, 0, 0);
    target.frame(0x500_100, 0x20_000, 0, 0, GENERATOR_OWNER);
    let (got, end) = frames(&mut reader(&target), 0x500_000);
    assert_eq!(got.len(), 2, "the frames read are kept");
    assert!(matches!(end, WalkEnd::Broken(ObjectError::Malformed { what: "frame chain", .. })), "{end:?}");
}
