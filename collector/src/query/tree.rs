//! The flame tree the web view draws, built straight from a query's stack counts and served as
//! the flat arrays the view works on (docs/API.md): nodes in depth-first order with their
//! parent, frame and counts, and one table of the distinct frames they name.
//!
//! Store frame indexes map to tree frames once per frame, not once per stack, and nothing here
//! recurses: stacks may be as deep as the ingest limit
//! ([`crate::ingest::validate::MAX_STACK_DEPTH`]).

use std::collections::HashMap;
use std::io::Write;

use ember_profile::view::default_view_by;
use ember_profile::{Frame, FrameKind};

use crate::store::StackCounts;

/// What a node shows; nodes merge by (text, kind).
#[derive(Debug)]
struct TreeFrame<'a> {
    name: &'a str,
    kind: &'static str,
    file: &'a str,
}

#[derive(Debug)]
pub struct TreeNode {
    frame: u32,
    /// `[current, base]` totals and self counts; base stays 0 outside diffs.
    counts: [u64; 2],
    self_counts: [u64; 2],
    /// Sorted by (name, kind) once the tree is finished.
    children: Vec<u32>,
}

impl TreeNode {
    pub fn total(&self) -> u64 {
        self.counts[0]
    }
    pub fn self_count(&self) -> u64 {
        self.self_counts[0]
    }
    pub fn base_total(&self) -> u64 {
        self.counts[1]
    }
    pub fn base_self(&self) -> u64 {
        self.self_counts[1]
    }
    pub fn children(&self) -> impl Iterator<Item = usize> + '_ {
        self.children.iter().map(|&c| c as usize)
    }
}

/// A flame tree; node 0 is the root, `all`. It borrows the text of the counts it was built from.
#[derive(Debug)]
pub struct FlameTree<'a> {
    frames: Vec<TreeFrame<'a>>,
    nodes: Vec<TreeNode>,
    diff: bool,
}

struct Builder<'a> {
    frames: Vec<TreeFrame<'a>>,
    identities: HashMap<(&'a str, FrameKind), u32>,
    nodes: Vec<TreeNode>,
    /// (parent node, tree frame) → child node.
    index: HashMap<(u32, u32), u32>,
}

impl<'a> Builder<'a> {
    fn new() -> Self {
        let root = TreeNode { frame: 0, counts: [0; 2], self_counts: [0; 2], children: Vec::new() };
        Builder {
            frames: vec![TreeFrame { name: "all", kind: "root", file: "" }],
            identities: HashMap::new(),
            nodes: vec![root],
            index: HashMap::new(),
        }
    }

    /// The tree frame of a counts' frame, made on first use and shared by both sides of a
    /// diff, so frames only the native view shows stay out of the default view's table.
    fn tree_frame(&mut self, f: &'a Frame) -> u32 {
        let next = self.frames.len() as u32;
        *self.identities.entry((f.text.as_str(), f.kind)).or_insert_with(|| {
            self.frames.push(TreeFrame { name: &f.text, kind: f.kind.as_str(), file: &f.file });
            next
        })
    }

    fn add(&mut self, counts: &'a StackCounts, native: bool, side: usize) {
        const UNSEEN: u32 = u32::MAX;
        let mut tree_frames = vec![UNSEEN; counts.frames.len()];
        let mut path = Vec::new();
        for (stack, count) in &counts.stacks {
            path.clear();
            let frame_of = |&i: &u32| &counts.frames[i as usize];
            let kept: Box<dyn Iterator<Item = &u32>> =
                if native { Box::new(stack.iter()) } else { Box::new(default_view_by(stack, frame_of)) };
            for &i in kept {
                let slot = &mut tree_frames[i as usize];
                if *slot == UNSEEN {
                    *slot = self.tree_frame(&counts.frames[i as usize]);
                }
                path.push(*slot);
            }
            self.insert(&path, *count, side);
        }
    }

    fn insert(&mut self, path: &[u32], count: u64, side: usize) {
        let mut at = 0u32;
        self.nodes[0].counts[side] += count;
        for &frame in path {
            let next = match self.index.get(&(at, frame)) {
                Some(&i) => i,
                None => {
                    let i = self.nodes.len() as u32;
                    self.nodes.push(TreeNode { frame, counts: [0; 2], self_counts: [0; 2], children: Vec::new() });
                    self.nodes[at as usize].children.push(i);
                    self.index.insert((at, frame), i);
                    i
                }
            };
            self.nodes[next as usize].counts[side] += count;
            at = next;
        }
        self.nodes[at as usize].self_counts[side] += count;
    }

