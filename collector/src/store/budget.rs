//! The memory bound of queries: one pool of bytes shared by the queries in progress. A query
//! charges what it materialises (samples, slices, stacks, frames) as it reads; when the pool
//! cannot cover a charge the query fails with [`StoreError::Busy`] (a 503 with Retry-After).
//!
//! The charge of the query running on a thread is found through a thread-local, set by the
//! HTTP layer around the blocking call, so the [`super::Store`] trait stays as it is; a call
//! outside a query (ingest, benchmarks, tests) charges nothing.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

use super::StoreError;

#[derive(Debug)]
pub struct MemoryPool {
    bytes: Arc<Semaphore>,
    limit: usize,
}

impl MemoryPool {
    pub fn new(limit: usize) -> Arc<Self> {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Self { bytes: Arc::new(Semaphore::new(limit)), limit })
    }
}

/// What one query holds of the pool; returned when dropped.
#[derive(Debug)]
pub struct Charge {
    pool: Arc<MemoryPool>,
    held: AtomicUsize,
}

impl Charge {
    pub fn new(pool: &Arc<MemoryPool>) -> Arc<Self> {
        Arc::new(Self { pool: pool.clone(), held: AtomicUsize::new(0) })
    }

    fn take(&self, bytes: usize) -> Result<(), StoreError> {
        let n = u32::try_from(bytes).map_err(|_| self.busy())?;
        let permit = self.pool.bytes.try_acquire_many(n).map_err(|_| self.busy())?;
        permit.forget();
        self.held.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    fn busy(&self) -> StoreError {
        StoreError::Busy(format!(
            "queries in progress already hold the query memory limit ({} bytes, --query-memory)",
            self.pool.limit
        ))
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.pool.bytes.add_permits(*self.held.get_mut());
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Charge>>> = const { RefCell::new(None) };
}

/// Runs `f` with `charge` as this thread's query charge.
pub fn with_charge<T>(charge: Arc<Charge>, f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            CURRENT.with(|c| c.borrow_mut().take());
        }
    }
    CURRENT.with(|c| *c.borrow_mut() = Some(charge));
    let _reset = Reset;
    f()
}

/// Charges `bytes` to the query running on this thread, if any.
pub fn charge(bytes: usize) -> Result<(), StoreError> {
    CURRENT.with(|c| match c.borrow().as_ref() {
        Some(charge) => charge.take(bytes),
        None => Ok(()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_bounded_and_returned() {
        let pool = MemoryPool::new(1000);
        let a = Charge::new(&pool);
        with_charge(a.clone(), || {
            assert!(charge(600).is_ok());
            assert!(matches!(charge(600), Err(StoreError::Busy(_))));
        });
        assert!(charge(1 << 40).is_ok(), "no query on this thread: not charged");
        let b = Charge::new(&pool);
        assert!(with_charge(b.clone(), || charge(600)).is_err(), "a holds 600");
        drop(a);
        assert!(with_charge(b, || charge(600)).is_ok(), "given back");
    }
}
