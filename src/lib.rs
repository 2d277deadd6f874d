//! The library half of the `tokentally` binary: its configuration, which
//! the fuzz targets (`fuzz/`) load the way the binary does, its
//! Prometheus metrics, which the integration tests list, and the rankings
//! page of `tokentally serve` and `demo --serve`.

pub mod config;
pub mod metrics;
pub mod serve;
