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
    let version = major
        .checked_mul(1_000_000)
        .zip(minor.checked_mul(1_000))
        .and_then(|(a, b)| a.checked_add(b)?.checked_add(patch))
        .map(ServerVersion)
        .ok_or_else(|| SchemaError::Version(text.clone()))?;
    if version < ServerVersion(18_016_000) {
        return Err(SchemaError::TooOld { found: text });
    }
    Ok(version)
}

/// Where the tables live: on one server, or spread over a cluster's shards.
///
/// On a cluster (`--clickhouse-cluster NAME`) each table is `NAME_local` on every server,
/// created `ON CLUSTER` (ClickHouse's distributed DDL, which needs ZooKeeper), and a
/// `Distributed` table under the plain name that every read and write goes through, so a
/// collector may talk to any server. A batch's samples, tasks, slices and markers are placed
/// by the batch's id and so share a shard: the check that counts one attempt per batch runs
/// on each shard alone (`distributed_product_mode = 'local'`). Dictionaries are placed by their
/// own id, so a repeated row lands where the first did and merges away.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub cluster: Option<String>,
    pub database: String,
}

/// A table: its name, columns, engine and, on a cluster, the key that picks its shard.
struct Table {
    name: &'static str,
    columns: String,
    engine: &'static str,
    shard_by: &'static str,
}

impl Layout {
    /// The table that holds `table`'s parts (what retention drops partitions of), as
    /// `system.parts` names it.
    pub fn storage(&self, table: &str) -> String {
        match self.cluster {
            Some(_) => format!("{table}_local"),
            None => table.to_string(),
        }
    }

    /// `table` as a statement names it: qualified on a cluster, where each server runs
    /// distributed DDL in its default database.
    pub fn qualified(&self, table: &str) -> String {
        match self.cluster {
            Some(_) => format!("{}.{table}", self.database),
            None => table.to_string(),
        }
    }

    /// ` ON CLUSTER NAME`, or nothing.
    pub fn on_cluster(&self) -> String {
        self.cluster.as_ref().map(|c| format!(" ON CLUSTER {c}")).unwrap_or_default()
    }

    /// The table whose rows are `system.parts` of every server.
    pub fn parts(&self) -> &'static str {
        match self.cluster {
            Some(_) => "ember_parts",
            None => "system.parts",
        }
    }

    fn create(&self, t: Table) -> Vec<String> {
        let Table { name, columns, engine, shard_by } = t;
        match &self.cluster {
            None => vec![format!("CREATE TABLE IF NOT EXISTS {name} ({columns}) ENGINE = {engine}")],
            // Names are qualified: each server runs distributed DDL in its default database.
            Some(cluster) => {
                let db = &self.database;
                vec![
                    format!(
                        "CREATE TABLE IF NOT EXISTS {db}.{name}_local ON CLUSTER {cluster} ({columns}) ENGINE = {engine}"
                    ),
                    format!(
                        "CREATE TABLE IF NOT EXISTS {db}.{name} ON CLUSTER {cluster} AS {db}.{name}_local \
                         ENGINE = Distributed({cluster}, {db}, {name}_local, {shard_by})"
                    ),
                ]
            }
        }
    }
}

