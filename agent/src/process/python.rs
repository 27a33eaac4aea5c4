//! Recognising CPython and its version from what a process has mapped.

use std::fmt;

/// What kind of program a target is, as far as ember cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// CPython `major.minor`.
    Python(u32, u32),
    NotPython,
}

impl Runtime {
    /// CPython 3.12 added the perf trampoline.
    pub fn has_perf_trampoline(self) -> bool {
        matches!(self, Runtime::Python(3, minor) if minor >= 12)
    }

    pub fn is_python(self) -> bool {
        matches!(self, Runtime::Python(..))
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Runtime::Python(major, minor) => write!(f, "Python {major}.{minor}"),
            Runtime::NotPython => f.write_str("not Python"),
        }
    }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `python3.12`, `libpython3.12.so.1.0`, `libpython3.13t.so` → (3, 12) / (3, 13).
fn version_in_name(basename: &str) -> Option<(u32, u32)> {
    let rest = basename.strip_prefix("libpython").or_else(|| basename.strip_prefix("python"))?;
    let (major, rest) = rest.split_once('.')?;
    let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Detects CPython from the executable and the mapped file paths. A shared libpython wins
/// over the executable's name, which may be a plain `python3` symlink target or a wrapper.
pub fn detect<'a>(exe: Option<&str>, mapped_paths: impl IntoIterator<Item = &'a str>) -> Runtime {
    for path in mapped_paths {
        let name = basename(path);
        if name.starts_with("libpython") {
            if let Some((major, minor)) = version_in_name(name) {
                return Runtime::Python(major, minor);
            }
        }
    }
    match exe.map(basename).and_then(version_in_name) {
        Some((major, minor)) => Runtime::Python(major, minor),
        None => Runtime::NotPython,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_versions() {
        let libs = ["/usr/lib/x86_64-linux-gnu/libc.so.6", "/opt/py/lib/libpython3.12.so.1.0"];
        assert_eq!(detect(Some("/opt/py/bin/python3.12"), libs), Runtime::Python(3, 12));
        assert_eq!(detect(Some("/usr/bin/python3.11"), ["/lib/libc.so.6"]), Runtime::Python(3, 11));
        assert_eq!(detect(Some("/usr/local/bin/uwsgi"), ["/usr/lib/libpython3.13t.so.1.0"]), Runtime::Python(3, 13));
        assert_eq!(detect(Some("/usr/bin/bash"), ["/lib/libc.so.6"]), Runtime::NotPython);
        assert_eq!(detect(Some("/usr/bin/python3-config"), []), Runtime::NotPython);
        assert!(Runtime::Python(3, 12).has_perf_trampoline());
        assert!(!Runtime::Python(3, 11).has_perf_trampoline());
        assert!(Runtime::Python(4, 0).is_python());
    }
}
