use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use super::*;

/// `tools/cpython-layouts/derive.sh` run on one install's headers, as `name → value`.
fn derive(include: &Path) -> HashMap<String, u64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/cpython-layouts/derive.sh");
    let out = Command::new("bash").arg(script).arg(include).output().expect("derive.sh runs");
    assert!(out.status.success(), "derive.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    text.lines().filter_map(|l| l.split_once(' ')).map(|(k, v)| (k.to_string(), v.parse().expect("a number"))).collect()
}

fn include_dir(python: &Path, minor: &str) -> std::path::PathBuf {
    let prefix = python.parent().and_then(Path::parent).expect("PREFIX/bin/python");
    prefix.join("include").join(format!("python{minor}"))
}

/// The 3.12 table is what the installed 3.12's headers say.
#[test]
fn the_3_12_table_matches_the_headers() {
    let d = derive(&include_dir(&ember_testkit::python312(), "3.12"));
    let l = LAYOUT_3_12;
    let expected = [
        ("runtime.interpreters_head", l.interpreters_head),
        ("interp.next", l.interp_next),
        ("interp.threads_head", l.interp_threads_head),
        ("thread.next", l.thread_next),
        ("thread.interp", l.thread_interp),
        ("thread.native_thread_id", l.thread_native_id),
        ("frame.previous", l.frame_previous),
        ("frame.code", l.frame_code),
        ("frame.instr", l.frame_instr),
        ("frame.owner", l.frame_owner),
        ("code.filename", l.code_filename),
        ("code.name", l.code_name),
        ("code.qualname", l.code_qualname),
        ("code.linetable", l.code_linetable),
        ("code.firstlineno", l.code_firstlineno),
        ("code.code_adaptive", l.code_adaptive),
        ("object.ob_type", l.ob_type),
        ("bytes.ob_size", l.bytes_size),
        ("bytes.ob_sval", l.bytes_data),
        ("unicode.state", l.unicode_state),
        ("unicode.length", l.unicode_length),
        ("unicode.ascii_size", l.unicode_ascii_size),
        ("code.extra_before_adaptive", l.code_adaptive - l.code_extra),
    ];
    for (name, value) in expected {
        assert_eq!(d.get(name), Some(&value), "{name}");
    }
    let GilLayout::Pointer { ceval_gil, locked, last_holder } = l.gil else { panic!("3.12 points at its GIL") };
    assert_eq!((d["interp.ceval_gil"], d["gil.locked"], d["gil.last_holder"]), (ceval_gil, locked, last_holder));
    let CurrentFrame::ViaCFrame { cframe, current_frame } = l.current_frame else { panic!("3.12 has cframes") };
    assert_eq!((d["thread.cframe"], d["cframe.current_frame"]), (cframe, current_frame));
    assert_eq!(d["owner.generator"], u64::from(GENERATOR_OWNER));
    for (name, after) in crate::interp::pending::shape(l.version) {
        assert_eq!(d[name] - d["pending.busy"], after, "{name}");
    }
    assert_eq!(d["interp.recursion_limit"], crate::interp::pending::RECURSION_LIMIT_OFFSET_3_12);
}

/// What `derive.sh` says a minor's debug offsets hold, by name, for `p`.
fn positions_by_name(p: &Positions) -> Vec<(&'static str, usize)> {
    vec![
        ("debug_offsets.size", p.size),
        ("at.free_threaded", p.free_threaded),
        ("at.runtime.interpreters_head", p.interpreters_head),
        ("at.interp.next", p.interp_next),
        ("at.interp.threads_head", p.interp_threads_head),
        ("at.interp.gil_locked", p.gil_locked),
        ("at.interp.gil_holder", p.gil_holder),
        ("at.thread.next", p.thread_next),
        ("at.thread.interp", p.thread_interp),
        ("at.thread.current_frame", p.current_frame),
        ("at.thread.native_thread_id", p.thread_native_id),
        ("at.frame.previous", p.frame_previous),
        ("at.frame.code", p.frame_code),
        ("at.frame.instr", p.frame_instr),
        ("at.frame.owner", p.frame_owner),
        ("at.code.filename", p.code_filename),
        ("at.code.name", p.code_name),
        ("at.code.qualname", p.code_qualname),
        ("at.code.linetable", p.code_linetable),
        ("at.code.firstlineno", p.code_firstlineno),
        ("at.code.code_adaptive", p.code_adaptive),
        ("at.object.ob_type", p.ob_type),
        ("at.bytes.ob_size", p.bytes_size),
        ("at.bytes.ob_sval", p.bytes_data),
        ("at.unicode.state", p.unicode_state),
        ("at.unicode.length", p.unicode_length),
        ("at.unicode.ascii_size", p.unicode_ascii_size),
    ]
}

