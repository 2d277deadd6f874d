//! Getting events in: the fleet simulator (load generator) and the model
//! catalog it draws from.

pub mod catalog;
pub mod simulator;

pub use simulator::{Fleet, FleetConfig};
