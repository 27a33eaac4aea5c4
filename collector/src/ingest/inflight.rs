//! A bound on the bytes all gRPC requests hold at once. Each request's body is charged as it
//! arrives, and the charge is returned when the request is answered. A request that would go
//! over the budget fails with `UNAVAILABLE` (agents retry later) instead of buffering: an
//! unfinished stream can no longer pin its whole message limit indefinitely.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::Frame;
use tokio::sync::Semaphore;
use tonic::codegen::http::Request;
use tonic::codegen::{Body, Bytes, Service};
use tonic::Status;

use crate::metrics::Metrics;

/// The shared budget, in bytes.
#[derive(Debug, Clone)]
pub struct InflightLayer {
    budget: Arc<Semaphore>,
    limit: usize,
    metrics: Arc<Metrics>,
}

impl InflightLayer {
    pub fn new(limit: usize, metrics: Arc<Metrics>) -> Self {
        let limit = limit.min(Semaphore::MAX_PERMITS);
        Self { budget: Arc::new(Semaphore::new(limit)), limit, metrics }
    }
}

impl<S> tower_layer::Layer<S> for InflightLayer {
    type Service = Inflight<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Inflight { inner, layer: self.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct Inflight<S> {
    inner: S,
    layer: InflightLayer,
}

/// What one request holds of the budget; given back when the last holder drops it.
#[derive(Debug)]
struct Charge {
    layer: InflightLayer,
    held: AtomicUsize,
}

impl Charge {
    fn take(&self, bytes: usize) -> bool {
        let Ok(n) = u32::try_from(bytes) else { return false };
        match self.layer.budget.try_acquire_many(n) {
            Ok(permit) => {
                permit.forget();
                self.held.fetch_add(bytes, Ordering::Relaxed);
                self.layer.metrics.grpc_inflight_bytes.inc_by(i64::from(n));
                true
            }
            Err(_) => false,
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        let held = *self.held.get_mut();
        self.layer.budget.add_permits(held);
        self.layer.metrics.grpc_inflight_bytes.dec_by(i64::try_from(held).unwrap_or(i64::MAX));
    }
}

/// A request body that charges its bytes to the budget.
struct Charged<B> {
    inner: B,
    charge: Arc<Charge>,
}

impl<B> Body for Charged<B>
where
    B: Body<Data = Bytes, Error = Status> + Unpin,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            let bytes = frame.data_ref().map_or(0, Bytes::len);
            if bytes > 0 && !this.charge.take(bytes) {
                this.charge.layer.metrics.batch("busy");
                tracing::warn!(
                    limit = this.charge.layer.limit,
                    "refusing a batch: requests in progress already hold the in-flight byte budget"
                );
                return Poll::Ready(Some(Err(Status::unavailable(format!(
                    "the collector is receiving {} bytes at once already (--grpc-max-inflight-bytes); retry later",
                    this.charge.layer.limit
                )))));
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<S, R> Service<Request<tonic::body::Body>> for Inflight<S>
where
    S: Service<Request<tonic::body::Body>, Response = R> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = R;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<R, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        let charge = Arc::new(Charge { layer: self.layer.clone(), held: AtomicUsize::new(0) });
        let body_charge = charge.clone();
        let request = request.map(|inner| tonic::body::Body::new(Charged { inner, charge: body_charge }));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            // The decoded batch is gone once the request is answered; so is its charge.
            drop(charge);
            response
        })
    }
}