/// The 3.13 positions are where the installed 3.13's headers put them.
#[test]
fn the_3_13_positions_match_the_headers() {
    let d = derive(&include_dir(&ember_testkit::python_version("3.13"), "3.13"));
    for (name, value) in positions_by_name(&POSITIONS_3_13) {
        assert_eq!(d.get(name), Some(&(value as u64)), "{name}");
    }
    assert_eq!(d["code.extra_before_adaptive"], 8, "co_extra right before the instructions");
    assert_eq!(d["owner.generator"], u64::from(GENERATOR_OWNER));
    for (name, after) in crate::interp::pending::shape(PyVersion(0x030d_00f0)) {
        assert_eq!(d[name] - d["pending.mutex"], after, "{name}");
    }
}

/// The 3.14 and 3.15 positions, PEP 768's remote-execution fields among them, are where
/// Debian's headers put them.
#[test]
fn the_3_14_and_3_15_positions_match_debian_s_headers() {
    for (minor, positions) in [("3.14", POSITIONS_3_14), ("3.15", POSITIONS_3_15)] {
        let include = ember_testkit::debian_root().join("usr/include").join(format!("python{minor}"));
        let d = derive(&include);
        for (name, value) in positions_by_name(&positions) {
            assert_eq!(d.get(name), Some(&(value as u64)), "{minor} {name}");
        }
        let debugger = positions.debugger_support.expect("3.14+ publish the remote-debugger fields");
        let fields = ["eval_breaker", "remote_support", "enabled", "pending_call", "script_path", "script_path_size"];
        for (k, field) in fields.iter().enumerate() {
            assert_eq!(d[&format!("at.debugger.{field}")], (debugger + 8 * k) as u64, "{minor} {field}");
        }
        assert_eq!(d["debugger.please_stop_bit"], PLEASE_STOP_BIT, "{minor}");
        assert_eq!(d["code.extra_before_adaptive"], 8, "{minor}: co_extra right before the instructions");
        assert_eq!(d["owner.generator"], u64::from(GENERATOR_OWNER), "{minor}");
    }
}

/// A debug-offsets block as 3.13 lays it out, with the values 3.13.0 publishes.
fn block_3_13(version: u32) -> Vec<u8> {
    let p = POSITIONS_3_13;
    let mut bytes = vec![0u8; p.size];
    let mut put = |at: usize, value: u64| bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
    put(8, u64::from(version));
    for (at, value) in [
        (p.interpreters_head, 40),
        (p.interp_threads_head, 7344),
        (p.current_frame, 72),
        (p.thread_native_id, 152),
        (p.frame_previous, 8),
        (p.frame_instr, 56),
        (p.frame_owner, 70),
        (p.code_adaptive, 200),
        (p.ob_type, 8),
        (p.unicode_ascii_size, 40),
    ] {
        put(at, value);
    }
    bytes[..8].copy_from_slice(b"xdebugpy");
    bytes
}

#[test]
fn reads_a_3_13_block() {
    let layout = from_debug_offsets(&block_3_13(0x030d_00f0)).expect("a valid block");
    assert_eq!(layout.version.to_string(), "3.13.0");
    assert_eq!(layout.current_frame, CurrentFrame::Direct(72));
    assert_eq!((layout.interp_threads_head, layout.frame_owner, layout.code_extra), (7344, 70, 192));
}

#[test]
fn refuses_what_it_cannot_trust() {
    let beta = from_debug_offsets(&block_3_13(0x030d_00b2));
    assert_eq!(beta, Err(LayoutError::PreRelease(PyVersion(0x030d_00b2))));
    assert!(beta.expect_err("refused").to_string().contains("3.13.0b2"));
    let mut not_runtime = block_3_13(0x030d_00f0);
    not_runtime[..8].copy_from_slice(b"nothere!");
    assert!(matches!(from_debug_offsets(&not_runtime), Err(LayoutError::BadCookie { .. })));
    assert!(matches!(from_debug_offsets(&block_3_13(0x0310_00f0)), Err(LayoutError::UnknownVersion(_))));
    let mut free_threaded = block_3_13(0x030d_03f0);
    free_threaded[POSITIONS_3_13.free_threaded] = 1;
    assert_eq!(from_debug_offsets(&free_threaded), Err(LayoutError::FreeThreaded(PyVersion(0x030d_03f0))));
    let mut huge = block_3_13(0x030d_03f0);
    huge[POSITIONS_3_13.frame_previous + 6] = 1;
    assert!(matches!(from_debug_offsets(&huge), Err(LayoutError::Implausible(..))));
    let short = &block_3_13(0x030d_00f0)[..100];
    assert!(matches!(from_debug_offsets(short), Err(LayoutError::Implausible(..))));
    assert_eq!(layout_3_12(PyVersion(0x030b_07f0)), Err(LayoutError::UnknownVersion(PyVersion(0x030b_07f0))));
    assert_eq!(layout_3_12(PyVersion(0x030c_01f0)).map(|l| l.version.to_string()), Ok("3.12.1".into()));
}
