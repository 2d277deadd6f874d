use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokentally_aggregate::source::EventSource;
use tokentally_aggregate::source::file::{FileSource, Input};
use tokentally_ingest::kafka::{KafkaConfig, event_key};

use super::kafka_args::KafkaArgs;
use tokentally::config::Config;

/// Most sends awaiting the broker's acknowledgement at once.
const IN_FLIGHT: usize = 50_000;

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

/// Sends lines to a topic with many deliveries in flight, and reports
/// whether Kafka acknowledged every one.
pub struct LineProducer {
    producer: FutureProducer,
    topic: String,
    pending: VecDeque<DeliveryFuture>,
    sent: u64,
    failed: u64,
    first_error: Option<KafkaError>,
}

impl LineProducer {
    pub fn new(config: &KafkaConfig) -> anyhow::Result<Self> {
        Ok(LineProducer {
            producer: config
                .producer()
                .create()
                .context("creating the Kafka producer")?,
            topic: config.topic.clone(),
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
        if let Some(f) = self.pending.pop_front() {
            match f.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    self.failed += 1;
                    self.first_error.get_or_insert(e);
                }
                Err(_) => self.failed += 1,
            }
        }
    }

    /// Queue one line (waiting while the producer's queue is full).
    pub async fn send(&mut self, line: &[u8], key: Option<&str>) -> anyhow::Result<()> {
        loop {
            let mut record = FutureRecord::<str, [u8]>::to(&self.topic).payload(line);
            if let Some(key) = key {
                record = record.key(key);
            }
            match self.producer.send_result(record) {
                Ok(f) => {
                    self.pending.push_back(f);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    if self.pending.is_empty() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    } else {
                        self.settle_one().await;
                    }
                }
                Err((e, _)) => anyhow::bail!("producing to {} failed: {e}", self.topic),
            }
        }
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
        self.producer.flush(Duration::from_secs(30))?;
        if self.failed > 0 {
            anyhow::bail!(
                "{} of {} lines were not acknowledged by Kafka (first error: {})",
                self.failed,
                self.sent,
                self.first_error
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "delivery future dropped".into())
            );
        }
        Ok(self.sent)
    }
}

pub async fn run(mut config: Config, args: ProduceArgs) -> anyhow::Result<()> {
    args.kafka.apply(&mut config);
    let mut out = LineProducer::new(&config.kafka)?;
    let mut source = FileSource::open(Input::parse(&args.file), 8192)?;
    let started = Instant::now();
    while let Some(batch) = source.next_batch().await.map_err(|e| anyhow::anyhow!(e))? {
        for line in batch.iter() {
            out.send(line, event_key(line).as_deref()).await?;
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