/// The tables' statements for a server of `version`.
pub fn statements(version: ServerVersion, layout: &Layout) -> Vec<String> {
    let codec = |c: &str| if version.has_codecs() { format!(" CODEC({c})") } else { String::new() };
    let time_codec = codec(if version.has_double_delta() { "DoubleDelta, ZSTD" } else { "Delta, ZSTD" });
    let zstd = codec("ZSTD");
    let by_batch = "cityHash64(batch)";
    let tables = [
        Table {
            name: "ember_schema",
            columns: "version UInt32, applied_ms UInt64".into(),
            engine: "MergeTree() ORDER BY version",
            shard_by: "version",
        },
        Table {
            name: "ember_frames",
            columns: "frame_id FixedString(16), kind UInt8, plumbing UInt8, text String, function String, \
                      file String, line Nullable(UInt32)"
                .into(),
            engine: "ReplacingMergeTree() ORDER BY frame_id",
            shard_by: "cityHash64(frame_id)",
        },
        Table {
            name: "ember_stacks",
            columns: "stack_id FixedString(16), frames Array(FixedString(16))".into(),
            engine: "ReplacingMergeTree() ORDER BY stack_id",
            shard_by: "cityHash64(stack_id)",
        },
        Table {
            name: "ember_series",
            columns: "day Date, series_id FixedString(16), label_names Array(String), label_values Array(String)"
                .into(),
            engine: "ReplacingMergeTree() PARTITION BY day ORDER BY series_id",
            shard_by: "cityHash64(series_id)",
        },
        Table {
            name: "ember_samples",
            columns: format!(
                "day Date, series_id FixedString(16), time_ns Int64{time_codec}, stack_id FixedString(16){zstd}, \
                 tid UInt32{zstd}, weight UInt32{zstd}, batch FixedString(16){zstd}, attempt UInt64{zstd}"
            ),
            engine: "MergeTree() PARTITION BY day ORDER BY (series_id, time_ns)",
            shard_by: by_batch,
        },
        Table {
            name: "ember_counts",
            columns: format!(
                "day Date, series_id FixedString(16), bucket_ms Int64, stack_id FixedString(16){zstd}, \
                 weight UInt64{zstd}, batch FixedString(16){zstd}, attempt UInt64{zstd}"
            ),
            engine: "MergeTree() PARTITION BY day ORDER BY (series_id, bucket_ms, stack_id)",
            shard_by: by_batch,
        },
        Table {
            name: "ember_seen",
            columns: "day Date, series_id FixedString(16), first_ns Int64, last_ns Int64, samples UInt64, \
                      batch FixedString(16), attempt UInt64"
                .into(),
            engine: "MergeTree() PARTITION BY day ORDER BY (series_id, batch)",
            shard_by: by_batch,
        },
        Table {
            name: "ember_batches",
            columns: "day Date, batch FixedString(16), attempt UInt64, agent_id String, sequence UInt64, \
                      samples UInt64, stored_ms UInt64"
                .into(),
            engine: "ReplacingMergeTree() PARTITION BY day ORDER BY (batch, attempt)",
            shard_by: by_batch,
        },
        Table {
            name: "ember_tasks",
            columns: format!(
                "day Date, series_id FixedString(16), task_id UInt64, name String, coro String, parent UInt64, \
                 created_ns Int64, done_ns Nullable(Int64), state UInt8, exception String, sequence UInt64, \
                 batch FixedString(16){zstd}, attempt UInt64{zstd}"
            ),
            engine: "MergeTree() PARTITION BY day ORDER BY (series_id, task_id)",
            shard_by: by_batch,
        },
        Table {
            name: "ember_slices",
            columns: format!(
                "day Date, series_id FixedString(16), start_ns Int64{time_codec}, end_ns Int64{zstd}, \
                 ready_ns Nullable(Int64), task_id UInt64{zstd}, tid UInt32{zstd}, batch FixedString(16){zstd}, \
                 attempt UInt64{zstd}"
            ),
            engine: "MergeTree() PARTITION BY day ORDER BY (series_id, start_ns)",
            shard_by: by_batch,
        },
    ];
    let mut out: Vec<String> = tables.into_iter().flat_map(|t| layout.create(t)).collect();
    if let Some(cluster) = &layout.cluster {
        // Sizes and partitions of every server, for retention and `disk_bytes`.
        out.push(format!(
            "CREATE TABLE IF NOT EXISTS {}.ember_parts ON CLUSTER {cluster} AS system.parts \
             ENGINE = Distributed({cluster}, system, parts)",
            layout.database
        ));
    }
    out
}

/// Creates what is missing and records the schema version; refuses a database a newer
/// collector has migrated.
pub fn migrate(client: &Client, version: ServerVersion, layout: &Layout) -> Result<(), SchemaError> {
    for statement in statements(version, layout) {
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
        let one = Layout::default();
        let old = statements(ServerVersion(18_016_001), &one).join("\n");
        assert!(!old.contains("CODEC"), "{old}");
        let new = statements(ServerVersion(26_009_001), &one).join("\n");
        assert!(new.contains("CODEC(DoubleDelta, ZSTD)"), "{new}");
        assert!(statements(ServerVersion(19_005_000), &one).join("\n").contains("CODEC(Delta, ZSTD)"));
    }

    #[test]
    fn a_cluster_has_local_tables_behind_distributed_ones_placed_by_batch() {
        let layout = Layout { cluster: Some("two".into()), database: "ember".into() };
        let all = statements(ServerVersion(18_016_001), &layout);
        assert!(all.iter().all(|s| s.contains(" ON CLUSTER two ")), "{all:#?}");
        let samples: Vec<&String> = all.iter().filter(|s| s.contains("ember_samples")).collect();
        assert!(
            samples[0].starts_with("CREATE TABLE IF NOT EXISTS ember.ember_samples_local ON CLUSTER two (day Date"),
            "{samples:?}"
        );
        assert!(samples[1].ends_with("Distributed(two, ember, ember_samples_local, cityHash64(batch))"));
        for table in ["ember_batches", "ember_tasks", "ember_slices"] {
            let distributed = all.iter().find(|s| s.contains(&format!("Distributed(two, ember, {table}_local")));
            assert!(distributed.is_some_and(|s| s.ends_with("cityHash64(batch))")), "{table}");
        }
        assert_eq!((layout.storage("ember_samples"), layout.parts()), ("ember_samples_local".into(), "ember_parts"));
    }
}
