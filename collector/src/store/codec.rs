//! Byte encodings of what the store keeps: LEB128 varints, frames, labels, and the two blob
//! kinds (aggregated stack counts, raw samples).

use ember_profile::{Frame, FrameKind};

use super::Labels;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("corrupt stored record: {0}")]
pub struct CodecError(pub &'static str);

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn get_varint(bytes: &[u8], at: &mut usize) -> Result<u64, CodecError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at).ok_or(CodecError("varint runs past the end"))?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(CodecError("varint longer than 10 bytes"))
}

pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

pub fn get_str(bytes: &[u8], at: &mut usize) -> Result<String, CodecError> {
    let len = get_varint(bytes, at)? as usize;
    let end = at.checked_add(len).ok_or(CodecError("string length overflows"))?;
    let s = bytes.get(*at..end).ok_or(CodecError("string runs past the end"))?;
    *at = end;
    String::from_utf8(s.to_vec()).map_err(|_| CodecError("string is not UTF-8"))
}

fn kind_byte(kind: FrameKind) -> u8 {
    match kind {
        FrameKind::Python => 1,
        FrameKind::Native => 2,
        FrameKind::Kernel => 3,
        FrameKind::Marker => 4,
    }
}

fn byte_kind(b: u8) -> Result<FrameKind, CodecError> {
    Ok(match b {
        1 => FrameKind::Python,
        2 => FrameKind::Native,
        3 => FrameKind::Kernel,
        4 => FrameKind::Marker,
        _ => return Err(CodecError("unknown frame kind")),
    })
}

/// A frame's canonical bytes; equal frames have equal bytes, so the bytes are the frame's key.
/// A line, when known, follows the file as a varint: frames stored before lines existed end at
/// the file and decode with none.
pub fn encode_frame(f: &Frame) -> Vec<u8> {
    let mut out = vec![kind_byte(f.kind), u8::from(f.interpreter_plumbing)];
    put_str(&mut out, &f.text);
    put_str(&mut out, &f.function);
    put_str(&mut out, &f.file);
    if let Some(line) = f.line {
        put_varint(&mut out, u64::from(line));
    }
    out
}

pub fn decode_frame(bytes: &[u8]) -> Result<Frame, CodecError> {
    let kind = byte_kind(*bytes.first().ok_or(CodecError("empty frame"))?)?;
    let plumbing = *bytes.get(1).ok_or(CodecError("short frame"))? != 0;
    let mut at = 2;
    let (text, function, file) = (get_str(bytes, &mut at)?, get_str(bytes, &mut at)?, get_str(bytes, &mut at)?);
    let line = if at < bytes.len() {
        Some(u32::try_from(get_varint(bytes, &mut at)?).map_err(|_| CodecError("line over 32 bits"))?)
    } else {
        None
    };
    if at != bytes.len() {
        return Err(CodecError("bytes after the frame"));
    }
    Ok(Frame { text, function, file, kind, interpreter_plumbing: plumbing, line })
}

pub fn encode_ids(ids: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ids.len() * 2);
    for &id in ids {
        put_varint(&mut out, u64::from(id));
    }
    out
}

pub fn decode_ids(bytes: &[u8]) -> Result<Vec<u32>, CodecError> {
    let mut at = 0;
    let mut ids = Vec::new();
    while at < bytes.len() {
        ids.push(u32::try_from(get_varint(bytes, &mut at)?).map_err(|_| CodecError("id over 32 bits"))?);
    }
    Ok(ids)
}

/// Labels as sorted `key\0value\0` pairs: canonical, so they can key the series index.
pub fn encode_labels(labels: &Labels) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in labels {
        put_str(&mut out, k);
        put_str(&mut out, v);
    }
    out
}

pub fn decode_labels(bytes: &[u8]) -> Result<Labels, CodecError> {
    let mut at = 0;
    let mut labels = Labels::new();
    while at < bytes.len() {
        let k = get_str(bytes, &mut at)?;
        let v = get_str(bytes, &mut at)?;
        labels.insert(k, v);
    }
    Ok(labels)
}

