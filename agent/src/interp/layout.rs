//! Where CPython keeps what the frame reader reads, per version. 3.13+ publishes the offsets
//! itself at the start of `_PyRuntime` (`_Py_DebugOffsets`); ember only needs to know where in
//! that struct each one sits, which changes between minor versions. 3.12 publishes nothing, so
//! its offsets are a table. Both were derived from the versions' internal headers by
//! `tools/cpython-layouts/derive.c`, and a test derives them again.

use std::fmt;

/// `PY_VERSION_HEX`: 0xMMmmppLS (major, minor, micro, release level, serial).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PyVersion(pub u32);

impl PyVersion {
    pub fn minor(self) -> u32 {
        (self.0 >> 16) & 0xff
    }

    fn major(self) -> u32 {
        self.0 >> 24
    }

    fn is_final(self) -> bool {
        (self.0 >> 4) & 0xf == 0xf
    }
}

impl fmt::Display for PyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match (self.0 >> 4) & 0xf {
            0xa => "a",
            0xb => "b",
            0xc => "rc",
            _ => "",
        };
        let serial = if level.is_empty() { String::new() } else { (self.0 & 0xf).to_string() };
        write!(f, "{}.{}.{}{level}{serial}", self.major(), self.minor(), (self.0 >> 8) & 0xff)
    }
}

/// The offsets the reader uses, in bytes from the start of each structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub version: PyVersion,
    pub interpreters_head: u64,
    pub interp_next: u64,
    pub interp_threads_head: u64,
    pub gil: GilLayout,
    pub thread_next: u64,
    /// The thread's interpreter: checked against the interpreter it was found in, which proves
    /// the layout on attach.
    pub thread_interp: u64,
    pub current_frame: CurrentFrame,
    pub thread_native_id: u64,
    pub frame_previous: u64,
    pub frame_code: u64,
    /// `prev_instr` (3.12) or `instr_ptr` (3.13+). Either gives the instruction CPython's
    /// own line lookup (`PyFrame_GetLineNumber`) uses.
    pub frame_instr: u64,
    pub frame_owner: u64,
    pub code_filename: u64,
    pub code_name: u64,
    pub code_qualname: u64,
    pub code_linetable: u64,
    pub code_firstlineno: u64,
    pub code_adaptive: u64,
    /// `co_extra`, where the perf trampoline's address is kept (`_PyCode_SetExtra`).
    pub code_extra: u64,
    pub ob_type: u64,
    pub bytes_size: u64,
    pub bytes_data: u64,
    pub unicode_state: u64,
    pub unicode_length: u64,
    pub unicode_ascii_size: u64,
    /// PEP 768's remote execution (3.14+).
    pub remote_debug: Option<RemoteDebugLayout>,
}

/// Where PEP 768's remote-execution fields are (3.14+, from the debug offsets): a debugger
/// writes a script's path and a pending flag into a thread's state and sets a bit of its eval
/// breaker; the thread runs the script at its next check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteDebugLayout {
    /// `PyThreadState.eval_breaker`.
    pub eval_breaker: u64,
    /// `PyThreadState.remote_debugger_support`, the struct the next two are in.
    pub support: u64,
    pub pending_call: u64,
    pub script_path: u64,
    /// The room for the path, its NUL included.
    pub script_path_size: u64,
    /// `PyInterpreterState.config.remote_debug`: 0 when the target turned remote execution off.
    pub enabled: u64,
}

/// The eval-breaker bit a remote-execution request sets (`_PY_EVAL_PLEASE_STOP_BIT`).
pub const PLEASE_STOP_BIT: u64 = 1 << 5;

/// How a thread's innermost frame is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CurrentFrame {
    /// 3.12: `tstate->cframe->current_frame`.
    ViaCFrame { cframe: u64, current_frame: u64 },
    /// 3.13+: `tstate->current_frame`.
    Direct(u64),
}

/// Who holds the GIL: 3.12 keeps it behind `interp->ceval.gil`, 3.13+ inside the interpreter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GilLayout {
    Pointer { ceval_gil: u64, locked: u64, last_holder: u64 },
    Inline { locked: u64, last_holder: u64 },
}

