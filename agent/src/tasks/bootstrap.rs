//! Starting the task monitor in a command ember launches, without changing the program: the
//! monitor and a `sitecustomize.py` are written to a private directory that goes first on
//! the command's `PYTHONPATH`. The directory is removed when the recording ends.

use std::path::{Path, PathBuf};

use super::MONITOR_SOURCE;

const SITECUSTOMIZE: &str = include_str!("../../python/bootstrap/sitecustomize.py");

#[derive(Debug)]
pub struct Bootstrap {
    dir: PathBuf,
}

impl Bootstrap {
    pub fn prepare() -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let dir =
            std::env::temp_dir().join(format!("ember-agent-{}-{:08x}", std::process::id(), rand::random::<u32>()));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        std::fs::write(dir.join("ember_monitor.py"), MONITOR_SOURCE)?;
        std::fs::write(dir.join("sitecustomize.py"), SITECUSTOMIZE)?;
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The command's PYTHONPATH: ours first, then whatever it had.
    pub fn pythonpath(&self) -> String {
        match std::env::var("PYTHONPATH") {
            Ok(existing) if !existing.is_empty() => format!("{}:{existing}", self.dir.display()),
            _ => self.dir.display().to_string(),
        }
    }
}

impl Drop for Bootstrap {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
