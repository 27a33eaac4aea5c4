//! Every metric the collector exports, defined in one place (dashboards are checked
//! against these names).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// stored | duplicate | invalid | too_large | unauthenticated | busy | storage_full | storage_error
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabel {
    /// http | grpc
    pub server: String,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub batches: Family<ResultLabel, Counter>,
    pub samples: Counter,
    pub bytes: Counter,
    pub storage_bytes: Gauge,
    pub task_slices: Counter,
    pub query_seconds: Family<EndpointLabel, Histogram>,
    pub connections_refused: Family<ServerLabel, Counter>,
    pub grpc_inflight_bytes: Gauge,
    pub queries_refused: Family<EndpointLabel, Counter>,
    pub store_corrupt_records: Gauge,
    pub store_failed: Gauge,
}

/// Every value each label takes. Their series exist from start-up (at 0), so a dashboard's
/// `rate()` has data before the first event, and the registry's output names every metric.
pub const BATCH_RESULTS: [&str; 8] =
    ["stored", "duplicate", "invalid", "too_large", "unauthenticated", "busy", "storage_full", "storage_error"];
pub const ENDPOINTS: [&str; 5] = ["targets", "profile", "series", "diff", "timeline"];
pub const SERVERS: [&str; 2] = ["grpc", "http"];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ember_collector");
        let batches = Family::<ResultLabel, Counter>::default();
        let samples = Counter::default();
        let bytes = Counter::default();
        let storage_bytes = Gauge::default();
        let task_slices = Counter::default();
        let query_seconds = Family::<EndpointLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])
        });
        registry.register(
            "batches",
            "Batches received, by result (duplicate = a resend already stored)",
            batches.clone(),
        );
        registry.register("samples", "Samples stored", samples.clone());
        registry.register("ingest_bytes", "Encoded bytes of stored batches", bytes.clone());
        registry.register("storage_bytes", "Size of the store on disk", storage_bytes.clone());
        registry.register("task_slices", "asyncio task run slices stored", task_slices.clone());
        registry.register("query_duration_seconds", "HTTP query latency by endpoint", query_seconds.clone());
        let connections_refused = Family::<ServerLabel, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed on arrival because the server's connection limit was reached",
            connections_refused.clone(),
        );
        let grpc_inflight_bytes = Gauge::default();
        registry.register(
            "grpc_inflight_bytes",
            "Request bytes gRPC calls in progress hold (bounded by --grpc-max-inflight-bytes)",
            grpc_inflight_bytes.clone(),
        );
        let queries_refused = Family::<EndpointLabel, Counter>::default();
        registry.register(
            "queries_refused",
            "Queries answered 503 because --query-concurrency or --query-memory was full",
            queries_refused.clone(),
        );
        let store_corrupt_records = Gauge::default();
        registry.register(
            "store_corrupt_records",
            "Stored records found failing their checksum since start (left out of answers)",
            store_corrupt_records.clone(),
        );
        let store_failed = Gauge::default();
        registry.register(
            "store_failed",
            "1 once the storage engine has failed (restart needed)",
            store_failed.clone(),
        );
        for result in BATCH_RESULTS {
            let _ = batches.get_or_create(&ResultLabel { result: result.into() });
        }
        for endpoint in ENDPOINTS {
            let label = EndpointLabel { endpoint: endpoint.into() };
            let _ = query_seconds.get_or_create(&label);
            let _ = queries_refused.get_or_create(&label);
        }
        for server in SERVERS {
            let _ = connections_refused.get_or_create(&ServerLabel { server: server.into() });
        }
        Self {
            registry,
            queries_refused,
            store_corrupt_records,
            store_failed,
            batches,
            samples,
            bytes,
            storage_bytes,
            task_slices,
            query_seconds,
            connections_refused,
            grpc_inflight_bytes,
        }
    }

    pub fn batch(&self, result: &str) {
        debug_assert!(BATCH_RESULTS.contains(&result), "{result} is missing from BATCH_RESULTS");
        self.batches.get_or_create(&ResultLabel { result: result.to_string() }).inc();
    }

    pub fn connection_refused(&self, server: &str) {
        self.connections_refused.get_or_create(&ServerLabel { server: server.to_string() }).inc();
    }

    pub fn query_refused(&self, endpoint: &str) {
        debug_assert!(ENDPOINTS.contains(&endpoint), "{endpoint} is missing from ENDPOINTS");
        self.queries_refused.get_or_create(&EndpointLabel { endpoint: endpoint.to_string() }).inc();
    }

    pub fn observe_query(&self, endpoint: &str, seconds: f64) {
        debug_assert!(ENDPOINTS.contains(&endpoint), "{endpoint} is missing from ENDPOINTS");
        self.query_seconds.get_or_create(&EndpointLabel { endpoint: endpoint.to_string() }).observe(seconds);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
