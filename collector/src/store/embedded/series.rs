//! The series index, kept in memory (selectors match against it) and loaded at start, and the
//! id counters.

use std::collections::{BTreeMap, HashMap};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::file::{storage_error, AGG, META, RAW, SERIES, SLICES};
use super::seal::{unseal, unseal_u64, Health};
use crate::store::codec::{self, CodecError};
use crate::store::{Labels, SeriesInfo, StoreError};

#[derive(Debug, Default)]
pub struct SeriesIndex {
    pub series: BTreeMap<u32, SeriesInfo>,
    pub ids: HashMap<Labels, u32>,
    pub next_series: u32,
    pub next_blob: u64,
}

pub fn encode_series(info: &SeriesInfo) -> Vec<u8> {
    let mut out = Vec::new();
    codec::put_varint(&mut out, info.first_seen_ms as u64);
    codec::put_varint(&mut out, info.last_seen_ms as u64);
    codec::put_varint(&mut out, info.samples);
    out.extend(codec::encode_labels(&info.labels));
    out
}

fn decode_series(id: u32, bytes: &[u8]) -> Result<SeriesInfo, CodecError> {
    let mut at = 0;
    let first_seen_ms = codec::get_varint(bytes, &mut at)? as i64;
    let last_seen_ms = codec::get_varint(bytes, &mut at)? as i64;
    let samples = codec::get_varint(bytes, &mut at)?;
    let labels = codec::decode_labels(bytes.get(at..).ok_or(CodecError("short series record"))?)?;
    Ok(SeriesInfo { id, labels, first_seen_ms, last_seen_ms, samples })
}

/// The largest blob id in a (series, bucket, blob) table, by a full scan.
fn max_blob(txn: &redb::ReadTransaction, table: TableDefinition<(u32, i64, u64), &[u8]>) -> Result<u64, StoreError> {
    let t = match txn.open_table(table) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(storage_error(e)),
    };
    let mut max = 0;
    for item in t.iter().map_err(storage_error)? {
        let (k, _) = item.map_err(storage_error)?;
        max = max.max(k.value().2.saturating_add(1));
    }
    Ok(max)
}

pub fn load(db: &Database, health: &Health) -> Result<SeriesIndex, StoreError> {
    let mut index = SeriesIndex::default();
    let txn = db.begin_read().map_err(storage_error)?;
    let mut max_series = 0u32;
    match txn.open_table(SERIES) {
        Ok(series) => {
            for item in series.iter().map_err(storage_error)? {
                let (id, bytes) = item.map_err(storage_error)?;
                let id = id.value();
                max_series = max_series.max(id.saturating_add(1));
                match unseal(&id.to_le_bytes(), bytes.value()).and_then(|b| decode_series(id, b).ok()) {
                    Some(info) => {
                        index.ids.insert(info.labels.clone(), id);
                        index.series.insert(id, info);
                    }
                    // Its data stays on disk but no selector can reach it.
                    None => health.corrupt("series", id),
                }
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(storage_error(e)),
    }
    let meta = txn.open_table(META).map_err(storage_error)?;
    let counter = |name: &str| -> Result<Option<Option<u64>>, StoreError> {
        Ok(meta.get(name).map_err(storage_error)?.map(|v| unseal_u64(name, v.value())))
    };
    index.next_series = match counter("next_series")? {
        Some(Some(n)) => u32::try_from(n).unwrap_or(u32::MAX).max(max_series),
        None => max_series,
        Some(None) => {
            health.corrupt("ember_meta", "next_series");
            max_series
        }
    };
    index.next_blob = match counter("next_blob")? {
        Some(Some(n)) => n,
        None => 0,
        Some(None) => {
            // Reusing a blob id would overwrite data: find the largest one in use.
            health.corrupt("ember_meta", "next_blob");
            max_blob(&txn, AGG)?.max(max_blob(&txn, RAW)?).max(max_blob(&txn, SLICES)?)
        }
    };
    Ok(index)
}
