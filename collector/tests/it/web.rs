//! The web view in headless Chromium (Debian's `chromium`, driven by `playwright-core` from
//! npm; `.ci/run` installs both), against a collector fed by a real agent profiling a real
//! python3.12 program.

use std::path::Path;
use std::process::Command;

use crate::common::*;

#[test]
fn the_web_view_works_in_a_real_browser() {
    let _serial = serial();
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("web-tests");
    assert!(
        tests.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `npm ci --prefix collector/web-tests` (and `apt-get install chromium`)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(dir.path(), &[]);
    let py = python312().display().to_string();
    // An asyncio program for the tasks tab, first: the view opens on the latest target.
    let tasks = fixture("asyncio_cpu.py").display().to_string();
    let out =
        Running::start(&mut stream_cmd(&collector, &["--rate", "499", "--service", "tasks"], &[&py, &tasks])).finish();
    assert!(out.status.success(), "{}", stderr(&out));
    let app = fixture("web_app.py").display().to_string();
    // With lines, so the view can switch between functions and lines.
    let mut cmd = stream_cmd(&collector, &["--service", "web", "--lines"], &[&py, &app]);
    cmd.env("EMBER_FIXTURE_SECONDS", "3");
    let out = Running::start(&mut cmd).finish();
    assert!(out.status.success(), "{}", stderr(&out));

    let mut node = Command::new("node");
    node.arg(tests.join("view.test.mjs")).arg(format!("http://{}/", collector.http));
    if let Ok(shot) = std::env::var("EMBER_SCREENSHOT") {
        node.env("SCREENSHOT", shot);
    }
    let result = node.output().expect("node (Node.js) is installed");
    let report = format!("{}{}", String::from_utf8_lossy(&result.stdout), String::from_utf8_lossy(&result.stderr));
    assert!(result.status.success(), "browser tests failed:\n{report}");
    assert!(report.contains("ok   no console errors"), "{report}");
}
