//! The unwinder's replay corpus (`agent/tests/replay/`, docs/REPLAY.md): recorded real samples
//! unwound again without perf or a live process, through the same code as a recording, must
//! give exactly the frames the live agent found.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ember_agent::replay::{self, Case, CASE_FILE};

use crate::common::*;

fn corpus() -> Vec<(PathBuf, Arc<Case>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/replay");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("the replay corpus exists")
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.join(CASE_FILE).is_file())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|dir| {
            let case = Case::read(&dir.join(CASE_FILE)).unwrap_or_else(|e| panic!("{e}"));
            (dir, Arc::new(case))
        })
        .collect()
}

#[test]
fn every_recorded_case_replays_to_the_frames_found_live() {
    let cases = corpus();
    // The seed cases (agent/tests/replay/capture.sh): losing one must not pass silently.
    assert!(cases.len() >= 4, "only {} replay cases", cases.len());
    for (dir, case) in &cases {
        assert!(!case.samples.is_empty(), "{}: no samples", dir.display());
        let replayed = replay::replay(case);
        let diff = replay::differences(case, &replayed);
        assert!(diff.is_empty(), "{} does not replay as recorded:\n{}", dir.display(), diff.join("\n"));
    }
    // What the seeds cover, so a recapture that lost it is noticed.
    let all = || cases.iter().flat_map(|(_, c)| &c.samples);
    assert!(all().any(|s| s.expected.completed), "a stack completed from the thread's history");
    assert!(all().any(|s| s.expected.frames.iter().any(|f| f.starts_with("map:py::"))), "Python frames");
    assert!(all().any(|s| s.stack_filled), "a stack deeper than the kernel's copy");
}

#[test]
fn a_wrong_expectation_or_recording_makes_the_replay_differ() {
    let cases = corpus();
    let whole = |s: &replay::SampleRecord| s.expected.end == "complete" && s.expected.frames.len() > 3;
    let (_, case) = cases.iter().find(|(_, c)| c.samples.iter().any(whole)).expect("a case");
    let i = case.samples.iter().position(whole).expect("a sample");
    let replayed = replay::replay(case);
    assert!(replay::differences(case, &replayed).is_empty());

    // One frame of the expectation changed.
    let mut wrong = (**case).clone();
    wrong.samples[i].expected.frames[2].push('x');
    assert_eq!(replay::differences(&wrong, &replayed).len(), 1, "one differing frame");
    // A frame fewer, or another outcome.
    let mut wrong = (**case).clone();
    wrong.samples[i].expected.frames.pop();
    assert!(!replay::differences(&wrong, &replayed).is_empty());
    let mut wrong = (**case).clone();
    wrong.samples[i].expected.end = "failed:loop".into();
    assert!(!replay::differences(&wrong, &replayed).is_empty());

    // The recording itself damaged: the stack cut to two words no longer reaches the root.
    let mut cut = (**case).clone();
    cut.samples[i].stack.truncate(16);
    let cut = Arc::new(cut);
    assert!(!replay::differences(&cut, &replay::replay(&cut)).is_empty());
}

#[test]
fn a_fresh_capture_replays_as_recorded() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let case_dir = dir.path().join("nested");
    let out = run(ember()
        .args(["record", "--rate", "499", "--capture-samples", "16", "--capture-replay"])
        .arg(&case_dir)
        .arg("--")
        .arg(python312())
        .arg(fixture("nested.py"))
        .env("EMBER_FIXTURE_SECONDS", "1"));
    assert!(out.status.success(), "{}", stderr(&out));
    let case = Arc::new(Case::read(&case_dir.join(CASE_FILE)).expect("a case was written"));
    assert!(case.samples.len() >= 4, "{} samples", case.samples.len());
    let python = case.samples.iter().filter(|s| s.expected.frames.iter().any(|f| f.contains("nested.py"))).count();
    assert!(python > 0, "samples in the program");
    let diff = replay::differences(&case, &replay::replay(&case));
    assert!(diff.is_empty(), "{}", diff.join("\n"));

    // The case file is never overwritten, and ember says so before recording.
    let again = run(ember().args(["record", "--capture-replay"]).arg(&case_dir).arg("--").arg("true"));
    assert!(!again.status.success());
    assert!(stderr(&again).contains("already holds a replay case"), "{}", stderr(&again));
}
