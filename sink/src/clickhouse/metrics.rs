//! Prometheus metrics of the ClickHouse sink.

use prometheus::{
    GaugeVec, IntCounter, IntCounterVec, IntGauge, Registry, register_gauge_vec_with_registry,
    register_int_counter_vec_with_registry, register_int_counter_with_registry,
    register_int_gauge_with_registry,
};

/// Prometheus metrics of the ClickHouse sink.
#[derive(Clone)]
pub struct SinkMetrics {
    pub rows: IntCounterVec,
    pub errors: IntCounter,
    pub retries: IntCounter,
    pub recovery_seconds: GaugeVec,
    pub ledger_rows: IntGauge,
}

impl SinkMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        Ok(SinkMetrics {
            rows: register_int_counter_vec_with_registry!(
                "tokentally_sink_rows_total",
                "Rows inserted into ClickHouse, by table.",
                &["table"],
                registry
            )?,
            errors: register_int_counter_with_registry!(
                "tokentally_sink_errors_total",
                "ClickHouse requests that failed (retried or not).",
                registry
            )?,
            retries: register_int_counter_with_registry!(
                "tokentally_sink_retries_total",
                "ClickHouse requests retried after a retriable error.",
                registry
            )?,
            recovery_seconds: register_gauge_vec_with_registry!(
                "tokentally_sink_recovery_seconds",
                "How long the last recovery from the ClickHouse ledger took, by kind \
                 (startup, or partitions assigned by a rebalance).",
                &["kind"],
                registry
            )?,
            ledger_rows: register_int_gauge_with_registry!(
                "tokentally_sink_ledger_rows",
                "Rows in usage_deltas (deltas and ledger) when this aggregator started.",
                registry
            )?,
        })
    }
}
