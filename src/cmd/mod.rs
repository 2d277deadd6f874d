pub mod aggregate;
pub mod demo;
pub mod ingest;
mod kafka_args;
pub mod produce;
pub mod query;
pub mod simulate;
pub mod topics;
