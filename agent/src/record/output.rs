//! Where the profile goes: a file opened before recording starts (so a bad path fails
//! fast), or stdout. If writing fails at the end, the folded stacks are saved elsewhere so
//! the recording is not lost.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::aggregate::view::View;
use crate::export::{collapsed, ExportError, Format};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot write the output to {path}: {source}. Check that the directory exists and is writable, or choose another -o")]
    Open { path: PathBuf, source: io::Error },
    #[error("writing {path} failed: {source}. The folded stacks were saved to {saved} instead")]
    WriteSaved { path: String, source: ExportError, saved: PathBuf },
    #[error(
        "writing {path} failed: {source}, and saving the folded stacks to {fallback} failed too: {fallback_error}"
    )]
    WriteLost { path: String, source: ExportError, fallback: PathBuf, fallback_error: io::Error },
}

#[derive(Debug)]
pub struct Output {
    path: Option<PathBuf>,
    file: Option<File>,
    format: Format,
}

impl Output {
    pub fn open(path: Option<&Path>, format: Format) -> Result<Self, OutputError> {
        let file = match path {
            Some(p) => Some(File::create(p).map_err(|source| OutputError::Open { path: p.into(), source })?),
            None => None,
        };
        Ok(Self { path: path.map(Path::to_path_buf), file, format })
    }

    fn name(&self) -> String {
        self.path.as_ref().map_or_else(|| "stdout".into(), |p| p.display().to_string())
    }

    pub fn write(
        self,
        render: impl FnOnce(&mut dyn Write) -> Result<(), ExportError>,
        view: &View,
    ) -> Result<(), OutputError> {
        let name = self.name();
        let result = match self.file {
            Some(file) => {
                let mut w = BufWriter::new(file);
                render(&mut w).and_then(|()| w.flush().map_err(ExportError::Io))
            }
            None => {
                let stdout = io::stdout();
                let mut w = BufWriter::new(stdout.lock());
                match render(&mut w).and_then(|()| w.flush().map_err(ExportError::Io)) {
                    // A closed pipe (`| head`) is the reader's choice, not a failure.
                    Err(ExportError::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
                    other => other,
                }
            }
        };
        match result {
            Ok(()) => {
                if self.path.is_some() {
                    eprintln!("ember: wrote {name} ({})", self.format.name());
                }
                Ok(())
            }
            Err(source) => {
                let fallback =
                    std::env::temp_dir().join(format!("ember-{}-{}.folded", std::process::id(), unix_secs()));
                match save_folded(&fallback, view) {
                    Ok(()) => Err(OutputError::WriteSaved { path: name, source, saved: fallback }),
                    Err(fallback_error) => Err(OutputError::WriteLost { path: name, source, fallback, fallback_error }),
                }
            }
        }
    }
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn save_folded(path: &Path, view: &View) -> io::Result<()> {
    let mut w = BufWriter::new(File::create(path)?);
    for line in collapsed::lines(view) {
        writeln!(w, "{line}")?;
    }
    w.flush()
}
