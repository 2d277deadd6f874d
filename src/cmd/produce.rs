use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use tokentally_aggregate::source::EventSource;
use tokentally_aggregate::source::file::{FileSource, Input};
use tokentally_ingest::emitter::{EmitError, Emitter, PendingDelivery};
use tokentally_ingest::kafka::{KafkaConfig, event_key};

use super::kafka_args::{KafkaArgs, TOPIC_CHECK_TIMEOUT};
use tokentally::config::Config;

/// Most sends awaiting the broker's acknowledgement at once.
const IN_FLIGHT: usize = 50_000;

/// How much longer than the delivery timeout a line waits for room in a
/// full producer queue: every queued record is acknowledged or expired
/// within the delivery timeout (librdkafka looks for expired ones every
/// second), so by then the queue has room; still full, the producer is
/// stuck.
const QUEUE_FULL_GRACE: Duration = Duration::from_secs(5);

/// Send NDJSON lines to the events topic exactly as they are, without
/// validating them (invalid lines reach the aggregator's dead-letter path).
/// For replays, backfills and tests. Each line's `event_id`, when readable,
/// is its message key. Exits non-zero unless every line was acknowledged.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// NDJSON input file, or - for standard input.
    #[arg(long, value_name = "PATH")]
    pub file: PathBuf,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// Sends lines as they are through an [`Emitter`] with many deliveries in
/// flight, and reports whether Kafka acknowledged every one.
pub struct LineSender {
    emitter: Emitter,
    queue_full_wait: Duration,
    pending: VecDeque<PendingDelivery>,
    sent: u64,
    failed: u64,
    first_error: Option<EmitError>,
}

impl LineSender {
    /// A producer to `config.topic`, once the brokers answered that the
    /// topic exists: a wrong password, a refused certificate or a missing
    /// topic is one error at start, not a delivery timeout per line.
    pub fn new(config: &KafkaConfig) -> anyhow::Result<Self> {
        let connection = config.connection()?;
        let emitter = Emitter::new(config).context("creating the Kafka producer")?;
        emitter
            .check_topics(&[emitter.topic()], TOPIC_CHECK_TIMEOUT)
            .map_err(|e| anyhow::anyhow!("{e} (on {connection})"))?;
        Ok(LineSender {
            emitter,
            queue_full_wait: config.delivery_timeout + QUEUE_FULL_GRACE,
            pending: VecDeque::with_capacity(IN_FLIGHT),
            sent: 0,
            failed: 0,
            first_error: None,
        })
    }

    /// Lines handed to the producer so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    async fn settle_one(&mut self) {
        if let Some(delivery) = self.pending.pop_front()
            && let Err(e) = delivery.await
        {
            self.failed += 1;
            self.first_error.get_or_insert(e);
        }
    }

    /// Queue one line, keyed by its `event_id` when readable (waiting while
    /// the producer's queue is full, see [`Emitter::wait_for_room`]).
    pub async fn send(&mut self, line: &[u8]) -> anyhow::Result<()> {
        let key = event_key(line);
        let delivery = self
            .emitter
            .wait_for_room(self.queue_full_wait, |e| {
                e.enqueue_raw(line, key.as_deref(), &[])
            })
            .await
            .with_context(|| format!("producing to {} failed", self.emitter.topic()))?;
        self.pending.push_back(delivery);
        self.sent += 1;
        if self.pending.len() >= IN_FLIGHT {
            self.settle_one().await;
        }
        Ok(())
    }

    /// Wait for every acknowledgement; an error unless all lines were acknowledged.
    pub async fn finish(mut self) -> anyhow::Result<u64> {
        while !self.pending.is_empty() {
            self.settle_one().await;
        }
        self.emitter.flush(Duration::from_secs(30))?;
        if let Some(e) = self.first_error {
            anyhow::bail!(
                "{} of {} lines were not acknowledged by Kafka (first error: {e})",
                self.failed,
                self.sent,
            );
        }
        Ok(self.sent)
    }
}

pub async fn run(mut config: Config, args: ProduceArgs) -> anyhow::Result<()> {
    args.kafka.apply(&mut config);
    let mut out = LineSender::new(&config.kafka)?;
    let mut source = FileSource::open(Input::parse(&args.file), 8192)?;
    let started = Instant::now();
    while let Some(batch) = source.next_batch().await.map_err(|e| anyhow::anyhow!(e))? {
        for line in batch.iter() {
            out.send(line).await?;
        }
    }
    let topic = config.kafka.topic.clone();
    let sent = out.finish().await?;
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "produced {sent} lines to {topic} in {elapsed:.2}s ({:.0} lines/s)",
        sent as f64 / elapsed.max(1e-9)
    );
    Ok(())
}
