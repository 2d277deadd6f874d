//! The exactly-once progress ledger: the progress rows of `usage_deltas`
//! (built by [`delta_rows`](super::rows::delta_rows) into each batch's single insert) and the
//! heads that bound how much of it a read must scan.
//!
//! Each batch leaves two progress rows per source partition it advanced: by
//! source (`minute` 0, the partition's offset chain, read with
//! [`BY_SOURCE`]) and by commit time (read with [`BY_TIME`]). `ledger_heads`
//! holds a lower bound of each source's committed offset, so that a
//! source's chain is read from its head on, not from the beginning.
//!
//! [`Ledger`] is what this aggregator knows of it: where it last saw each
//! partition (what the fence check compares with) and the heads it has yet
//! to write.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokentally_aggregate::core::BatchOutcome;

use super::ClickHouseError;
use super::database::{Database, quote, quote_all};
use super::rows::HeadRow;
use super::schema::{BY_SOURCE, BY_TIME};

/// A source's newest progress row.
#[derive(Debug, clickhouse::Row, Deserialize)]
pub(super) struct ProgressRow {
    source: String,
    pub(super) next_offset: i64,
    pub(super) watermark_ms: i64,
    committed_at: u32,
}

/// How far apart clocks may be (the aggregators' and ClickHouse's) for
/// bounds that compare a stamp taken by an aggregator with one taken by the
/// server. Stamps are taken on the server's clock (see
/// [`ClickHouseSink::stamp`](super::ClickHouseSink::stamp)), so this only covers drift and round trips.
const CLOCK_MARGIN_S: u32 = 3_600;

/// How often committed positions are written to `ledger_heads` (also on
/// release and on stop).
const HEADS_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, clickhouse::Row, Deserialize)]
struct LoadedIdSet {
    bucket: i64,
    ids_hi: Vec<u64>,
    ids_lo: Vec<u64>,
}

/// The ledger as this aggregator knows it.
pub(super) struct Ledger {
    /// Where this aggregator last saw each source partition in the ledger.
    /// `None`: resumed with no ledger entry yet.
    known: HashMap<String, Option<i64>>,
    /// Sources known to have a row in `ledger_heads`.
    headed: HashSet<String>,
    /// Committed positions not yet written to `ledger_heads`.
    pending_heads: BTreeMap<String, HeadRow>,
    /// When `ledger_heads` was last written.
    heads_written: Instant,
}

impl Ledger {
    pub(super) fn new() -> Self {
        Ledger {
            known: HashMap::new(),
            headed: HashSet::new(),
            pending_heads: BTreeMap::new(),
            heads_written: Instant::now(),
        }
    }

    /// The newest progress row of each source in `from`, reading each
    /// source's chain from its bound on (`None`: all of it). Bounds come
    /// from `ledger_heads` or from what this aggregator committed, and are
    /// offsets at or below the newest: the read costs the rows since the
    /// bound, not the ledger's history.
    async fn read(
        &self,
        db: &Database,
        from: &BTreeMap<String, Option<i64>>,
    ) -> Result<BTreeMap<String, ProgressRow>, ClickHouseError> {
        if from.is_empty() {
            return Ok(BTreeMap::new());
        }
        let sources = from
            .iter()
            .map(|(k, bound)| match bound {
                Some(b) => format!("(source = {} AND next_offset >= {b})", quote(k)),
                None => format!("source = {}", quote(k)),
            })
            .collect::<Vec<_>>()
            .join(" OR ");
        let sql = format!(
            "SELECT source, max(next_offset) AS top, argMax(watermark_ms, next_offset) AS wm, \
             toUInt32(argMax(committed_at, next_offset)) AS at \
             FROM {}.usage_deltas WHERE {BY_SOURCE} AND ({sources}) GROUP BY source",
            db.name()
        );
        Ok(db
            .fetch::<ProgressRow>(sql)
            .await?
            .into_iter()
            .map(|r| (r.source.clone(), r))
            .collect())
    }

