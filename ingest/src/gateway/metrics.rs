//! Prometheus metrics of the gateway.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

/// Prometheus metrics of the gateway.
#[derive(Clone)]
pub struct GatewayMetrics {
    pub requests: prometheus::IntCounterVec,
    pub events: prometheus::IntCounterVec,
    pub connections_open: prometheus::IntGauge,
    pub connections_refused: prometheus::IntCounter,
}

impl GatewayMetrics {
    pub fn register(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let m = GatewayMetrics {
            requests: prometheus::register_int_counter_vec_with_registry!(
                "tokentally_gateway_requests_total",
                "HTTP requests answered, by status code.",
                &["status"],
                registry
            )?,
            events: prometheus::register_int_counter_vec_with_registry!(
                "tokentally_gateway_events_total",
                "Events and spans in answered requests: accepted (acknowledged by Kafka), rejected (invalid), or skipped (spans without GenAI usage).",
                &["outcome"],
                registry
            )?,
            connections_open: prometheus::register_int_gauge_with_registry!(
                "tokentally_gateway_connections_open",
                "HTTP connections being served.",
                registry
            )?,
            connections_refused: prometheus::register_int_counter_with_registry!(
                "tokentally_gateway_connections_refused_total",
                "Connections closed on arrival because max_connections were being served.",
                registry
            )?,
        };
        for outcome in ["accepted", "rejected", "skipped"] {
            m.events.with_label_values(&[outcome]);
        }
        Ok(m)
    }
}

/// Counts every answer by its status code.
pub(super) async fn count_status(
    State(m): State<GatewayMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    m.requests
        .with_label_values(&[response.status().as_str()])
        .inc();
    response
}
