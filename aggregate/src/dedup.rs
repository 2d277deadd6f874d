//! Exact dedup of `event_id`s within a bounded horizon.
//!
//! Ids are stored as 128-bit xxh3 hashes (the chance that two distinct ids
//! among 10^10 collide is below 10^-18), each with the hour of the
//! watermark (newest event time) when it was first seen: one hash map, 24
//! bytes per entry plus the table's slack. The same `event_id` is a
//! duplicate whatever its `ts`.
//!
//! Memory is bounded two ways: ids first seen more than `horizon` of event
//! time ago (by the watermark) are forgotten, and when more than `max_ids`
//! ids are held the oldest hours are forgotten first. A duplicate arriving
//! after its original was forgotten is counted again (see
//! `docs/ARCHITECTURE.md`). Keying on arrival rather than on the event's own
//! `ts` means a late event is remembered as long as an on-time one: retries
//! follow arrivals, not event times.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::time::Duration;

use serde::{Deserialize, Serialize};

const MS_PER_HOUR: i64 = 3_600_000;

/// Dedup settings (`[aggregate.dedup]` in the config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    /// How far behind the watermark (newest event time seen) ids are
    /// remembered. Default 24h.
    #[serde(with = "humantime_serde")]
    pub horizon: Duration,
    /// The most ids held in memory (24 bytes each plus hash-table slack:
    /// 10M ≈ 300-500 MB). Past it the oldest hours are forgotten first.
    /// Default 10,000,000.
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

/// The dedup bucket (hour since the epoch) of a watermark.
pub fn bucket_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(MS_PER_HOUR)
}

/// An id hash as two words (8-byte alignment keeps map entries at 24 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key(u64, u64);

impl Key {
    fn new(id: u128) -> Key {
        Key(id as u64, (id >> 64) as u64)
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u128(u128::from(self.0) | (u128::from(self.1) << 64));
    }
}

/// The table hash of a key: both words mixed with a per-process random
/// key by a folded multiply (as foldhash does). The ids' xxh3 hashes are
/// uniform for honest input, but xxh3 is unkeyed: with the low word as the
/// table hash, as before, anyone could search for event ids that share
/// their low bits and send millions of them, and every insert into the
/// index would probe the same group. Keyed, the table position of an id
/// cannot be predicted without the process's key. Persisted ids are the
/// unkeyed hashes; only the table layout depends on the key.
#[derive(Clone, Copy)]
struct KeyedMix {
    k0: u64,
    k1: u64,
}

impl Default for KeyedMix {
    fn default() -> Self {
        use std::hash::BuildHasher;
        // std's RandomState draws its keys from the OS once per process.
        let random = std::collections::hash_map::RandomState::new();
        KeyedMix {
            k0: random.hash_one(0u8) | 1,
            k1: random.hash_one(1u8),
        }
    }
}

impl std::hash::BuildHasher for KeyedMix {
    type Hasher = Folded;
    fn build_hasher(&self) -> Folded {
        Folded {
            key: *self,
            state: 0,
        }
    }
}

struct Folded {
    key: KeyedMix,
    state: u64,
}

impl Folded {
    fn mix(&mut self, lo: u64, hi: u64) {
        let m = u128::from(lo ^ self.key.k0 ^ self.state) * u128::from(hi ^ self.key.k1);
        self.state = (m as u64) ^ ((m >> 64) as u64);
    }
}

impl Hasher for Folded {
    /// A second folded multiply, by a fixed odd constant: after one round,
    /// ids that differ only in a few bits of one word stay correlated, and
    /// for some keys took half the table positions they should.
    fn finish(&self) -> u64 {
        let m = u128::from(self.state ^ self.key.k0) * u128::from(0x9e37_79b9_7f4a_7c15u64);
        (m as u64) ^ ((m >> 64) as u64)
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(16) {
            let mut b = [0u8; 16];
            b[..chunk.len()].copy_from_slice(chunk);
            let v = u128::from_le_bytes(b);
            self.mix(v as u64, (v >> 64) as u64);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.mix(v as u64, (v >> 64) as u64);
    }
}

/// What the index says about an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not seen within the horizon: count it (it is now remembered).
    New,
    /// Already counted: drop it.
    Duplicate,
}

/// The set of recently seen event ids, each with the hour it was first seen at.
pub struct DedupIndex {
    config: DedupConfig,
    ids: HashMap<Key, i64, KeyedMix>,
    /// Ids per hour, to find which hours to forget under `max_ids`.
    per_hour: BTreeMap<i64, usize>,
    /// (hour, ids) not yet added to `per_hour`: consecutive new ids almost
    /// always share an hour, so the map is updated once per run of them.
    hot: (i64, usize),
    /// Ids first seen before this hour have been forgotten.
    floor: i64,
}

