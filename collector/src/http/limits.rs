//! How many queries run at once, and how much memory they may hold together. A query that
//! finds either bound full is answered at once with 503 and `Retry-After`, rather than queued.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use crate::metrics::Metrics;
use crate::store::budget::{self, Charge, MemoryPool};

/// Seconds a refused client is told to wait.
pub const RETRY_AFTER_SECS: u64 = 1;

#[derive(Debug)]
pub struct QueryLimits {
    slots: Arc<Semaphore>,
    concurrency: usize,
    memory: Arc<MemoryPool>,
}

/// One running query: its slot and its share of the memory pool.
#[derive(Debug)]
pub struct QuerySlot {
    _slot: OwnedSemaphorePermit,
    charge: Arc<Charge>,
    metrics: Arc<Metrics>,
    endpoint: &'static str,
}

impl QueryLimits {
    pub fn new(concurrency: usize, memory_bytes: usize) -> Arc<Self> {
        let concurrency = concurrency.max(1);
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(concurrency)),
            concurrency,
            memory: MemoryPool::new(memory_bytes),
        })
    }

    /// A slot for a query of `endpoint`; refusals are counted.
    pub fn enter(&self, endpoint: &'static str, metrics: &Arc<Metrics>) -> Result<QuerySlot, ApiError> {
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| {
            metrics.query_refused(endpoint);
            ApiError::Busy(format!("{} queries are running already (--query-concurrency)", self.concurrency))
        })?;
        Ok(QuerySlot { _slot: slot, charge: Charge::new(&self.memory), metrics: metrics.clone(), endpoint })
    }
}

impl QuerySlot {
    /// Runs a store call on the blocking pool, charging what it reads to this query.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let charge = self.charge.clone();
        let result = super::api::blocking(move || budget::with_charge(charge, f)).await;
        if let Err(ApiError::Busy(_)) = &result {
            self.metrics.query_refused(self.endpoint);
        }
        result
    }
}
