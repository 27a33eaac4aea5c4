//! Checksums of stored values, and what the store found damaged.
//!
//! Every value is stored as `value || crc32(key || value)` (CRC-32/IEEE, little-endian). The
//! key is in the checksum, so a value that moved under another key is caught too. A value
//! that fails its check is skipped, counted once per record, logged, and turns `/readyz` to
//! degraded.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::store::StoreHealth;

fn crc(key: &[u8], value: &[u8]) -> [u8; 4] {
    let mut h = crc32fast::Hasher::new();
    h.update(key);
    h.update(value);
    h.finalize().to_le_bytes()
}

pub fn seal(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 4);
    out.extend_from_slice(value);
    out.extend_from_slice(&crc(key, value));
    out
}

/// The value, if its checksum holds.
pub fn unseal<'a>(key: &[u8], sealed: &'a [u8]) -> Option<&'a [u8]> {
    let split = sealed.len().checked_sub(4)?;
    let (value, sum) = sealed.split_at(split);
    (crc(key, value) == sum).then_some(value)
}

pub fn seal_u64(key: &str, v: u64) -> Vec<u8> {
    seal(key.as_bytes(), &v.to_le_bytes())
}

pub fn unseal_u64(key: &str, sealed: &[u8]) -> Option<u64> {
    unseal(key.as_bytes(), sealed).and_then(|v| Some(u64::from_le_bytes(v.try_into().ok()?)))
}

/// Key bytes of the (series, bucket, blob) tables.
pub fn blob_key(key: (u32, i64, u64)) -> [u8; 20] {
    let mut out = [0u8; 20];
    out[..4].copy_from_slice(&key.0.to_le_bytes());
    out[4..12].copy_from_slice(&key.1.to_le_bytes());
    out[12..].copy_from_slice(&key.2.to_le_bytes());
    out
}

/// What the store has found wrong since it opened.
#[derive(Debug, Default)]
pub struct Health {
    corrupt: Mutex<HashSet<String>>,
    failed: AtomicBool,
}

impl Health {
    /// Records a damaged record (once per record: queries read the same ones again).
    pub fn corrupt(&self, table: &str, key: impl std::fmt::Debug) {
        let id = format!("{table} {key:?}");
        let mut seen = self.corrupt.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.insert(id.clone()) {
            tracing::error!(
                "store damage: the record {id} fails its checksum; it is left out of every answer \
                 (/readyz reports the store degraded)"
            );
        }
    }

    /// The storage engine failed in a way that makes further writes unsafe (it panicked).
    pub fn fail(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }

    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    pub fn report(&self) -> StoreHealth {
        let corrupt = self.corrupt.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len();
        StoreHealth { corrupt_records: corrupt as u64, failed: self.has_failed() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flipped_bit_or_a_moved_value_fails_the_check() {
        let sealed = seal(b"k1", b"value");
        assert_eq!(unseal(b"k1", &sealed), Some(&b"value"[..]));
        assert_eq!(unseal(b"k2", &sealed), None, "same value under another key");
        for bit in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(unseal(b"k1", &bad), None, "bit {bit}");
        }
        assert_eq!(unseal(b"k1", &[1, 2]), None);
        assert_eq!(unseal_u64("format", &seal_u64("format", 2)), Some(2));
    }
}
