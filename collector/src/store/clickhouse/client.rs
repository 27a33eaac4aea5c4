//! ClickHouse's HTTP interface: statements as POST bodies (a GET is read-only), inserts as
//! `INSERT … FORMAT RowBinary` in the URL with the rows as the body, answers as TabSeparated or
//! RowBinary. Works on 18.16 (Debian's) and on current servers.

use std::time::Duration;

use ureq::tls::{Certificate, RootCerts, TlsConfig};

/// Where and how to reach ClickHouse, from `--store clickhouse://HOST:PORT/DATABASE` (or
/// `clickhouses://` for HTTPS) and the credential flags.
#[derive(Clone)]
pub struct Endpoint {
    pub base: String,
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// PEM roots to trust instead of the Mozilla set, for a private CA.
    pub ca_pem: Option<Vec<u8>>,
    /// Every statement sent is appended here (`--clickhouse-sql-log`), to run it elsewhere.
    pub sql_log: Option<std::path::PathBuf>,
    /// The cluster whose shards hold the tables (`--clickhouse-cluster`), if any.
    pub cluster: Option<String>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("Endpoint")
            .field("base", &self.base)
            .field("database", &self.database)
            .field("cluster", &self.cluster)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--store {0}: expected clickhouse://HOST:PORT/DATABASE or clickhouses://HOST:PORT/DATABASE")]
    BadUrl(String),
    #[error("the database name {0:?} is not a plain identifier (letters, digits, underscores)")]
    BadDatabase(String),
    #[error("the cluster name {0:?} is not a plain identifier (letters, digits, underscores)")]
    BadCluster(String),
    #[error("the ClickHouse CA file is not PEM: {0}")]
    BadCa(String),
    #[error("cannot open the ClickHouse SQL log {0}")]
    SqlLog(String),
    #[error("cannot reach ClickHouse at {base}: {source}")]
    Transport { base: String, source: ureq::Error },
    #[error("reading ClickHouse's answer from {base} failed: {source}")]
    Answer { base: String, source: std::io::Error },
    /// The caller's bound refused part of the answer as it arrived.
    #[error("ClickHouse's answer is larger than this query may hold")]
    OverBudget,
    /// The server refused the statement: ClickHouse's error code and text.
    #[error("ClickHouse error {code}: {text}")]
    Server { code: u32, text: String },
    #[error("ClickHouse answered HTTP {status} without an error code: {text}")]
    Http { status: u16, text: String },
}

impl Endpoint {
    /// Parses `clickhouse://HOST:PORT/DATABASE`; the port defaults to 8123 (8443 for
    /// `clickhouses://`). Credentials never come from the URL (they would show in `ps`).
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let bad = || ClientError::BadUrl(url.to_string());
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        let (http, default_port) = match scheme {
            "clickhouse" => ("http", 8123),
            "clickhouses" => ("https", 8443),
            _ => return Err(bad()),
        };
        let (host_port, database) = rest.split_once('/').ok_or_else(bad)?;
        if host_port.is_empty() || host_port.contains('@') {
            return Err(bad());
        }
        let host_port =
            if host_port.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok() && !host_port.ends_with(']')) {
                host_port.to_string()
            } else {
                format!("{host_port}:{default_port}")
            };
        let database = database.trim_end_matches('/');
        if !is_identifier(database) {
            return Err(ClientError::BadDatabase(database.to_string()));
        }
        Ok(Self {
            base: format!("{http}://{host_port}/"),
            database: database.to_string(),
            user: None,
            password: None,
            ca_pem: None,
            sql_log: None,
            cluster: None,
        })
    }

    /// Puts the tables on `cluster`'s shards (a name from the servers' `remote_servers`).
    pub fn with_cluster(mut self, cluster: Option<&str>) -> Result<Self, ClientError> {
        if let Some(name) = cluster {
            if !is_identifier(name) {
                return Err(ClientError::BadCluster(name.to_string()));
            }
        }
        self.cluster = cluster.map(str::to_string);
        Ok(self)
    }
}

