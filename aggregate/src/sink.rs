//! The boundary between aggregation and storage.

use std::collections::BTreeMap;
use std::future::Future;

use crate::core::BatchOutcome;
use crate::source::BoxError;

/// What a sink remembers across restarts, handed back to the aggregator.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovered {
    /// The newest event time committed so far.
    pub watermark_ms: Option<i64>,
    /// Remembered event ids as (hour bucket, id hash), for dedup.
    pub dedup_ids: Vec<(i64, u128)>,
    /// Source progress committed with the data (partition key → next position).
    pub progress: BTreeMap<String, i64>,
}

/// Durable storage of roll-up deltas.
///
/// `commit` must be atomic: after a crash, either everything in the outcome
/// (deltas, dead letters, dedup ids, progress, watermark) is visible to
/// `recover` and to readers, or none of it is.
pub trait UsageSink {
    /// Everything committed so far: all progress, the watermark and the ids
    /// within the dedup horizon. Called once, at start.
    fn recover(&mut self) -> impl Future<Output = Result<Recovered, BoxError>> + Send;
    /// The committed progress of the given source partitions, read fresh
    /// (another aggregator may have advanced them), and the dedup ids of the
    /// batches that advanced them since `recover`. Called when a source is
    /// assigned partitions (a consumer-group rebalance).
    fn recover_partitions(
        &mut self,
        keys: &[String],
    ) -> impl Future<Output = Result<Recovered, BoxError>> + Send;
    fn commit(
        &mut self,
        outcome: &BatchOutcome,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;
    /// The source gave these partitions up cleanly: every batch of them it
    /// handed out is committed, and this aggregator will not write them
    /// again unless they are assigned to it anew (and recovered). A sink
    /// shared by several aggregators records it, so that the next owner
    /// does not fence this one (see `tokentally_sink::clickhouse::fence`).
    fn release(&mut self, _keys: &[String]) -> impl Future<Output = Result<(), BoxError>> + Send {
        async { Ok(()) }
    }
    /// The pipeline ended without error and will commit nothing more.
    fn close(&mut self) -> impl Future<Output = Result<(), BoxError>> + Send {
        async { Ok(()) }
    }
}
