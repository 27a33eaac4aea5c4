//! ember's wire contracts.
//!
//! - [`pprof`]: Google's `profile.proto`, which `ember-agent record --format pprof` writes and
//!   the collector serves.

/// pprof's `perftools.profiles` package.
#[allow(clippy::all, missing_debug_implementations)]
pub mod pprof {
    include!(concat!(env!("OUT_DIR"), "/perftools.profiles.rs"));
}
