//! Property tests of what peers send: batch validation on arbitrary batches, and the query
//! parameter parsers on arbitrary text. Neither may panic, and what they accept holds the
//! documented rules.

use ember_collector::ingest::validate::{self, MAX_SAMPLE_WEIGHT, MAX_STACK_DEPTH, MIN_TIME_NS, RESERVED_LABELS};
use ember_collector::query::time::{parse_duration_ms, parse_range, parse_step, parse_time, MAX_TIME_MS, MIN_TIME_MS};
use ember_collector::query::{Selector, TimeRange};
use ember_collector::store::BUCKET_MS;
use ember_proto::v1;
use proptest::prelude::*;

fn now_ns() -> i64 {
    ember_collector::query::now_ms() * 1_000_000
}

/// Times near now, near the window's edges, and anywhere at all.
fn time() -> impl Strategy<Value = u64> {
    let now = now_ns() as u64;
    prop_oneof![now - 3_600_000_000_000..now, Just(0u64), Just(i64::MAX as u64), any::<u64>()]
}

fn label_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("team".to_string()),
        Just("bad-name".to_string()),
        prop::sample::select(RESERVED_LABELS.to_vec()).prop_map(String::from)
    ]
}

prop_compose! {
    fn batch()(
        strings in prop::collection::vec("[a-z]{0,4}", 0..5),
        frames in prop::collection::vec((0u32..6, 0u32..6, 0i32..6), 0..6),
        stacks in prop::collection::vec(prop::collection::vec(0u32..8, 0..6), 0..5),
        processes in prop::collection::vec((0u32..4, prop::option::of((label_name(), "[a-z]{0,3}"))), 0..4),
        blocks in prop::collection::vec(
            (0u32..5, time(), prop::collection::vec(0u32..6, 0..4), 0usize..5, 0usize..5,
             prop::collection::vec(prop_oneof![Just(1u32), Just(0u32), Just(MAX_SAMPLE_WEIGHT), any::<u32>()], 0..5)),
            0..4),
        offset in prop_oneof![Just(0i64), any::<i64>()],
        sequence in 0u64..3,
    ) -> v1::Batch {
        v1::Batch {
            agent_id: "prop".into(),
            sequence,
            strings,
            frames: frames.into_iter().map(|(t, f, k)| v1::Frame { text: t, function: f, file: 0, kind: k, interpreter_plumbing: false , line: 0}).collect(),
            stacks: stacks.into_iter().map(|frames| v1::Stack { frames }).collect(),
            processes: processes.into_iter().map(|(id, label)| v1::Process {
                id, pid: 7, labels: label.into_iter().collect(), ..Default::default()
            }).collect(),
            samples: blocks.into_iter().map(|(process, base, stack, tids, deltas, weight)| v1::SampleBlock {
                process, base_time_nanos: base, tid: vec![1; tids.min(stack.len() + 1)],
                time_delta: vec![1_000; deltas.min(stack.len() + 1)], stack, weight,
            }).collect(),
            monotonic_to_unix_nanos: offset,
            rate_hz: 99,
            tasks: Vec::new(),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn validation_never_panics_and_accepts_only_what_the_rules_allow(b in batch()) {
        match validate::validate(&b) {
            Err(e) => prop_assert!(!e.field.is_empty() && !e.problem.is_empty()),
            Ok(new) => {
                let max_ns = now_ns() + 25 * 3_600_000_000_000;
                for stack in &new.stacks {
                    prop_assert!(stack.len() <= MAX_STACK_DEPTH);
                    prop_assert!(stack.iter().all(|&f| (f as usize) < new.frames.len()));
                }
                let mut samples = 0;
                for s in &new.series {
                    for x in &s.samples {
                        prop_assert!((x.stack as usize) < new.stacks.len());
                        prop_assert!((1..=MAX_SAMPLE_WEIGHT).contains(&x.weight));
                        prop_assert!((MIN_TIME_NS..=max_ns).contains(&x.time_unix_ns));
                        samples += 1;
                    }
                }
                prop_assert_eq!(samples, b.samples.iter().map(|s| s.stack.len()).sum::<usize>());
                for p in &b.processes {
                    prop_assert!(p.labels.keys().all(|k| !RESERVED_LABELS.contains(&k.as_str()) && k != "bad-name"));
                }
            }
        }
    }

    #[test]
    fn deep_stacks_keep_their_leaf_end(depth in 0usize..40_000) {
        let mut b = v1::Batch {
            agent_id: "prop".into(),
            sequence: 1,
            strings: vec![String::new(), "f".into()],
            frames: (0..3).map(|_| v1::Frame { text: 1, function: 1, ..Default::default() }).collect(),
            stacks: vec![v1::Stack { frames: (0..depth as u32).map(|i| i % 3).collect() }],
            ..Default::default()
        };
        b.processes.push(v1::Process { id: 1, pid: 1, ..Default::default() });
        let new = validate::validate(&b).expect("valid");
        let kept = &new.stacks[0];
        prop_assert_eq!(kept.len(), depth.min(MAX_STACK_DEPTH));
        if depth > MAX_STACK_DEPTH {
            prop_assert_eq!(&new.frames[kept[0] as usize].text, "[depth limit]");
            prop_assert_eq!(&kept[1..], &b.stacks[0].frames[depth - (MAX_STACK_DEPTH - 1)..]);
        } else {
            prop_assert_eq!(kept, &b.stacks[0].frames);
        }
    }

    #[test]
    fn time_parsers_never_panic_and_stay_in_the_window(
        text in prop_oneof!["[-+0-9a-z ]{0,24}", "now[-+][0-9]{1,20}(ms|s|m|h|d|w|y)?", "-?[0-9]{1,20}"],
        now in MIN_TIME_MS..=MAX_TIME_MS,
    ) {
        if let Ok(ms) = parse_time(&text, now) {
            prop_assert!((MIN_TIME_MS..=MAX_TIME_MS).contains(&ms), "{} -> {}", text, ms);
        }
        let _ = parse_duration_ms(&text);
        if let Ok(r) = parse_range(Some(&text), None, now) {
            prop_assert!(r.from_ms < r.to_ms && r.from_ms >= MIN_TIME_MS && r.to_ms <= MAX_TIME_MS);
        }
        if let Ok(r) = parse_range(None, Some(&text), now) {
            prop_assert!(r.from_ms < r.to_ms && r.from_ms >= MIN_TIME_MS);
        }
        let _ = Selector::parse(&text);
    }

    #[test]
    fn unix_milliseconds_parse_exactly_when_in_the_window(ms in any::<i64>()) {
        let parsed = parse_time(&ms.to_string(), 0);
        prop_assert_eq!(parsed.is_ok(), (MIN_TIME_MS..=MAX_TIME_MS).contains(&ms));
        if let Ok(v) = parsed {
            prop_assert_eq!(v, ms);
        }
    }

    #[test]
    fn steps_are_whole_buckets_and_bound_the_points(
        step in prop_oneof!["[0-9]{1,20}", "[0-9]{1,20}(ms|s|m|h|d|w)", "-?[0-9a-z]{0,6}"],
        from in MIN_TIME_MS..MAX_TIME_MS,
        length in 1i64..=MAX_TIME_MS,
    ) {
        let to = from.saturating_add(length).min(MAX_TIME_MS);
        prop_assume!(from < to);
        let range = TimeRange { from_ms: from, to_ms: to };
        for text in [Some(step.as_str()), None] {
            if let Ok(s) = parse_step(text, range) {
                prop_assert!(s >= BUCKET_MS && s % BUCKET_MS == 0, "{:?} -> {}", text, s);
                prop_assert!(s <= range.duration_ms() + BUCKET_MS);
                prop_assert!(range.duration_ms() / s <= 10_000);
            }
        }
    }
}
