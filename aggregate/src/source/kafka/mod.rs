//! Events from a Kafka topic, consumed as a member of a consumer group.
//!
//! Exactly-once comes from the sink, not from Kafka: every batch carries, as
//! progress, the next offset of each partition it read (key
//! [`SourceKey::Kafka`](super::SourceKey::Kafka), stored as
//! `kafka:<topic>:<partition>`), and the sink commits that atomically with
//! the deltas. When a partition is assigned (at start or by a rebalance),
//! the source reads nothing from it until it has learnt the sink's
//! committed offset for it (`needs_resume` → `resume`), and then skips any
//! record below that offset, so records redelivered after a crash, a
//! rebalance or a lagging Kafka commit are never counted twice. When a
//! partition is revoked, the source first waits until every batch it handed
//! out is committed (the [`CommitGate`](super::CommitGate): the consumer
//! thread reads ahead while the pipeline processes and commits), then drops
//! the partition's records from the batch being filled (the new owner reads
//! them from the sink's offset). Offsets are committed to Kafka only after
//! the sink has committed (`acknowledge`): they tell the group where to
//! start and feed lag metrics, they are not the source of truth.
//!
//! The parts: `config.rs` (how the source reads, the librdkafka settings),
//! `rebalance.rs` (the consumer's context: revocations, assignments, the
//! commit gate, lag), `cursor.rs` (where the source stands in each
//! partition and when a batch is cut, with no consumer in it), `reader.rs`
//! (the reading thread) and this handle. Tests that need a broker are in
//! `aggregate/tests/kafka_source.rs`.

mod config;
mod cursor;
mod reader;
mod rebalance;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::{BoxError, EventSource, RawBatch, ReleaseHook};
use cursor::partition_of;
use reader::{Control, Kafka, Reader};

pub use config::KafkaSourceConfig;

/// A consumer-group member reading raw event records.
///
/// The consumer runs on a thread of its own (`tokentally-kafka`), which
/// reads and fills the next batch while the pipeline processes the current
/// one; this handle passes batches, resumes and recycled buffers between
/// them. Each batch carries a guard of the [`CommitGate`](super::CommitGate),
/// so a rebalance gives partitions up only once every batch handed out is
/// committed.
pub struct KafkaSource {
    batches: mpsc::Receiver<Result<Option<RawBatch>, BoxError>>,
    control: mpsc::UnboundedSender<Control>,
    consumer: Arc<Kafka>,
    topic: String,
    skipped: Arc<AtomicU64>,
    exhausted: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KafkaSource {
    pub fn connect(config: KafkaSourceConfig) -> Result<Self, BoxError> {
        let topic = config.topic.clone();
        let reader = Reader::subscribe(config)?;
        let consumer = reader.consumer();
        let skipped = reader.skipped();
        // One batch waits while the pipeline processes another.
        let (tx, batches) = mpsc::channel(1);
        let (control, rx) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("tokentally-kafka".into())
            .spawn(move || runtime.block_on(reader.run(tx, rx)))?;
        Ok(KafkaSource {
            batches,
            control,
            consumer,
            topic,
            skipped,
            exhausted: false,
            thread: Some(thread),
        })
    }

    /// Records skipped because the sink had already committed them.
    pub fn skipped_records(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

impl Drop for KafkaSource {
    /// Stop the reading thread and wait for it (it leaves the group, after
    /// the batches handed out, now dropped, release the gate).
    fn drop(&mut self) {
        self.batches.close();
        while self.batches.try_recv().is_ok() {}
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl EventSource for KafkaSource {
    fn resume(&mut self, committed: &BTreeMap<String, i64>) -> Result<(), BoxError> {
        self.control
            .send(Control::Resume(committed.clone()))
            .map_err(|_| reader_stopped())
    }

    async fn next_batch(&mut self) -> Result<Option<RawBatch>, BoxError> {
        if self.exhausted {
            return Ok(None);
        }
        match self.batches.recv().await {
            Some(Ok(None)) => {
                self.exhausted = true;
                Ok(None)
            }
            Some(next) => next,
            None => Err(reader_stopped()),
        }
    }

    fn recycle(&mut self, batch: RawBatch) {
        // The thread is gone only when the source is finished.
        let _ = self.control.send(Control::Recycle(batch));
    }

    fn on_release(&mut self, hook: ReleaseHook) {
        self.consumer.context().set_release(hook);
    }

    fn acknowledge(&mut self, progress: &BTreeMap<String, i64>) -> Result<(), BoxError> {
        let mut tpl = TopicPartitionList::new();
        for (key, next) in progress {
            if let Some(p) = partition_of(&self.topic, key) {
                tpl.add_partition_offset(&self.topic, p, Offset::Offset(*next))?;
            }
        }
        if tpl.count() > 0 {
            self.consumer.commit(&tpl, CommitMode::Async)?;
        }
        Ok(())
    }
}

fn reader_stopped() -> BoxError {
    "the Kafka reading thread stopped".into()
}
