//! The driver: source → aggregator → sink, one micro-batch at a time.

use crate::core::{Aggregator, AggregatorConfig, BatchOutcome, BatchStats};
use crate::error::{Error, Result};
use crate::metrics::PipelineMetrics;
use crate::sink::UsageSink;
use crate::source::EventSource;

/// Run until the source is exhausted. Each batch is committed to the sink
/// before the next is read; `on_commit` sees every committed outcome (for
/// progress displays and milestone checks).
pub async fn run<S, K>(
    source: &mut S,
    sink: &mut K,
    config: AggregatorConfig,
    metrics: Option<PipelineMetrics>,
    mut on_commit: impl FnMut(&BatchOutcome),
) -> Result<BatchStats>
where
    S: EventSource,
    K: UsageSink,
{
    let recovered = sink.recover().await.map_err(Error::Recover)?;
    source.resume(&recovered.progress).map_err(Error::Source)?;
    let mut aggregator = Aggregator::new(config, &recovered);
    if let Some(m) = &metrics {
        aggregator = aggregator.with_metrics(m.clone());
    }
    let mut totals = BatchStats::default();
    while let Some(raw) = source.next_batch().await.map_err(Error::Source)? {
        if !raw.is_empty() {
            let outcome = aggregator.process(&raw).await?;
            let started = std::time::Instant::now();
            sink.commit(&outcome).await.map_err(Error::Sink)?;
            if let Some(m) = &metrics {
                m.commit_seconds.observe(started.elapsed().as_secs_f64());
                m.last_commit.set(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64()),
                );
            }
            source
                .acknowledge(&outcome.progress)
                .map_err(Error::Source)?;
            totals.add(&outcome.stats);
            on_commit(&outcome);
        }
        if !raw.needs_resume.is_empty() {
            let recovered = sink
                .recover_partitions(&raw.needs_resume)
                .await
                .map_err(Error::Recover)?;
            aggregator.restore(&recovered);
            source.resume(&recovered.progress).map_err(Error::Source)?;
        }
        source.recycle(raw);
    }
    Ok(totals)
}
