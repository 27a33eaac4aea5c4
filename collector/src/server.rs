//! Wires the stages into a running collector: the store, the gRPC ingest server, the HTTP
//! server and the retention loop, all stopped by one shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ember_proto::v1::ingest_server::IngestServer;
use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::http::HttpLimits;
use crate::http::{self, AppState};
use crate::ingest::{InflightLayer, IngestService, TokenCheck};
use crate::metrics::Metrics;
use crate::net::Acceptor;
use crate::query::now_ms;
use crate::store::clickhouse::{ClickHouseStore, ClientError, Endpoint};
use crate::store::embedded::EmbeddedStore;
use crate::store::{Store, StoreError};

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With a client CA, every agent must present a certificate it signed (mTLS).
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub store: StoreConfig,
    pub data_dir: PathBuf,
    pub grpc_listen: String,
    pub http_listen: String,
    pub retention: Duration,
    pub raw_retention: Duration,
    pub retention_interval: Duration,
    pub max_disk: Option<u64>,
    pub store_cache: usize,
    pub token: Option<String>,
    /// HTTP API clients must present this (header or cookie), if set.
    pub http_token: Option<String>,
    pub tls: Option<TlsFiles>,
    pub max_batch_bytes: usize,
    pub limits: Limits,
}

/// Which backend keeps the profiles.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// One file under `--data-dir`.
    Embedded,
    ClickHouse(ClickHouseConfig),
}

/// `--store clickhouse://…` and its credentials.
#[derive(Clone)]
pub struct ClickHouseConfig {
    pub url: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub sql_log: Option<PathBuf>,
    pub cluster: Option<String>,
}

impl std::fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseConfig")
            .field("url", &self.url)
            .field("user", &self.user)
            .field("cluster", &self.cluster)
            .finish()
    }
}

impl ClickHouseConfig {
    fn endpoint(&self) -> Result<Endpoint, ServerError> {
        let bad = |e: ClientError| ServerError::StoreConfig(e.to_string());
        let mut endpoint =
            Endpoint::parse(&self.url).and_then(|e| e.with_cluster(self.cluster.as_deref())).map_err(bad)?;
        endpoint.user = self.user.clone();
        endpoint.password = match &self.password_file {
            Some(path) => {
                Some(read(path)?).map(|b| String::from_utf8_lossy(&b).trim_end_matches(['\n', '\r']).to_string())
            }
            None => self.password.clone(),
        };
        endpoint.ca_pem = self.ca.as_ref().map(read).transpose()?;
        endpoint.sql_log = self.sql_log.clone();
        Ok(endpoint)
    }
}

fn open_store(config: &ServerConfig) -> Result<Arc<dyn Store>, ServerError> {
    Ok(match &config.store {
        StoreConfig::Embedded => Arc::new(
            EmbeddedStore::open_with_cache(&config.data_dir, config.max_disk, config.store_cache)
                .map_err(|source| ServerError::Store { at: config.data_dir.display().to_string(), source })?,
        ),
        StoreConfig::ClickHouse(ch) => {
            let endpoint = ch.endpoint()?;
            let at = format!("{} (database {})", endpoint.base, endpoint.database);
            Arc::new(
                ClickHouseStore::open(endpoint, config.max_disk).map_err(|source| ServerError::Store { at, source })?,
            )
        }
    })
}

/// What one peer, or many, may hold of the collector.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub http: HttpLimits,
    pub grpc_max_connections: usize,
    pub grpc_idle_timeout: Duration,
    pub grpc_request_timeout: Duration,
    pub grpc_max_inflight_bytes: usize,
    pub grpc_max_streams: u32,
    pub query_concurrency: usize,
    pub query_memory: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            http: HttpLimits {
                max_connections: 256,
                header_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(60),
            },
            grpc_max_connections: 512,
            grpc_idle_timeout: Duration::from_secs(120),
            grpc_request_timeout: Duration::from_secs(60),
            grpc_max_inflight_bytes: 256 << 20,
            grpc_max_streams: 16,
            query_concurrency: 4,
            query_memory: 512 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot open the store at {at}: {}", source.detail())]
    Store { at: String, source: StoreError },
    #[error("--store: {0}")]
    StoreConfig(String),
    #[error("cannot listen on {addr} ({what}): {source}. Is another collector running? Choose another address with --{what}-listen")]
    Listen { what: &'static str, addr: String, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    TlsFile { path: PathBuf, source: std::io::Error },
    #[error("TLS setup failed: {0}")]
    Tls(tonic::transport::Error),
    #[error("the gRPC server failed: {0}")]
    Grpc(tonic::transport::Error),
    #[error("the HTTP server failed: {0}")]
    Http(std::io::Error),
}

/// The addresses actually bound (they differ from the flags when a port is 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

fn read(path: &PathBuf) -> Result<Vec<u8>, ServerError> {
    std::fs::read(path).map_err(|source| ServerError::TlsFile { path: path.clone(), source })
}

fn tls_config(files: &TlsFiles) -> Result<ServerTlsConfig, ServerError> {
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?));
    if let Some(ca) = &files.client_ca {
        config = config.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(config)
}