    fn finish(mut self, diff: bool) -> FlameTree<'a> {
        drop(self.index);
        for i in 0..self.nodes.len() {
            let mut children = std::mem::take(&mut self.nodes[i].children);
            children.sort_by(|&a, &b| {
                let a = &self.frames[self.nodes[a as usize].frame as usize];
                let b = &self.frames[self.nodes[b as usize].frame as usize];
                a.name.cmp(b.name).then(a.kind.cmp(b.kind))
            });
            self.nodes[i].children = children;
        }
        FlameTree { frames: self.frames, nodes: self.nodes, diff }
    }
}

/// The flame tree of one query: the default view's frames unless `native` is set.
pub fn tree(counts: &StackCounts, native: bool) -> FlameTree<'_> {
    let mut b = Builder::new();
    b.add(counts, native, 0);
    b.finish(false)
}

/// One tree with both periods' figures: `self`/`total` for `current`, `base_self`/`base_total`
/// for `base`.
pub fn diff_tree<'a>(current: &'a StackCounts, base: &'a StackCounts, native: bool) -> FlameTree<'a> {
    let mut b = Builder::new();
    b.add(current, native, 0);
    b.add(base, native, 1);
    b.finish(true)
}

impl FlameTree<'_> {
    pub fn root(&self) -> &TreeNode {
        &self.nodes[0]
    }

    pub fn node(&self, i: usize) -> &TreeNode {
        &self.nodes[i]
    }

    /// A node's frame text and kind.
    pub fn name(&self, node: &TreeNode) -> (&str, &'static str) {
        let f = &self.frames[node.frame as usize];
        (f.name, f.kind)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }

    /// The deepest path's length in frames (the root not counted).
    pub fn depth(&self) -> usize {
        let mut deepest = 0;
        let mut stack = vec![(0usize, 0usize)];
        while let Some((i, d)) = stack.pop() {
            deepest = deepest.max(d);
            stack.extend(self.nodes[i].children().map(|c| (c, d + 1)));
        }
        deepest
    }

    /// Nodes in depth-first order (children by name), each with its parent's position.
    fn preorder(&self) -> Vec<(u32, i64)> {
        let mut order = Vec::with_capacity(self.nodes.len());
        let mut stack = vec![(0u32, -1i64)];
        while let Some((node, parent)) = stack.pop() {
            let position = order.len() as i64;
            order.push((node, parent));
            stack.extend(self.nodes[node as usize].children.iter().rev().map(|&c| (c, position)));
        }
        order
    }

    /// Appends the tree as JSON: `{"frames": {"name", "kind", "file"}, "frame", "parent",
    /// "self", "total"}` (and `base_self`, `base_total` in a diff), nodes in depth-first order.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        fn strings<'s>(out: &mut Vec<u8>, key: &str, values: impl Iterator<Item = &'s str>) {
            out.extend_from_slice(format!("\"{key}\":[").as_bytes());
            for (i, v) in values.enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_string(v, out);
            }
            out.push(b']');
        }
        fn numbers<T: std::fmt::Display>(out: &mut Vec<u8>, key: &str, values: impl Iterator<Item = T>) {
            out.extend_from_slice(format!(",\"{key}\":[").as_bytes());
            for (i, v) in values.enumerate() {
                // Writing into a Vec cannot fail.
                let _ = if i > 0 { write!(out, ",{v}") } else { write!(out, "{v}") };
            }
            out.push(b']');
        }
        let order = self.preorder();
        let node = |&(n, _): &(u32, i64)| &self.nodes[n as usize];
        out.extend_from_slice(b"{\"frames\":{");
        strings(out, "name", self.frames.iter().map(|f| f.name));
        out.push(b',');
        strings(out, "kind", self.frames.iter().map(|f| f.kind));
        out.push(b',');
        strings(out, "file", self.frames.iter().map(|f| f.file));
        out.push(b'}');
        numbers(out, "frame", order.iter().map(|o| node(o).frame));
        numbers(out, "parent", order.iter().map(|&(_, parent)| parent));
        numbers(out, "self", order.iter().map(|o| node(o).self_counts[0]));
        numbers(out, "total", order.iter().map(|o| node(o).counts[0]));
        if self.diff {
            numbers(out, "base_self", order.iter().map(|o| node(o).self_counts[1]));
            numbers(out, "base_total", order.iter().map(|o| node(o).counts[1]));
        }
        out.push(b'}');
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.nodes.len() * 24 + self.frames.len() * 64);
        self.write_json(&mut out);
        out
    }
}