/// What may stand unquoted in SQL as a database or cluster name.
fn is_identifier(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A connection pool to one ClickHouse server.
#[derive(Debug)]
pub struct Client {
    endpoint: Endpoint,
    agent: ureq::Agent,
    sql_log: Option<std::sync::Mutex<std::fs::File>>,
}

/// Settings of every statement on a cluster. An insert is acknowledged once every shard has
/// its rows, not when they are queued on this server: a batch's markers must never be written
/// before its samples. A batch's markers and rows share a shard, so the check that counts one
/// attempt per batch reads each shard's own tables.
const CLUSTER_SETTINGS: [(&str, &str); 2] = [("insert_distributed_sync", "1"), ("distributed_product_mode", "local")];

/// The most a query answer may hold (a flame graph's distinct stacks and their frames).
const MAX_ANSWER_BYTES: u64 = 1 << 30;

impl Client {
    pub fn new(endpoint: Endpoint, timeout: Duration) -> Result<Self, ClientError> {
        let mut tls = TlsConfig::builder();
        if let Some(pem) = &endpoint.ca_pem {
            let roots: Vec<Certificate<'static>> = ureq::tls::parse_pem(pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(ClientError::BadCa(e.to_string()))),
                })
                .collect::<Result<_, _>>()?;
            if roots.is_empty() {
                return Err(ClientError::BadCa("no certificate in it".into()));
            }
            tls = tls.root_certs(RootCerts::new_with_certs(&roots));
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            // ClickHouse closes idle keep-alive connections after ~3 s: do it first.
            .max_idle_age(Duration::from_secs(2))
            .tls_config(tls.build())
            .build();
        let sql_log = match &endpoint.sql_log {
            Some(path) => Some(std::sync::Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| ClientError::SqlLog(format!("{}: {e}", path.display())))?,
            )),
            None => None,
        };
        Ok(Self { endpoint, agent: config.into(), sql_log })
    }

    /// Appends a statement to the SQL log: `-- database` line, the statement, a `;;` line.
    fn log(&self, statement: &[u8]) {
        use std::io::Write;
        if let Some(file) = &self.sql_log {
            let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
            let mut record = format!("-- database: {}\n", self.endpoint.database).into_bytes();
            if self.endpoint.cluster.is_some() {
                let settings: Vec<String> = CLUSTER_SETTINGS.iter().map(|(k, v)| format!("{k}={v}")).collect();
                record.extend_from_slice(format!("-- settings: {}\n", settings.join(" ")).as_bytes());
            }
            record.extend_from_slice(statement);
            record.extend_from_slice(b"\n;;\n");
            if let Err(e) = file.write_all(&record) {
                tracing::warn!("cannot append to the ClickHouse SQL log: {e}");
            }
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Runs a statement that answers nothing (DDL, ALTER).
    pub fn execute(&self, sql: &str) -> Result<(), ClientError> {
        self.log(sql.as_bytes());
        self.post(&[], sql.as_bytes(), &mut |_| true).map(|_| ())
    }

    /// Runs a query and returns its answer (`FORMAT` given in `sql`).
    pub fn query(&self, sql: &str) -> Result<Vec<u8>, ClientError> {
        self.query_with(sql, &[], &mut |_| true)
    }

    /// [`Client::query`] with settings (`name`, `value`) for this statement, and `take`, asked
    /// for each part of the answer as it arrives whether it may be held (a query's memory
    /// bound). The answer is buffered by the server until complete, so an error can never
    /// follow a 200.
    pub fn query_with(
        &self,
        sql: &str,
        settings: &[(&str, &str)],
        take: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Vec<u8>, ClientError> {
        let mut params = vec![("wait_end_of_query", "1")];
        params.extend_from_slice(settings);
        self.log(sql.as_bytes());
        self.post(&params, sql.as_bytes(), take)
    }

    /// Inserts `rows` (RowBinary) into `table`.
    pub fn insert(&self, table: &str, columns: &str, rows: &[u8]) -> Result<(), ClientError> {
        let statement = format!("INSERT INTO {table} ({columns}) FORMAT RowBinary");
        self.log(statement.as_bytes());
        self.post(&[("query", &statement)], rows, &mut |_| true).map(|_| ())
    }

    fn post(
        &self,
        params: &[(&str, &str)],
        body: &[u8],
        take: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Vec<u8>, ClientError> {
        use std::io::Read;
        let mut request = self.agent.post(self.endpoint.base.as_str()).query("database", &self.endpoint.database);
        if self.endpoint.cluster.is_some() {
            for (name, value) in CLUSTER_SETTINGS {
                request = request.query(name, value);
            }
        }
        for (name, value) in params {
            request = request.query(*name, *value);
        }
        if let Some(user) = &self.endpoint.user {
            request = request.header("X-ClickHouse-User", user);
        }
        if let Some(password) = &self.endpoint.password {
            request = request.header("X-ClickHouse-Key", password);
        }
        let base = || self.endpoint.base.clone();
        let mut response = request.send(body).map_err(|source| ClientError::Transport { base: base(), source })?;
        let status = response.status().as_u16();
        let mut reader = response.body_mut().with_config().limit(MAX_ANSWER_BYTES).reader();
        let (mut answer, mut chunk) = (Vec::new(), vec![0u8; 64 << 10]);
        loop {
            let n = reader.read(&mut chunk).map_err(|source| ClientError::Answer { base: base(), source })?;
            if n == 0 {
                break;
            }
            if status == 200 && !take(n) {
                return Err(ClientError::OverBudget);
            }
            answer.extend_from_slice(&chunk[..n]);
        }
        if status == 200 {
            return Ok(answer);
        }
        Err(server_error(status, &answer))
    }
}

/// ClickHouse's error text: `Code: 60, e.displayText() = DB::Exception: …` (18.16) or
/// `Code: 60. DB::Exception: …` (current).
fn server_error(status: u16, body: &[u8]) -> ClientError {
    let text = String::from_utf8_lossy(body).trim().chars().take(2000).collect::<String>();
    let code = text
        .strip_prefix("Code: ")
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok());
    match code {
        Some(code) => ClientError::Server { code, text },
        None => ClientError::Http { status, text },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_name_host_port_and_database() {
        let e = Endpoint::parse("clickhouse://127.0.0.1:18123/ember").expect("parses");
        assert_eq!((e.base.as_str(), e.database.as_str()), ("http://127.0.0.1:18123/", "ember"));
        let e = Endpoint::parse("clickhouses://ch.internal/profiles").expect("parses");
        assert_eq!(e.base, "https://ch.internal:8443/");
        for bad in [
            "clickhouse://h:1/",
            "clickhouse://h:1/a;b",
            "http://h:1/db",
            "clickhouse://user:pw@h:1/db",
            "clickhouse:///db",
            "clickhouse://h:1",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_of_either_version_keep_their_code() {
        let old = server_error(
            500,
            b"Code: 60, e.displayText() = DB::Exception: Table x doesn't exist., e.what() = DB::Exception\n",
        );
        assert!(matches!(old, ClientError::Server { code: 60, .. }), "{old}");
        let new =
            server_error(404, b"Code: 60. DB::Exception: Unknown table expression identifier 'x'. (UNKNOWN_TABLE)");
        assert!(matches!(new, ClientError::Server { code: 60, .. }), "{new}");
        assert!(matches!(server_error(502, b"Bad gateway"), ClientError::Http { status: 502, .. }));
    }
}
