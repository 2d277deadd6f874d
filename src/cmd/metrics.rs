//! `--metrics-addr`: Prometheus metrics of a long-running command, served on
//! `http://ADDR/metrics` in the text exposition format.

use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Args;
use prometheus::{Encoder, Registry, TextEncoder};

#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics on http://ADDR/metrics (e.g. 0.0.0.0:9102);
    /// off unless given.
    #[arg(long, env = "TOKENTALLY_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

impl MetricsArgs {
    /// Bind and serve `registry` in the background (if an address is set).
    pub async fn serve(&self, registry: &Registry) -> anyhow::Result<()> {
        let Some(addr) = self.metrics_addr else {
            return Ok(());
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics address {addr}"))?;
        let bound = listener.local_addr()?;
        let registry = registry.clone();
        let app = Router::new().route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move { exposition(&registry) }
            }),
        );
        eprintln!("metrics on http://{bound}/metrics");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "metrics server stopped");
            }
        });
        Ok(())
    }
}

/// The registry in Prometheus' text format.
fn exposition(registry: &Registry) -> Response {
    let encoder = TextEncoder::new();
    let mut out = Vec::new();
    match encoder.encode(&registry.gather(), &mut out) {
        Ok(()) => (
            [(header::CONTENT_TYPE, encoder.format_type().to_string())],
            out,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
