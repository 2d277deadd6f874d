//! The pure aggregation core: raw records in, validated + deduplicated
//! roll-up deltas out. No I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokentally_schemas::arrow::EventBatchBuilder;
use tokentally_schemas::{Limits, RejectReason, Rejection, decode};

use crate::dedup::{DedupConfig, DedupIndex, Seen, bucket_of, id_hash};
use crate::error::Result;
use crate::metrics::PipelineMetrics;
use crate::rollup::{RollupDeltas, RollupEngine};
use crate::sink::Recovered;
use crate::source::RawBatch;

/// Aggregation settings (`[aggregate]` and `[dedup]` in the config file).
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
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            limits: Limits::default(),
            dedup: DedupConfig::default(),
            allowed_lateness: Duration::from_secs(300),
            partitions: 1,
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
}

/// Decodes, validates, dedups and rolls up micro-batches.
pub struct Aggregator {
    config: AggregatorConfig,
    dedup: DedupIndex,
    engine: RollupEngine,
    watermark_ms: Option<i64>,
    metrics: Option<PipelineMetrics>,
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
            dedup,
            watermark_ms: recovered.watermark_ms,
            metrics: None,
            config,
        }
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
    /// caller must commit the outcome to a sink before processing more, or
    /// rebuild the aggregator from the sink if the commit fails.
    pub async fn process(&mut self, raw: &RawBatch) -> Result<BatchOutcome> {
        let mut stats = BatchStats::default();
        let mut builder = EventBatchBuilder::with_capacity(raw.len());
        let mut dead_letters = Vec::new();
        let mut new_ids = Vec::with_capacity(raw.len());
        let lateness = self.config.allowed_lateness.as_millis() as i64;
        let mut wm = self.watermark_ms;
        for (index, record) in raw.iter().enumerate() {
            stats.records += 1;
            let ev = match decode(record, &self.config.limits) {
                Ok(ev) => ev,
                Err(rejection) => {
                    *stats.rejected.entry(rejection.reason).or_default() += 1;
                    dead_letters.push(DeadLetter {
                        index,
                        raw: record.to_vec(),
                        rejection,
                    });
                    continue;
                }
            };
            // Ids are remembered from the watermark at arrival (see dedup).
            let arrival_wm = wm.map_or(ev.ts, |w| w.max(ev.ts));
            let bucket = bucket_of(arrival_wm);
            let id = id_hash(&ev.event_id);
            if self.dedup.observe(bucket, id) == Seen::Duplicate {
                stats.duplicates += 1;
                continue;
            }
            new_ids.push((bucket, id));
            if let Some(w) = wm
                && ev.ts < w.saturating_sub(lateness)
            {
                stats.late += 1;
            }
            wm = Some(arrival_wm);
            stats.accepted += 1;
            stats.tokens += ev.total_tokens();
            builder.append(&ev);
        }
        let deltas = self.engine.deltas(builder.finish()?).await?;
        self.watermark_ms = wm;
        if let Some(w) = wm {
            self.dedup.advance(w);
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
        })
    }
}