    /// The heads of the given sources, or of all.
    async fn heads(
        &self,
        db: &Database,
        keys: Option<&[String]>,
    ) -> Result<BTreeMap<String, HeadRow>, ClickHouseError> {
        let filter = match keys {
            Some([]) => return Ok(BTreeMap::new()),
            Some(keys) => format!(" WHERE source IN ({})", quote_all(keys)),
            None => String::new(),
        };
        let sql = format!(
            "SELECT source, max(next_offset) AS top, max(watermark_ms) AS wm, \
             toUInt32(max(at)) AS last FROM {}.ledger_heads{filter} GROUP BY source",
            db.name()
        );
        Ok(db
            .fetch::<HeadRow>(sql)
            .await?
            .into_iter()
            .map(|r| (r.source.clone(), r))
            .collect())
    }

    /// Committed progress of `keys` (all sources with a head when `None`),
    /// read from their heads on. Heads that lag what was found are brought
    /// up to date, and every source read gets a head (-1 for one with no
    /// progress yet), so that the next read starts there.
    pub(super) async fn progress(
        &mut self,
        db: &Database,
        keys: Option<&[String]>,
    ) -> Result<BTreeMap<String, ProgressRow>, ClickHouseError> {
        let heads = self.heads(db, keys).await?;
        // On a cluster, the batches behind these heads (and any newer) may
        // have been committed through another replica: fetch them first.
        // Heads are read before, so that every head's batch is among them.
        db.sync_replicas(&["dedup_id_sets", "usage_deltas"]).await?;
        let mut from: BTreeMap<String, Option<i64>> = heads
            .iter()
            .map(|(k, h)| (k.clone(), Some(h.next_offset)))
            .collect();
        for k in keys.unwrap_or_default() {
            from.entry(k.clone()).or_insert(None);
        }
        let found = self.read(db, &from).await?;
        for (k, h) in &heads {
            if h.next_offset >= 0 && !found.contains_key(k) {
                return Err(ClickHouseError::Config(format!(
                    "ledger_heads says {k} was committed up to offset {}, but usage_deltas has no \
                     such progress row: the ledger was changed outside tokentally",
                    h.next_offset
                )));
            }
        }
        let mut update = Vec::new();
        for k in from.keys() {
            let head = heads.get(k).map(|h| h.next_offset);
            match found.get(k) {
                Some(p) if head.is_none_or(|h| p.next_offset > h) => update.push(HeadRow {
                    source: k.clone(),
                    next_offset: p.next_offset,
                    watermark_ms: p.watermark_ms,
                    at: p.committed_at,
                }),
                None if head.is_none() => update.push(HeadRow::none(k)),
                _ => {}
            }
        }
        db.insert_side_rows::<HeadRow>("ledger_heads", &update)
            .await?;
        self.headed.extend(from.into_keys());
        Ok(found)
    }

    /// Ids (bucket at or above `floor`) of the batches committed since
    /// `since` (server time), only of those that advanced `keys` when
    /// given. The commit-time rows read go back no further than the oldest
    /// id set still above the floor: bounded by the dedup horizon.
    pub(super) async fn load_ids(
        &self,
        db: &Database,
        floor: i64,
        since: u32,
        keys: Option<&[String]>,
    ) -> Result<Vec<(i64, u128)>, ClickHouseError> {
        let name = db.name();
        let oldest = db
            .fetch::<(u32, u64)>(format!(
                "SELECT toUInt32(min(at)), count() FROM {name}.dedup_id_sets WHERE bucket >= {floor}"
            ))
            .await?;
        let Some(&(oldest, sets)) = oldest.first() else {
            return Ok(Vec::new());
        };
        if sets == 0 {
            return Ok(Vec::new());
        }
        let from = oldest.saturating_sub(CLOCK_MARGIN_S).max(since).max(1);
        let filter = match keys {
            Some(keys) => format!(" AND source IN ({})", quote_all(keys)),
            None => String::new(),
        };
        let sql = format!(
            "SELECT bucket, ids_hi, ids_lo FROM {name}.dedup_id_sets WHERE bucket >= {floor} \
             AND batch_id IN (SELECT batch_id FROM {name}.usage_deltas WHERE {BY_TIME} \
             AND minute >= toDateTime({from}, 'UTC'){filter})"
        );
        let mut ids = Vec::new();
        for set in db.fetch::<LoadedIdSet>(sql).await? {
            let words = set.ids_hi.iter().zip(&set.ids_lo);
            ids.extend(
                words.map(|(hi, lo)| (set.bucket, (u128::from(*hi) << 64) | u128::from(*lo))),
            );
        }
        Ok(ids)
    }

