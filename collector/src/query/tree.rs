//! The nested flame tree the web view reads: `{name, kind, file, self, total, children}`.
//!
//! Stacks may be as deep as the ingest limit ([`crate::ingest::validate::MAX_STACK_DEPTH`]), so
//! nothing here recurses: the tree is a flat arena, and its JSON is written with an explicit
//! stack. (A nested `struct` would overflow the thread's stack in serde and in `Drop`.)

use std::collections::HashMap;

use ember_profile::view::View;
use ember_profile::FrameKind;

#[derive(Debug)]
pub struct TreeNode {
    pub name: String,
    pub kind: &'static str,
    pub file: String,
    /// `[current, base]` totals and self counts; base stays 0 outside diffs.
    counts: [u64; 2],
    self_counts: [u64; 2],
    /// Sorted by (name, kind) once the tree is finished.
    children: Vec<usize>,
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
    pub fn children(&self) -> &[usize] {
        &self.children
    }
}

/// A flame tree; node 0 is the root, `all`.
#[derive(Debug)]
pub struct FlameTree {
    nodes: Vec<TreeNode>,
    diff: bool,
}

struct Builder {
    nodes: Vec<TreeNode>,
    /// (parent node, frame identity) → child node. Frames merge by text and kind.
    index: HashMap<(usize, u32), usize>,
}

impl Builder {
    fn new() -> Self {
        let root = TreeNode {
            name: "all".into(),
            kind: "root",
            file: String::new(),
            counts: [0; 2],
            self_counts: [0; 2],
            children: Vec::new(),
        };
        Builder { nodes: vec![root], index: HashMap::new() }
    }

    fn add(&mut self, view: &View, side: usize, identities: &mut HashMap<(String, &'static str), u32>) {
        // One identity per distinct (text, kind), shared by both sides of a diff.
        let ids: Vec<u32> = view
            .frames
            .iter()
            .map(|f| {
                let next = identities.len() as u32;
                *identities.entry((f.text.clone(), kind_name(f.kind))).or_insert(next)
            })
            .collect();
        for stack in &view.stacks {
            let mut at = 0;
            self.nodes[0].counts[side] += stack.count;
            for &f in &stack.frames {
                let frame = view.frame(f);
                let kind = kind_name(frame.kind);
                let key = (at, ids[f as usize]);
                let next = match self.index.get(&key) {
                    Some(&i) => i,
                    None => {
                        let i = self.nodes.len();
                        self.nodes.push(TreeNode {
                            name: frame.text.clone(),
                            kind,
                            file: frame.file.clone(),
                            counts: [0; 2],
                            self_counts: [0; 2],
                            children: Vec::new(),
                        });
                        self.nodes[at].children.push(i);
                        self.index.insert(key, i);
                        i
                    }
                };
                self.nodes[next].counts[side] += stack.count;
                at = next;
            }
            self.nodes[at].self_counts[side] += stack.count;
        }
    }

    fn finish(mut self, diff: bool) -> FlameTree {
        drop(self.index);
        for i in 0..self.nodes.len() {
            let mut children = std::mem::take(&mut self.nodes[i].children);
            children.sort_by(|&a, &b| {
                let (a, b) = (&self.nodes[a], &self.nodes[b]);
                a.name.cmp(&b.name).then(a.kind.cmp(b.kind))
            });
            self.nodes[i].children = children;
        }
        FlameTree { nodes: self.nodes, diff }
    }
}

pub fn kind_name(kind: FrameKind) -> &'static str {
    kind.as_str()
}

/// The flame tree of one view.
pub fn tree(view: &View) -> FlameTree {
    let mut b = Builder::new();
    b.add(view, 0, &mut HashMap::new());
    b.finish(false)
}

/// One tree with both periods' figures: `self`/`total` for `current`, `base_self`/`base_total`
/// for `base`.
pub fn diff_tree(current: &View, base: &View) -> FlameTree {
    let mut b = Builder::new();
    let mut identities = HashMap::new();
    b.add(current, 0, &mut identities);
    b.add(base, 1, &mut identities);
    b.finish(true)
}

impl FlameTree {
    pub fn root(&self) -> &TreeNode {
        &self.nodes[0]
    }

