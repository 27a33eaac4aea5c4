//! Stacks deeper than the kernel's copy, made whole by the interpreter's frames read from
//! memory (`interp`), on every interpreter ember reads: pyenv's 3.12 and 3.13 and Debian's
//! stripped 3.13-3.15.

use std::process::Command;

use crate::common::*;

/// Records `python` (a command ending in a fixture and its arguments) and returns the folded
/// stacks and the summary.
fn record(python: &mut Command) -> (Folded, String) {
    let mut cmd = ember();
    cmd.args(["record", "--rate", "199", "--"]).arg(python.get_program()).args(python.get_args());
    let out = run(&mut cmd);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    (Folded::from_output(&out), err)
}

/// `deep_spin.py` at `depth`: every sample in `spin` must be the whole chain, <module> and
/// `depth` levels of `down`, and the summary must say the interpreter's frames were joined.
fn assert_whole_at(mut python: Command, depth: usize, seconds: &str) {
    let _serial = serial();
    let (folded, err) = record(python.arg(depth.to_string()).arg(seconds));
    let spinning = |s: &[String]| has_frame(s, "spin");
    let whole = |s: &[String]| {
        let python: Vec<&str> =
            s.iter().map(|f| function(f)).filter(|f| ["<module>", "down", "spin"].contains(f)).collect();
        let downs = python.iter().filter(|f| **f == "down").count();
        function(&s[0]) == "<module>"
            && downs == depth
            && python.last() == Some(&"spin")
            && python[1..=depth].iter().all(|f| *f == "down")
    };
    let total = folded.count(spinning);
    let good = folded.count(|s| spinning(s) && whole(s));
    assert!(total >= 100, "only {total} samples in spin\n{err}");
    assert!(good as f64 >= 0.99 * total as f64, "{good} of {total} samples whole at depth {depth}\n{err}");
    assert!(err.contains("joined with the interpreter's frames"), "{err}");
}

fn pyenv(minor: &str) -> Command {
    let mut python = Command::new(if minor == "3.12" { python312() } else { python_version(minor) });
    python.arg(fixture("deep_spin.py"));
    python
}

#[test]
fn a_150_deep_recursion_spinning_at_its_bottom_is_whole_on_pyenv() {
    assert_whole_at(pyenv("3.12"), 150, "2");
    assert_whole_at(pyenv("3.13"), 150, "2");
}

#[test]
fn a_150_deep_recursion_spinning_at_its_bottom_is_whole_on_debian() {
    for minor in ["3.13", "3.14", "3.15"] {
        assert_whole_at(debian_python(minor, "deep_spin.py"), 150, "2");
    }
}

/// 3.12 with the trampoline raises RecursionError near 745 frames (the reference), so 700.
#[test]
fn recursions_thousands_deep_are_whole() {
    assert_whole_at(pyenv("3.12"), 700, "2");
    assert_whole_at(pyenv("3.13"), 4000, "2");
    assert_whole_at(debian_python("3.15", "deep_spin.py"), 4000, "2");
}

/// Depth changing every few milliseconds, a distinct function per level: every sample is
/// either an exact chain or marked `[truncated]`, never a wrong one, and at least 99% are exact.
///
/// A cut stack is joined with the chain read right after the sample; a read that comes after
/// the thread left the sampled call is refused (on 3.14 and 3.15 the callers' C frames hold
/// each round's argument, so a call re-made in a later round is refused too: 10-25% of cut
/// samples here). Those are completed from the thread's earlier joined stacks of the same
/// activation, or marked (docs/BENCHMARKS.md).
#[test]
fn stacks_whose_depth_keeps_changing_are_exact_chains() {
    let mut pyenv312 = Command::new(python312());
    pyenv312.arg(fixture("depth_walk.py"));
    let mut pyenv313 = Command::new(python_version("3.13"));
    pyenv313.arg(fixture("depth_walk.py"));
    assert_exact_chains(pyenv312);
    assert_exact_chains(pyenv313);
    for minor in ["3.13", "3.14", "3.15"] {
        assert_exact_chains(debian_python(minor, "depth_walk.py"));
    }
}

fn assert_exact_chains(mut python: Command) {
    let _serial = serial();
    let what = format!("{python:?}");
    let (folded, err) = record(python.arg("5"));
    let levels = |s: &[String]| -> Vec<String> {
        s.iter().map(|f| function(f).to_string()).filter(|f| f.starts_with("level_")).collect()
    };
    let in_levels = |s: &[String]| !levels(s).is_empty();
    let exact = |s: &[String]| {
        let levels = levels(s);
        let first = s.iter().position(|f| function(f) == "level_0");
        let contiguous = first.is_some_and(|i| {
            s[i..].iter().take(levels.len()).map(|f| function(f)).eq(levels.iter().map(String::as_str))
        });
        function(&s[0]) == "<module>"
            && contiguous
            && levels.iter().enumerate().all(|(k, name)| *name == format!("level_{k}"))
    };
    let marked = |s: &[String]| s.iter().any(|f| f == "[truncated]");
    let total = folded.count(in_levels);
    let good = folded.count(|s| in_levels(s) && exact(s));
    let wrong = folded.count(|s| in_levels(s) && !exact(s) && !marked(s));
    assert!(total >= 500, "{what}: only {total} samples\n{err}");
    assert_eq!(wrong, 0, "{what}: {wrong} samples with a gap, a repeat or a foreign frame\n{err}");
    assert!(good as f64 >= 0.99 * total as f64, "{what}: {good} of {total} samples exact\n{err}");
}
