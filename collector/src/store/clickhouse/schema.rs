//! The ClickHouse schema, created and migrated by the collector (docs/STORAGE.md).
//!
//! Only SQL that Debian's 18.16 and current servers both run: new-style `MergeTree()` with
//! `PARTITION BY`/`ORDER BY`, no TTL (19.6+) and no `ADD COLUMN IF NOT EXISTS` (19.1+).
//! Column codecs (19.1+; DoubleDelta 19.11+) are added where the server has them. Retention
//! drops whole days (`retention.rs`).

use super::client::{Client, ClientError};

/// This collector's schema version, kept in `ember_schema`.
pub const SCHEMA_VERSION: u32 = 1;

/// A server version as ClickHouse's `VERSION_INTEGER`: 18016001 for 18.16.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion(pub u64);

impl ServerVersion {
    fn has_codecs(self) -> bool {
        self.0 >= 19_001_000
    }
    fn has_double_delta(self) -> bool {
        self.0 >= 19_011_000
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot tell ClickHouse's version from {0:?}")]
    Version(String),
    #[error("ClickHouse {found} is older than 18.16, the oldest this collector runs on")]
    TooOld { found: String },
    #[error(
        "the database's ember schema is version {found}, newer than this collector's {SCHEMA_VERSION}: \
         upgrade the collector"
    )]
    Newer { found: u32 },
}

/// The server's version, from `version()` (`18.16.1`, `26.9.1.123`).
pub fn server_version(client: &Client) -> Result<ServerVersion, SchemaError> {
    let text = String::from_utf8_lossy(&client.query("SELECT version() FORMAT TabSeparated")?).trim().to_string();
    let parts: Vec<u64> = text.split('.').take(3).map(|p| p.parse().unwrap_or(0)).collect();
    let [major, minor, patch] = parts[..] else { return Err(SchemaError::Version(text)) };
    let version = ServerVersion(major * 1_000_000 + minor * 1_000 + patch);
    if version < ServerVersion(18_016_000) {
        return Err(SchemaError::TooOld { found: text });
    }
    Ok(version)
}

/// The tables' statements for a server of `version`.
pub fn statements(version: ServerVersion) -> Vec<String> {
    let codec = |c: &str| if version.has_codecs() { format!(" CODEC({c})") } else { String::new() };
    let time_codec = codec(if version.has_double_delta() { "DoubleDelta, ZSTD" } else { "Delta, ZSTD" });
    let zstd = codec("ZSTD");
    vec![
        "CREATE TABLE IF NOT EXISTS ember_schema (version UInt32, applied_ms UInt64) \
         ENGINE = MergeTree() ORDER BY version"
            .into(),
        "CREATE TABLE IF NOT EXISTS ember_frames (frame_id FixedString(16), kind UInt8, plumbing UInt8, \
         text String, function String, file String, line Nullable(UInt32)) \
         ENGINE = ReplacingMergeTree() ORDER BY frame_id"
            .into(),
        "CREATE TABLE IF NOT EXISTS ember_stacks (stack_id FixedString(16), frames Array(FixedString(16))) \
         ENGINE = ReplacingMergeTree() ORDER BY stack_id"
            .into(),
        "CREATE TABLE IF NOT EXISTS ember_series (series_id FixedString(16), label_names Array(String), \
         label_values Array(String)) ENGINE = ReplacingMergeTree() ORDER BY series_id"
            .into(),
        format!(
            "CREATE TABLE IF NOT EXISTS ember_samples (day Date, series_id FixedString(16), time_ns Int64{time_codec}, \
             stack_id FixedString(16){zstd}, tid UInt32{zstd}, weight UInt32{zstd}, batch FixedString(16){zstd}, \
             attempt UInt64{zstd}) ENGINE = MergeTree() PARTITION BY day ORDER BY (series_id, time_ns)"
        ),
        "CREATE TABLE IF NOT EXISTS ember_batches (day Date, batch FixedString(16), attempt UInt64, \
         agent_id String, sequence UInt64, samples UInt64, stored_ms UInt64) \
         ENGINE = ReplacingMergeTree() PARTITION BY day ORDER BY (batch, attempt)"
            .into(),
        format!(
            "CREATE TABLE IF NOT EXISTS ember_tasks (day Date, series_id FixedString(16), task_id UInt64, \
             name String, coro String, parent UInt64, created_ns Int64, done_ns Nullable(Int64), state UInt8, \
             exception String, sequence UInt64, batch FixedString(16){zstd}, attempt UInt64{zstd}) \
             ENGINE = MergeTree() PARTITION BY day ORDER BY (series_id, task_id)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS ember_slices (day Date, series_id FixedString(16), start_ns Int64{time_codec}, \
             end_ns Int64{zstd}, ready_ns Nullable(Int64), task_id UInt64{zstd}, tid UInt32{zstd}, \
             batch FixedString(16){zstd}, attempt UInt64{zstd}) \
             ENGINE = MergeTree() PARTITION BY day ORDER BY (series_id, start_ns)"
        ),
    ]
}

/// Creates what is missing and records the schema version; refuses a database a newer
/// collector has migrated.
pub fn migrate(client: &Client, version: ServerVersion) -> Result<(), SchemaError> {
    for statement in statements(version) {
        client.execute(&statement)?;
    }
    let found = String::from_utf8_lossy(&client.query("SELECT max(version) FROM ember_schema FORMAT TabSeparated")?)
        .trim()
        .parse::<u32>()
        .unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(SchemaError::Newer { found });
    }
    if found < SCHEMA_VERSION {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        client.execute(&format!("INSERT INTO ember_schema (version, applied_ms) VALUES ({SCHEMA_VERSION}, {now})"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_only_where_the_server_has_them() {
        let old = statements(ServerVersion(18_016_001)).join("\n");
        assert!(!old.contains("CODEC"), "{old}");
        let new = statements(ServerVersion(26_009_001)).join("\n");
        assert!(new.contains("CODEC(DoubleDelta, ZSTD)"), "{new}");
        assert!(statements(ServerVersion(19_005_000)).join("\n").contains("CODEC(Delta, ZSTD)"));
    }
}
