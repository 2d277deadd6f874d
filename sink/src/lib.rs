//! Where roll-ups land.
//!
//! - [`embedded`]: the local store (Parquet deltas + manifest) and SQL over it.
//! - [`clickhouse`]: the ClickHouse sink, its exactly-once ledger, fencing and
//!   versioned schema.
//! - [`cost`]: the spend views' SQL, for both.
//!
//! Milestone alerts, which read their totals from either, are the
//! `tokentally-alerts` crate.

pub mod clickhouse;
pub mod cost;
pub mod embedded;