impl DedupIndex {
    pub fn new(config: DedupConfig) -> Self {
        DedupIndex {
            config,
            ids: HashMap::default(),
            per_hour: BTreeMap::new(),
            hot: (i64::MIN, 0),
            floor: i64::MIN,
        }
    }

    /// Number of ids held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Ids first seen before this hour have been forgotten.
    pub fn floor_bucket(&self) -> i64 {
        self.floor
    }

    /// How far behind `watermark_ms` ids are still remembered: the
    /// configured horizon, or less once `max_ids` forced the oldest hours
    /// out (retries older than that count again).
    pub fn effective_horizon(&self, watermark_ms: i64) -> Duration {
        if self.floor == i64::MIN {
            return self.config.horizon;
        }
        let held_ms = watermark_ms.saturating_sub(self.floor.saturating_mul(MS_PER_HOUR));
        self.config
            .horizon
            .min(Duration::from_millis(held_ms.max(0) as u64))
    }

    /// The configured horizon.
    pub fn horizon(&self) -> Duration {
        self.config.horizon
    }

    /// Check an id and remember it, at `bucket` (the hour of the current
    /// watermark), if new.
    pub fn observe(&mut self, bucket: i64, id: u128) -> Seen {
        let bucket = bucket.max(self.floor);
        match self.ids.entry(Key::new(id)) {
            Entry::Occupied(_) => Seen::Duplicate,
            Entry::Vacant(slot) => {
                slot.insert(bucket);
                if self.hot.0 != bucket {
                    self.flush_hot();
                    self.hot.0 = bucket;
                }
                self.hot.1 += 1;
                Seen::New
            }
        }
    }

    /// Look `ids` up without remembering them. It changes nothing; it
    /// brings their table slots into cache with the misses overlapped (see
    /// `WARM_AHEAD` in `core.rs`), for the `observe` calls that follow.
    pub fn warm(&self, ids: impl IntoIterator<Item = u128>) {
        for id in ids {
            std::hint::black_box(self.ids.contains_key(&Key::new(id)));
        }
    }

    fn flush_hot(&mut self) {
        if self.hot.1 > 0 {
            *self.per_hour.entry(self.hot.0).or_default() += self.hot.1;
            self.hot.1 = 0;
        }
    }

    /// Restore remembered ids (from a sink's recovery); ids below the
    /// current floor are ignored.
    pub fn restore(&mut self, ids: impl IntoIterator<Item = (i64, u128)>) {
        for (bucket, id) in ids {
            if bucket >= self.floor {
                self.observe(bucket, id);
            }
        }
    }

