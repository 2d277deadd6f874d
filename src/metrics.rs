//! The Prometheus metrics of the long-running commands (`aggregate`,
//! `gateway`, `alerts run`, `simulate --kafka`): the registry each serves
//! on `--metrics-addr`, the one metric `simulate` registers itself, and
//! all of them in one registry, to list what tokentally exports (the
//! integration tests check the dashboards and alert rules against it).

use prometheus::{IntCounter, Registry};
use tokentally_aggregate::metrics::PipelineMetrics;
use tokentally_alerts::AlertMetrics;
use tokentally_ingest::gateway::GatewayMetrics;
use tokentally_sink::clickhouse::SinkMetrics;

/// A registry with the process metrics (`process_resident_memory_bytes`,
/// CPU, open files).
pub fn registry() -> Registry {
    let registry = Registry::new();
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("the process collector registers once");
    registry
}

/// `simulate --kafka`'s count of the events it handed to the producer,
/// registered in `registry`.
pub fn register_simulate(registry: &Registry) -> prometheus::Result<IntCounter> {
    prometheus::register_int_counter_with_registry!(
        "tokentally_simulate_events_produced_total",
        "Simulated events handed to the Kafka producer.",
        registry
    )
}

/// Every metric a command exports, in one [`registry`], each registered by
/// the function its command calls. A labelled family has no series until a
/// label value is used, and `gather()` leaves such families out; so each
/// family that its register function does not already start at zero gets
/// one series here, with empty label values, and `gather()` names them all.
pub fn every_metric() -> prometheus::Result<Registry> {
    let registry = registry();
    let pipeline = PipelineMetrics::register(&registry)?;
    let sink = SinkMetrics::register(&registry)?;
    let gateway = GatewayMetrics::register(&registry)?;
    let alerts = AlertMetrics::register(&registry)?;
    register_simulate(&registry)?;
    pipeline.consumer_lag.with_label_values(&["", ""]);
    sink.rows.with_label_values(&[""]);
    sink.recovery_seconds.with_label_values(&[""]);
    gateway.requests.with_label_values(&[""]);
    alerts.milestones.with_label_values(&[""]);
    Ok(registry)
}