/// Frame owners from this value up are interpreter or C-stack entry shims, not Python code
/// (3.12/3.13: `FRAME_OWNED_BY_CSTACK` = 3; 3.14: `_INTERPRETER` = 3 and `_CSTACK` = 4; 3.15:
/// `_INTERPRETER` = 3).
pub const FIRST_SHIM_OWNER: u8 = 3;

/// `FRAME_OWNED_BY_GENERATOR`, the same in 3.12-3.15: a generator's or coroutine's frame, whose
/// caller link is cleared while it is suspended.
pub const GENERATOR_OWNER: u8 = 1;

/// Why no layout fits a target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "Python {0} is not one ember can read frames of (it reads 3.12.0 and later final releases of \
         3.12, 3.13, 3.14 and 3.15)"
    )]
    UnknownVersion(PyVersion),
    #[error("Python {0} is a pre-release, whose layouts change between betas; ember reads final releases")]
    PreRelease(PyVersion),
    #[error("Python {0} is a free-threaded build, whose objects ember cannot read yet")]
    FreeThreaded(PyVersion),
    #[error(
        "_PyRuntime does not start with CPython's debug offsets (cookie {cookie:?}, version {version}): \
         not the interpreter its version says"
    )]
    BadCookie { cookie: String, version: PyVersion },
    #[error("the debug offsets of Python {0} say something impossible ({1}); not reading this interpreter")]
    Implausible(PyVersion, &'static str),
}

/// 3.12.x's layout, from 3.12.1's headers. CPython keeps internal structs fixed within a
/// minor version; the reader still checks every object it reads.
pub const LAYOUT_3_12: Layout = Layout {
    version: PyVersion(0x030c_00f0),
    interpreters_head: 40,
    interp_next: 0,
    interp_threads_head: 72,
    gil: GilLayout::Pointer { ceval_gil: 384, locked: 16, last_holder: 8 },
    thread_next: 8,
    thread_interp: 16,
    current_frame: CurrentFrame::ViaCFrame { cframe: 56, current_frame: 0 },
    thread_native_id: 144,
    frame_previous: 8,
    frame_code: 0,
    frame_instr: 56,
    frame_owner: 70,
    code_filename: 112,
    code_name: 120,
    code_qualname: 128,
    code_linetable: 136,
    code_firstlineno: 68,
    code_adaptive: 192,
    code_extra: 184,
    ob_type: 8,
    bytes_size: 16,
    bytes_data: 32,
    unicode_state: 32,
    unicode_length: 16,
    unicode_ascii_size: 40,
    remote_debug: None,
};

/// Where in `_Py_DebugOffsets` each offset sits, for one minor version.
#[derive(Debug, Clone, Copy)]
pub struct Positions {
    pub size: usize,
    pub free_threaded: usize,
    pub interpreters_head: usize,
    pub interp_next: usize,
    pub interp_threads_head: usize,
    pub gil_locked: usize,
    pub gil_holder: usize,
    pub thread_next: usize,
    pub thread_interp: usize,
    pub current_frame: usize,
    pub thread_native_id: usize,
    pub frame_previous: usize,
    pub frame_code: usize,
    pub frame_instr: usize,
    pub frame_owner: usize,
    pub code_filename: usize,
    pub code_name: usize,
    pub code_qualname: usize,
    pub code_linetable: usize,
    pub code_firstlineno: usize,
    pub code_adaptive: usize,
    pub ob_type: usize,
    pub bytes_size: usize,
    pub bytes_data: usize,
    pub unicode_state: usize,
    pub unicode_length: usize,
    pub unicode_ascii_size: usize,
    /// The `debugger_support` block (3.14+): `eval_breaker`, `remote_debugger_support`,
    /// `remote_debugging_enabled`, `debugger_pending_call`, `debugger_script_path`,
    /// `debugger_script_path_size`, eight bytes each.
    pub debugger_support: Option<usize>,
}

