//! Real-world fidelity (issue 12): code loaded after start-up, pre-forked workers, the largest
//! stack copy and the first instructions of a process must all give whole stacks.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

/// Checks the samples of `late_extension.py`: the ones in `_sha2`'s C code, a library
/// dlopen'ed after ember started, carry the whole Python stack and no unknown frame.
fn assert_late_extension_stacks(folded: &Folded, err: &str) {
    let in_sha2 = |s: &[String]| s.last().is_some_and(|leaf| leaf.contains("[_sha2.cpython-312"));
    let hashing = folded.count(in_sha2);
    assert!(hashing >= 100, "only {hashing} samples in _sha2's code\n{err}\n{:?}", folded.stacks);
    let whole = folded.count(|s| {
        let python: Vec<&str> = s.iter().filter(|f| f.ends_with(".py)")).map(|f| function(f)).collect();
        in_sha2(s) && python == ["<module>", "main", "hash_blocks"] && function(&s[0]) == "<module>"
    });
    assert_eq!(whole, hashing, "every sample in _sha2 is rooted at <module> -> main -> hash_blocks\n{err}");
    let unknown = folded.count(|s| s.iter().any(|f| f.contains("[unknown]") || f == "[truncated]"));
    assert!(unknown <= 2, "{unknown} samples with an unknown or truncated frame\n{:?}", folded.stacks);
}

#[test]
fn a_library_loaded_after_launch_is_unwound_through() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("late.folded");
    // The fixture prints to stdout, so the profile goes to a file.
    let out = run(ember()
        .args(["record", "--rate", "199", "-o"])
        .arg(&out_path)
        .arg("--")
        .arg(python312())
        .arg(fixture("late_extension.py")));
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let folded = Folded::parse(&std::fs::read_to_string(&out_path).expect("the profile"));
    assert_late_extension_stacks(&folded, &err);
}

#[test]
fn a_library_loaded_after_attach_is_unwound_through() {
    let _serial = serial();
    let mut target = Target::spawn(
        Command::new(python312())
            .arg("-X")
            .arg("perf")
            .arg(fixture("late_extension.py"))
            .arg("--wait")
            .stdin(Stdio::piped()),
    );
    target.wait_for("ready", Duration::from_secs(20));
    let pid = target.pid().to_string();
    let mut agent = RunningAgent::start(&["record", "--rate", "199", "--pid", &pid]);
    agent.wait_for_stderr("recording", Duration::from_secs(20));
    // Only now does the target dlopen _sha2.
    let mut stdin = target.child.stdin.take().expect("piped stdin");
    writeln!(stdin, "go").expect("the target reads stdin");
    let out = agent.finish();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_late_extension_stacks(&Folded::from_output(&out), &err);
}
