//! Builds `_ember_accel`, the task monitor's native fast path (the crate rooted at
//! accel/ember_accel.rs, whose modules rustc finds next to it), as a
//! CPython extension module for the agent to embed. It is compiled with rustc directly: it has
//! no dependencies, and cargo cannot build a second artifact of another crate type for
//! embedding without a nested cargo build.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "accel/ember_accel.rs";
    // The whole directory: the root file's `mod` declarations pull in the files beside it.
    println!("cargo:rerun-if-changed=accel");
    // The ring format's constants, which the accel crate includes with #[path].
    println!("cargo:rerun-if-changed=src/tasks/format.rs");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dir = out_dir.join("accel");
    std::fs::create_dir_all(&dir).expect("create OUT_DIR/accel");
    let library = dir.join("_ember_accel.abi3.so");
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let status = Command::new(rustc)
        .args(["--edition=2021", "--crate-type=cdylib", "--crate-name=_ember_accel", "--target", &target])
        .args(["-C", "opt-level=3", "-C", "panic=abort", "-C", "codegen-units=1", "-C", "strip=symbols"])
        .args(["-D", "warnings", "-o"])
        .arg(&library)
        .arg(source)
        .status()
        .expect("run rustc");
    assert!(status.success(), "rustc could not build {source}");
    // The directory, for tests that put the module on a Python path; the file, to embed.
    println!("cargo:rustc-env=EMBER_ACCEL_DIR={}", dir.display());
    println!("cargo:rustc-env=EMBER_ACCEL_LIBRARY={}", library.display());
}
