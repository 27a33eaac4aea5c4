//! The four output formats, read back with the tools' own rules.

use std::io::Read;

use crate::common::*;
use prost::Message;

fn record_to(name: &str, extra: &[&str]) -> (std::path::PathBuf, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    let out = run(ember()
        .args(["record", "-o"])
        .arg(&path)
        .args(extra)
        .arg("--")
        .arg(python312())
        .arg(fixture("nested.py"))
        .env("EMBER_FIXTURE_SECONDS", "1"));
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("wrote {}", path.display())), "{err}");
    (path, dir, err)
}

#[test]
fn svg_has_a_title_naming_target_duration_samples_and_rate() {
    let _serial = serial();
    let (path, _dir, _) = record_to("cpu.svg", &[]);
    let svg = std::fs::read_to_string(path).expect("svg");
    assert!(svg.starts_with("<?xml") || svg.starts_with("<svg"));
    let title_line = svg.lines().find(|l| l.contains("ember: ")).expect("title text");
    assert!(title_line.contains("nested.py (PID "), "{title_line}");
    assert!(title_line.contains(" s, ") && title_line.contains(" samples at 99 Hz"), "{title_line}");
    assert!(svg.contains("leaf_a (") && svg.contains("&lt;module&gt;"), "frames are in the graph, escaped");
}

#[test]
fn speedscope_json_follows_the_schema() {
    let _serial = serial();
    let (path, _dir, _) = record_to("cpu.speedscope.json", &[]);
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).expect("file")).expect("valid JSON");
    assert_eq!(json["$schema"], "https://www.speedscope.app/file-format-schema.json");
    let frames = json["shared"]["frames"].as_array().expect("frames");
    let profile = &json["profiles"][0];
    assert_eq!(profile["type"], "sampled");
    let samples = profile["samples"].as_array().expect("samples");
    let weights = profile["weights"].as_array().expect("weights");
    assert_eq!(samples.len(), weights.len());
    let name = |i: &serde_json::Value| frames[i.as_u64().expect("index") as usize]["name"].as_str().unwrap_or("");
    // Weighted by samples: interpreter start-up has many distinct stacks but few samples.
    let weight = |i: usize| weights[i].as_f64().unwrap_or(0.0);
    let total: f64 = (0..samples.len()).map(weight).sum();
    let rooted: f64 = (0..samples.len()).filter(|&i| name(&samples[i][0]).starts_with("<module>")).map(weight).sum();
    assert!(rooted >= 0.9 * total, "root first: {rooted} of {total}");
}

#[test]
fn pprof_is_gzipped_profile_proto() {
    let _serial = serial();
    let (path, _dir, _) = record_to("cpu.pb.gz", &[]);
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).expect("file")).read_to_end(&mut raw).expect("gzip");
    let profile = ember_proto::pprof::Profile::decode(raw.as_slice()).expect("profile.proto");
    let s = |i: i64| profile.string_table[i as usize].as_str();
    assert_eq!(s(0), "");
    assert_eq!(s(profile.sample_type[0].r#type), "samples");
    assert_eq!(s(profile.sample_type[1].unit), "nanoseconds");
    assert_eq!(profile.period, 1_000_000_000 / 99);
    let total: i64 = profile.sample.iter().map(|x| x.value[0]).sum();
    assert!(total > 60, "{total} samples");
    // Locations are leaf first; the last is the root.
    let func_name = |loc: u64| {
        let location = &profile.location[(loc - 1) as usize];
        s(profile.function[(location.line[0].function_id - 1) as usize].name)
    };
    let rooted: i64 = profile
        .sample
        .iter()
        .filter(|x| x.location_id.last().is_some_and(|&l| func_name(l).starts_with("<module>")))
        .map(|x| x.value[0])
        .sum();
    assert!(rooted * 10 >= total * 9, "{rooted} of {total}");
}

#[test]
fn collapsed_goes_to_stdout_without_output_file() {
    let _serial = serial();
    let out = run(ember()
        .args(["record", "--"])
        .arg(python312())
        .arg(fixture("nested.py"))
        .env("EMBER_FIXTURE_SECONDS", "1"));
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    for line in text.lines() {
        let (stack, count) = line.rsplit_once(' ').expect("stack and count");
        assert!(count.parse::<u64>().is_ok(), "{line}");
        assert!(!stack.is_empty());
    }
    assert!(text.lines().any(|l| l.starts_with("<module> (")), "root first");
}

/// With `--lines`, speedscope and pprof carry each Python frame's line in their own fields.
#[test]
fn lines_go_into_speedscope_and_pprof_fields() {
    let _serial = serial();
    let (path, _dir, _) = record_to("lines.speedscope.json", &["--lines"]);
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).expect("file")).expect("valid JSON");
    let frames = json["shared"]["frames"].as_array().expect("frames");
    let leaf_a = |f: &&serde_json::Value| f["name"].as_str().is_some_and(|n| n.starts_with("leaf_a ("));
    let leaf = frames.iter().filter(leaf_a).find(|f| f["line"].is_u64()).expect("leaf_a with a line field");
    let line = leaf["line"].as_u64().unwrap_or(0);
    assert!(leaf["name"].as_str().is_some_and(|n| n.ends_with(&format!(":{line})"))), "{leaf}");

    let (path, _dir, _) = record_to("lines.pb.gz", &["--lines"]);
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).expect("file")).read_to_end(&mut raw).expect("gzip");
    let profile = ember_proto::pprof::Profile::decode(raw.as_slice()).expect("profile.proto");
    let s = |i: i64| profile.string_table[i as usize].as_str();
    let with_line = profile.location.iter().find(|l| {
        let function = &profile.function[(l.line[0].function_id - 1) as usize];
        s(function.name).starts_with("leaf_a (") && l.line[0].line > 0
    });
    let location = with_line.expect("leaf_a with a line");
    let name = s(profile.function[(location.line[0].function_id - 1) as usize].name);
    assert!(!name.contains(".py:"), "the line is in Line.line, not the name: {name}");
}