/// 3.13.0 and 3.13.18 (pyenv's, Debian's) agree.
pub const POSITIONS_3_13: Positions = Positions {
    size: 584,
    free_threaded: 16,
    interpreters_head: 40,
    interp_next: 64,
    interp_threads_head: 72,
    gil_locked: 136,
    gil_holder: 144,
    thread_next: 168,
    thread_interp: 176,
    current_frame: 184,
    thread_native_id: 200,
    frame_previous: 232,
    frame_code: 240,
    frame_instr: 248,
    frame_owner: 264,
    code_filename: 280,
    code_name: 288,
    code_qualname: 296,
    code_linetable: 304,
    code_firstlineno: 312,
    code_adaptive: 344,
    ob_type: 360,
    bytes_size: 520,
    bytes_data: 528,
    unicode_state: 544,
    unicode_length: 552,
    unicode_ascii_size: 560,
    debugger_support: None,
};

/// From Debian's 3.14.x headers.
pub const POSITIONS_3_14: Positions = Positions {
    size: 760,
    free_threaded: 16,
    interpreters_head: 40,
    interp_next: 64,
    interp_threads_head: 72,
    gil_locked: 144,
    gil_holder: 152,
    thread_next: 192,
    thread_interp: 200,
    current_frame: 208,
    thread_native_id: 224,
    frame_previous: 256,
    frame_code: 264,
    frame_instr: 272,
    frame_owner: 288,
    code_filename: 320,
    code_name: 328,
    code_qualname: 336,
    code_linetable: 344,
    code_firstlineno: 352,
    code_adaptive: 384,
    ob_type: 408,
    bytes_size: 600,
    bytes_data: 608,
    unicode_state: 624,
    unicode_length: 632,
    unicode_ascii_size: 640,
    debugger_support: Some(712),
};

/// From Debian's 3.15.x headers (final releases; the betas added fields).
pub const POSITIONS_3_15: Positions = Positions {
    size: 888,
    free_threaded: 16,
    interpreters_head: 40,
    interp_next: 64,
    interp_threads_head: 72,
    gil_locked: 144,
    gil_holder: 152,
    thread_next: 192,
    thread_interp: 200,
    current_frame: 208,
    thread_native_id: 248,
    frame_previous: 320,
    frame_code: 328,
    frame_instr: 336,
    frame_owner: 352,
    code_filename: 384,
    code_name: 392,
    code_qualname: 400,
    code_linetable: 408,
    code_firstlineno: 416,
    code_adaptive: 448,
    ob_type: 472,
    bytes_size: 696,
    bytes_data: 704,
    unicode_state: 720,
    unicode_length: 728,
    unicode_ascii_size: 736,
    debugger_support: Some(840),
};

/// The positions for a version, if ember knows its minor.
pub fn positions(version: PyVersion) -> Result<Positions, LayoutError> {
    if version.major() != 3 {
        return Err(LayoutError::UnknownVersion(version));
    }
    match version.minor() {
        13..=15 if !version.is_final() => Err(LayoutError::PreRelease(version)),
        13 => Ok(POSITIONS_3_13),
        14 => Ok(POSITIONS_3_14),
        15 => Ok(POSITIONS_3_15),
        _ => Err(LayoutError::UnknownVersion(version)),
    }
}

/// The layout for a 3.12 interpreter (`Py_Version`), which publishes no offsets.
pub fn layout_3_12(version: PyVersion) -> Result<Layout, LayoutError> {
    match (version.major(), version.minor()) {
        (3, 12) if version.is_final() => Ok(Layout { version, ..LAYOUT_3_12 }),
        (3, 12) => Err(LayoutError::PreRelease(version)),
        _ => Err(LayoutError::UnknownVersion(version)),
    }
}

/// Largest offset into any structure a sane build publishes; a larger one is not believed.
const MAX_FIELD_OFFSET: u64 = 1 << 16;

