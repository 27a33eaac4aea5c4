use std::sync::Arc;

use super::*;
use crate::interp::fake::{self, FakeTarget};
use crate::interp::layout::LAYOUT_3_12;

fn reader(target: &Arc<FakeTarget>) -> ObjectReader {
    ObjectReader::new(target.clone(), LAYOUT_3_12, fake::types())
}

#[test]
fn reads_strings_of_every_kind() {
    let target = Arc::new(FakeTarget::default());
    let texts = ["handle_request", "café", "Ελληνικά", "emoji 🔥"];
    for (i, text) in texts.iter().enumerate() {
        target.string(0x10_000 * (i as u64 + 1), text);
    }
    let reader = reader(&target);
    for (i, text) in texts.iter().enumerate() {
        assert_eq!(reader.string(0x10_000 * (i as u64 + 1)).as_deref(), Ok(*text));
    }
}

#[test]
fn refuses_strings_that_are_not_what_they_claim() {
    let target = Arc::new(FakeTarget::default());
    let reader = reader(&target);
    target.bytes_object(0x10_000, &[b'a'; 64]);
    assert!(matches!(reader.string(0x10_000), Err(ObjectError::WrongType { expected: "str", .. })));
    target.string(0x20_000, "x");
    target.put_word(0x20_000 + 16, 1 << 40);
    assert!(matches!(reader.string(0x20_000), Err(ObjectError::Malformed { why: "longer than any name", .. })));
    target.string(0x30_000, "legacy");
    target.put(0x30_000 + 32, &(1u32 << 2).to_le_bytes()); // kind 1, not compact
    assert!(matches!(reader.string(0x30_000), Err(ObjectError::Malformed { why: "not compact", .. })));
    target.string(0x40_000, "🔥");
    target.put(0x40_000 + 56, &0x11_0000u32.to_le_bytes()); // past the last code point
    assert!(matches!(reader.string(0x40_000), Err(ObjectError::Malformed { why: "not Unicode", .. })));
    target.string(0x50_000, "cut");
    target.put_word(0x50_000 + 16, 4090); // claims more than is mapped: into the next page
    assert!(matches!(reader.string(0x50_000), Err(ObjectError::Unreadable { .. })));
    assert!(matches!(reader.string(0x60_000), Err(ObjectError::Unreadable { .. })));
}

#[test]
fn code_objects_are_cached_until_another_object_takes_the_address() {
    let target = Arc::new(FakeTarget::default());
    let table = [0x80 | (13 << 3) | 7, 0, 0x80 | (13 << 3) | 7, 2];
    target.code(0x10_000, "Handler.get", 40, &table);
    let mut reader = reader(&target);
    let first = reader.code(0x10_000).expect("a code object");
    assert_eq!(
        (first.qualname.as_str(), first.filename.as_str(), first.first_line),
        ("Handler.get", "/srv/app.py", 40)
    );
    assert_eq!((first.line_at(0), first.line_at(8), first.line_at(16)), (Some(40), Some(41), None));
    // Same object: the cached one, even with its strings gone.
    target.put(0x10_000 + 0x200 + 8, &[0; 8]);
    assert!(Arc::ptr_eq(&first, &reader.code(0x10_000).expect("cached")));
    // Freed and another code object made at the address: read again.
    target.code(0x10_000, "other", 1, &table);
    target.put_word(0x10_000 + 128, 0x10_000 + 0x300);
    target.string(0x10_000 + 0x300, "other");
    reader.new_walk(); // what a walk read before the target ran on is forgotten
    assert_eq!(reader.code(0x10_000).expect("new object").qualname, "other");
    target.string(0x20_000, &"not code ".repeat(30));
    assert!(matches!(reader.code(0x20_000), Err(ObjectError::WrongType { expected: "code object", .. })));
}

#[test]
fn location_tables_are_bounded() {
    let target = Arc::new(FakeTarget::default());
    target.code(0x10_000, "f", 1, &[0x80, 0]);
    target.put_word(0x10_000 + 0x600 + 16, MAX_LINETABLE + 1);
    let mut reader = reader(&target);
    assert!(matches!(reader.code(0x10_000), Err(ObjectError::Malformed { what: "bytes", .. })));
}