/// A JSON string literal (RFC 8259 escaping).
pub fn json_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        // Runs of plain bytes (all of UTF-8 above ASCII included) are copied whole.
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn frame(name: &str, kind: FrameKind) -> Frame {
        Frame {
            text: format!("{name} (a.py)"),
            kind,
            function: name.into(),
            file: "a.py".into(),
            interpreter_plumbing: false,
            line: None,
        }
    }

    /// Counts over frames `main`, `a`, `b`, `slow`, `gone` (Python) and `memcpy` (native).
    fn counts(stacks: &[(&[u32], u64)]) -> StackCounts {
        let mut frames: Vec<Frame> =
            ["main", "a", "b", "slow", "gone"].iter().map(|n| frame(n, FrameKind::Python)).collect();
        frames.push(frame("memcpy", FrameKind::Native));
        StackCounts { frames: Arc::new(frames), stacks: stacks.iter().map(|&(s, c)| (Arc::from(s), c)).collect() }
    }

    fn child<'t>(t: &'t FlameTree, node: &TreeNode, name: &str) -> &'t TreeNode {
        node.children().map(|c| t.node(c)).find(|c| t.name(c).0.starts_with(name)).expect("child")
    }

    #[test]
    fn totals_and_self() {
        let c = counts(&[(&[0, 1], 3), (&[0, 2], 1), (&[0], 2)]);
        let t = tree(&c, false);
        assert_eq!((t.root().total(), t.root().self_count()), (6, 0));
        let main = t.node(t.root().children().next().expect("main"));
        assert_eq!((t.name(main), main.total(), main.self_count()), (("main (a.py)", "python"), 6, 2));
        assert_eq!(main.children().map(|c| t.node(c).total()).collect::<Vec<_>>(), vec![3, 1]);
        let json: serde_json::Value = serde_json::from_slice(&t.to_json()).expect("valid JSON");
        assert!(json.get("base_total").is_none());
        let name = |i: usize| {
            let f = json["frame"][i].as_u64().expect("frame") as usize;
            json["frames"]["name"][f].as_str().expect("name").to_string()
        };
        // Depth first, children by name: all, main, a, b.
        assert_eq!((0..4).map(name).collect::<Vec<_>>(), ["all", "main (a.py)", "a (a.py)", "b (a.py)"]);
        assert_eq!(json["parent"], serde_json::json!([-1, 0, 1, 1]));
        assert_eq!(json["self"], serde_json::json!([0, 2, 3, 1]));
        assert_eq!(json["total"], serde_json::json!([6, 6, 3, 1]));
        assert_eq!(json["frames"]["kind"][0], "root");
    }

    #[test]
    fn the_default_view_drops_native_frames_above_python() {
        let c = counts(&[(&[5, 0, 1, 5], 2)]);
        let default = tree(&c, false);
        let main = child(&default, default.root(), "main");
        assert_eq!(child(&default, child(&default, main, "a"), "memcpy").total(), 2);
        let native = tree(&c, true);
        assert_eq!(native.depth(), 4);
        assert_eq!(native.name(native.node(native.root().children().next().expect("root"))).0, "memcpy (a.py)");
    }

    #[test]
    fn diff_carries_both_sides() {
        let now = counts(&[(&[0, 3], 5)]);
        let base = counts(&[(&[0, 3], 1), (&[0, 4], 2)]);
        let t = diff_tree(&now, &base, false);
        let main = child(&t, t.root(), "main");
        assert_eq!((main.total(), main.base_total()), (5, 3));
        let gone = child(&t, main, "gone");
        assert_eq!((gone.total(), gone.base_total()), (0, 2));
        let json: serde_json::Value = serde_json::from_slice(&t.to_json()).expect("valid JSON");
        assert_eq!(json["base_total"][1], 3);
        assert_eq!(
            json["frames"]["name"].as_array().map(Vec::len),
            Some(4),
            "all, main, slow, gone: shared, and only those used"
        );
    }

    #[test]
    fn names_are_escaped() {
        let mut out = Vec::new();
        json_string("a\"b\\c\n\u{1}é", &mut out);
        assert_eq!(serde_json::from_slice::<String>(&out).expect("valid"), "a\"b\\c\n\u{1}é");
    }
}
