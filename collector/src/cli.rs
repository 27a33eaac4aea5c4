//! Command-line flags of `ember-collector`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::http::HttpLimits;
use crate::server::{ClickHouseConfig, Limits, ServerConfig, StoreConfig, TlsFiles};

#[derive(Debug, Parser)]
#[command(name = "ember-collector", version, about = "Stores profiles from ember agents and serves flame graphs")]
pub struct Cli {
    /// Where profiles are kept: `embedded` (a file under --data-dir), or a ClickHouse database
    /// as clickhouse://HOST:PORT/DATABASE (HTTP interface; clickhouses:// for HTTPS), which any
    /// number of collectors can share. The collector creates and migrates the schema.
    #[arg(long, default_value = "embedded")]
    pub store: String,
    /// ClickHouse user (default: the server's `default`).
    #[arg(long, env = "EMBER_CLICKHOUSE_USER")]
    pub clickhouse_user: Option<String>,
    /// A file holding the ClickHouse password (else $EMBER_CLICKHOUSE_PASSWORD; never a flag,
    /// which any user would see in `ps`).
    #[arg(long)]
    pub clickhouse_password_file: Option<PathBuf>,
    /// PEM certificates to trust for clickhouses:// instead of the Mozilla roots.
    #[arg(long)]
    pub clickhouse_ca: Option<PathBuf>,
    /// Append every statement sent to ClickHouse to this file (to check it on another server).
    #[arg(long)]
    pub clickhouse_sql_log: Option<PathBuf>,
    /// Spread the tables over this cluster's shards (a name in the servers' `remote_servers`;
    /// the servers need ZooKeeper for `ON CLUSTER` DDL). See docs/STORAGE.md.
    #[arg(long)]
    pub clickhouse_cluster: Option<String>,
    /// Where the embedded store lives.
    #[arg(long, default_value = "./ember-data")]
    pub data_dir: PathBuf,
    /// gRPC address agents send to.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub grpc_listen: String,
    /// HTTP address of the API (and web view).
    #[arg(long, default_value = "127.0.0.1:7080")]
    pub http_listen: String,
    /// How long profiles are kept: `7d`, `12h`, `30m`.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    pub retention: Duration,
    /// How long exact sample times are kept (for timelines).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub raw_retention: Duration,
    /// How often retention runs.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub retention_interval: Duration,
    /// Stop accepting batches when the store is larger than this: `500MB`, `10GB`.
    #[arg(long, value_parser = parse_size)]
    pub max_disk: Option<u64>,
    /// Agents must send `authorization: Bearer <token>`.
    #[arg(long, env = "EMBER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// HTTP API clients must send `Authorization: Bearer <token>` (browsers: open
    /// `/?token=<token>` once). /healthz, /readyz and /metrics stay open.
    #[arg(long, env = "EMBER_HTTP_TOKEN", hide_env_values = true)]
    pub http_token: Option<String>,
    /// Serve gRPC over TLS with this certificate (PEM)...
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// ...and this private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require agents to present a certificate signed by this CA (mTLS).
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Largest batch accepted, in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    pub max_batch_bytes: usize,
    /// Most HTTP connections open at once; more are closed on arrival.
    #[arg(long, default_value_t = 256)]
    pub http_max_connections: usize,
    /// A request's headers must arrive within this (it also closes idle keep-alive connections).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,
    /// An HTTP connection on which nothing moves for this long, outside a request, is closed.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub http_idle_timeout: Duration,
    /// Most gRPC (agent) connections open at once; more are closed on arrival.
    #[arg(long, default_value_t = 512)]
    pub grpc_max_connections: usize,
    /// A gRPC connection that sends nothing for this long is closed (agents reconnect).
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub grpc_idle_timeout: Duration,
    /// Deadline of one gRPC call, from its headers to its answer.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub grpc_request_timeout: Duration,
    /// Request bytes all gRPC calls in progress may hold together: `256MB`. At least 4 ×
    /// --max-batch-bytes, so one batch of any accepted size fits.
    #[arg(long, default_value = "256MB", value_parser = parse_size)]
    pub grpc_max_inflight_bytes: u64,
    /// Most calls in progress on one gRPC connection.
    #[arg(long, default_value_t = 16)]
    pub grpc_max_streams: u32,
    /// Memory for the store's page cache: `128MB`.
    #[arg(long, default_value = "128MB", value_parser = parse_size)]
    pub store_cache: u64,
    /// Most queries running at once; more get 503 with Retry-After.
    #[arg(long, default_value_t = 4)]
    pub query_concurrency: usize,
    /// Memory the queries running at once may hold together (samples, stacks, frames they
    /// read): `512MB`. A query that would go over it gets 503 with Retry-After.
    #[arg(long, default_value = "512MB", value_parser = parse_size)]
    pub query_memory: u64,
    /// Log filter, e.g. `info` or `ember_collector=debug` (also EMBER_LOG).
    #[arg(long, env = "EMBER_LOG", default_value = "info")]
    pub log: String,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    ember_profile::grammar::parse_duration(s).map_err(|e| e.to_string())
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_uppercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("{s:?} is not a size like 500MB or 10GB"))?;
    let scale: u64 = match unit.trim_end_matches("IB").trim_end_matches('B') {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown unit; use K, M, G or T")),
    };
    n.checked_mul(scale).ok_or_else(|| format!("{s:?} is too large"))
}

