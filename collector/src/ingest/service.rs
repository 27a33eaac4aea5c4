//! The `ember.v1.Ingest` gRPC service.

use std::sync::Arc;

use ember_proto::v1::ingest_server::Ingest;
use ember_proto::v1::{Ack, Batch};
use prost::Message;
use tonic::{Request, Response, Status};

use super::validate::validate;
use crate::metrics::Metrics;
use crate::store::{IngestOutcome, Store, StoreError};

pub struct IngestService {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    max_batch_bytes: usize,
}

impl std::fmt::Debug for IngestService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestService").field("max_batch_bytes", &self.max_batch_bytes).finish()
    }
}

impl IngestService {
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>, max_batch_bytes: usize) -> Self {
        Self { store, metrics, max_batch_bytes }
    }
}

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn push(&self, request: Request<Batch>) -> Result<Response<Ack>, Status> {
        let batch = request.into_inner();
        let size = batch.encoded_len();
        if size > self.max_batch_bytes {
            self.metrics.batch("too_large");
            return Err(Status::resource_exhausted(format!(
                "batch of {size} bytes is over the collector's limit of {} bytes (--max-batch-bytes); flush more often",
                self.max_batch_bytes
            )));
        }
        let new = validate(&batch).map_err(|e| {
            self.metrics.batch("invalid");
            Status::invalid_argument(format!("malformed batch: {e}"))
        })?;
        let slices: u64 = new.series.iter().map(|s| s.tasks.slices.len() as u64).sum();
        let store = self.store.clone();
        let outcome = tokio::task::spawn_blocking(move || store.ingest(&new)).await.map_err(|e| {
            // A panic's text stays in the log.
            tracing::error!("an ingest task failed: {e}");
            Status::unavailable("collector could not store the batch (retry later); its log says why")
        })?;
        self.metrics.storage_bytes.set(i64::try_from(self.store.disk_bytes()).unwrap_or(i64::MAX));
        match outcome {
            Ok(IngestOutcome::Stored { samples }) => {
                self.metrics.batch("stored");
                self.metrics.samples.inc_by(samples);
                self.metrics.task_slices.inc_by(slices);
                self.metrics.bytes.inc_by(size as u64);
                Ok(Response::new(Ack { sequence: batch.sequence, duplicate: false }))
            }
            Ok(IngestOutcome::Duplicate) => {
                self.metrics.batch("duplicate");
                Ok(Response::new(Ack { sequence: batch.sequence, duplicate: true }))
            }
            Err(e @ (StoreError::Full { .. } | StoreError::DiskFull(_))) => {
                self.metrics.batch("storage_full");
                tracing::error!("not acknowledging batches: {e}");
                Err(Status::unavailable(format!("collector storage is full, batch not stored (retry later): {e}")))
            }
            Err(e @ StoreError::Refused(_)) => {
                self.metrics.batch("invalid");
                Err(Status::invalid_argument(format!("batch refused: {e}")))
            }
            Err(e) => {
                self.metrics.batch("storage_error");
                tracing::error!("storing a batch failed: {}", e.detail());
                Err(Status::unavailable("collector could not store the batch (retry later); its log says why"))
            }
        }
    }
}

/// Checks `authorization: Bearer <token>` when the collector has a token.
#[derive(Clone, Debug)]
pub struct TokenCheck {
    pub token: Option<Arc<str>>,
    pub metrics: Arc<Metrics>,
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.token else { return Ok(request) };
        let given = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        match given.and_then(|v| v.strip_prefix("Bearer ")) {
            Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => Ok(request),
            Some(_) => {
                self.metrics.batch("unauthenticated");
                Err(Status::unauthenticated("wrong token"))
            }
            None => {
                self.metrics.batch("unauthenticated");
                Err(Status::unauthenticated("missing `authorization: Bearer <token>`; give the agent --token"))
            }
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
