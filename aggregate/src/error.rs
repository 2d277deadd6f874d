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
    #[error(
        "stopped with a batch still being committed after {0:?}; it may yet land, so the \
         process must exit without leaving the consumer group (the partitions move after the \
         session timeout)"
    )]
    Abandoned(std::time::Duration),
    #[error("building an Arrow batch failed: {0}")]
    Arrow(#[from] ArrowError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
