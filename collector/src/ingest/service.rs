//! The `ember.v1.Ingest` gRPC service.

use std::sync::Arc;

use ember_proto::v1::ingest_server::Ingest;
use ember_proto::v1::{Ack, Batch};
use prost::Message;
use tonic::{Request, Response, Status};

use super::validate::validate;
use crate::metrics::Metrics;
use crate::store::{IngestOutcome, Store, StoreError};

/// Batches being written at once. A write outlives its gRPC call when the store is slow (the
/// call's deadline answers the agent, the write goes on holding the batch), so the bound is on
/// writes, not calls: past it an agent is told to retry later, and nothing piles up behind a
/// stalled store.
const MAX_STORE_WRITES: usize = 16;

pub struct IngestService {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    max_batch_bytes: usize,
    store_writes: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for IngestService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestService").field("max_batch_bytes", &self.max_batch_bytes).finish()
    }
}

impl IngestService {
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>, max_batch_bytes: usize) -> Self {
        Self { store, metrics, max_batch_bytes, store_writes: Arc::new(tokio::sync::Semaphore::new(MAX_STORE_WRITES)) }
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
        let Ok(slot) = self.store_writes.clone().try_acquire_owned() else {
            self.metrics.batch("busy");
            return Err(Status::unavailable(format!(
                "collector is busy: {MAX_STORE_WRITES} batches are being stored (retry later)"
            )));
        };
        let store = self.store.clone();
        let write = move || {
            let _slot = slot;
            store.ingest(&new)
        };
        let outcome = tokio::task::spawn_blocking(write).await.map_err(|e| {
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

#[cfg(test)]
mod tests {
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::query::{Selector, TimeRange};
    use crate::store::{RawSample, RetentionReport, SeriesInfo, SeriesTasks, StackCounts};

    /// A store whose writes wait until the test lets them go, as behind a stalled ClickHouse.
    #[derive(Default)]
    struct Stalled {
        gate: Mutex<(usize, bool)>,
        changed: Condvar,
    }

    impl Stalled {
        fn writing(&self) -> usize {
            self.gate.lock().map_or(0, |g| g.0)
        }
        fn release(&self) {
            if let Ok(mut g) = self.gate.lock() {
                g.1 = true;
            }
            self.changed.notify_all();
        }
    }

    impl Store for Stalled {
        fn ingest(&self, batch: &crate::store::NewBatch) -> Result<IngestOutcome, StoreError> {
            let mut g = self.gate.lock().map_err(|_| StoreError::Internal("poisoned".into()))?;
            g.0 += 1;
            while !g.1 {
                g = self.changed.wait(g).map_err(|_| StoreError::Internal("poisoned".into()))?;
            }
            Ok(IngestOutcome::Stored { samples: batch.sample_count() })
        }
        fn series(&self, _: &Selector, _: TimeRange) -> Result<Vec<SeriesInfo>, StoreError> {
            Ok(Vec::new())
        }
        fn stack_counts(&self, _: &Selector, _: TimeRange) -> Result<StackCounts, StoreError> {
            Ok(StackCounts::default())
        }
        fn timeseries(&self, _: &Selector, _: TimeRange, _: i64) -> Result<Vec<(i64, u64)>, StoreError> {
            Ok(Vec::new())
        }
        fn raw_samples(&self, _: &Selector, _: TimeRange) -> Result<Vec<(u32, RawSample)>, StoreError> {
            Ok(Vec::new())
        }
        fn tasks(&self, _: &Selector, _: TimeRange) -> Result<Vec<SeriesTasks>, StoreError> {
            Ok(Vec::new())
        }
        fn expand_stacks(&self, _: &[(u32, u64)]) -> Result<StackCounts, StoreError> {
            Ok(StackCounts::default())
        }
        fn apply_retention(&self, _: i64, _: i64) -> Result<RetentionReport, StoreError> {
            Ok(RetentionReport::default())
        }
        fn disk_bytes(&self) -> u64 {
            0
        }
    }

    fn batch(sequence: u64) -> Request<Batch> {
        Request::new(Batch { sequence, ..super::super::validate::tests::valid() })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_past_the_bound_are_told_to_retry_until_the_store_catches_up() {
        let store = Arc::new(Stalled::default());
        let service = Arc::new(IngestService::new(store.clone(), Arc::new(Metrics::new()), 1 << 20));
        let calls: Vec<_> = (0..MAX_STORE_WRITES as u64)
            .map(|i| {
                let service = service.clone();
                tokio::spawn(async move { service.push(batch(i + 1)).await })
            })
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while store.writing() < MAX_STORE_WRITES {
            assert!(tokio::time::Instant::now() < deadline, "only {} writes began", store.writing());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let refused = service.push(batch(100)).await.expect_err("over the bound");
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        assert!(refused.message().contains("busy"), "{refused:?}");
        store.release();
        for call in calls {
            assert!(call.await.expect("joined").is_ok());
        }
        assert!(service.push(batch(101)).await.is_ok(), "the store caught up");
    }
}