    /// Forget what is older than `watermark_ms - horizon`, then shrink to
    /// `max_ids` by forgetting the oldest hours.
    pub fn advance(&mut self, watermark_ms: i64) {
        let horizon_ms = i64::try_from(self.config.horizon.as_millis()).unwrap_or(i64::MAX);
        let mut floor = self
            .floor
            .max(bucket_of(watermark_ms.saturating_sub(horizon_ms)));
        self.flush_hot();
        let mut len = self.ids.len();
        while let Some((&hour, &n)) = self.per_hour.first_key_value() {
            if hour >= floor && len <= self.config.max_ids {
                break;
            }
            self.per_hour.pop_first();
            len -= n;
            floor = floor.max(hour + 1);
        }
        if floor > self.floor {
            self.floor = floor;
            if len < self.ids.len() {
                self.ids.retain(|_, hour| *hour >= floor);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crafted_ids_that_share_their_low_word_spread_over_the_table() {
        use std::collections::HashSet;
        use std::hash::BuildHasher;
        // 10,000 id hashes with one low word: as the table hash, that word
        // put every one of them in the same group. Whatever the process's
        // key (50 of them here; one round of mixing failed 1 in 60):
        for _ in 0..50 {
            let mix = KeyedMix::default();
            let hashes: Vec<u64> = (0..10_000u64)
                .map(|i| mix.hash_one(Key(0xdead_beef, i)))
                .collect();
            // Positions in a table of 65,536 buckets: ~9,270 distinct when
            // spread at random.
            let positions: HashSet<u64> = hashes.iter().map(|h| h & 0xffff).collect();
            assert!(positions.len() > 8_500, "{} positions", positions.len());
            // The top 7 bits, the tag hashbrown compares within a group.
            let tags: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
            assert_eq!(tags.len(), 128);
        }
        // And the index still tells them apart.
        let mut ix = index(24, 1_000_000);
        for i in 0..10_000u128 {
            assert_eq!(ix.observe(0, 0xdead_beef | (i << 64)), Seen::New);
        }
        for i in 0..10_000u128 {
            assert_eq!(ix.observe(0, 0xdead_beef | (i << 64)), Seen::Duplicate);
        }
    }

    fn index(horizon_h: u64, max_ids: usize) -> DedupIndex {
        DedupIndex::new(DedupConfig {
            horizon: Duration::from_secs(horizon_h * 3600),
            max_ids,
        })
    }

    #[test]
    fn warming_remembers_nothing() {
        let mut ix = index(24, 100);
        let t = bucket_of(1_000 * MS_PER_HOUR);
        assert_eq!(ix.observe(t, id_hash("a")), Seen::New);
        ix.warm([id_hash("a"), id_hash("b"), 0]);
        assert_eq!(ix.len(), 1);
        assert_eq!(ix.observe(t, id_hash("b")), Seen::New);
        assert_eq!(ix.observe(t, id_hash("a")), Seen::Duplicate);
    }

    #[test]
    fn duplicates_are_found_within_the_horizon() {
        let mut ix = index(24, 100);
        let t = 1_000 * MS_PER_HOUR;
        assert_eq!(ix.observe(bucket_of(t), id_hash("a")), Seen::New);
        assert_eq!(ix.observe(bucket_of(t), id_hash("b")), Seen::New);
        assert_eq!(ix.observe(bucket_of(t), id_hash("a")), Seen::Duplicate);
        ix.advance(t + 23 * MS_PER_HOUR);
        assert_eq!(
            ix.observe(bucket_of(t + 23 * MS_PER_HOUR), id_hash("a")),
            Seen::Duplicate
        );
        assert_eq!(ix.len(), 2);
    }

    #[test]
    fn horizon_forgets_ids_first_seen_long_ago() {
        let mut ix = index(24, 100);
        let t = 1_000 * MS_PER_HOUR;
        ix.observe(bucket_of(t), id_hash("a"));
        ix.advance(t + 25 * MS_PER_HOUR);
        assert!(ix.is_empty());
        assert_eq!(ix.floor_bucket(), 1_001);
        let now = bucket_of(t + 25 * MS_PER_HOUR);
        assert_eq!(
            ix.observe(now, id_hash("a")),
            Seen::New,
            "forgotten, counted again"
        );
    }

    #[test]
    fn the_effective_horizon_shrinks_only_when_max_ids_evicts() {
        let hour = MS_PER_HOUR;
        let mut ix = index(24, 1_000);
        assert_eq!(ix.effective_horizon(0), Duration::from_secs(24 * 3600));
        for h in 0..48i64 {
            ix.observe(h, h as u128);
            ix.advance(h * hour + hour / 2);
        }
        // 48 hours seen, 24 kept by the horizon: the full horizon.
        assert_eq!(
            ix.effective_horizon(47 * hour + hour / 2),
            Duration::from_secs(24 * 3600)
        );
        // 100 ids an hour with room for 1,000: ten hours kept at most.
        let mut small = index(24, 1_000);
        for h in 0..30i64 {
            for i in 0..100u128 {
                small.observe(h, (h as u128) << 32 | i);
            }
            small.advance(h * hour + hour / 2);
        }
        assert_eq!(
            small.effective_horizon(29 * hour + hour / 2),
            Duration::from_millis((9 * hour + hour / 2) as u64)
        );
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
        assert_eq!(ix.observe(3, id_hash("c")), Seen::Duplicate);
        assert_eq!(ix.observe(3, id_hash("a")), Seen::New);
    }

    #[test]
    fn restore_rebuilds_the_same_answers() {
        let mut ix = index(24, 100);
        ix.advance(10 * MS_PER_HOUR);
        ix.restore([(5, id_hash("x")), (5, id_hash("y")), (-20, id_hash("old"))]);
        assert_eq!(ix.len(), 2, "ids below the floor are not restored");
        assert_eq!(ix.observe(10, id_hash("x")), Seen::Duplicate);
    }

    #[test]
    fn same_id_with_another_time_is_a_duplicate() {
        let mut ix = index(24, 100);
        assert_eq!(ix.observe(10, id_hash("a")), Seen::New);
        assert_eq!(ix.observe(3, id_hash("a")), Seen::Duplicate);
    }

    /// Persisted in dedup segments: this value must never change.
    const ID_HASH_EVT_1: u128 = 71_396_827_698_998_447_960_180_088_679_676_264_299;

    #[test]
    fn id_hash_is_stable() {
        assert_eq!(id_hash("evt-1"), ID_HASH_EVT_1);
        assert_ne!(id_hash("evt-1"), id_hash("evt-2"));
    }
}
