//! Property tests: the parsers that read outside input never panic and agree with a model.

use ember_agent::intern::Interner;
use ember_agent::perf::session::decoder_for;
use ember_agent::perf::{PerfEvent, SamplingConfig, UserRegs};
use ember_agent::symbolize::perf_map::{PerfMapReader, PerfMapTable};
use proptest::prelude::*;

fn config(stack_bytes: u32) -> SamplingConfig {
    SamplingConfig {
        rate_hz: 99,
        stack_bytes,
        kernel: false,
        follow_children: false,
        ring_bytes: 1 << 16,
        read_interpreter: true,
        lines: false,
        activate: false,
        memory_only: false,
    }
}

fn read_all(chunks: &[&[u8]]) -> (Vec<(u64, String)>, u64) {
    let mut reader = PerfMapReader::detached();
    let mut table = PerfMapTable::default();
    let mut strings = Interner::default();
    for chunk in chunks {
        reader.consume(chunk, &mut table, &mut strings);
    }
    let mut entries = Vec::new();
    for addr in (0x1000u64..0x1000 + 64 * 16).step_by(16) {
        if let Some((start, e)) = table.lookup(addr) {
            entries.push((start, strings.get(e.name).to_string()));
        }
    }
    entries.dedup();
    (entries, reader.corrupt_lines)
}

/// A sample record body laid out as the kernel writes it for ember's sample_type:
/// IP, TID (pid, tid), TIME, CPU (cpu, reserved), REGS_USER (abi, bx, bp, sp, ip), STACK_USER.
fn sample_body(ip: u64, pid: u32, tid: u32, time: u64, stack: &[u8], requested: usize) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(ip.to_ne_bytes());
    b.extend(pid.to_ne_bytes());
    b.extend(tid.to_ne_bytes());
    b.extend(time.to_ne_bytes());
    b.extend(1u32.to_ne_bytes());
    b.extend(0u32.to_ne_bytes());
    b.extend(2u64.to_ne_bytes()); // PERF_SAMPLE_REGS_ABI_64
    b.extend(0x1234u64.to_ne_bytes()); // bx
    b.extend(0x7ffd_0000_0100u64.to_ne_bytes()); // bp
    b.extend(0x7ffd_0000_0000u64.to_ne_bytes()); // sp
    b.extend(ip.to_ne_bytes()); // ip
    b.extend((requested as u64).to_ne_bytes());
    let mut copy = stack.to_vec();
    copy.resize(requested, 0);
    b.extend(copy);
    b.extend((stack.len() as u64).to_ne_bytes());
    b
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn perf_map_reader_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048), split in 0usize..2048) {
        let split = split.min(bytes.len());
        let (a, b) = bytes.split_at(split);
        let _ = read_all(&[a, b]);
    }

    #[test]
    fn perf_map_reading_does_not_depend_on_how_the_file_grew(
        names in proptest::collection::vec("[a-z_<>.]{1,12}", 1..40),
        garbage in proptest::collection::vec("[ -~]{0,20}", 0..5),
        cuts in proptest::collection::vec(0usize..4096, 0..8),
    ) {
        let mut text = String::new();
        for (i, name) in names.iter().enumerate() {
            text.push_str(&format!("{:x} b py::{name}:/app/m{i}.py\n", 0x1000 + i * 16));
        }
        for g in &garbage {
            // Lines that cannot be perf-map lines: no second field.
            text.push_str(&format!("x{}\n", g.replace(' ', "_")));
        }
        let whole = read_all(&[text.as_bytes()]);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for c in cuts {
            chunks.push(&text.as_bytes()[last..c]);
            last = c;
        }
        chunks.push(&text.as_bytes()[last..]);
        let pieces = read_all(&chunks);
        prop_assert_eq!(&whole, &pieces);
        prop_assert_eq!(whole.0.len(), names.len());
        prop_assert_eq!(whole.1, garbage.len() as u64);
    }

    #[test]
    fn record_decoding_never_panics(ty in 1u32..24, misc in any::<u16>(), body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let decoder = decoder_for(&config(64));
        let _ = decoder.decode(ty, misc, &body);
    }

    #[test]
    fn sample_records_decode_to_what_was_encoded(
        ip in any::<u64>(), pid in 1u32..1 << 22, tid in 1u32..1 << 22, time in any::<u64>(),
        stack in proptest::collection::vec(any::<u8>(), 0..=64),
    ) {
        let decoder = decoder_for(&config(64));
        let body = sample_body(ip, pid, tid, time, &stack, 64);
        let event = decoder.decode(9, 2, &body).expect("valid record").expect("a sample");
        let PerfEvent::Sample(s) = event else { panic!("not a sample") };
        prop_assert_eq!((s.pid.0, s.tid.0, s.time), (pid, tid, time));
        prop_assert_eq!(s.regs, Some(UserRegs { ip, sp: 0x7ffd_0000_0000, bp: 0x7ffd_0000_0100, bx: 0x1234 }));
        prop_assert_eq!(&s.stack, &stack);
        prop_assert_eq!(s.stack_filled, stack.len() == 64);
    }

    #[test]
    fn a_copy_the_kernel_made_smaller_than_asked_is_full_when_it_fills_its_room(
        room_words in 1usize..=8, stack in proptest::collection::vec(any::<u8>(), 0..=64),
    ) {
        // The kernel leaves less room than the request when the record would pass 64 KiB.
        let room = room_words * 8;
        let stack = &stack[..stack.len().min(room)];
        let decoder = decoder_for(&config(128));
        let body = sample_body(0x1000, 7, 7, 1, stack, room);
        let event = decoder.decode(9, 2, &body).expect("valid record").expect("a sample");
        let PerfEvent::Sample(s) = event else { panic!("not a sample") };
        prop_assert_eq!(s.stack_filled, stack.len() == room, "a full room may hide more stack; a short copy reached the top");
    }
}
