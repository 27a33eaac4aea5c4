//! Folded stacks: `root;…;leaf count`, one line per distinct stack, the input format of
//! flamegraph.pl, inferno and speedscope.

use std::io::Write;

use super::ExportError;
use crate::view::View;

/// The folded lines, sorted so output is stable.
pub fn lines(view: &View) -> Vec<String> {
    let mut merged: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for stack in &view.stacks {
        *merged.entry(view.folded(stack)).or_default() += stack.count;
    }
    merged.into_iter().map(|(stack, count)| format!("{stack} {count}")).collect()
}

pub fn write(view: &View, out: &mut dyn Write) -> Result<(), ExportError> {
    for line in lines(view) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}
