//! The pure aggregation core: raw records in, validated + deduplicated
//! roll-up deltas out. No I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokentally_schemas::arrow::{Chunk, EventBatchBuilder};
use tokentally_schemas::{DEAD_LETTER_RAW_BYTES, Limits, RejectReason, Rejection, decode};

use crate::dedup::{DedupConfig, DedupIndex, Seen, bucket_of, id_hash};
use crate::error::Result;
use crate::metrics::PipelineMetrics;
use crate::rollup::{RollupDeltas, RollupEngine};
use crate::sink::Recovered;
use crate::source::RawBatch;

/// Aggregation settings (`[aggregate]` and `[aggregate.dedup]` in the config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AggregatorConfig {
    /// Validation bounds.
    pub limits: Limits,
    /// Dedup horizon and memory bound.
    pub dedup: DedupConfig,
    /// Events older than the watermark by more than this are counted as
    /// late (in a metric). They are never dropped. Default 5m.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// DataFusion partitions per roll-up query. Default 1.
    pub partitions: usize,
    /// Threads that decode and validate a micro-batch and write the Arrow
    /// columns of its events (records are independent; dedup and roll-up
    /// stay in order on one thread). Batches under 8,192 records use one.
    /// Default: the number of cores, at most 4.
    pub decode_threads: usize,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            limits: Limits::default(),
            dedup: DedupConfig::default(),
            allowed_lateness: Duration::from_secs(300),
            partitions: 1,
            decode_threads: std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
        }
    }
}

/// A refused record, bound for the dead-letter destination.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Position of the record in its micro-batch.
    pub index: usize,
    pub raw: Vec<u8>,
    pub rejection: Rejection,
}

/// Counts for one micro-batch (or, summed, a whole run).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BatchStats {
    /// Records read, whatever their fate.
    pub records: u64,
    /// Valid, first-seen events counted in the roll-ups.
    pub accepted: u64,
    /// Valid events dropped as already counted.
    pub duplicates: u64,
    /// Refused records by reason.
    pub rejected: BTreeMap<RejectReason, u64>,
    /// Accepted events later than the allowed lateness.
    pub late: u64,
    /// Sum of `total_tokens` over accepted events.
    pub tokens: u64,
}

impl BatchStats {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    pub fn add(&mut self, other: &BatchStats) {
        self.records += other.records;
        self.accepted += other.accepted;
        self.duplicates += other.duplicates;
        for (r, n) in &other.rejected {
            *self.rejected.entry(*r).or_default() += n;
        }
        self.late += other.late;
        self.tokens += other.tokens;
    }
}

/// Everything one micro-batch produced; a sink commits it atomically.
#[derive(Debug, Clone)]
pub struct BatchOutcome {
    pub deltas: RollupDeltas,
    pub dead_letters: Vec<DeadLetter>,
    /// Ids remembered by this batch, as (hour bucket, id hash).
    pub new_ids: Vec<(i64, u128)>,
    /// Ids in hour buckets below this are no longer needed for dedup; a
    /// sink may forget them.
    pub dedup_floor: i64,
    pub stats: BatchStats,
    /// Newest event time seen up to and including this batch.
    pub watermark_ms: Option<i64>,
    /// Source progress this batch completes.
    pub progress: BTreeMap<String, i64>,
    /// Where the batch's range of each source partition starts (see
    /// [`RawBatch::starts`]).
    pub starts: BTreeMap<String, i64>,
}

/// Decodes, validates, dedups and rolls up micro-batches.
pub struct Aggregator {
    config: AggregatorConfig,
    dedup: DedupIndex,
    engine: RollupEngine,
    builder: EventBatchBuilder,
    /// What each decode thread found besides rows, kept from batch to batch
    /// (the vectors are reused).
    decoded: Vec<Decoded>,
    watermark_ms: Option<i64>,
    metrics: Option<PipelineMetrics>,
    /// Whether the dedup index holds less than its horizon (warned once
    /// per time it falls short).
    horizon_short: bool,
}

/// What decoding one chunk of a batch gives besides its rows: the id hash
/// and event time of each row, and the records refused.
#[derive(Default)]
struct Decoded {
    ids: Vec<u128>,
    ts: Vec<i64>,
    /// (index in the batch, why).
    rejected: Vec<(usize, Rejection)>,
}

