//! Where roll-ups land.
//!
//! - [`embedded`]: the local store (Parquet deltas + manifest) and SQL over it.
//! - [`files`]: atomic replacement and bounded reads of local state files.
//! - [`milestones`]: pure milestone detection over running daily totals.

pub mod alerts;
pub mod clickhouse;
pub mod embedded;
pub mod files;
pub mod milestones;