/// Aggregated counts: `(stack id, count)` pairs, ids ascending and delta-coded.
pub fn encode_counts(pairs: &mut [(u32, u64)]) -> Vec<u8> {
    pairs.sort_unstable_by_key(|p| p.0);
    let mut out = Vec::with_capacity(pairs.len() * 3);
    let mut prev = 0u32;
    for &(id, count) in pairs.iter() {
        put_varint(&mut out, u64::from(id - prev));
        put_varint(&mut out, count);
        prev = id;
    }
    out
}

/// Calls `f(stack id, count)` for every pair of an aggregated blob.
pub fn for_each_count(bytes: &[u8], mut f: impl FnMut(u32, u64)) -> Result<(), CodecError> {
    let mut at = 0;
    let mut id = 0u64;
    while at < bytes.len() {
        id += get_varint(bytes, &mut at)?;
        let count = get_varint(bytes, &mut at)?;
        f(u32::try_from(id).map_err(|_| CodecError("stack id over 32 bits"))?, count);
    }
    Ok(())
}

/// One raw sample: exact time and thread, kept for timelines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawSample {
    pub time_ns: i64,
    pub tid: u32,
    pub stack: u32,
    pub weight: u32,
}

/// Raw samples, grouped by thread, in microseconds (plenty for timelines, and half the bytes
/// of nanoseconds). The blob starts with its distinct stacks, most frequent first, and each
/// sample names its stack by position in that list, so common stacks take one byte. Then per
/// thread `tid, count`, and per sample the zigzag time delta from the thread's previous
/// sample and `position << 1 | has_weight` (weight follows only if not 1). Deltas within a
/// thread are nearly constant, so the result deflates well.
pub fn encode_raw(samples: &[RawSample]) -> Vec<u8> {
    let mut frequency: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
    for s in samples {
        *frequency.entry(s.stack).or_default() += 1;
    }
    let mut distinct: Vec<(u32, u64)> = frequency.into_iter().collect();
    distinct.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let position: std::collections::HashMap<u32, u64> =
        distinct.iter().enumerate().map(|(i, &(stack, _))| (stack, i as u64)).collect();
    let mut by_thread: std::collections::BTreeMap<u32, Vec<&RawSample>> = std::collections::BTreeMap::new();
    for s in samples {
        by_thread.entry(s.tid).or_default().push(s);
    }
    let mut plain = Vec::with_capacity(samples.len() * 3);
    put_varint(&mut plain, distinct.len() as u64);
    for &(stack, _) in &distinct {
        put_varint(&mut plain, u64::from(stack));
    }
    for (tid, mut list) in by_thread {
        list.sort_by_key(|s| s.time_ns);
        put_varint(&mut plain, u64::from(tid));
        put_varint(&mut plain, list.len() as u64);
        let mut prev = 0i64;
        for s in list {
            let us = s.time_ns.div_euclid(1_000);
            put_varint(&mut plain, zigzag(us.wrapping_sub(prev)));
            prev = us;
            let heavy = s.weight != 1;
            put_varint(&mut plain, (position.get(&s.stack).copied().unwrap_or(0) << 1) | u64::from(heavy));
            if heavy {
                put_varint(&mut plain, u64::from(s.weight));
            }
        }
    }
    deflate(&plain)
}

pub fn deflate(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    encoder.finish().unwrap_or_default()
}

pub fn inflate(bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|_| CodecError("raw blob does not inflate"))?;
    Ok(out)
}