    pub fn node(&self, i: usize) -> &TreeNode {
        &self.nodes[i]
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
            stack.extend(self.nodes[i].children.iter().map(|&c| (c, d + 1)));
        }
        deepest
    }

    fn open_node(&self, i: usize, out: &mut Vec<u8>) {
        let n = &self.nodes[i];
        out.extend_from_slice(b"{\"name\":");
        json_string(&n.name, out);
        out.extend_from_slice(b",\"kind\":");
        json_string(n.kind, out);
        out.extend_from_slice(b",\"file\":");
        json_string(&n.file, out);
        let mut number = |key: &str, v: u64| {
            use std::io::Write;
            // Writing into a Vec cannot fail.
            let _ = write!(out, ",\"{key}\":{v}");
        };
        number("self", n.self_counts[0]);
        number("total", n.counts[0]);
        if self.diff {
            number("base_self", n.self_counts[1]);
            number("base_total", n.counts[1]);
        }
        out.extend_from_slice(b",\"children\":[");
    }

    /// Appends the tree as JSON, depth first, without recursion.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.open_node(0, out);
        // (node, next child to write)
        let mut stack: Vec<(usize, usize)> = vec![(0, 0)];
        while let Some(top) = stack.last_mut() {
            let (node, next) = *top;
            match self.nodes[node].children.get(next) {
                Some(&child) => {
                    top.1 += 1;
                    if next > 0 {
                        out.push(b',');
                    }
                    self.open_node(child, out);
                    stack.push((child, 0));
                }
                None => {
                    out.extend_from_slice(b"]}");
                    stack.pop();
                }
            }
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.nodes.len() * 96);
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
    use super::*;
    use ember_profile::view::ViewBuilder;
    use ember_profile::Frame;

    fn py(name: &str) -> Frame {
        Frame {
            text: format!("{name} (a.py)"),
            kind: FrameKind::Python,
            function: name.into(),
            file: "a.py".into(),
            interpreter_plumbing: false,
        }
    }

    #[test]
    fn totals_and_self() {
        let mut b = ViewBuilder::new();
        b.add([&py("main"), &py("a")], 3, 1, 1);
        b.add([&py("main"), &py("b")], 1, 1, 1);
        b.add([&py("main")], 2, 1, 1);
        let t = tree(&b.finish());
        assert_eq!((t.root().total(), t.root().self_count()), (6, 0));
        let main = t.node(t.root().children()[0]);
        assert_eq!((main.name.as_str(), main.total(), main.self_count()), ("main (a.py)", 6, 2));
        assert_eq!(main.children().iter().map(|&c| t.node(c).total()).collect::<Vec<_>>(), vec![3, 1]);
        assert_eq!(main.kind, "python");
        let json: serde_json::Value = serde_json::from_slice(&t.to_json()).expect("valid JSON");
        assert!(json["children"][0].get("base_total").is_none());
        assert_eq!(json["children"][0]["self"], 2);
        assert_eq!(json["children"][0]["children"][1]["name"], "b (a.py)");
    }

    #[test]
    fn diff_carries_both_sides() {
        let mut now = ViewBuilder::new();
        now.add([&py("main"), &py("slow")], 5, 1, 1);
        let mut base = ViewBuilder::new();
        base.add([&py("main"), &py("slow")], 1, 1, 1);
        base.add([&py("main"), &py("gone")], 2, 1, 1);
        let t = diff_tree(&now.finish(), &base.finish());
        let main = t.node(t.root().children()[0]);
        assert_eq!((main.total(), main.base_total()), (5, 3));
        let gone = main
            .children()
            .iter()
            .map(|&c| t.node(c))
            .find(|c| c.name.starts_with("gone"))
            .expect("base-only frame kept");
        assert_eq!((gone.total(), gone.base_total()), (0, 2));
        let json: serde_json::Value = serde_json::from_slice(&t.to_json()).expect("valid JSON");
        assert_eq!(json["children"][0]["base_total"], 3);
    }

    #[test]
    fn names_are_escaped() {
        let mut out = Vec::new();
        json_string("a\"b\\c\n\u{1}é", &mut out);
        assert_eq!(serde_json::from_slice::<String>(&out).expect("valid"), "a\"b\\c\n\u{1}é");
    }
}
