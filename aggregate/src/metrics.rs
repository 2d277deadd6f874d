//! Prometheus metrics of the aggregation core.

use prometheus::{
    Gauge, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
    register_gauge_with_registry, register_histogram_with_registry,
    register_int_counter_vec_with_registry, register_int_counter_with_registry,
    register_int_gauge_vec_with_registry, register_int_gauge_with_registry,
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
            events_received: register_int_counter_with_registry!(
                "tokentally_events_received_total",
                "Input records read from the source (valid or not, duplicates included).",
                registry
            )?,
            events_accepted: register_int_counter_with_registry!(
                "tokentally_events_accepted_total",
                "Valid, first-seen events counted in the roll-ups.",
                registry
            )?,
            events_rejected: register_int_counter_vec_with_registry!(
                "tokentally_events_rejected_total",
                "Invalid records sent to the dead-letter destination, by reason.",
                &["reason"],
                registry
            )?,
            duplicates: register_int_counter_with_registry!(
                "tokentally_duplicates_dropped_total",
                "Valid events dropped because their event_id was already counted.",
                registry
            )?,
            late_events: register_int_counter_with_registry!(
                "tokentally_late_events_total",
                "Events older than the watermark by more than the allowed lateness (counted, never dropped).",
                registry
            )?,
            dedup_ids: register_int_gauge_with_registry!(
                "tokentally_dedup_ids",
                "Event ids currently remembered for dedup.",
                registry
            )?,
            dedup_effective_horizon: register_gauge_with_registry!(
                "tokentally_dedup_effective_horizon_seconds",
                "How far behind the watermark event ids are still remembered: the configured \
                 dedup horizon, or less once max_ids forced the oldest hours out (retries \
                 older than this count again).",
                registry
            )?,
            batch_events: register_histogram_with_registry!(
                "tokentally_batch_events",
                "Records per micro-batch.",
                prometheus::exponential_buckets(16.0, 4.0, 9)?,
                registry
            )?,
            commit_seconds: register_histogram_with_registry!(
                "tokentally_commit_seconds",
                "Time to commit one micro-batch to the sink.",
                prometheus::exponential_buckets(0.001, 2.5, 12)?,
                registry
            )?,
            last_commit: register_gauge_with_registry!(
                "tokentally_last_commit_timestamp_seconds",
                "Unix time of the last micro-batch committed to the sink.",
                registry
            )?,
            consumer_lag: register_int_gauge_vec_with_registry!(
                "tokentally_consumer_lag_messages",
                "Messages between the consumer's position and the end of the partition.",
                &["topic", "partition"],
                registry
            )?,
        };
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
