//! Stage 6, **export**: writes a [`View`] as a flame graph (SVG), folded stacks, speedscope
//! JSON or gzipped pprof.

pub mod collapsed;
pub mod pprof;
pub mod speedscope;
pub mod svg;

use std::io::{self, Write};
use std::path::Path;
use std::str::FromStr;

use crate::view::View;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Svg,
    Collapsed,
    Speedscope,
    Pprof,
    /// Chrome trace / Perfetto JSON with asyncio task tracks; written by the agent, which has
    /// the task data.
    Trace,
}

impl Format {
    pub const NAMES: &'static str = "svg, collapsed, speedscope, pprof, trace";

    /// The format implied by an output file name.
    pub fn from_path(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        if name.ends_with(".svg") {
            Some(Format::Svg)
        } else if name.ends_with(".folded") || name.ends_with(".collapsed") || name.ends_with(".txt") {
            Some(Format::Collapsed)
        } else if name.ends_with(".trace.json") || name.ends_with(".perfetto.json") {
            Some(Format::Trace)
        } else if name.ends_with(".speedscope.json") || name.ends_with(".json") {
            Some(Format::Speedscope)
        } else if name.ends_with(".pb.gz") || name.ends_with(".pprof") || name.ends_with(".pb") {
            Some(Format::Pprof)
        } else {
            None
        }
    }
}

impl Format {
    /// The HTTP content type of the format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Svg => "image/svg+xml",
            Format::Collapsed => "text/plain; charset=utf-8",
            Format::Speedscope | Format::Trace => "application/json",
            Format::Pprof => "application/octet-stream",
        }
    }

    /// The file name a browser should save a download as, for formats that are files to
    /// open in another tool rather than pages to look at.
    pub fn download_name(self) -> Option<&'static str> {
        match self {
            Format::Speedscope => Some("profile.speedscope.json"),
            Format::Pprof => Some("profile.pb.gz"),
            Format::Svg | Format::Collapsed | Format::Trace => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Svg => "svg",
            Format::Collapsed => "collapsed",
            Format::Speedscope => "speedscope",
            Format::Pprof => "pprof",
            Format::Trace => "trace",
        }
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "svg" => Ok(Format::Svg),
            "collapsed" | "folded" => Ok(Format::Collapsed),
            "speedscope" => Ok(Format::Speedscope),
            "pprof" => Ok(Format::Pprof),
            "trace" => Ok(Format::Trace),
            other => Err(format!("unknown format {other:?}; choose one of {}", Format::NAMES)),
        }
    }
}

/// Facts about the recording that the outputs carry.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    /// What was profiled, e.g. `python3.12 app.py (PID 4242)`.
    pub target: String,
    pub duration_secs: f64,
    pub rate_hz: u64,
    /// Wall-clock start, nanoseconds since the Unix epoch.
    pub start_unix_nanos: i64,
}

impl Meta {
    pub fn title(&self, samples: u64) -> String {
        format!("ember: {} - {:.1} s, {samples} samples at {} Hz", self.target, self.duration_secs, self.rate_hz)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("writing the output failed: {0}")]
    Io(#[from] io::Error),
    #[error("rendering the flame graph failed: {0}")]
    Svg(String),
    #[error("encoding JSON failed: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the trace format needs task data, which only `ember-agent record` has")]
    NeedsTasks,
}

pub fn write(format: Format, view: &View, meta: &Meta, out: &mut dyn Write) -> Result<(), ExportError> {
    match format {
        Format::Collapsed => collapsed::write(view, out),
        Format::Svg => svg::write(view, meta, out),
        Format::Speedscope => speedscope::write(view, meta, out),
        Format::Pprof => pprof::write(view, meta, out),
        Format::Trace => Err(ExportError::NeedsTasks),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_from_extension() {
        assert_eq!(Format::from_path(Path::new("cpu.svg")), Some(Format::Svg));
        assert_eq!(Format::from_path(Path::new("out/cpu.folded")), Some(Format::Collapsed));
        assert_eq!(Format::from_path(Path::new("cpu.speedscope.json")), Some(Format::Speedscope));
        assert_eq!(Format::from_path(Path::new("run.trace.json")), Some(Format::Trace));
        assert_eq!(Format::from_path(Path::new("cpu.pb.gz")), Some(Format::Pprof));
        assert_eq!(Format::from_path(Path::new("cpu.dat")), None);
        assert_eq!("pprof".parse::<Format>(), Ok(Format::Pprof));
        assert!("png".parse::<Format>().is_err());
    }
}
