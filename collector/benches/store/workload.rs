//! The benchmark's workload: a call tree of 3,000 frames, 2,000 distinct stacks 10-60 frames
//! deep that share prefixes, Zipf-like popularity, 20 series, batches of one process's 10 s.

use ember_proto::v1;

#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug)]
pub struct Workload {
    frame_text: Vec<String>,
    stacks: Vec<Vec<u32>>,
    /// Cumulative popularity for picking stacks.
    cumulative: Vec<f64>,
}

pub fn workload(rng: &mut Rng) -> Workload {
    let frame_text: Vec<String> = (0..3000)
        .map(|i| {
            if i % 3 == 0 {
                format!("_PyEval_EvalFrameDefault_helper_{i} [libpython3.12.so.1.0]")
            } else {
                format!("handler_{i}.process_request (/srv/app/services/module_{}.py)", i % 97)
            }
        })
        .collect();
    // Stacks as random walks down a tree: children of a frame come from a fixed neighbourhood,
    // so stacks share long prefixes as real ones do.
    let stacks: Vec<Vec<u32>> = (0..2000)
        .map(|_| {
            let depth = 10 + rng.below(51) as usize;
            let mut frame = rng.below(20) as u32;
            (0..depth)
                .map(|_| {
                    let f = frame;
                    frame = (frame * 7 + 1 + rng.below(6) as u32) % 3000;
                    f
                })
                .collect()
        })
        .collect();
    let mut total = 0.0;
    let cumulative = (0..stacks.len())
        .map(|i| {
            total += 1.0 / ((i + 1) as f64).powf(1.1);
            total
        })
        .collect();
    Workload { frame_text, stacks, cumulative }
}

pub const SAMPLES_PER_BATCH: usize = 3960;
pub const SERIES: usize = 20;

pub fn make_batch(w: &Workload, rng: &mut Rng, sequence: u64, series: usize, window_start_ns: u64) -> v1::Batch {
    let total = *w.cumulative.last().unwrap_or(&1.0);
    let mut strings = vec![String::new()];
    let mut string_of = std::collections::HashMap::new();
    let mut frames = Vec::new();
    let mut frame_of = std::collections::HashMap::new();
    let mut stacks = Vec::new();
    let mut stack_of = std::collections::HashMap::new();
    let mut block = v1::SampleBlock { process: 1, base_time_nanos: window_start_ns, ..Default::default() };
    for i in 0..SAMPLES_PER_BATCH {
        let pick = (rng.next() as f64 / u64::MAX as f64) * total;
        let s = w.cumulative.partition_point(|&c| c < pick).min(w.stacks.len() - 1);
        let local = *stack_of.entry(s).or_insert_with(|| {
            let ids = w.stacks[s]
                .iter()
                .map(|&f| {
                    *frame_of.entry(f).or_insert_with(|| {
                        let text = &w.frame_text[f as usize];
                        let t = *string_of.entry(text.clone()).or_insert_with(|| {
                            strings.push(text.clone());
                            strings.len() as u32 - 1
                        });
                        frames.push(v1::Frame {
                            text: t,
                            function: t,
                            file: 0,
                            kind: v1::FrameKind::Python as i32,
                            interpreter_plumbing: false,
                            line: 0,
                        });
                        frames.len() as u32 - 1
                    })
                })
                .collect();
            stacks.push(v1::Stack { frames: ids });
            stacks.len() as u32 - 1
        });
        block.stack.push(local);
        block.tid.push(1000 + (i % 4) as u32);
        block.time_delta.push(if i == 0 {
            0
        } else if i % 4 == 0 {
            10_101_010
        } else {
            0
        });
    }
    v1::Batch {
        agent_id: format!("agent-{series}"),
        sequence,
        strings,
        frames,
        stacks,
        processes: vec![v1::Process {
            id: 1,
            host: format!("host-{}", series % 4),
            pid: 1000 + series as u32,
            comm: "python3.12".into(),
            service: format!("service-{}", series % 5),
            ..Default::default()
        }],
        samples: vec![block],
        tasks: Vec::new(),
        monotonic_to_unix_nanos: 0,
        rate_hz: 99,
    }
}
