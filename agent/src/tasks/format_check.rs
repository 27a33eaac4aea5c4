//! The ring is one format written in three languages: this test fails when a constant of
//! `format.rs` (shared by the agent's reader and `_ember_accel`) differs from the monitor's
//! Python copy (`ember_monitor/_ring.py`) or from docs/TASK_RING.md, or when the accel or the
//! Python hot path grows a copy of its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::format::*;

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// Every constant of format.rs, by name, as an integer (MAGIC as its little-endian word).
fn rust_constants() -> BTreeMap<&'static str, u64> {
    macro_rules! table {
        ($($name:ident),* $(,)?) => { BTreeMap::from([$((stringify!($name), $name as u64)),*]) };
    }
    let mut constants = table![
        VERSION,
        HEADER_SIZE,
        RECORD_SIZE,
        MIN_SLOTS,
        MAX_SLOTS,
        MAGIC_WORD,
        LAYOUT,
        SLOTS,
        PUBLISHED,
        LAP,
        WRITER_PID,
        FLAGS,
        CREATED,
        FLAG_LAG,
        FLAG_NATIVE,
        TAG,
        FLAGS_SHIFT,
        ID_SHIFT,
        EXTRA_SHIFT,
        KIND_BITS,
        FLAGS_BITS,
        ID_BITS,
        EXTRA_BITS,
        START,
        STOP,
        DONE,
        CREATE,
        TASK,
        NAME,
        STRING,
        STRING_DATA,
        LOOP,
        THREAD,
        MODE,
        READY,
        LOOP_INFO,
        THROWN,
        DEFAULT_NAME,
        HOW_RETURN,
        HOW_RAISE,
        OUT_EXCEPTION,
        OUT_CANCELLED,
        NO_LAG,
        NO_EAGER,
        MAX_STRING,
    ];
    constants.insert("MAGIC", u64::from_le_bytes(*MAGIC));
    constants
}

/// The names of format.rs's `pub const` items, from its source.
fn declared_in_format() -> Vec<String> {
    read("agent/src/tasks/format.rs")
        .lines()
        .filter_map(|line| line.strip_prefix("pub const "))
        .map(|rest| rest.split(':').next().unwrap_or_default().trim().to_string())
        .collect()
}

/// The module-level int and bytes constants of the Python module at `path`, evaluated by a
/// Python interpreter (the module needs only `os`).
fn python_constants(path: &str) -> BTreeMap<String, u64> {
    let python = std::env::var("EMBER_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = "import runpy, sys\n\
        for name, value in runpy.run_path(sys.argv[1]).items():\n\
        \x20   if name.isupper() and isinstance(value, (int, bytes)) and not isinstance(value, bool):\n\
        \x20       print(name, int.from_bytes(value, 'little') if isinstance(value, bytes) else value)\n";
    let out = std::process::Command::new(&python)
        .args(["-c", script])
        .arg(repo_file(path))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} (set EMBER_PYTHON): {e}"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// An integer as the docs write it: `12`, `0x40`, `1 << 62`, or `b"EMBRING2"` (as a word).
fn doc_value(text: &str) -> Option<u64> {
    let text = text.trim().trim_matches('`');
    if let Some(bytes) = text.strip_prefix("b\"").and_then(|t| t.strip_suffix('"')) {
        return Some(u64::from_le_bytes(bytes.as_bytes().try_into().ok()?));
    }
    if let Some((base, shift)) = text.split_once("<<") {
        return doc_value(base)?.checked_shl(doc_value(shift)?.try_into().ok()?);
    }
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// The first two cells of the body rows (not the header row) of the first table of the section
/// headed `heading` in docs/TASK_RING.md.
fn doc_table(doc: &str, heading: &str) -> Vec<(String, String)> {
    let section = doc.split(heading).nth(1).unwrap_or_else(|| panic!("docs/TASK_RING.md has no {heading}"));
    let section = section.split("\n## ").next().unwrap_or_default();
    section
        .lines()
        .filter(|line| line.starts_with('|') && !line.starts_with("| -"))
        .skip(1)
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            Some((cells.first()?.trim_matches('`').to_string(), cells.get(1)?.to_string()))
        })
        .collect()
}

#[test]
fn every_constant_of_format_rs_is_checked() {
    let checked = rust_constants();
    for name in declared_in_format() {
        assert!(checked.contains_key(name.as_str()), "format.rs declares {name}, which this test does not check");
    }
}

