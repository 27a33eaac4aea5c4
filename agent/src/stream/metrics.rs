//! The agent's Prometheus metrics, defined in one place (dashboards are checked against
//! these names), and the `--metrics-listen` endpoint.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// acked | duplicate | dropped | rejected
    pub result: String,
}

#[derive(Debug)]
pub struct AgentMetrics {
    registry: Registry,
    pub samples: Counter,
    pub batches: Family<ResultLabel, Counter>,
    pub bytes: Counter,
    pub dropped_samples: Counter,
    pub lost_records: Counter,
    pub task_slices: Counter,
    pub lost_task_records: Counter,
    pub reconnects: Counter,
    pub buffer_bytes: Gauge,
    pub targets: Gauge,
}

/// What becomes of a batch: acknowledged, a resend the collector already had, dropped from a
/// full buffer, or refused as invalid.
pub const BATCH_RESULTS: [&str; 4] = ["acked", "duplicate", "dropped", "rejected"];

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ember_agent");
        let m = AgentMetrics {
            samples: Counter::default(),
            batches: Family::default(),
            bytes: Counter::default(),
            dropped_samples: Counter::default(),
            lost_records: Counter::default(),
            task_slices: Counter::default(),
            lost_task_records: Counter::default(),
            reconnects: Counter::default(),
            buffer_bytes: Gauge::default(),
            targets: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("samples", "Samples taken", m.samples.clone());
        registry.register(
            "batches",
            "Batches by outcome (dropped = buffer full, rejected = refused as invalid)",
            m.batches.clone(),
        );
        registry.register("sent_bytes", "Encoded bytes of acked batches", m.bytes.clone());
        registry.register(
            "dropped_samples",
            "Samples dropped because the send buffer was full",
            m.dropped_samples.clone(),
        );
        registry.register(
            "lost_records",
            "Records the kernel lost because a ring buffer was full",
            m.lost_records.clone(),
        );
        registry.register("task_slices", "asyncio task run slices read from task monitors", m.task_slices.clone());
        registry.register(
            "lost_task_records",
            "Task monitor records overwritten before the agent read them",
            m.lost_task_records.clone(),
        );
        registry.register("reconnects", "Failed sends that led to a reconnect with backoff", m.reconnects.clone());
        registry.register("buffer_bytes", "Bytes of batches waiting for an ack", m.buffer_bytes.clone());
        registry.register("targets", "Processes being sampled", m.targets.clone());
        // Every outcome's series exists from start-up (at 0), so the registry's output names
        // every metric and a dashboard's rate() has data before the first event.
        for result in BATCH_RESULTS {
            let _ = m.batches.get_or_create(&ResultLabel { result: result.into() });
        }
        AgentMetrics { registry, ..m }
    }

    pub fn batch(&self, result: &str) {
        debug_assert!(BATCH_RESULTS.contains(&result), "{result} is missing from BATCH_RESULTS");
        self.batches.get_or_create(&ResultLabel { result: result.to_string() }).inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `GET /metrics` until the runtime stops.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<AgentMetrics>) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move { ([("content-type", "text/plain; version=0.0.4; charset=utf-8")], metrics.encode()) }
        }),
    );
    axum::serve(listener, app).await
}
