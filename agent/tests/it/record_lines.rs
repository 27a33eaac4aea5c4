//! `record --lines`: each Python frame's line, read from the interpreter right after the sample.

use std::process::Command;

use crate::common::*;

/// The line of the fixture marked `# marker`.
fn line_of(marker: &str) -> String {
    let text = std::fs::read_to_string(fixture("two_lines.py")).expect("fixture");
    let found = text.lines().position(|l| l.trim_end().ends_with(&format!("# {marker}")));
    found.map(|i| (i + 1).to_string()).unwrap_or_else(|| panic!("no line marked {marker}"))
}

/// `two_lines.py` spends about 3/4 of its CPU in loop A and 1/4 in loop B, and says what it
/// spent: the samples of `hot` at each loop's line must split the same way, within 3 points.
fn assert_lines_split(python: Command) {
    let _serial = serial();
    let out = run(ember()
        .args(["record", "--lines", "--rate", "499", "--"])
        .arg(python.get_program())
        .args(python.get_args())
        .arg("6"));
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let folded = Folded::from_output(&out);
    let at = |line: String| {
        move |s: &[String]| s.iter().any(|f| f.starts_with("hot (") && f.ends_with(&format!(":{line})")))
    };
    let (a, b) = (folded.count(at(line_of("loop-a"))), folded.count(at(line_of("loop-b"))));
    assert!(a + b >= 1500, "only {a} + {b} samples at the two lines\n{err}");
    let share = 100.0 * a as f64 / (a + b) as f64;
    let spent = err.lines().find_map(|l| l.strip_prefix("split-a ")?.trim().parse::<f64>().ok());
    let expected = 100.0 * spent.unwrap_or_else(|| panic!("the fixture did not say its split\n{err}"));
    assert!(
        (share - expected).abs() <= 3.0,
        "loop A has {share:.1}% of the two lines' samples (it spent {expected:.1}% there)\n{err}"
    );
}

fn pyenv(python: std::path::PathBuf) -> Command {
    let mut cmd = Command::new(python);
    cmd.arg(fixture("two_lines.py"));
    cmd
}

#[test]
fn two_hot_lines_split_as_their_cpu_does_on_3_12() {
    assert_lines_split(pyenv(python312()));
}

#[test]
fn two_hot_lines_split_as_their_cpu_does_on_3_13() {
    assert_lines_split(pyenv(python_version("3.13")));
}

#[test]
fn two_hot_lines_split_as_their_cpu_does_on_debian() {
    for minor in ["3.13", "3.14", "3.15"] {
        assert_lines_split(debian_python(minor, "two_lines.py"));
    }
}

#[test]
fn lines_need_the_interpreter_reads() {
    let out =
        run(ember().args(["record", "--lines", "--no-interpreter-reads", "--"]).arg(python312()).arg("-c").arg("0"));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--lines reads every sample's frames"), "{}", stderr(&out));
}
