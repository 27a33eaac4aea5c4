//! Stage 1 of the collector, **ingest**: the gRPC service, its token check, and validation of
//! incoming batches.

mod inflight;
pub(crate) mod service;
pub mod validate;

pub use inflight::InflightLayer;
pub use service::{IngestService, TokenCheck};
pub use validate::{validate, InvalidBatch};
