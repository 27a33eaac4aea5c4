//! Function or line granularity. Agents that send lines (`stream --lines`) store each Python
//! frame at its line, `fn (file:12)`; a query shows functions unless it asks for lines
//! (`lines=1`), so the frames of one function at different lines are merged into `fn (file)`.

use std::collections::HashMap;
use std::sync::Arc;

use ember_profile::Frame;

use crate::store::StackCounts;

/// The counts with every line dropped, frames that differ only by line merged, and stacks that
/// become equal summed.
pub fn without_lines(counts: StackCounts) -> StackCounts {
    if counts.frames.iter().all(|f| f.line.is_none()) {
        return counts;
    }
    let mut frames: Vec<Frame> = Vec::new();
    let mut index: HashMap<Frame, u32> = HashMap::new();
    let remap: Vec<u32> = counts
        .frames
        .iter()
        .map(|f| {
            let function = match f.line {
                Some(_) => Frame { text: format!("{} ({})", f.function, f.file), line: None, ..f.clone() },
                None => f.clone(),
            };
            *index.entry(function.clone()).or_insert_with(|| {
                frames.push(function);
                frames.len() as u32 - 1
            })
        })
        .collect();
    let mut merged: HashMap<Vec<u32>, u64> = HashMap::new();
    for (stack, count) in &counts.stacks {
        let stack: Vec<u32> = stack.iter().map(|&i| remap[i as usize]).collect();
        *merged.entry(stack).or_default() += count;
    }
    let mut stacks: Vec<(Arc<[u32]>, u64)> = merged.into_iter().map(|(s, c)| (Arc::from(s), c)).collect();
    stacks.sort_unstable();
    StackCounts { frames: Arc::new(frames), stacks }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_profile::FrameKind;

    fn python(function: &str, line: Option<u32>) -> Frame {
        let text = match line {
            Some(line) => format!("{function} (app.py:{line})"),
            None => format!("{function} (app.py)"),
        };
        Frame {
            text,
            kind: FrameKind::Python,
            function: function.into(),
            file: "app.py".into(),
            interpreter_plumbing: false,
            line,
        }
    }

    #[test]
    fn lines_of_one_function_merge_and_their_stacks_add_up() {
        let counts = StackCounts {
            frames: Arc::new(vec![
                python("main", Some(3)),
                python("work", Some(10)),
                python("work", Some(11)),
                python("old", None),
            ]),
            stacks: vec![(Arc::from(vec![0, 1]), 5), (Arc::from(vec![0, 2]), 2), (Arc::from(vec![3]), 1)],
        };
        let merged = without_lines(counts);
        let texts: Vec<&str> = merged.frames.iter().map(|f| f.text.as_str()).collect();
        assert_eq!(texts, ["main (app.py)", "work (app.py)", "old (app.py)"]);
        assert!(merged.frames.iter().all(|f| f.line.is_none()));
        assert_eq!(merged.stacks, vec![(Arc::from(vec![0, 1]), 7), (Arc::from(vec![2]), 1)]);
        assert_eq!(merged.total(), 8);
    }

    #[test]
    fn counts_without_lines_are_left_as_they_are() {
        let counts =
            StackCounts { frames: Arc::new(vec![python("main", None)]), stacks: vec![(Arc::from(vec![0]), 4)] };
        let frames = counts.frames.clone();
        assert!(Arc::ptr_eq(&without_lines(counts).frames, &frames));
    }
}