impl Aggregator {
    /// Start from what the sink recovered (an empty [`Recovered`] for a
    /// fresh start).
    pub fn new(config: AggregatorConfig, recovered: &Recovered) -> Self {
        let mut dedup = DedupIndex::new(config.dedup);
        if let Some(wm) = recovered.watermark_ms {
            dedup.advance(wm);
        }
        dedup.restore(recovered.dedup_ids.iter().copied());
        if let Some(wm) = recovered.watermark_ms {
            dedup.advance(wm);
        }
        Aggregator {
            engine: RollupEngine::new(config.partitions),
            builder: EventBatchBuilder::default(),
            decoded: Vec::new(),
            dedup,
            watermark_ms: recovered.watermark_ms,
            metrics: None,
            horizon_short: false,
            config,
        }
    }

    /// Export the dedup index's effective horizon, and warn when it falls
    /// below the configured one: `max_ids` is too small for the rate, and
    /// retries older than the effective horizon count again.
    fn check_horizon(&mut self, watermark_ms: i64) {
        let effective = self.dedup.effective_horizon(watermark_ms);
        if let Some(m) = &self.metrics {
            m.dedup_effective_horizon.set(effective.as_secs_f64());
        }
        let short = effective < self.dedup.horizon();
        if short && !self.horizon_short {
            tracing::warn!(
                effective_horizon_s = effective.as_secs(),
                horizon_s = self.dedup.horizon().as_secs(),
                ids = self.dedup.len(),
                "the dedup index holds less than its horizon: max_ids forced the oldest hours \
                 out, and a retry older than the effective horizon counts again; raise \
                 [aggregate.dedup] max_ids (docs/DEPLOYMENT.md has the sizes)"
            );
        }
        self.horizon_short = short;
    }

    /// Merge what the sink recovered for newly assigned partitions: their
    /// dedup ids, and a newer watermark if another aggregator saw one.
    pub fn restore(&mut self, recovered: &Recovered) {
        if let Some(wm) = recovered.watermark_ms
            && self.watermark_ms.is_none_or(|w| w < wm)
        {
            self.watermark_ms = Some(wm);
            self.dedup.advance(wm);
        }
        self.dedup.restore(recovered.dedup_ids.iter().copied());
    }

