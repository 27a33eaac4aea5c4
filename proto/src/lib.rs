//! ember's wire contracts.
//!
//! - [`pprof`]: Google's `profile.proto`, which `ember-agent record --format pprof` writes and
//!   the collector serves.
//! - [`v1`]: the agent → collector protocol (`proto/ember/v1/ingest.proto`, whose header states
//!   the rules for evolving it).

/// pprof's `perftools.profiles` package.
#[allow(clippy::all, missing_debug_implementations)]
pub mod pprof {
    include!(concat!(env!("OUT_DIR"), "/perftools.profiles.rs"));
}

/// The `ember.v1` package: messages and the `Ingest` service.
#[allow(clippy::all, missing_debug_implementations)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/ember.v1.rs"));
}
