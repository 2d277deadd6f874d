//! Where roll-ups land.
//!
//! - [`embedded`]: the local store (Parquet deltas + manifest) and SQL over it.
//! - [`clickhouse`]: the ClickHouse sink, its exactly-once ledger, fencing and
//!   versioned schema.
//! - [`alerts`]: milestone rules over totals read from either sink, and their
//!   delivery as signed webhooks.
//! - [`milestones`]: pure milestone detection over running daily totals (the demo).

pub mod alerts;
pub mod clickhouse;
pub mod embedded;
pub mod milestones;

// Until every caller names tokentally_common directly.
pub use tokentally_common::files;