impl Cli {
    pub fn into_config(self) -> ServerConfig {
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key, client_ca: self.tls_client_ca }),
            _ => None,
        };
        // A cluster with the embedded store is refused when the URL `embedded` is parsed.
        let store = match (self.store.as_str(), &self.clickhouse_cluster) {
            ("embedded", None) => StoreConfig::Embedded,
            (url, _) => StoreConfig::ClickHouse(ClickHouseConfig {
                url: url.to_string(),
                user: self.clickhouse_user.filter(|u| !u.is_empty()),
                password: std::env::var("EMBER_CLICKHOUSE_PASSWORD").ok().filter(|p| !p.is_empty()),
                password_file: self.clickhouse_password_file,
                ca: self.clickhouse_ca,
                sql_log: self.clickhouse_sql_log,
                cluster: self.clickhouse_cluster,
            }),
        };
        ServerConfig {
            store,
            data_dir: self.data_dir,
            grpc_listen: self.grpc_listen,
            http_listen: self.http_listen,
            retention: self.retention,
            raw_retention: self.raw_retention,
            retention_interval: self.retention_interval,
            max_disk: self.max_disk,
            store_cache: usize::try_from(self.store_cache).unwrap_or(usize::MAX),
            token: self.token.filter(|t| !t.is_empty()),
            http_token: self.http_token.filter(|t| !t.is_empty()),
            tls,
            max_batch_bytes: self.max_batch_bytes,
            limits: Limits {
                http: HttpLimits {
                    max_connections: self.http_max_connections.max(1),
                    header_timeout: self.http_header_timeout,
                    idle_timeout: self.http_idle_timeout,
                },
                grpc_max_connections: self.grpc_max_connections.max(1),
                grpc_idle_timeout: self.grpc_idle_timeout,
                grpc_request_timeout: self.grpc_request_timeout,
                grpc_max_inflight_bytes: usize::try_from(self.grpc_max_inflight_bytes).unwrap_or(usize::MAX),
                grpc_max_streams: self.grpc_max_streams.max(1),
                query_concurrency: self.query_concurrency.max(1),
                query_memory: usize::try_from(self.query_memory).unwrap_or(usize::MAX),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("500MB"), Ok(500 << 20));
        assert_eq!(parse_size("10g"), Ok(10 << 30));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["ember-collector"]).expect("defaults parse");
        let c = cli.into_config();
        assert_eq!(c.grpc_listen, "127.0.0.1:7070");
        assert_eq!(c.http_listen, "127.0.0.1:7080");
        assert_eq!(c.retention, Duration::from_secs(7 * 86400));
        assert!(c.tls.is_none());
        assert!(matches!(c.store, StoreConfig::Embedded));
        assert!(Cli::try_parse_from(["ember-collector", "--tls-cert", "x"]).is_err(), "cert needs a key");
    }
}
