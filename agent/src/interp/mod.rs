//! Stage **interp**: CPython's own state, read from the target's memory with
//! `process_vm_readv`: every thread's Python frames, with code objects and line numbers. The
//! perf sample is exact for the native stack it copied; this reader supplies what the copy
//! cannot hold or name (frames beyond it, frames without a trampoline, lines) and serves
//! `ember-agent dump`.
//!
//! Nothing read is trusted: layouts come from the target's own `_Py_DebugOffsets` (3.13+) or a
//! table checked on attach (3.12), and every object is type-checked and bounded (objects.rs).

mod layout;
mod linetable;
mod locate;
mod objects;
mod walk;

#[cfg(test)]
mod fake;

pub use layout::{LayoutError, PyVersion};
pub use objects::ObjectError;
pub use walk::{PyThread, WalkEnd, MAX_FRAMES};

use crate::process::access::TargetAccess;
use crate::process::ProcessState;
use objects::ObjectReader;

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(
        "no mapped file of process {pid} exports _PyRuntime, PyCode_Type and the other symbols ember starts \
         from: not a CPython process, or one whose interpreter hides its symbols"
    )]
    NoRuntime { pid: crate::process::Pid },
    #[error("cannot read the interpreter in {image}: {source}")]
    Layout { image: String, source: LayoutError },
    #[error("{image} exports _PyRuntime but no Py_Version and no debug offsets, so its version is unknown")]
    NoVersion { image: String },
    #[error(
        "{image} says Python {published} in its debug offsets but {exported} in Py_Version; not reading an \
         interpreter that disagrees with itself"
    )]
    VersionMismatch { image: String, published: PyVersion, exported: PyVersion },
    #[error("reading the interpreter of {image} (Python {version}) failed its check: {source}")]
    Check { image: String, version: PyVersion, source: ObjectError },
}

/// A reader attached to one process's interpreter.
pub struct Interpreter {
    runtime: u64,
    reader: ObjectReader,
    image: String,
}

impl Interpreter {
    /// Finds the runtime, learns its layout and proves it by walking every thread once.
    pub fn attach(process: &ProcessState) -> Result<Self, AttachError> {
        let (symbols, image) = locate::find(process).ok_or(AttachError::NoRuntime { pid: process.pid })?;
        let access = process.access();
        let layout = read_layout(access.as_ref(), &symbols, &image)?;
        let version = layout.version;
        let mut interpreter =
            Interpreter { runtime: symbols.runtime, reader: ObjectReader::new(access, layout, symbols.types), image };
        interpreter.threads().map_err(|source| AttachError::Check {
            image: interpreter.image.clone(),
            version,
            source,
        })?;
        Ok(interpreter)
    }

    pub fn version(&self) -> PyVersion {
        self.reader.layout().version
    }

    /// The file the interpreter lives in (libpython or the executable).
    pub fn image(&self) -> &str {
        &self.image
    }

    /// Every thread's Python stack, as it is now.
    pub fn threads(&mut self) -> Result<Vec<PyThread>, ObjectError> {
        walk::threads(&mut self.reader, self.runtime)
    }
}

fn read_layout(
    access: &dyn TargetAccess,
    symbols: &locate::Symbols,
    image: &str,
) -> Result<layout::Layout, AttachError> {
    let unreadable = |addr, len| AttachError::Check {
        image: image.into(),
        version: PyVersion(0),
        source: ObjectError::Unreadable { addr, len },
    };
    let exported = match symbols.version {
        Some(addr) => {
            let bytes = access.read_memory(addr, 8).ok_or_else(|| unreadable(addr, 8))?;
            Some(PyVersion(u32::try_from(objects::word_in(&bytes, 0)).unwrap_or(0)))
        }
        None => None,
    };
    let head = access.read_memory(symbols.runtime, 16).ok_or_else(|| unreadable(symbols.runtime, 16))?;
    let with_image = |source| AttachError::Layout { image: image.into(), source };
    if head.starts_with(b"xdebugpy") {
        let published = PyVersion(u32::try_from(objects::word_in(&head, 8)).unwrap_or(0));
        let size = layout::positions(published).map_err(with_image)?.size;
        let block = access.read_memory(symbols.runtime, size).ok_or_else(|| unreadable(symbols.runtime, size))?;
        let layout = layout::from_debug_offsets(&block).map_err(with_image)?;
        if let Some(exported) = exported.filter(|v| *v != published) {
            return Err(AttachError::VersionMismatch { image: image.into(), published, exported });
        }
        Ok(layout)
    } else {
        let exported = exported.ok_or_else(|| AttachError::NoVersion { image: image.into() })?;
        if exported.minor() >= 13 {
            let cookie = String::from_utf8_lossy(&head[..8]).into_owned();
            return Err(with_image(LayoutError::BadCookie { cookie, version: exported }));
        }
        layout::layout_3_12(exported).map_err(with_image)
    }
}
