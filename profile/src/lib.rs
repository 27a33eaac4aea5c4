//! ember's profile model, shared by the agent and the collector so both produce the same
//! frame text and the same files: [`Frame`], [`view::View`], and the [`export`] formats.

pub mod export;
mod frame;
pub mod grammar;
pub mod view;

pub use frame::{Frame, FrameKind};
