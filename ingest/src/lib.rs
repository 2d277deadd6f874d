//! Getting events in: the fleet simulator (load generator), the model
//! catalog it draws from, and the Kafka producer side: the [`emitter`]
//! library that inference nodes embed, and the HTTP ingest [`gateway`] for
//! nodes that cannot embed a Kafka client, which also takes OpenTelemetry
//! traces ([`otlp`]: GenAI spans as events).

pub mod catalog;
pub mod emitter;
pub mod gateway;
pub mod kafka;
pub mod otlp;
pub mod simulator;

pub use simulator::{Fleet, FleetConfig};