/// Decodes raw samples, in time order.
pub fn decode_raw(bytes: &[u8]) -> Result<Vec<RawSample>, CodecError> {
    let plain = inflate(bytes)?;
    let bytes = plain.as_slice();
    let mut at = 0;
    let mut out = Vec::new();
    let small = |v: u64| u32::try_from(v).map_err(|_| CodecError("value over 32 bits"));
    let distinct_count = get_varint(bytes, &mut at)?;
    let mut distinct = Vec::new();
    for _ in 0..distinct_count {
        distinct.push(small(get_varint(bytes, &mut at)?)?);
    }
    while at < bytes.len() {
        let tid = small(get_varint(bytes, &mut at)?)?;
        let count = get_varint(bytes, &mut at)?;
        let mut prev = 0i64;
        for _ in 0..count {
            let us = prev.wrapping_add(unzigzag(get_varint(bytes, &mut at)?));
            prev = us;
            let packed = get_varint(bytes, &mut at)?;
            let weight = if packed & 1 == 1 { small(get_varint(bytes, &mut at)?)? } else { 1 };
            let stack = *distinct.get((packed >> 1) as usize).ok_or(CodecError("stack position outside the list"))?;
            out.push(RawSample { time_ns: us.wrapping_mul(1_000), tid, stack, weight });
        }
    }
    out.sort_by_key(|s| s.time_ns);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let f = Frame {
            text: "f (a.py)".into(),
            function: "f".into(),
            file: "a.py".into(),
            kind: FrameKind::Python,
            interpreter_plumbing: false,
            line: None,
        };
        let old_bytes = encode_frame(&f);
        assert_eq!(decode_frame(&old_bytes), Ok(f.clone()));
        // A frame with a line: its own key, the line after the file; one without decodes as before.
        let at_line = Frame { text: "f (a.py:12)".into(), line: Some(12), ..f.clone() };
        let bytes = encode_frame(&at_line);
        assert_eq!(decode_frame(&bytes), Ok(at_line));
        assert_ne!(bytes, old_bytes);
        let mut trailing = bytes.clone();
        trailing.push(1);
        assert!(decode_frame(&trailing).is_err(), "bytes after the line");
        assert_eq!(decode_ids(&encode_ids(&[0, 1, 300, u32::MAX])), Ok(vec![0, 1, 300, u32::MAX]));
        let labels: Labels = [("a".to_string(), "1".to_string()), ("b".into(), "".into())].into();
        assert_eq!(decode_labels(&encode_labels(&labels)), Ok(labels));
        let mut pairs = vec![(9, 1), (2, 500), (1000, 3)];
        let blob = encode_counts(&mut pairs);
        let mut back = Vec::new();
        for_each_count(&blob, |id, c| back.push((id, c))).expect("decodes");
        assert_eq!(back, vec![(2, 500), (9, 1), (1000, 3)]);
        let raw = vec![
            RawSample { time_ns: 1_700_000_000_000_000_000, tid: 7, stack: 3, weight: 1 },
            RawSample { time_ns: 1_700_000_000_005_000_000, tid: 8, stack: 0, weight: 2 },
            RawSample { time_ns: 1_700_000_000_010_000_000, tid: 7, stack: 1, weight: 1 },
        ];
        assert_eq!(decode_raw(&encode_raw(&raw)), Ok(raw), "microsecond times survive");
    }

    #[test]
    fn corrupt_bytes_are_errors_not_panics() {
        assert!(get_varint(&[0xff; 11], &mut 0).is_err());
        assert!(decode_frame(&[9, 0]).is_err());
        assert!(decode_frame(&[1, 0, 200]).is_err());
        assert!(for_each_count(&[0x80], |_, _| {}).is_err());
        assert!(decode_raw(&[1, 2]).is_err());
        assert!(decode_raw(&deflate(&[0, 7, 5, 1])).is_err(), "count larger than the data");
        assert!(decode_raw(&deflate(&[1, 3, 7, 1, 0, 8])).is_err(), "stack position outside the list");
    }

    #[test]
    fn regular_samples_cost_little() {
        // Four threads at 99 Hz for 10 s, a handful of stacks.
        let raw: Vec<RawSample> = (0..3960)
            .map(|i| RawSample {
                time_ns: 1_700_000_000_000_000_000 + (i / 4) * 10_101_010,
                tid: 100 + (i % 4) as u32,
                stack: (i % 7) as u32,
                weight: 1,
            })
            .collect();
        let bytes = encode_raw(&raw).len();
        assert!(bytes < raw.len(), "{bytes} bytes for {} samples", raw.len());
    }

    #[test]
    fn small_blobs() {
        // 100 distinct stacks with small counts: about 2-3 bytes each.
        let mut pairs: Vec<(u32, u64)> = (0..100).map(|i| (i * 3, 10)).collect();
        assert!(encode_counts(&mut pairs).len() <= 200);
    }
}