async fn bind(what: &'static str, addr: &str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr).await.map_err(|source| ServerError::Listen { what, addr: addr.to_string(), source })
}

/// Runs until `shutdown` completes. `on_bound` learns the listening addresses first. Long
/// because it wires every part (store, limits, both listeners, retention, shutdown) in the
/// order they depend on each other; each step is a few lines.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(Bound),
) -> Result<(), ServerError> {
    let store = open_store(&config)?;
    let metrics = Arc::new(Metrics::new());
    let grpc_listener = bind("grpc", &config.grpc_listen).await?;
    let http_listener = bind("http", &config.http_listen).await?;
    let bound = Bound {
        grpc: grpc_listener.local_addr().map_err(ServerError::Http)?,
        http: http_listener.local_addr().map_err(ServerError::Http)?,
    };
    on_bound(bound);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stop_rx_http = stop_rx.clone();
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|&v| v).await;
    };

    let limits = config.limits;
    let hard_cap = config.max_batch_bytes.saturating_mul(4);
    if limits.grpc_max_inflight_bytes < hard_cap {
        tracing::warn!(
            "--grpc-max-inflight-bytes {} is below 4 × --max-batch-bytes ({hard_cap}); the largest batches will be refused",
            limits.grpc_max_inflight_bytes
        );
    }
    let ingest = IngestServer::new(IngestService::new(store.clone(), metrics.clone(), config.max_batch_bytes))
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        // Batches up to --max-batch-bytes are answered by the service (RESOURCE_EXHAUSTED
        // above it); this hard cap only bounds memory.
        .max_decoding_message_size(hard_cap);
    let token = TokenCheck { token: config.token.as_deref().map(Arc::from), metrics: metrics.clone() };
    let mut builder = tonic::transport::Server::builder()
        .timeout(limits.grpc_request_timeout)
        .concurrency_limit_per_connection(limits.grpc_max_streams as usize)
        .max_concurrent_streams(limits.grpc_max_streams)
        .http2_max_pending_accept_reset_streams(Some(64));
    if let Some(files) = &config.tls {
        builder = builder.tls_config(tls_config(files)?).map_err(ServerError::Tls)?;
    }
    let incoming = Acceptor::new(
        grpc_listener,
        limits.grpc_max_connections,
        Some(limits.grpc_idle_timeout),
        "grpc",
        metrics.clone(),
    );
    let grpc = builder
        .layer(InflightLayer::new(limits.grpc_max_inflight_bytes, metrics.clone()))
        .add_service(InterceptedService::new(ingest, token))
        .serve_with_incoming_shutdown(incoming.into_stream(), stopped(stop_rx.clone()));

    let app = http::router(
        AppState {
            store: store.clone(),
            metrics: metrics.clone(),
            queries: http::QueryLimits::new(limits.query_concurrency, limits.query_memory),
        },
        http::HttpToken(config.http_token.as_deref().map(Arc::from)),
    );
    let acceptor = Acceptor::new(http_listener, limits.http.max_connections, None, "http", metrics.clone());
    let http = async move {
        http::serve(acceptor, app, limits.http, stop_rx_http).await;
        Ok::<(), std::io::Error>(())
    };

    let retention_store = store.clone();
    let mut retention_stop = stop_rx.clone();
    let retention = tokio::spawn(async move {
        loop {
            let store = retention_store.clone();
            let keep = now_ms() - config.retention.as_millis() as i64;
            let keep_raw = now_ms() - config.raw_retention.as_millis() as i64;
            match tokio::task::spawn_blocking(move || store.apply_retention(keep, keep_raw)).await {
                Ok(Ok(report)) if report.blobs_removed + report.series_removed > 0 => {
                    tracing::info!(?report, "retention removed old data")
                }
                Ok(Err(e)) => tracing::warn!("retention failed: {e}"),
                _ => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(config.retention_interval) => {}
                _ = retention_stop.wait_for(|&v| v) => break,
            }
        }
    });

    let mut grpc_task = tokio::spawn(async { grpc.await.map_err(ServerError::Grpc) });
    let mut http_task = tokio::spawn(async { http.await.map_err(ServerError::Http) });
    // A server that fails before shutdown is an error; otherwise wait for the signal.
    tokio::select! {
        r = &mut grpc_task => return flatten(r),
        r = &mut http_task => return flatten(r),
        _ = stopped(stop_rx) => {}
    }
    // Connections get a grace period to finish; a client that never closes cannot hold the
    // collector up.
    let drain = async {
        let grpc = flatten(grpc_task.await);
        let http = flatten(http_task.await);
        grpc.and(http)
    };
    let result = match tokio::time::timeout(SHUTDOWN_GRACE, drain).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; closing them");
            Ok(())
        }
    };
    let _ = retention.await;
    result
}

const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A finished task's result, with a panic in the task reported as an error.
fn flatten(r: Result<Result<(), ServerError>, tokio::task::JoinError>) -> Result<(), ServerError> {
    r.map_err(|e| ServerError::Http(std::io::Error::other(e.to_string())))?
}
