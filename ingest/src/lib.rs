//! Getting events in: the fleet simulator (load generator), the model
//! catalog it draws from, and the Kafka producer side.

pub mod catalog;
pub mod kafka;
pub mod simulator;

pub use simulator::{Fleet, FleetConfig};
