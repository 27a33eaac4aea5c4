//! The replay case file: one gzipped JSON document per case (docs/REPLAY.md). Binary data
//! (stack copies, image extents, code bytes) is hex text, which gzip shrinks back to about
//! its binary size while the file stays one self-describing document.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bumped whenever a field changes meaning; readers refuse other versions.
pub const FORMAT_VERSION: u32 = 1;
/// The file name of a case inside its directory.
pub const CASE_FILE: &str = "case.json.gz";
/// Largest decompressed case ember reads: far above any real case, a bound for a corrupt one.
const MAX_CASE_BYTES: u64 = 256 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Case {
    pub format: u32,
    /// What was recorded, as ember described the target, and by which agent.
    pub target: String,
    pub agent_version: String,
    /// Tables the samples refer to by index.
    pub images: Vec<ImageRecord>,
    pub mappings: Vec<MappingRecord>,
    /// Perf-map lines, exactly as the target wrote them (without the newline).
    pub perf_map: Vec<String>,
    /// Target memory the trampoline check read: the code at perf-map addresses.
    pub memory: Vec<MemoryRecord>,
    pub samples: Vec<SampleRecord>,
}

/// What unwinding reads of an ELF image: its headers, notes and CFI sections, at their file
/// offsets. The rest of the file reads as zeros in a replay (no code bytes are kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    pub file_len: u64,
    pub extents: Vec<Extent>,
    /// The function symbols that unwinding code without CFI looked up (their code is among
    /// the extents; the symbol tables are not).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<FunctionRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionRecord {
    pub start: u64,
    pub size: u64,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub offset: u64,
    #[serde(with = "hex")]
    pub bytes: Vec<u8>,
}

/// An executable mapping, as the live process state held it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MappingRecord {
    pub start: u64,
    pub end: u64,
    pub pgoff: u64,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_inode: Option<(u32, u32, u64)>,
    /// Index into [`Case::images`], when ember had the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemoryRecord {
    pub addr: u64,
    #[serde(with = "hex")]
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleRecord {
    pub pid: u32,
    pub tid: u32,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// rbx (cases recorded before it was sampled have none: 0).
    #[serde(default)]
    pub bx: u64,
    /// The start of the stack copy: the bytes the unwind read.
    #[serde(with = "hex")]
    pub stack: Vec<u8>,
    /// How long the kernel's copy was, and whether it was full (the stack goes on past it).
    pub stack_len: u64,
    pub stack_filled: bool,
    /// Indices into the case's tables: what the process had that this sample's frames touch.
    pub mappings: Vec<usize>,
    pub perf_map: Vec<usize>,
    pub memory: Vec<usize>,
    /// The thread's earlier stack (leaf first, `[return address, sp]`) that completed this
    /// one, when it was cut short and completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<[u64; 2]>>,
    pub expected: Expected,
}

/// What the live agent made of the sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expected {
    /// `complete`, `truncated`, or `failed:<reason>`: how the walk over the copy ended.
    pub end: String,
    /// Whether the outer frames came from the thread's earlier stack.
    pub completed: bool,
    /// Frame keys, leaf first, in the text form of [`super::keys::frame_text`].
    pub frames: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("cannot read the replay case {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the replay case {path} is not a valid case: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("the replay case {path} is format {found}; this agent reads format {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("the replay case {path} is larger than {MAX_CASE_BYTES} bytes unpacked")]
    TooLarge { path: PathBuf },
    #[error("cannot write the replay case {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

impl Case {
    pub fn read(path: &Path) -> Result<Self, FormatError> {
        let read_err = |source| FormatError::Read { path: path.into(), source };
        let file = File::open(path).map_err(read_err)?;
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(file).take(MAX_CASE_BYTES + 1).read_to_end(&mut json).map_err(read_err)?;
        if json.len() as u64 > MAX_CASE_BYTES {
            return Err(FormatError::TooLarge { path: path.into() });
        }
        let case: Case =
            serde_json::from_slice(&json).map_err(|source| FormatError::Parse { path: path.into(), source })?;
        if case.format != FORMAT_VERSION {
            return Err(FormatError::Version { path: path.into(), found: case.format });
        }
        Ok(case)
    }

    /// Writes the case to `file`, which the caller created (and owns).
    pub fn write_to(&self, file: File, path: &Path) -> Result<(), FormatError> {
        let write_err = |source| FormatError::Write { path: path.into(), source };
        let mut gz = flate2::write::GzEncoder::new(std::io::BufWriter::new(file), flate2::Compression::best());
        serde_json::to_writer(&mut gz, self).map_err(|e| write_err(e.into()))?;
        let mut out = gz.finish().map_err(write_err)?;
        out.flush().map_err(write_err)?;
        out.into_inner().map_err(|e| write_err(e.into_error()))?.sync_all().map_err(write_err)
    }
}

/// Bytes as lowercase hex text.
mod hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let text: String = bytes
            .iter()
            .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]])
            .map(char::from)
            .collect();
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        let digit = |c: u8| (c as char).to_digit(16).map(|v| v as u8);
        text.as_bytes()
            .chunks(2)
            .map(|pair| match pair {
                [hi, lo] => Some(digit(*hi)? << 4 | digit(*lo)?),
                _ => None,
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| serde::de::Error::custom("not an even number of hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Blob(#[serde(with = "hex")] Vec<u8>);

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        let json = serde_json::to_string(&Blob(vec![0, 0xab, 0xff])).expect("serializes");
        assert_eq!(json, "\"00abff\"");
        assert_eq!(serde_json::from_str::<Blob>(&json).expect("parses"), Blob(vec![0, 0xab, 0xff]));
        assert!(serde_json::from_str::<Blob>("\"abc\"").is_err(), "odd length");
        assert!(serde_json::from_str::<Blob>("\"zz\"").is_err(), "not hex");
    }
}
