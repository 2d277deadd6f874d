//! Aggregation: decode → validate → dedup → roll up, on DataFusion.
//!
//! - [`core`]: the pure per-micro-batch processing ([`Aggregator`]).
//! - [`dedup`]: exact `event_id` dedup within a bounded horizon.
//! - [`rollup`]: the roll-up SQL and the DataFusion engine running it.
//! - [`source`]: the [`source::EventSource`] trait and its backends.
//! - [`sink`]: the [`sink::UsageSink`] trait sinks implement.
//! - [`pipeline`]: the loop tying them together.

pub mod core;
pub mod dedup;
mod error;
pub mod metrics;
pub mod pipeline;
pub mod rollup;
pub mod sink;
pub mod source;

pub use crate::core::{Aggregator, AggregatorConfig, BatchOutcome, BatchStats, DeadLetter};
pub use error::{Error, Result};