#[test]
fn the_python_monitor_has_the_same_constants() {
    let python = python_constants("agent/python/ember_monitor/_ring.py");
    let rust = rust_constants();
    let flag = |value: u64| value << FLAGS_SHIFT;
    // Python name, its value in terms of format.rs. Flags are kept shifted into place there.
    let expected: Vec<(&str, u64)> = vec![
        ("MAGIC", rust["MAGIC"]),
        ("VERSION", VERSION),
        ("HEADER_SIZE", HEADER_SIZE),
        ("RECORD_SIZE", RECORD_SIZE),
        ("MIN_SLOTS", MIN_SLOTS),
        ("MAX_SLOTS", MAX_SLOTS),
        ("MAGIC_WORD", MAGIC_WORD as u64),
        ("LAYOUT", LAYOUT as u64),
        ("SLOTS", SLOTS as u64),
        ("PUBLISHED", PUBLISHED as u64),
        ("LAP", LAP as u64),
        ("WRITER_PID", WRITER_PID as u64),
        ("FLAGS", FLAGS as u64),
        ("CREATED", CREATED as u64),
        ("LAG_RECORDED", FLAG_LAG),
        ("NATIVE", FLAG_NATIVE),
        ("TAG", TAG),
        ("FLAGS_SHIFT", FLAGS_SHIFT.into()),
        ("ID_SHIFT", ID_SHIFT.into()),
        ("EXTRA_SHIFT", EXTRA_SHIFT.into()),
        ("START", START),
        ("STOP", STOP),
        ("DONE", DONE),
        ("CREATE", CREATE),
        ("TASK", TASK),
        ("NAME", NAME),
        ("STRING", STRING),
        ("STRING_DATA", STRING_DATA),
        ("LOOP", LOOP),
        ("THREAD", THREAD),
        ("MODE", MODE),
        ("READY", READY),
        ("LOOP_INFO", LOOP_INFO),
        ("THROWN", flag(THROWN)),
        ("DEFAULT_NAME", flag(DEFAULT_NAME)),
        ("HOW_RETURN", flag(HOW_RETURN)),
        ("HOW_RAISE", flag(HOW_RAISE)),
        ("OUT_EXCEPTION", flag(OUT_EXCEPTION)),
        ("OUT_CANCELLED", flag(OUT_CANCELLED)),
        ("NO_LAG", flag(NO_LAG)),
        ("NO_EAGER", flag(NO_EAGER)),
        ("ID_MASK", ((1 << ID_BITS) - 1) << ID_SHIFT),
        ("MAX_LOOP_ID", (1 << EXTRA_BITS) - 1),
        ("MAX_STRING", MAX_STRING),
    ];
    for (name, value) in expected {
        assert_eq!(python.get(name).copied(), Some(value), "ember_monitor/_ring.py's {name} differs from format.rs");
    }
    // The ring's bounds also appear in the memfd's capacity rule.
    assert!(python["DEFAULT_CAPACITY"] / RECORD_SIZE >= MIN_SLOTS);
}

#[test]
fn the_python_hot_path_subscripts_only_published_and_lap() {
    // The per-step writers subscript the header with literals (a constant, not a global lookup):
    // PUBLISHED for the published slot, LAP for the lap.
    let source = read("agent/python/ember_monitor/_hot_path.py");
    let mut seen = 0;
    for (at, _) in source.match_indices("header[") {
        let rest = &source[at + "header[".len()..];
        let Some((index, after)) = rest.split_once(']') else { continue };
        let Ok(index) = index.parse::<usize>() else { continue };
        let assigned = after.trim_start().strip_prefix('=').unwrap_or_default().trim_start();
        let expected = if assigned.starts_with("lap") { LAP } else { PUBLISHED };
        assert_eq!(index, expected, "_hot_path.py: header[{index}] = {}", assigned.lines().next().unwrap_or(""));
        seen += 1;
    }
    assert!(seen >= 10, "the hot path's header stores were not found ({seen})");
}

#[test]
fn the_accel_takes_its_constants_from_format_rs() {
    let root = read("agent/accel/ember_accel.rs");
    assert!(
        root.contains("#[path = \"../src/tasks/format.rs\"]"),
        "agent/accel/ember_accel.rs must include the shared format.rs"
    );
    let names = rust_constants();
    let accel = std::fs::read_dir(repo_file("agent/accel")).expect("agent/accel");
    for entry in accel {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_none_or(|ext| ext != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("readable");
        for line in source.lines() {
            let line = line.trim_start().trim_start_matches("pub ").trim_start_matches("pub(crate) ");
            let Some(rest) = line.strip_prefix("const ") else { continue };
            let Some((name, value)) = rest.split_once(':').and_then(|(n, r)| Some((n.trim(), r.split_once('=')?.1)))
            else {
                continue;
            };
            // Outside the C-API declarations (ffi.rs), every constant is the ring's: it must be
            // derived from format.rs, or it is a second home that can drift.
            let ffi = path.file_name().is_some_and(|file| file == "ffi.rs");
            assert!(
                if ffi { !names.contains_key(name) } else { value.contains("format::") },
                "{}: const {name} must come from format.rs (format::...)",
                path.display()
            );
        }
    }
}

#[test]
fn docs_task_ring_md_has_the_same_constants_and_kinds() {
    let doc = read("docs/TASK_RING.md");
    let rust = rust_constants();
    let table = doc_table(&doc, "## Constants");
    let mut documented = BTreeMap::new();
    for (name, value) in &table {
        let parsed = doc_value(value).unwrap_or_else(|| panic!("docs/TASK_RING.md: {name} = {value} is not a number"));
        documented.insert(name.clone(), parsed);
    }
    for (name, value) in &rust {
        assert_eq!(documented.get(*name), Some(value), "docs/TASK_RING.md's constants table: {name}");
    }
    // The kinds table: `| 1 | START | ...`.
    let kinds = doc_table(&doc, "### Kinds");
    assert!(kinds.len() >= 12, "docs/TASK_RING.md's kinds table was not found");
    for (number, name) in kinds.iter().filter(|(number, _)| number.parse::<u64>().is_ok()) {
        assert_eq!(rust.get(name.as_str()).map(u64::to_string).as_deref(), Some(number.as_str()), "kind {name}");
    }
}
