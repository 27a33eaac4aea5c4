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

/// A differential flame graph: frames are sized by `current` and coloured by the change
/// from `base` (red grew, blue shrank), as inferno renders two-count folded lines.
pub fn write_diff(base: &View, current: &View, title: &str, out: &mut dyn Write) -> Result<(), ExportError> {
    let mut merged: std::collections::BTreeMap<String, (u64, u64)> = std::collections::BTreeMap::new();
    for stack in &base.stacks {
        merged.entry(base.folded(stack)).or_default().0 += stack.count;
    }
    for stack in &current.stacks {
        merged.entry(current.folded(stack)).or_default().1 += stack.count;
    }
    let lines: Vec<String> = merged.into_iter().map(|(s, (a, b))| format!("{s} {a} {b}")).collect();
    let mut options = Options::default();
    options.title = title.to_string();
    options.subtitle = Some("red: more samples than the base period, blue: fewer".into());
    options.count_name = "samples".into();
    if lines.is_empty() {
        write!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="1200" height="60"><text x="10" y="30">{}: no samples</text></svg>"#,
            escape(title)
        )?;
        return Ok(());
    }
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
        .map_err(|e| ExportError::Svg(e.to_string()))
}
