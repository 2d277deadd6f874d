//! Prometheus metrics of the ClickHouse sink.

/// Prometheus metrics of the ClickHouse sink.
#[derive(Clone)]
pub struct SinkMetrics {
    pub rows: prometheus::IntCounterVec,
    pub errors: prometheus::IntCounter,
    pub retries: prometheus::IntCounter,
    pub recovery_seconds: prometheus::GaugeVec,
    pub ledger_rows: prometheus::IntGauge,
}

impl SinkMetrics {
    pub fn register(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let m = SinkMetrics {
            rows: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "tokentally_sink_rows_total",
                    "Rows inserted into ClickHouse, by table.",
                ),
                &["table"],
            )?,
            errors: prometheus::IntCounter::new(
                "tokentally_sink_errors_total",
                "ClickHouse requests that failed (retried or not).",
            )?,
            retries: prometheus::IntCounter::new(
                "tokentally_sink_retries_total",
                "ClickHouse requests retried after a retriable error.",
            )?,
            recovery_seconds: prometheus::GaugeVec::new(
                prometheus::Opts::new(
                    "tokentally_sink_recovery_seconds",
                    "How long the last recovery from the ClickHouse ledger took, by kind \
                     (startup, or partitions assigned by a rebalance).",
                ),
                &["kind"],
            )?,
            ledger_rows: prometheus::IntGauge::new(
                "tokentally_sink_ledger_rows",
                "Rows in usage_deltas (deltas and ledger) when this aggregator started.",
            )?,
        };
        registry.register(Box::new(m.rows.clone()))?;
        registry.register(Box::new(m.errors.clone()))?;
        registry.register(Box::new(m.retries.clone()))?;
        registry.register(Box::new(m.recovery_seconds.clone()))?;
        registry.register(Box::new(m.ledger_rows.clone()))?;
        Ok(m)
    }
}