    /// Stop if another aggregator advanced a partition this batch covers.
    pub(super) async fn check_fence(
        &self,
        db: &Database,
        outcome: &BatchOutcome,
    ) -> Result<(), ClickHouseError> {
        // Read each chain from where this aggregator left it.
        let from: BTreeMap<String, Option<i64>> = outcome
            .progress
            .keys()
            .filter_map(|k| Some((k.clone(), *self.known.get(k)?)))
            .collect();
        let ledger = self.read(db, &from).await?;
        for key in from.into_keys() {
            let expected = self.known.get(&key).copied().flatten();
            let found = ledger.get(&key).map(|p| p.next_offset);
            if found != expected {
                return Err(ClickHouseError::Fenced {
                    source_key: key,
                    expected,
                    found,
                });
            }
        }
        Ok(())
    }

    /// Whether batch `batch_id`, cut at `stamp`, is in the ledger: a read
    /// of the commit-time rows since then.
    pub(super) async fn batch_committed(
        &self,
        db: &Database,
        batch_id: &str,
        stamp: u32,
    ) -> Result<bool, ClickHouseError> {
        let from = stamp.saturating_sub(CLOCK_MARGIN_S);
        let sql = format!(
            "SELECT count() FROM {}.usage_deltas WHERE {BY_TIME} \
             AND minute >= toDateTime({from}, 'UTC') AND batch_id = {}",
            db.name(),
            quote(batch_id)
        );
        Ok(db.fetch::<u64>(sql).await?.first().copied().unwrap_or(0) > 0)
    }

    /// Resumed from `progress` at startup: it is where every source stands.
    pub(super) fn resume(&mut self, progress: &BTreeMap<String, i64>) {
        self.known = progress
            .iter()
            .map(|(k, v)| (k.clone(), Some(*v)))
            .collect();
    }

    /// Resumed `keys` after a rebalance, each where `progress` has it (or
    /// with no ledger entry yet).
    pub(super) fn resume_partitions(&mut self, keys: &[String], progress: &BTreeMap<String, i64>) {
        for key in keys {
            self.known.insert(key.clone(), progress.get(key).copied());
        }
    }

    /// Heads (-1: nothing committed yet) for the sources of `outcome` that
    /// have none, so that every source in the ledger has one. Written with
    /// the batch's side rows, then [`Self::headed`].
    pub(super) fn new_heads(&self, outcome: &BatchOutcome) -> Vec<HeadRow> {
        outcome
            .progress
            .keys()
            .filter(|k| !self.headed.contains(*k))
            .map(|k| HeadRow::none(k))
            .collect()
    }

    /// `heads` were written.
    pub(super) fn headed(&mut self, heads: Vec<HeadRow>) {
        self.headed.extend(heads.into_iter().map(|h| h.source));
    }

    /// `outcome`'s batch is in the ledger, committed at `at`: its positions
    /// are this aggregator's, and heads to write.
    pub(super) fn committed(&mut self, outcome: &BatchOutcome, at: u32) {
        for (k, v) in &outcome.progress {
            self.known.insert(k.clone(), Some(*v));
            self.pending_heads.insert(
                k.clone(),
                HeadRow {
                    source: k.clone(),
                    next_offset: *v,
                    watermark_ms: outcome.watermark_ms.unwrap_or(0),
                    at,
                },
            );
        }
    }

    /// Write the committed positions not yet in `ledger_heads`.
    pub(super) async fn write_heads(&mut self, db: &Database) -> Result<(), ClickHouseError> {
        let rows: Vec<HeadRow> = std::mem::take(&mut self.pending_heads)
            .into_values()
            .collect();
        db.insert_side_rows::<HeadRow>("ledger_heads", &rows)
            .await?;
        self.heads_written = Instant::now();
        Ok(())
    }

    /// [`Self::write_heads`], when it was last done long enough ago.
    pub(super) async fn write_heads_if_due(
        &mut self,
        db: &Database,
    ) -> Result<(), ClickHouseError> {
        if self.heads_written.elapsed() >= HEADS_EVERY {
            self.write_heads(db).await?;
        }
        Ok(())
    }
}
