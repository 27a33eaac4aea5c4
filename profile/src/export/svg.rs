//! Flame graph SVG through inferno.

use std::io::Write;

use inferno::flamegraph::{self, Options};

use super::{collapsed, ExportError, Meta};
use crate::view::View;

pub fn write(view: &View, meta: &Meta, out: &mut dyn Write) -> Result<(), ExportError> {
    let lines = collapsed::lines(view);
    let mut options = Options::default();
    options.title = meta.title(view.total);
    options.count_name = "samples".into();
    options.name_type = "Frame:".into();
    if lines.is_empty() {
        // inferno refuses empty input; an empty profile is still a valid answer.
        write!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="1200" height="60"><text x="10" y="30">{}: no samples</text></svg>"#,
            escape(&options.title)
        )?;
        return Ok(());
    }
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
        .map_err(|e| ExportError::Svg(e.to_string()))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
