pub mod demo;
pub mod ingest;
pub mod query;
pub mod simulate;
