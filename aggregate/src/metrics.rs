//! Prometheus metrics of the aggregation core.

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use tokentally_schemas::RejectReason;

use crate::core::BatchStats;

/// Counters and histograms updated once per micro-batch.
#[derive(Clone)]
pub struct PipelineMetrics {
    pub events_received: IntCounter,
    pub events_accepted: IntCounter,
    pub events_rejected: IntCounterVec,
    pub duplicates: IntCounter,
    pub late_events: IntCounter,
    pub dedup_ids: IntGauge,
    /// How far behind the watermark ids are remembered (below the
    /// configured horizon once `max_ids` evicts).
    pub dedup_effective_horizon: Gauge,
    pub batch_events: Histogram,
    /// Time to commit one batch to the sink (flush latency).
    pub commit_seconds: Histogram,
    /// Unix time of the last committed batch.
    pub last_commit: Gauge,
    /// Messages behind the end of each partition (Kafka sources).
    pub consumer_lag: IntGaugeVec,
}

impl PipelineMetrics {
    /// Create the metrics and register them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = PipelineMetrics {
            events_received: IntCounter::new(
                "tokentally_events_received_total",
                "Input records read from the source (valid or not, duplicates included).",
            )?,
            events_accepted: IntCounter::new(
                "tokentally_events_accepted_total",
                "Valid, first-seen events counted in the roll-ups.",
            )?,
            events_rejected: IntCounterVec::new(
                Opts::new(
                    "tokentally_events_rejected_total",
                    "Invalid records sent to the dead-letter destination, by reason.",
                ),
                &["reason"],
            )?,
            duplicates: IntCounter::new(
                "tokentally_duplicates_dropped_total",
                "Valid events dropped because their event_id was already counted.",
            )?,
            late_events: IntCounter::new(
                "tokentally_late_events_total",
                "Events older than the watermark by more than the allowed lateness (counted, never dropped).",
            )?,
            dedup_ids: IntGauge::new(
                "tokentally_dedup_ids",
                "Event ids currently remembered for dedup.",
            )?,
            dedup_effective_horizon: Gauge::new(
                "tokentally_dedup_effective_horizon_seconds",
                "How far behind the watermark event ids are still remembered: the configured \
                 dedup horizon, or less once max_ids forced the oldest hours out (retries \
                 older than this count again).",
            )?,
            batch_events: Histogram::with_opts(
                HistogramOpts::new("tokentally_batch_events", "Records per micro-batch.")
                    .buckets(prometheus::exponential_buckets(16.0, 4.0, 9)?),
            )?,
            commit_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "tokentally_commit_seconds",
                    "Time to commit one micro-batch to the sink.",
                )
                .buckets(prometheus::exponential_buckets(0.001, 2.5, 12)?),
            )?,
            last_commit: Gauge::new(
                "tokentally_last_commit_timestamp_seconds",
                "Unix time of the last micro-batch committed to the sink.",
            )?,
            consumer_lag: IntGaugeVec::new(
                Opts::new(
                    "tokentally_consumer_lag_messages",
                    "Messages between the consumer's position and the end of the partition.",
                ),
                &["topic", "partition"],
            )?,
        };
        registry.register(Box::new(m.events_received.clone()))?;
        registry.register(Box::new(m.events_accepted.clone()))?;
        registry.register(Box::new(m.events_rejected.clone()))?;
        registry.register(Box::new(m.duplicates.clone()))?;
        registry.register(Box::new(m.late_events.clone()))?;
        registry.register(Box::new(m.dedup_ids.clone()))?;
        registry.register(Box::new(m.dedup_effective_horizon.clone()))?;
        registry.register(Box::new(m.batch_events.clone()))?;
        registry.register(Box::new(m.commit_seconds.clone()))?;
        registry.register(Box::new(m.last_commit.clone()))?;
        registry.register(Box::new(m.consumer_lag.clone()))?;
        for r in RejectReason::ALL {
            m.events_rejected.with_label_values(&[r.as_str()]);
        }
        Ok(m)
    }

    pub(crate) fn observe(&self, stats: &BatchStats, dedup_ids: usize) {
        self.events_received.inc_by(stats.records);
        self.events_accepted.inc_by(stats.accepted);
        for (reason, n) in &stats.rejected {
            self.events_rejected
                .with_label_values(&[reason.as_str()])
                .inc_by(*n);
        }
        self.duplicates.inc_by(stats.duplicates);
        self.late_events.inc_by(stats.late);
        self.dedup_ids.set(dedup_ids as i64);
        self.batch_events.observe(stats.records as f64);
    }
}
