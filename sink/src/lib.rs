//! Where roll-ups land.
//!
//! - [`embedded`]: the local store (Parquet deltas + manifest) and SQL over it.
//! - [`milestones`]: pure milestone detection over running daily totals.

pub mod alerts;
pub mod clickhouse;
pub mod embedded;
pub mod milestones;
