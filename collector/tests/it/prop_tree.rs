//! Property test of the flame-tree builder and its JSON writer with stacks up to 100k frames:
//! totals add up at every node, the depth is the deepest stack's, and the JSON is valid and
//! holds every node, however deep.

use std::sync::Arc;

use ember_collector::query::tree;
use ember_collector::store::StackCounts;
use ember_profile::{Frame, FrameKind};
use proptest::prelude::*;

fn frame(i: u32) -> Frame {
    Frame {
        text: format!("f{i} (p.py)"),
        function: format!("f{i}"),
        file: "p.py".into(),
        kind: if i % 5 == 0 { FrameKind::Native } else { FrameKind::Python },
        interpreter_plumbing: false,
        line: None,
    }
}

/// (depth, alphabet, seed, count): a stack whose frames cycle through a small alphabet, so
/// stacks share prefixes and merge.
fn stacks() -> impl Strategy<Value = Vec<(usize, u32, u32, u64)>> {
    prop::collection::vec((0usize..=100_000, 1u32..4, 0u32..3, 1u64..1000), 1..4)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn trees_of_deep_stacks_add_up_and_serialize(spec in stacks()) {
        // Frame i of the table is `frame(i)`, as the store hands them out: distinct, indexed.
        let alphabet_max = spec.iter().map(|s| s.1 + s.2).max().unwrap_or(0);
        let frames: Vec<Frame> = (0..alphabet_max).map(frame).collect();
        let mut stacks = Vec::new();
        let mut total = 0;
        let mut deepest = 0;
        for &(depth, alphabet, seed, count) in &spec {
            let ids: Vec<u32> = (0..depth as u32).map(|i| (i + seed) % alphabet).collect();
            stacks.push((Arc::from(ids), count));
            total += count;
            deepest = deepest.max(depth);
        }
        let counts = StackCounts { frames: Arc::new(frames), stacks };
        let t = tree::tree(&counts, true);
        prop_assert_eq!(t.root().total(), total);
        prop_assert_eq!(t.depth(), deepest);
        for i in 0..t.len() {
            let n = t.node(i);
            let below: u64 = n.children().map(|c| t.node(c).total()).sum();
            prop_assert_eq!(n.total(), n.self_count() + below, "node {}", i);
        }
        let json = crate::common::parse_json(&String::from_utf8(t.to_json()).expect("UTF-8"));
        let flat = crate::common::FlatTree::of(&serde_json::json!({ "tree": json }));
        prop_assert_eq!(flat.len(), t.len());
        prop_assert_eq!(flat.count("total", 0), total);
        let d = tree::diff_tree(&counts, &counts, true);
        prop_assert_eq!(d.root().base_total(), total);
    }
}
