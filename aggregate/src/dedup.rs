//! Exact dedup of `event_id`s within a bounded horizon.
//!
//! Ids are stored as 128-bit xxh3 hashes (16 bytes each; the chance that two
//! distinct ids among 10^10 collide is below 10^-18) in hourly buckets keyed
//! by event time. A duplicate carries the same `ts` as its original, so it
//! is looked up in exactly one bucket.
//!
//! Memory is bounded two ways: buckets whose hour is older than the
//! watermark minus the horizon are evicted, and when more than `max_ids`
//! ids are held the oldest buckets are evicted first. An event older than the
//! evicted range is counted (never dropped) without being remembered: a
//! duplicate of it arriving later is counted again (see
//! `docs/ARCHITECTURE.md`).

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use serde::{Deserialize, Serialize};

const MS_PER_HOUR: i64 = 3_600_000;

/// Dedup settings (`[dedup]` in the config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    /// How far behind the watermark (newest event time seen) ids are
    /// remembered. Default 24h.
    #[serde(with = "humantime_serde")]
    pub horizon: Duration,
    /// The most ids held in memory (about 24 bytes each, so 10M ≈ 250 MB).
    /// Past it the oldest hours are forgotten first. Default 10,000,000.
    pub max_ids: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            horizon: Duration::from_secs(24 * 3600),
            max_ids: 10_000_000,
        }
    }
}

/// The 128-bit hash under which an `event_id` is remembered. Stable across
/// versions and machines: it is persisted.
pub fn id_hash(event_id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(event_id.as_bytes())
}

/// The dedup bucket (hour since the epoch) of an event time.
pub fn bucket_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(MS_PER_HOUR)
}

/// The keys are already uniform hashes: use their low bits as is.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

type IdSet = HashSet<u128, BuildHasherDefault<IdHasher>>;

/// What the index says about an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time within the horizon: count it.
    New,
    /// Already counted: drop it.
    Duplicate,
    /// Older than the remembered range: counted, not remembered.
    BeyondHorizon,
}

/// The set of recently seen event ids, bucketed by event hour.
pub struct DedupIndex {
    config: DedupConfig,
    buckets: BTreeMap<i64, IdSet>,
    len: usize,
    /// Buckets below this hour have been evicted (or were never kept).
    floor: i64,
}

impl DedupIndex {
    pub fn new(config: DedupConfig) -> Self {
        DedupIndex {
            config,
            buckets: BTreeMap::new(),
            len: 0,
            floor: i64::MIN,
        }
    }

    /// Number of ids held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The oldest hour bucket still remembered (ids of older events are not).
    pub fn floor_bucket(&self) -> i64 {
        self.floor
    }

    /// Check an id and remember it if new.
    pub fn observe(&mut self, bucket: i64, id: u128) -> Seen {
        if bucket < self.floor {
            return Seen::BeyondHorizon;
        }
        if self.buckets.entry(bucket).or_default().insert(id) {
            self.len += 1;
            Seen::New
        } else {
            Seen::Duplicate
        }
    }

    /// Restore remembered ids (from a sink's recovery); ids below the
    /// current floor are ignored.
    pub fn restore(&mut self, ids: impl IntoIterator<Item = (i64, u128)>) {
        for (bucket, id) in ids {
            self.observe(bucket, id);
        }
    }

    /// Forget what is older than `watermark_ms - horizon`, then shrink to
    /// `max_ids` by forgetting the oldest hours.
    pub fn advance(&mut self, watermark_ms: i64) {
        let horizon_ms = i64::try_from(self.config.horizon.as_millis()).unwrap_or(i64::MAX);
        let cutoff = bucket_of(watermark_ms.saturating_sub(horizon_ms));
        if cutoff > self.floor {
            self.floor = cutoff;
        }
        while let Some((&oldest, _)) = self.buckets.first_key_value() {
            if oldest >= self.floor && self.len <= self.config.max_ids {
                break;
            }
            let (hour, set) = self.buckets.pop_first().expect("non-empty");
            self.len -= set.len();
            self.floor = self.floor.max(hour + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(horizon_h: u64, max_ids: usize) -> DedupIndex {
        DedupIndex::new(DedupConfig {
            horizon: Duration::from_secs(horizon_h * 3600),
            max_ids,
        })
    }

    #[test]
    fn duplicates_are_found_within_the_horizon() {
        let mut ix = index(24, 100);
        let t = 1_000 * MS_PER_HOUR;
        assert_eq!(ix.observe(bucket_of(t), id_hash("a")), Seen::New);
        assert_eq!(ix.observe(bucket_of(t), id_hash("b")), Seen::New);
        assert_eq!(ix.observe(bucket_of(t), id_hash("a")), Seen::Duplicate);
        ix.advance(t + 23 * MS_PER_HOUR);
        assert_eq!(ix.observe(bucket_of(t), id_hash("a")), Seen::Duplicate);
        assert_eq!(ix.len(), 2);
    }

    #[test]
    fn horizon_evicts_old_hours() {
        let mut ix = index(24, 100);
        let t = 1_000 * MS_PER_HOUR;
        ix.observe(bucket_of(t), id_hash("a"));
        ix.advance(t + 25 * MS_PER_HOUR);
        assert!(ix.is_empty());
        assert_eq!(ix.observe(bucket_of(t), id_hash("a")), Seen::BeyondHorizon);
        assert!(ix.is_empty(), "beyond-horizon ids are not remembered");
    }

    #[test]
    fn max_ids_evicts_oldest_hours_first() {
        let mut ix = index(1000, 3);
        for (h, id) in [(1, "a"), (1, "b"), (2, "c"), (3, "d")] {
            ix.observe(h, id_hash(id));
        }
        ix.advance(3 * MS_PER_HOUR);
        assert_eq!(ix.len(), 2);
        assert_eq!(ix.floor_bucket(), 2);
        assert_eq!(ix.observe(2, id_hash("c")), Seen::Duplicate);
        assert_eq!(ix.observe(1, id_hash("a")), Seen::BeyondHorizon);
    }

    #[test]
    fn restore_rebuilds_the_same_answers() {
        let mut ix = index(24, 100);
        ix.restore([(5, id_hash("x")), (5, id_hash("y"))]);
        assert_eq!(ix.observe(5, id_hash("x")), Seen::Duplicate);
        assert_eq!(
            ix.observe(6, id_hash("x")),
            Seen::New,
            "buckets are per hour"
        );
    }

    #[test]
    fn id_hash_is_stable() {
        // Persisted: this value must never change.
        assert_eq!(id_hash("evt-1"), xxhash_rust::xxh3::xxh3_128(b"evt-1"));
        assert_ne!(id_hash("evt-1"), id_hash("evt-2"));
    }
}
