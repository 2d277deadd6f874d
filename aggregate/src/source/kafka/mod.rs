//! Events from a Kafka topic, consumed as a member of a consumer group.
//!
//! Exactly-once comes from the sink, not from Kafka: every batch carries, as
//! progress, the next offset of each partition it read (key
//! `kafka:<topic>:<partition>`), and the sink commits that atomically with
//! the deltas. On start the source learns the sink's committed offsets
//! (`resume`) and skips any record below them, so records redelivered after
//! a crash, a rebalance or a lagging Kafka commit are never counted twice.
//! Offsets are committed to Kafka only after the sink has committed
//! (`acknowledge`): they tell the group where to start and feed lag
//! metrics, they are not the source of truth.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use super::{BoxError, EventSource, RawBatch};

/// How a [`KafkaSource`] reads.
#[derive(Debug, Clone)]
pub struct KafkaSourceConfig {
    pub brokers: String,
    pub topic: String,
    pub group: String,
    /// Most records per micro-batch.
    pub batch_records: usize,
    /// Longest a non-empty micro-batch waits to fill up (freshness).
    pub max_wait: Duration,
    /// End the stream after this long without a record (backfills, tests).
    pub exit_on_idle: Option<Duration>,
}

/// A consumer-group member reading raw event records.
pub struct KafkaSource {
    consumer: StreamConsumer,
    config: KafkaSourceConfig,
    /// Next offset per partition already read: committed by the sink, or in
    /// a batch handed out (a failed commit ends the process).
    committed: HashMap<i32, i64>,
    last_record: Instant,
    /// Partitions assigned when last checked.
    assigned: Vec<i32>,
    skipped: u64,
}

/// True while no partition is assigned, or when the assignment differs from
/// the one seen last time (`last`, updated).
fn assignment_changed(consumer: &StreamConsumer, last: &mut Vec<i32>) -> Result<bool, BoxError> {
    let mut now: Vec<i32> = consumer
        .assignment()?
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect();
    now.sort_unstable();
    let changed = now.is_empty() || now != *last;
    *last = now;
    Ok(changed)
}

/// The progress key of a partition.
pub fn progress_key(topic: &str, partition: i32) -> String {
    format!("kafka:{topic}:{partition}")
}

impl KafkaSource {
    pub fn connect(config: KafkaSourceConfig) -> Result<Self, BoxError> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", "10000")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .create()?;
        consumer.subscribe(&[&config.topic])?;
        Ok(KafkaSource {
            consumer,
            config,
            committed: HashMap::new(),
            last_record: Instant::now(),
            assigned: Vec::new(),
            skipped: 0,
        })
    }

    /// Records skipped because the sink had already committed them.
    pub fn skipped_records(&self) -> u64 {
        self.skipped
    }
}

impl EventSource for KafkaSource {
    fn resume(&mut self, committed: &BTreeMap<String, i64>) -> Result<(), BoxError> {
        let prefix = format!("kafka:{}:", self.config.topic);
        for (key, offset) in committed {
            if let Some(p) = key
                .strip_prefix(&prefix)
                .and_then(|p| p.parse::<i32>().ok())
            {
                self.committed.insert(p, *offset);
            }
        }
        Ok(())
    }

    async fn next_batch(&mut self) -> Result<Option<RawBatch>, BoxError> {
        let cap = self.config.batch_records.max(1);
        let mut batch = RawBatch::with_capacity(cap, cap * 300);
        let mut first_at: Option<Instant> = None;
        loop {
            let wait = match first_at {
                Some(t) => self.config.max_wait.saturating_sub(t.elapsed()),
                None => match self.config.exit_on_idle {
                    Some(idle) => idle.saturating_sub(self.last_record.elapsed()),
                    None => Duration::from_secs(3600),
                },
            };
            if wait.is_zero() {
                break;
            }
            let msg = match tokio::time::timeout(wait, self.consumer.recv()).await {
                Err(_)
                    if first_at.is_none()
                        && assignment_changed(&self.consumer, &mut self.assigned)? =>
                {
                    // Not idle: still joining the group, or partitions were
                    // just (re)assigned and deserve their own idle window.
                    self.last_record = Instant::now();
                    continue;
                }
                Err(_) => break, // waited long enough
                Ok(Err(e)) => return Err(Box::new(e)),
                Ok(Ok(msg)) => msg,
            };
            self.last_record = Instant::now();
            let (partition, offset) = (msg.partition(), msg.offset());
            if self.committed.get(&partition).is_some_and(|&c| offset < c) {
                self.skipped += 1;
                continue;
            }
            batch.push(msg.payload().unwrap_or_default());
            batch
                .progress
                .insert(progress_key(&self.config.topic, partition), offset + 1);
            self.committed.insert(partition, offset + 1);
            first_at.get_or_insert_with(Instant::now);
            if batch.len() >= cap {
                break;
            }
        }
        if batch.is_empty() {
            return Ok(None); // idle for exit_on_idle
        }
        Ok(Some(batch))
    }

    fn acknowledge(&mut self, progress: &BTreeMap<String, i64>) -> Result<(), BoxError> {
        let prefix = format!("kafka:{}:", self.config.topic);
        let mut tpl = TopicPartitionList::new();
        for (key, next) in progress {
            if let Some(p) = key
                .strip_prefix(&prefix)
                .and_then(|p| p.parse::<i32>().ok())
            {
                tpl.add_partition_offset(&self.config.topic, p, Offset::Offset(*next))?;
            }
        }
        if tpl.count() > 0 {
            self.consumer.commit(&tpl, CommitMode::Async)?;
        }
        Ok(())
    }
}