/// The layout of a 3.13+ interpreter from its `_Py_DebugOffsets` (the first bytes of
/// `_PyRuntime`), read as they are in memory.
pub fn from_debug_offsets(bytes: &[u8]) -> Result<Layout, LayoutError> {
    let word = |at: usize| -> u64 {
        bytes.get(at..at + 8).and_then(|b| b.try_into().ok()).map_or(u64::MAX, u64::from_le_bytes)
    };
    let version = PyVersion(u32::try_from(word(8)).unwrap_or(0));
    let cookie = bytes.get(..8).unwrap_or_default();
    if cookie != b"xdebugpy" {
        let cookie = String::from_utf8_lossy(cookie).into_owned();
        return Err(LayoutError::BadCookie { cookie, version });
    }
    let at = positions(version)?;
    if bytes.len() < at.size {
        return Err(LayoutError::Implausible(version, "shorter than its version's debug offsets"));
    }
    if word(at.free_threaded) != 0 {
        return Err(LayoutError::FreeThreaded(version));
    }
    let code_adaptive = word(at.code_adaptive);
    let layout = Layout {
        version,
        interpreters_head: word(at.interpreters_head),
        interp_next: word(at.interp_next),
        interp_threads_head: word(at.interp_threads_head),
        gil: GilLayout::Inline { locked: word(at.gil_locked), last_holder: word(at.gil_holder) },
        thread_next: word(at.thread_next),
        thread_interp: word(at.thread_interp),
        current_frame: CurrentFrame::Direct(word(at.current_frame)),
        thread_native_id: word(at.thread_native_id),
        frame_previous: word(at.frame_previous),
        frame_code: word(at.frame_code),
        frame_instr: word(at.frame_instr),
        frame_owner: word(at.frame_owner),
        code_filename: word(at.code_filename),
        code_name: word(at.code_name),
        code_qualname: word(at.code_qualname),
        code_linetable: word(at.code_linetable),
        code_firstlineno: word(at.code_firstlineno),
        code_adaptive,
        code_extra: code_adaptive.wrapping_sub(8),
        ob_type: word(at.ob_type),
        bytes_size: word(at.bytes_size),
        bytes_data: word(at.bytes_data),
        unicode_state: word(at.unicode_state),
        unicode_length: word(at.unicode_length),
        unicode_ascii_size: word(at.unicode_ascii_size),
        remote_debug: at.debugger_support.map(|d| RemoteDebugLayout {
            eval_breaker: word(d),
            support: word(d + 8),
            enabled: word(d + 16),
            pending_call: word(d + 24),
            script_path: word(d + 32),
            script_path_size: word(d + 40),
        }),
    };
    layout.check().map(|()| layout)
}

impl Layout {
    /// Every offset is small and object headers are where every CPython puts them: a corrupt
    /// or hostile debug-offsets block is refused rather than used to read at random.
    fn check(&self) -> Result<(), LayoutError> {
        let (gil_locked, gil_holder, gil_pointer) = match self.gil {
            GilLayout::Pointer { ceval_gil, locked, last_holder } => (locked, last_holder, ceval_gil),
            GilLayout::Inline { locked, last_holder } => (locked, last_holder, 0),
        };
        let (cframe, current_frame) = match self.current_frame {
            CurrentFrame::ViaCFrame { cframe, current_frame } => (cframe, current_frame),
            CurrentFrame::Direct(at) => (0, at),
        };
        let offsets = [
            gil_locked,
            gil_holder,
            gil_pointer,
            cframe,
            current_frame,
            self.interpreters_head,
            self.interp_next,
            self.interp_threads_head,
            self.thread_next,
            self.thread_interp,
            self.thread_native_id,
            self.frame_previous,
            self.frame_code,
            self.frame_instr,
            self.frame_owner,
            self.code_filename,
            self.code_name,
            self.code_qualname,
            self.code_linetable,
            self.code_firstlineno,
            self.code_adaptive,
            self.code_extra,
            self.bytes_size,
            self.bytes_data,
            self.unicode_state,
            self.unicode_length,
            self.unicode_ascii_size,
        ];
        let remote = self.remote_debug.map_or([0; 5], |r| {
            [
                r.eval_breaker,
                r.support.saturating_add(r.pending_call),
                r.support.saturating_add(r.script_path),
                r.enabled,
                0,
            ]
        });
        if offsets.iter().chain(&remote).any(|&o| o > MAX_FIELD_OFFSET) {
            return Err(LayoutError::Implausible(self.version, "an offset larger than 64 KiB"));
        }
        if self.ob_type != 8 || self.code_adaptive < 64 {
            return Err(LayoutError::Implausible(self.version, "object headers unlike any CPython's"));
        }
        if self.remote_debug.is_some_and(|r| !(64..=4096).contains(&r.script_path_size)) {
            return Err(LayoutError::Implausible(self.version, "room for a remote script's path unlike any CPython's"));
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "layout_tests.rs"]
mod tests;
