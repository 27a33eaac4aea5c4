//! The store's file: its tables, its format version, and opening it without ever mistaking
//! an empty, foreign or damaged file for a new store.

use std::path::Path;

use redb::{Database, ReadableDatabase, TableDefinition, TableHandle};

use super::seal;
use crate::store::StoreError;

/// Format 1 had no checksums and no version; format 2 seals every value (see docs/STORAGE.md).
pub const FORMAT_VERSION: u64 = 2;

/// name → sealed u64 (`format`, `next_blob`, `next_series`).
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("ember_meta");
/// Format 1's counters; only looked for to recognise such a file.
const LEGACY_META: &str = "meta";
pub const FRAME_IDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("frame_ids");
pub const FRAMES: TableDefinition<u32, &[u8]> = TableDefinition::new("frames");
pub const STACK_IDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("stack_ids");
pub const STACKS: TableDefinition<u32, &[u8]> = TableDefinition::new("stacks");
pub const SERIES: TableDefinition<u32, &[u8]> = TableDefinition::new("series");
/// (series, bucket start ms, blob id) → aggregated stack counts.
pub const AGG: TableDefinition<(u32, i64, u64), &[u8]> = TableDefinition::new("agg");
/// (series, bucket start ms, blob id) → raw samples with exact times.
pub const RAW: TableDefinition<(u32, i64, u64), &[u8]> = TableDefinition::new("raw");
/// (agent id, sequence) → when it was stored: how repeats are recognised.
pub const BATCHES: TableDefinition<(&str, u64), i64> = TableDefinition::new("batches");
/// (series, bucket the task finished in or [`PENDING`], task id) → task record. Keyed by end,
/// so a query reads only tasks that finished in or after its range, and retention drops
/// finished tasks by range.
pub const TASKS: TableDefinition<(u32, i64, u64), &[u8]> = TableDefinition::new("tasks");
pub const PENDING: i64 = i64::MAX;
/// (series, bucket start ms, blob id) → run slices starting in that bucket.
pub const SLICES: TableDefinition<(u32, i64, u64), &[u8]> = TableDefinition::new("slices");

pub const FILE_NAME: &str = "ember.redb";

/// redb's page cache by default: what the store may keep of the file in memory.
pub const DEFAULT_CACHE_BYTES: usize = 128 << 20;

/// A redb error, as a disk-full error when an I/O error with `StorageFull` is among its
/// causes (redb wraps I/O errors in several of its own).
pub fn storage_error(e: impl Into<redb::Error>) -> StoreError {
    let e: redb::Error = e.into();
    let full = |io: &std::io::Error| io.kind() == std::io::ErrorKind::StorageFull;
    if matches!(&e, redb::Error::Io(io) if full(io)) {
        return StoreError::DiskFull(Box::new(e));
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>().is_some_and(full) {
            return StoreError::DiskFull(Box::new(e));
        }
        cause = c.source();
    }
    StoreError::Engine(Box::new(e))
}

fn not_a_store(path: &Path, why: impl std::fmt::Display) -> StoreError {
    StoreError::NotAStore(format!(
        "{} {why}. Refusing to start rather than answer from it or overwrite it: move it away (to start an \
         empty store) or restore a backup",
        path.display()
    ))
}

fn builder(verify: bool, cache_bytes: usize) -> redb::Builder {
    let mut b = Database::builder();
    b.set_cache_size(cache_bytes);
    // Every page's checksum is verified as the file opens, so damage on disk is found before
    // it can give wrong answers or panic the engine.
    b.set_check_integrity_on_open(verify);
    b
}

/// Opens the store at `path`, creating it only if no file is there.
pub fn open(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path, cache_bytes),
        Err(e) => Err(StoreError::Internal(format!("cannot read {}: {e}", path.display()))),
        Ok(m) if !m.is_file() => Err(not_a_store(path, "is not a regular file")),
        Ok(m) if m.len() == 0 => Err(not_a_store(path, "is empty (0 bytes), so it is not an ember store")),
        Ok(_) => {
            let db = builder(true, cache_bytes).open(path).map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Internal(format!(
                    "{} is in use by another process (is another collector running on this --data-dir?)",
                    path.display()
                )),
                e => not_a_store(path, format!("is not a readable redb database or is damaged ({e})")),
            })?;
            check_format(path, &db)?;
            Ok(db)
        }
    }
}

/// Reopens a store this process already validated (after an I/O error).
pub fn reopen(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
    builder(false, cache_bytes).open(path).map_err(storage_error)
}

fn create(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
    // `create_new` so two starts racing cannot both think the file is theirs to initialise.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| StoreError::Internal(format!("cannot create {}: {e}", path.display())))?;
    let backend = redb::backends::FileBackend::new(file).map_err(storage_error)?;
    let db = builder(false, cache_bytes).create_with_backend(backend).map_err(storage_error)?;
    let txn = db.begin_write().map_err(storage_error)?;
    {
        let mut meta = txn.open_table(META).map_err(storage_error)?;
        meta.insert("format", seal::seal_u64("format", FORMAT_VERSION).as_slice()).map_err(storage_error)?;
    }
    txn.commit().map_err(storage_error)?;
    Ok(db)
}

fn check_format(path: &Path, db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_read().map_err(storage_error)?;
    let tables: Vec<String> = txn.list_tables().map_err(storage_error)?.map(|t| t.name().to_string()).collect();
    if !tables.iter().any(|t| t == META.name()) {
        return Err(if tables.iter().any(|t| t == LEGACY_META) {
            not_a_store(
                path,
                format!("is an ember store of format 1, which this collector (format {FORMAT_VERSION}) does not read"),
            )
        } else {
            not_a_store(path, "is a redb database but not an ember store (it has no ember_meta table)")
        });
    }
    let meta = txn.open_table(META).map_err(storage_error)?;
    let version = meta
        .get("format")
        .map_err(storage_error)?
        .and_then(|v| seal::unseal_u64("format", v.value()))
        .ok_or_else(|| not_a_store(path, "has no readable format version"))?;
    if version != FORMAT_VERSION {
        return Err(not_a_store(path, format!("has format {version}; this collector reads format {FORMAT_VERSION}")));
    }
    Ok(())
}
