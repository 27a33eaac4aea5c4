//! Starting the task monitor in a command ember launches, without changing the program: the
//! monitor, its native fast path and a `sitecustomize.py` are written to a private directory
//! that goes first on the command's `PYTHONPATH`, and the command inherits a ring made for it
//! ([`SharedRing`]). The directory is removed when the recording ends.

use std::path::{Path, PathBuf};

use super::shared::{SharedRing, DEFAULT_SLOTS, RING_FD_ENV};
use super::{ACCEL_FILE_NAME, ACCEL_LIBRARY, MONITOR_FILES};

const SITECUSTOMIZE: &str = include_str!("../../python/bootstrap/sitecustomize.py");

#[derive(Debug)]
pub struct Bootstrap {
    dir: PathBuf,
    pub ring: SharedRing,
}

impl Bootstrap {
    pub fn prepare() -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let dir =
            std::env::temp_dir().join(format!("ember-agent-{}-{:08x}", std::process::id(), rand::random::<u32>()));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        write_monitor(&dir)?;
        std::fs::write(dir.join("sitecustomize.py"), SITECUSTOMIZE)?;
        let ring = SharedRing::create(DEFAULT_SLOTS)?;
        Ok(Self { dir, ring })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the command's environment gains: PYTHONPATH (ours first, then whatever it
    /// had) and the ring's descriptor.
    pub fn env(&self) -> [(&'static str, String); 2] {
        let pythonpath = match std::env::var("PYTHONPATH") {
            Ok(existing) if !existing.is_empty() => format!("{}:{existing}", self.dir.display()),
            _ => self.dir.display().to_string(),
        };
        [("PYTHONPATH", pythonpath), (RING_FD_ENV, self.ring.fd().to_string())]
    }
}

/// Writes the monitor's package and its native fast path into `dir`; returns the files written.
fn write_monitor(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::with_capacity(MONITOR_FILES.len() + 1);
    for (name, source) in MONITOR_FILES {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, source)?;
        written.push(path);
    }
    let accel = dir.join(ACCEL_FILE_NAME);
    std::fs::write(&accel, ACCEL_LIBRARY)?;
    written.push(accel);
    Ok(written)
}

/// `ember-agent export-monitor DIR`: the monitor for programs that start it themselves.
pub fn export_monitor(dir: &Path) -> Result<Vec<PathBuf>, ExportError> {
    std::fs::create_dir_all(dir).map_err(|source| ExportError { dir: dir.to_path_buf(), source })?;
    write_monitor(dir).map_err(|source| ExportError { dir: dir.to_path_buf(), source })
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write the task monitor into {}", dir.display())]
pub struct ExportError {
    dir: PathBuf,
    #[source]
    source: std::io::Error,
}

impl Drop for Bootstrap {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every module of the package is embedded, so a module added to it cannot be left out of
    /// what launched commands and `export-monitor` get.
    #[test]
    fn every_file_of_the_monitor_package_is_embedded() {
        let package = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/ember_monitor");
        let mut on_disk: Vec<String> = std::fs::read_dir(&package)
            .expect("the monitor's package")
            .map(|entry| entry.expect("a directory entry").file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".py"))
            .map(|name| format!("ember_monitor/{name}"))
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = MONITOR_FILES.iter().map(|(name, _)| name.to_string()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk);
        for (name, source) in MONITOR_FILES {
            let on_disk = std::fs::read_to_string(package.parent().expect("agent/python").join(name));
            assert_eq!(on_disk.expect("readable").as_str(), *source, "{name} embedded as it is");
        }
    }

    #[test]
    fn export_writes_the_package_and_the_native_module() {
        let dir = std::env::temp_dir().join(format!("ember-export-test-{}", std::process::id()));
        let written = export_monitor(&dir).expect("export");
        assert_eq!(written.len(), MONITOR_FILES.len() + 1);
        assert!(dir.join("ember_monitor/__init__.py").is_file());
        assert!(dir.join(ACCEL_FILE_NAME).is_file());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
