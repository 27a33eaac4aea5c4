//! Starting the task monitor in a command ember launches, without changing the program: the
//! monitor, its native fast path and a `sitecustomize.py` are written to a private directory
//! that goes first on the command's `PYTHONPATH`, and the command inherits a ring made for it
//! ([`SharedRing`]). The directory is removed when the recording ends.

use std::path::{Path, PathBuf};

use super::shared::{SharedRing, DEFAULT_SLOTS, RING_FD_ENV};
use super::{ACCEL_FILE_NAME, ACCEL_LIBRARY, MONITOR_SOURCE};

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

/// Writes the monitor and its native fast path into `dir`; returns the files written.
fn write_monitor(dir: &Path) -> std::io::Result<[PathBuf; 2]> {
    let files = [dir.join("ember_monitor.py"), dir.join(ACCEL_FILE_NAME)];
    std::fs::write(&files[0], MONITOR_SOURCE)?;
    std::fs::write(&files[1], ACCEL_LIBRARY)?;
    Ok(files)
}

/// `ember-agent export-monitor DIR`: the monitor for programs that start it themselves.
pub fn export_monitor(dir: &Path) -> Result<[PathBuf; 2], ExportError> {
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
