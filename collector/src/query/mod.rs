//! Query inputs (selectors, time ranges) and outputs (the JSON flame tree).

pub mod lines;
pub(crate) mod selector;
pub mod tasks;
pub mod time;
pub mod tree;

pub use selector::{Labels, Selector, SelectorError};
pub use time::{now_ms, parse_duration_ms, parse_range, parse_step, TimeRange};
