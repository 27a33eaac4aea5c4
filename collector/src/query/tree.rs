//! The nested flame tree the web view reads: `{name, kind, file, self, total, children}`.

use std::collections::HashMap;

use ember_profile::view::View;
use ember_profile::FrameKind;
use serde::Serialize;

#[derive(Debug, Serialize, PartialEq)]
pub struct Node {
    pub name: String,
    pub kind: &'static str,
    pub file: String,
    #[serde(rename = "self")]
    pub self_count: u64,
    pub total: u64,
    /// Only in diffs: the same figures for the base period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_self: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_total: Option<u64>,
    pub children: Vec<Node>,
}

struct ArenaNode {
    name: String,
    kind: &'static str,
    file: String,
    counts: [u64; 2],
    self_counts: [u64; 2],
    children: HashMap<(String, &'static str), usize>,
}

struct Arena {
    nodes: Vec<ArenaNode>,
}

impl Arena {
    fn new() -> Self {
        let root = ArenaNode {
            name: "all".into(),
            kind: "root",
            file: String::new(),
            counts: [0; 2],
            self_counts: [0; 2],
            children: HashMap::new(),
        };
        Arena { nodes: vec![root] }
    }

    fn add(&mut self, view: &View, side: usize) {
        for stack in &view.stacks {
            let mut at = 0;
            self.nodes[0].counts[side] += stack.count;
            for &f in &stack.frames {
                let frame = view.frame(f);
                let kind = kind_name(frame.kind);
                let key = (frame.text.clone(), kind);
                let next = match self.nodes[at].children.get(&key) {
                    Some(&i) => i,
                    None => {
                        let i = self.nodes.len();
                        self.nodes.push(ArenaNode {
                            name: frame.text.clone(),
                            kind,
                            file: frame.file.clone(),
                            counts: [0; 2],
                            self_counts: [0; 2],
                            children: HashMap::new(),
                        });
                        self.nodes[at].children.insert(key, i);
                        i
                    }
                };
                self.nodes[next].counts[side] += stack.count;
                at = next;
            }
            self.nodes[at].self_counts[side] += stack.count;
        }
    }

    fn build(&self, i: usize, diff: bool) -> Node {
        let n = &self.nodes[i];
        let mut children: Vec<usize> = n.children.values().copied().collect();
        children.sort_by(|&a, &b| self.nodes[a].name.cmp(&self.nodes[b].name));
        Node {
            name: n.name.clone(),
            kind: n.kind,
            file: n.file.clone(),
            self_count: n.self_counts[0],
            total: n.counts[0],
            base_self: diff.then_some(n.self_counts[1]),
            base_total: diff.then_some(n.counts[1]),
            children: children.into_iter().map(|c| self.build(c, diff)).collect(),
        }
    }
}

pub fn kind_name(kind: FrameKind) -> &'static str {
    kind.as_str()
}

/// The flame tree of one view.
pub fn tree(view: &View) -> Node {
    let mut arena = Arena::new();
    arena.add(view, 0);
    arena.build(0, false)
}

/// One tree with both periods' figures: `self`/`total` for `current`, `base_self`/`base_total`
/// for `base`.
pub fn diff_tree(current: &View, base: &View) -> Node {
    let mut arena = Arena::new();
    arena.add(current, 0);
    arena.add(base, 1);
    arena.build(0, true)
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
        assert_eq!((t.total, t.self_count), (6, 0));
        let main = &t.children[0];
        assert_eq!((main.name.as_str(), main.total, main.self_count), ("main (a.py)", 6, 2));
        assert_eq!(main.children.iter().map(|c| c.total).collect::<Vec<_>>(), vec![3, 1]);
        assert_eq!(main.kind, "python");
        assert!(main.base_total.is_none());
    }

    #[test]
    fn diff_carries_both_sides() {
        let mut now = ViewBuilder::new();
        now.add([&py("main"), &py("slow")], 5, 1, 1);
        let mut base = ViewBuilder::new();
        base.add([&py("main"), &py("slow")], 1, 1, 1);
        base.add([&py("main"), &py("gone")], 2, 1, 1);
        let t = diff_tree(&now.finish(), &base.finish());
        let main = &t.children[0];
        assert_eq!((main.total, main.base_total), (5, Some(3)));
        let gone = main.children.iter().find(|c| c.name.starts_with("gone")).expect("base-only frame kept");
        assert_eq!((gone.total, gone.base_total), (0, Some(2)));
    }
}
