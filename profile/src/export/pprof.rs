//! Gzipped `profile.proto`, as `go tool pprof`, Pyroscope and Parca read it.

use std::collections::HashMap;
use std::io::Write;

use ember_proto::pprof;
use flate2::write::GzEncoder;
use flate2::Compression;
use prost::Message;

use super::{ExportError, Meta};
use crate::view::View;

struct Strings {
    table: Vec<String>,
    ids: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        // pprof requires string_table[0] == "".
        Self { table: vec![String::new()], ids: HashMap::from([(String::new(), 0)]) }
    }

    fn id(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.table.len() as i64;
        self.table.push(s.to_string());
        self.ids.insert(s.to_string(), id);
        id
    }
}

/// Builds the profile message. Exposed for tests that decode it back.
pub fn build(view: &View, meta: &Meta) -> pprof::Profile {
    let mut strings = Strings::new();
    let period = 1_000_000_000 / meta.rate_hz.max(1) as i64;
    let sample_type = vec![
        pprof::ValueType { r#type: strings.id("samples"), unit: strings.id("count") },
        pprof::ValueType { r#type: strings.id("cpu"), unit: strings.id("nanoseconds") },
    ];
    // One function and one location per frame; ids are 1-based.
    let functions: Vec<pprof::Function> = view
        .frames
        .iter()
        .enumerate()
        .map(|(i, f)| pprof::Function {
            id: i as u64 + 1,
            // A frame with a line is the function at that line: the line goes in `Line.line`.
            name: match f.line {
                Some(_) => strings.id(&format!("{} ({})", f.function, f.file)),
                None => strings.id(&f.text),
            },
            system_name: strings.id(&f.function),
            filename: strings.id(&f.file),
            start_line: 0,
        })
        .collect();
    let locations: Vec<pprof::Location> = (view.frames.iter().enumerate())
        .map(|(i, f)| pprof::Location {
            id: i as u64 + 1,
            mapping_id: 0,
            address: 0,
            line: vec![pprof::Line { function_id: i as u64 + 1, line: f.line.map_or(0, i64::from), column: 0 }],
            is_folded: false,
        })
        .collect();
    let (pid_key, tid_key) = (strings.id("pid"), strings.id("thread"));
    let samples = view
        .stacks
        .iter()
        .map(|s| pprof::Sample {
            location_id: s.frames.iter().rev().map(|&f| u64::from(f) + 1).collect(),
            // Counts sum client-supplied weights: saturate rather than wrap.
            value: vec![
                i64::try_from(s.count).unwrap_or(i64::MAX),
                i64::try_from(s.count).unwrap_or(i64::MAX).saturating_mul(period),
            ],
            label: vec![
                pprof::Label { key: pid_key, str: 0, num: i64::from(s.pid), num_unit: 0 },
                pprof::Label { key: tid_key, str: 0, num: i64::from(s.tid), num_unit: 0 },
            ],
        })
        .collect();
    let period_type = Some(pprof::ValueType { r#type: strings.id("cpu"), unit: strings.id("nanoseconds") });
    let comment = vec![strings.id(&meta.title(view.total))];
    pprof::Profile {
        sample_type,
        sample: samples,
        mapping: Vec::new(),
        location: locations,
        function: functions,
        string_table: strings.table,
        drop_frames: 0,
        keep_frames: 0,
        time_nanos: meta.start_unix_nanos,
        duration_nanos: (meta.duration_secs * 1e9) as i64,
        period_type,
        period,
        comment,
        default_sample_type: 1,
        doc_url: 0,
    }
}

pub fn write(view: &View, meta: &Meta, out: &mut dyn Write) -> Result<(), ExportError> {
    let bytes = build(view, meta).encode_to_vec();
    let mut gz = GzEncoder::new(out, Compression::default());
    gz.write_all(&bytes)?;
    gz.finish()?;
    Ok(())
}