    pub fn with_metrics(mut self, metrics: PipelineMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn watermark_ms(&self) -> Option<i64> {
        self.watermark_ms
    }

    /// Ids currently remembered for dedup.
    pub fn dedup_len(&self) -> usize {
        self.dedup.len()
    }

    /// Process one micro-batch. The dedup state is updated in memory; the
    /// caller must commit the outcome to a sink before processing more, and
    /// rebuild the aggregator from the sink if the commit (or this) fails.
    pub async fn process(&mut self, raw: &RawBatch) -> Result<BatchOutcome> {
        let mut stats = BatchStats {
            records: raw.len() as u64,
            ..BatchStats::default()
        };
        let mut dead_letters = Vec::new();
        let mut new_ids = Vec::with_capacity(raw.len());
        let lateness = self.config.allowed_lateness.as_millis() as i64;
        let mut wm = self.watermark_ms;
        let records: Vec<&[u8]> = raw.iter().collect();
        let chunks = decode_all(
            &records,
            &self.config.limits,
            self.config.decode_threads,
            &self.builder,
            &mut self.decoded,
        );
        let warm = self.dedup.len() >= WARM_MIN_IDS;
        for (chunk, decoded) in chunks.into_iter().zip(&mut self.decoded) {
            for (index, rejection) in decoded.rejected.drain(..) {
                *stats.rejected.entry(rejection.reason).or_default() += 1;
                // A record refused for its size keeps only its head.
                let raw = records[index];
                let raw = match rejection.reason {
                    RejectReason::TooLarge => &raw[..raw.len().min(DEAD_LETTER_RAW_BYTES)],
                    _ => raw,
                };
                dead_letters.push(DeadLetter {
                    index,
                    raw: raw.to_vec(),
                    rejection,
                });
            }
            debug_assert_eq!(chunk.len(), decoded.ids.len(), "one id per row");
            let totals = chunk.total_tokens();
            // Rows to keep, once a duplicate has been found among them.
            let mut keep: Option<Vec<bool>> = None;
            for (row, (&id, &ts)) in decoded.ids.iter().zip(&decoded.ts).enumerate() {
                if warm && row % WARM_AHEAD == 0 {
                    let ahead = decoded.ids.iter().skip(row + WARM_AHEAD);
                    self.dedup.warm(ahead.take(WARM_AHEAD).copied());
                }
                // Ids are remembered from the watermark at arrival (see dedup).
                let arrival_wm = wm.map_or(ts, |w| w.max(ts));
                let bucket = bucket_of(arrival_wm);
                if self.dedup.observe(bucket, id) == Seen::Duplicate {
                    stats.duplicates += 1;
                    keep.get_or_insert_with(|| vec![true; totals.len()])[row] = false;
                    continue;
                }
                new_ids.push((bucket, id));
                if let Some(w) = wm
                    && ts < w.saturating_sub(lateness)
                {
                    stats.late += 1;
                }
                wm = Some(arrival_wm);
                stats.accepted += 1;
                stats.tokens += totals[row];
            }
            self.builder.add(chunk, keep.as_deref())?;
        }
        let deltas = self.engine.deltas(self.builder.finish()).await?;
        self.watermark_ms = wm;
        if let Some(w) = wm {
            self.dedup.advance(w);
            self.check_horizon(w);
        }
        if let Some(m) = &self.metrics {
            m.observe(&stats, self.dedup.len());
        }
        Ok(BatchOutcome {
            deltas,
            dead_letters,
            new_ids,
            dedup_floor: self.dedup.floor_bucket(),
            stats,
            watermark_ms: wm,
            progress: raw.progress.clone(),
            starts: raw.starts.clone(),
        })
    }
}

/// Every this many events, the dedup index is asked (read-only) about the
/// next this many ids: independent lookups overlap their cache misses into
/// a table of millions of ids, so the `observe` that follows finds its slot
/// in cache instead of waiting on memory once per id.
const WARM_AHEAD: usize = 16;

/// Warming pays only once the index outgrows the caches (half a million ids
/// is a ~25 MB table); below that the extra lookups cost more than the
/// misses they overlap (the core bench, whose index stays below 65,536
/// ids, ran at 1.85 M events/s warming always and 2.3 M without).
const WARM_MIN_IDS: usize = 1 << 19;

/// Batches smaller than this are decoded on the calling thread.
const PARALLEL_DECODE_MIN: usize = 8192;

/// Decode and validate every record, on up to `threads` threads, each
/// taking a consecutive chunk of the records: valid events become rows of
/// a chunk of `builder`'s batch, and their id hashes and times go into the
/// matching entry of `decoded` (which is grown to one per chunk). The
/// chunks come back in the records' order.
fn decode_all(
    records: &[&[u8]],
    limits: &Limits,
    threads: usize,
    builder: &EventBatchBuilder,
    decoded: &mut Vec<Decoded>,
) -> Vec<Chunk> {
    let threads = threads.clamp(1, records.len().div_ceil(PARALLEL_DECODE_MIN).max(1));
    let chunk_len = records.len().div_ceil(threads).max(1);
    let chunks = records.chunks(chunk_len);
    if decoded.len() < chunks.len() {
        decoded.resize_with(chunks.len(), Decoded::default);
    }
    let decode_chunk = |(n, (chunk, out)): (usize, (&[&[u8]], &mut Decoded))| {
        out.ids.clear();
        out.ts.clear();
        out.rejected.clear();
        let mut rows = builder.chunk(chunk.len());
        for (i, record) in chunk.iter().enumerate() {
            match decode(record, limits) {
                Ok(ev) => {
                    out.ids.push(id_hash(&ev.event_id));
                    out.ts.push(ev.ts);
                    rows.append(&ev);
                }
                Err(rejection) => out.rejected.push((n * chunk_len + i, rejection)),
            }
        }
        rows.finish()
    };
    let mut jobs = chunks.zip(decoded.iter_mut()).enumerate();
    let Some(first) = jobs.next() else {
        return Vec::new();
    };
    std::thread::scope(|scope| {
        let others: Vec<_> = jobs
            .map(|job| scope.spawn(move || decode_chunk(job)))
            .collect();
        let mut all = vec![decode_chunk(first)];
        all.extend(
            others
                .into_iter()
                .map(|h| h.join().expect("a decode thread panicked")),
        );
        all
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Registry;

    fn raw(lines: &[&str]) -> RawBatch {
        let mut b = RawBatch::default();
        for l in lines {
            b.push(l.as_bytes());
        }
        b
    }

    fn ev(id: &str, ts: i64) -> String {
        format!(
            r#"{{"event_id":"{id}","ts":{ts},"model":"m","provider":"p","prompt_tokens":3,"completion_tokens":4}}"#
        )
    }

    #[tokio::test]
    async fn decoding_on_several_threads_changes_nothing() {
        // Big enough for 3 threads, with rejects and duplicates spread over
        // every chunk (a duplicate's original in another chunk); then a
        // smaller batch of new events and the first batch again (only
        // duplicates and rejects), which decode into the vectors the
        // first batch left behind.
        let t = 1_795_737_600_000;
        let lines: Vec<String> = (0..30_000)
            .map(|i| match i % 7 {
                0 => format!("{{bad {i}"),
                1 => ev(&format!("e{}", i / 2), t + i),
                _ => ev(&format!("e{i}"), t + i * 1_000),
            })
            .collect();
        let more: Vec<String> = (0..10_000)
            .map(|i| ev(&format!("more{i}"), t + i))
            .collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let more: Vec<&str> = more.iter().map(String::as_str).collect();
        let batches = [raw(&refs), raw(&more), raw(&refs)];
        let run = |threads: usize| {
            let batches = batches.clone();
            async move {
                let config = AggregatorConfig {
                    decode_threads: threads,
                    ..AggregatorConfig::default()
                };
                let mut agg = Aggregator::new(config, &Recovered::default());
                let mut outcomes = Vec::new();
                for batch in &batches {
                    outcomes.push(agg.process(batch).await.unwrap());
                }
                outcomes
            }
        };
        let (one, three) = (run(1).await, run(3).await);
        let letters = |o: &BatchOutcome| -> Vec<(usize, RejectReason)> {
            o.dead_letters
                .iter()
                .map(|d| (d.index, d.rejection.reason))
                .collect()
        };
        assert!(one[0].stats.duplicates > 0 && one[0].stats.rejected_total() > 0);
        assert_eq!(one[1].stats.accepted, 10_000);
        assert_eq!(one[2].stats.accepted, 0);
        assert_eq!(
            one[2].stats.duplicates,
            one[0].stats.accepted + one[0].stats.duplicates
        );
        for (one, three) in one.iter().zip(&three) {
            assert_eq!(one.stats, three.stats);
            assert_eq!(one.new_ids, three.new_ids);
            assert_eq!(letters(one), letters(three));
            for rollup in crate::rollup::Rollup::ALL {
                assert_eq!(
                    one.deltas.get(rollup),
                    three.deltas.get(rollup),
                    "{rollup:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn stats_and_metrics_count_every_fate() {
        let registry = Registry::new();
        let metrics = PipelineMetrics::register(&registry).unwrap();
        let mut agg = Aggregator::new(AggregatorConfig::default(), &Recovered::default())
            .with_metrics(metrics.clone());
        let t = 1_795_737_600_000;
        let lines = [
            ev("a", t),
            ev("b", t + 3_600_000),
            ev("a", t + 5),         // duplicate
            ev("c", t + 60_000),    // 59 min behind the watermark: late
            ev("d", t + 3_400_000), // 200 s behind: within the 5 min lateness
            "{not json".to_string(),
        ];
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let out = agg.process(&raw(&refs)).await.unwrap();
        assert_eq!(out.stats.records, 6);
        assert_eq!(out.stats.accepted, 4);
        assert_eq!(out.stats.duplicates, 1);
        assert_eq!(out.stats.late, 1);
        assert_eq!(out.stats.tokens, 28);
        assert_eq!(out.stats.rejected[&RejectReason::InvalidJson], 1);
        assert_eq!(out.watermark_ms, Some(t + 3_600_000));
        assert_eq!(out.new_ids.len(), 4);

        assert_eq!(metrics.events_received.get(), 6);
        assert_eq!(metrics.events_accepted.get(), 4);
        assert_eq!(metrics.duplicates.get(), 1);
        assert_eq!(metrics.late_events.get(), 1);
        assert_eq!(metrics.dedup_ids.get(), 4);
        let invalid = metrics.events_rejected.with_label_values(&["invalid_json"]);
        assert_eq!(invalid.get(), 1);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(text.contains("tokentally_late_events_total 1"), "{text}");
    }
}
