//! The library half of the `tokentally` binary: its configuration, which
//! the fuzz targets (`fuzz/`) load the way the binary does, and its
//! Prometheus metrics, which the integration tests list.

pub mod config;
pub mod metrics;
