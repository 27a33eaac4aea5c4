//! speedscope's file format (https://www.speedscope.app/file-format-schema.json): one
//! sampled profile per thread, sharing one frame table.

use std::collections::BTreeMap;
use std::io::Write;

use serde::Serialize;

use super::{ExportError, Meta};
use crate::view::View;

#[derive(Serialize)]
struct File<'a> {
    #[serde(rename = "$schema")]
    schema: &'static str,
    shared: Shared<'a>,
    profiles: Vec<Profile>,
    name: String,
    #[serde(rename = "activeProfileIndex")]
    active_profile_index: usize,
    exporter: &'static str,
}

#[derive(Serialize)]
struct Shared<'a> {
    frames: Vec<Frame<'a>>,
}

#[derive(Serialize)]
struct Frame<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    file: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<u32>,
}

#[derive(Serialize)]
struct Profile {
    #[serde(rename = "type")]
    kind: &'static str,
    name: String,
    unit: &'static str,
    #[serde(rename = "startValue")]
    start_value: f64,
    #[serde(rename = "endValue")]
    end_value: f64,
    /// Root first.
    samples: Vec<Vec<u32>>,
    weights: Vec<f64>,
}

pub fn write(view: &View, meta: &Meta, out: &mut dyn Write) -> Result<(), ExportError> {
    let frames = view.frames.iter().map(|f| Frame { name: &f.text, file: &f.file, line: f.line }).collect();
    let seconds_per_sample = 1.0 / meta.rate_hz.max(1) as f64;
    let mut by_thread: BTreeMap<(u32, u32), Profile> = BTreeMap::new();
    for stack in &view.stacks {
        let profile = by_thread.entry((stack.pid, stack.tid)).or_insert_with(|| Profile {
            kind: "sampled",
            name: format!("process {} thread {}", stack.pid, stack.tid),
            unit: "seconds",
            start_value: 0.0,
            end_value: 0.0,
            samples: Vec::new(),
            weights: Vec::new(),
        });
        let weight = stack.count as f64 * seconds_per_sample;
        profile.samples.push(stack.frames.clone());
        profile.weights.push(weight);
        profile.end_value += weight;
    }
    let file = File {
        schema: "https://www.speedscope.app/file-format-schema.json",
        shared: Shared { frames },
        profiles: by_thread.into_values().collect(),
        name: meta.title(view.total),
        active_profile_index: 0,
        exporter: concat!("ember ", env!("CARGO_PKG_VERSION")),
    };
    serde_json::to_writer(&mut *out, &file)?;
    Ok(())
}
