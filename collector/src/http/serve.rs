//! The HTTP/1.1 server loop, with the limits `axum::serve` lacks: a bounded number of
//! connections, a deadline for each request's headers (which also closes keep-alive
//! connections left idle), and an idle timeout for connections whose peer stopped reading or
//! sending while no request is being answered.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;

use crate::net::Acceptor;

#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_connections: usize,
    /// A request's headers must arrive within this; it also bounds idle keep-alive.
    pub header_timeout: Duration,
    /// A connection on which no bytes move for this long, outside a request's handling, is closed.
    pub idle_timeout: Duration,
}

/// Counts a connection's requests in progress while alive.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `app` until `stop` turns true, then lets connections finish their requests.
pub async fn serve(acceptor: Acceptor, app: Router, limits: HttpLimits, mut stop: watch::Receiver<bool>) {
    loop {
        let conn = tokio::select! {
            conn = acceptor.accept() => conn,
            _ = stop.wait_for(|&v| v) => break,
        };
        let activity = conn.activity();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let counter = in_flight.clone();
        let router = TowerToHyperService::new(app.clone());
        let service = hyper::service::service_fn(move |request| {
            let guard = InFlight::enter(&counter);
            let response = hyper::service::Service::call(&router, request);
            async move {
                let response = response.await;
                drop(guard);
                response
            }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(true)
            .serve_connection(TokioIo::new(conn), service);
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let mut check = tokio::time::interval((limits.idle_timeout / 4).max(Duration::from_millis(50)));
            let mut stopping = false;
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!("HTTP connection ended: {e}");
                        }
                        break;
                    }
                    _ = check.tick() => {
                        if in_flight.load(Ordering::Relaxed) == 0 && activity.idle_for() >= limits.idle_timeout {
                            tracing::debug!("closing an HTTP connection idle for {:?}", limits.idle_timeout);
                            break;
                        }
                    }
                    _ = stop.wait_for(|&v| v), if !stopping => {
                        stopping = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
    acceptor.drained(limits.max_connections).await;
}
