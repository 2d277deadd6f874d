//! The ClickHouse sink: exact totals for dashboards and analysts.
//!
//! Exactly-once, on any server version: each micro-batch is committed by
//! ONE INSERT into `usage_deltas` holding its roll-up deltas, its reject
//! counts and one progress row per source partition it advanced (tagged
//! with a random batch id). The table has no partition key and the insert
//! is far below `max_insert_block_size`, so it becomes one part: the batch
//! is visible in whole or not at all. On assignment the aggregator resumes
//! from this ledger, not from Kafka's committed offsets.
//!
//! Dedup ids and raw dead letters go to their own tables first, tagged with
//! the batch id; only rows whose batch id is in the ledger count, so a crash
//! between the inserts leaves nothing half-done.
//!
//! A retried insert never doubles a batch: before retrying, the sink looks
//! its batch id up in the ledger (and modern servers also drop the repeat
//! by `insert_deduplication_token`). An aggregator writes through a table
//! of its own, which the next owner of a partition it never released drops
//! before reading the ledger ([`fence`]): a zombie (paused, cut off, or
//! replaced under its instance id) cannot add a batch after a takeover.
//! Before each commit the sink also checks that the ledger still ends where
//! this aggregator left each partition, which stops a zombie early and
//! with a clear message.
//!
//! The components, one file each:
//! - `config.rs`: [`ClickHouseConfig`] (`[clickhouse]`), the client it
//!   builds and the password it reads.
//! - `error.rs`: [`ClickHouseError`], which errors are retried, and
//!   [`with_retries`] and the request timeout every request goes through.
//! - `metrics.rs`: [`SinkMetrics`].
//! - `database.rs`: queries, statements and inserts into tokentally's
//!   database, timed and retried.
//! - `ledger.rs`: reads of the progress ledger (committed progress, the
//!   ids of committed batches, whether a batch landed, the fence check) and
//!   writes of its heads.
//! - `sink.rs`: [`ClickHouseSink`], the [`UsageSink`] that commits batches
//!   and recovers from the ledger.
//! - [`rows`]: a batch's rows as inserted (roll-up deltas from Arrow, ids,
//!   dead letters, progress).
//! - [`schema`]: the versioned DDL and `migrate`.
//! - [`fence`]: the writer tables that fence zombies out.
//! - [`prices`]: price tables stored and read (`tokentally prices`).
//!
//! [`UsageSink`]: tokentally_aggregate::sink::UsageSink

mod config;
mod database;
mod error;
pub mod fence;
mod ledger;
mod metrics;
pub mod prices;
pub mod rows;
pub mod schema;
mod sink;

pub use self::config::ClickHouseConfig;
pub use self::error::{ClickHouseError, cannot_reach, with_retries};
pub use self::metrics::SinkMetrics;
pub use self::schema::{MigrationReport, ServerInfo, migrate};
pub use self::sink::ClickHouseSink;
