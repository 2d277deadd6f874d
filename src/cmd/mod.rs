pub mod aggregate;
pub mod alerts;
mod clickhouse_args;
pub mod demo;
pub mod gateway;
pub mod ingest;
mod kafka_args;
mod metrics;
pub mod migrate;
pub mod prices;
pub mod produce;
pub mod query;
pub mod serve;
pub mod simulate;
pub mod store;
mod summary;
pub mod topics;

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
