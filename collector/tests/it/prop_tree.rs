//! Property test of the flame-tree builder and its JSON writer with stacks up to 100k frames:
//! totals add up at every node, the depth is the deepest stack's, and the JSON is valid and
//! holds every node, however deep.

use ember_collector::query::tree;
use ember_profile::view::ViewBuilder;
use ember_profile::{Frame, FrameKind};
use proptest::prelude::*;

fn frame(i: u32) -> Frame {
    Frame {
        text: format!("f{i} (p.py)"),
        function: format!("f{i}"),
        file: "p.py".into(),
        kind: if i % 5 == 0 { FrameKind::Native } else { FrameKind::Python },
        interpreter_plumbing: false,
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
        let mut b = ViewBuilder::new();
        let mut total = 0;
        let mut deepest = 0;
        for &(depth, alphabet, seed, count) in &spec {
            let frames: Vec<Frame> = (0..depth as u32).map(|i| frame((i + seed) % alphabet)).collect();
            b.add(frames.iter(), count, 1, 1);
            total += count;
            deepest = deepest.max(depth);
        }
        let view = b.finish();
        let t = tree::tree(&view);
        prop_assert_eq!(t.root().total(), total);
        prop_assert_eq!(t.depth(), deepest);
        for i in 0..t.len() {
            let n = t.node(i);
            let below: u64 = n.children().iter().map(|&c| t.node(c).total()).sum();
            prop_assert_eq!(n.total(), n.self_count() + below, "node {}", i);
        }
        let json = String::from_utf8(t.to_json()).expect("UTF-8");
        let nodes = t.len();
        let (parsed_nodes, parsed_total) = crate::common::with_big_stack(move || {
            let value = crate::common::parse_json(&json);
            let mut count = 0usize;
            let mut stack = vec![&value];
            while let Some(n) = stack.pop() {
                count += 1;
                stack.extend(n["children"].as_array().into_iter().flatten());
            }
            let total = value["total"].as_u64();
            drop(stack);
            drop(value);
            (count, total)
        });
        prop_assert_eq!(parsed_nodes, nodes);
        prop_assert_eq!(parsed_total, Some(total));
        let d = tree::diff_tree(&view, &view);
        prop_assert_eq!(d.root().base_total(), total);
    }
}
