use arrow::error::ArrowError;
use datafusion::error::DataFusionError;

use crate::source::BoxError;

/// Errors of the aggregation pipeline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading from the source failed: {0}")]
    Source(#[source] BoxError),
    #[error("the sink failed: {0}")]
    Sink(#[source] BoxError),
    #[error("recovering state from the sink failed: {0}")]
    Recover(#[source] BoxError),
    #[error("roll-up query failed: {0}")]
    DataFusion(#[from] DataFusionError),
    #[error("building an Arrow batch failed: {0}")]
    Arrow(#[from] ArrowError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
