//! What `ingest` and `aggregate` print when they finish: the counts of the
//! run, and where the roll-ups went (`--json` for machines).

use std::time::Instant;

use serde::Serialize;
use tokentally_aggregate::BatchStats;

#[derive(Serialize)]
pub struct Summary<'a> {
    #[serde(flatten)]
    pub stats: &'a BatchStats,
    pub rejected_total: u64,
    pub elapsed_s: f64,
    pub events_per_s: f64,
    /// Where the roll-ups went: the store directory, or the ClickHouse
    /// server and database.
    pub sink: String,
    /// `ingest`: bytes of the input skipped because an earlier run
    /// committed them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_at_byte: Option<u64>,
    /// `aggregate`: records read again that an earlier run (or another
    /// member of the group) had committed, and so skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub already_committed: Option<u64>,
}

impl<'a> Summary<'a> {
    pub fn new(stats: &'a BatchStats, started: Instant, sink: impl std::fmt::Display) -> Self {
        let elapsed = started.elapsed().as_secs_f64();
        Summary {
            stats,
            rejected_total: stats.rejected_total(),
            elapsed_s: elapsed,
            events_per_s: stats.records as f64 / elapsed.max(1e-9),
            sink: sink.to_string(),
            resumed_at_byte: None,
            already_committed: None,
        }
    }
}
