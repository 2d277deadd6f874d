//! The library half of the `tokentally` binary: its configuration, which
//! the fuzz targets (`fuzz/`) load the way the binary does.

pub mod config;
