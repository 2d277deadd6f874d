//! Events from a Kafka topic, consumed as a member of a consumer group.
//!
//! Exactly-once comes from the sink, not from Kafka: every batch carries, as
//! progress, the next offset of each partition it read (key
//! [`SourceKey::Kafka`], stored as `kafka:<topic>:<partition>`), and the
//! sink commits that atomically with
//! the deltas. When a partition is assigned (at start or by a rebalance),
//! the source reads nothing from it until it has learnt the sink's
//! committed offset for it (`needs_resume` → `resume`), and then skips any
//! record below that offset, so records redelivered after a crash, a
//! rebalance or a lagging Kafka commit are never counted twice. When a
//! partition is revoked, the source first waits until every batch it handed
//! out is committed (the [`CommitGate`]: the consumer thread reads ahead
//! while the pipeline processes and commits), then drops the partition's
//! records from the batch being filled (the new owner reads them from the
//! sink's offset). Offsets are committed
//! to Kafka only after the sink has committed (`acknowledge`): they tell the
//! group where to start and feed lag metrics, they are not the source of
//! truth.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::{BoxError, CommitGate, EventSource, RawBatch, ReleaseHook, SourceKey};

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
    /// End the stream after this long without a record, once every assigned
    /// partition is read to its high watermark (backfills, tests).
    pub exit_on_idle: Option<Duration>,
    /// Static group membership (`group.instance.id`): a restarted member
    /// with the same id gets its partitions back at once, without waiting
    /// for the session timeout or rebalancing the others.
    pub instance_id: Option<String>,
    /// Consumer lag per partition, updated from librdkafka's statistics
    /// every 5 s.
    pub lag: Option<prometheus::IntGaugeVec>,
}

/// Records partitions revoked by rebalances, for the batch builder, holds
/// revocations until every batch handed out is committed, and publishes
/// consumer lag from librdkafka's statistics.
#[derive(Default)]
struct RebalanceLog {
    revoked: Mutex<Vec<i32>>,
    /// Partitions were assigned since the reader last looked.
    assigned: AtomicBool,
    gate: CommitGate,
    lag: Option<prometheus::IntGaugeVec>,
    /// Tells the sink that partitions were given up cleanly.
    release: Mutex<Option<ReleaseHook>>,
    topic: String,
}

impl ClientContext for RebalanceLog {
    /// As rdkafka's default (log at error level), except that a partition
    /// read to its end is no error: librdkafka reports it here as well as
    /// through the consumer (where `next_batch` uses it), since
    /// `enable.partition.eof` is on.
    fn error(&self, error: KafkaError, reason: &str) {
        if let KafkaError::Global(RDKafkaErrorCode::PartitionEOF) = error {
            tracing::debug!("librdkafka: {reason}");
        } else {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }

    fn stats(&self, stats: rdkafka::Statistics) {
        let Some(lag) = &self.lag else { return };
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                // -1: unknown (not consumed or not assigned here).
                if part.partition >= 0 && part.consumer_lag >= 0 {
                    lag.with_label_values(&[topic.as_str(), p.to_string().as_str()])
                        .set(part.consumer_lag);
                }
            }
        }
    }
}

impl RebalanceLog {
    /// Whether partitions were assigned since the last call (a relaxed load
    /// first: this runs once per record).
    fn take_assigned(&self) -> bool {
        self.assigned.load(Ordering::Relaxed) && self.assigned.swap(false, Ordering::Acquire)
    }
}

impl ConsumerContext for RebalanceLog {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // The group moves on (and a new owner reads the ledger) once
            // this returns: every batch handed out must be committed first.
            // This blocks the reading thread, not the pipeline or the commit.
            if self.gate.wait_idle() {
                tracing::info!(
                    "waited for the batches handed out to commit before giving partitions up"
                );
            }
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            // Given up cleanly (not lost to a session timeout or to another
            // member with this instance id): say so, so that the next
            // owner does not fence this aggregator. Lost partitions are not
            // released: their next owner fences this one, which stops.
            let lost = consumer.assignment_lost();
            if !lost && !parts.is_empty() {
                let hook = self
                    .release
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                if let Some(hook) = hook {
                    let keys = parts
                        .iter()
                        .map(|p| progress_key(&self.topic, *p))
                        .collect();
                    if let Err(e) = hook.release(keys) {
                        tracing::warn!(error = %e, partitions = ?parts, "could not record that partitions were released; their next owner will fence this aggregator");
                    }
                }
            }
            let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
            revoked.extend(parts);
            tracing::info!(partitions = ?revoked, lost, "partitions revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(partitions = ?parts, "partitions assigned");
            self.assigned.store(true, Ordering::Release);
        }
    }
}

type Kafka = StreamConsumer<RebalanceLog>;

/// A consumer-group member reading raw event records.
///
/// The consumer runs on a thread of its own (`tokentally-kafka`), which
/// reads and fills the next batch while the pipeline processes the current
/// one; this handle passes batches, resumes and recycled buffers between
/// them. Each batch carries a guard of the [`CommitGate`], so a rebalance
/// gives partitions up only once every batch handed out is committed.
pub struct KafkaSource {
    batches: mpsc::Receiver<Result<Option<RawBatch>, BoxError>>,
    control: mpsc::UnboundedSender<Control>,
    consumer: Arc<Kafka>,
    topic: String,
    skipped: Arc<AtomicU64>,
    exhausted: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// From the pipeline to the reading thread.
enum Control {
    Resume(BTreeMap<String, i64>),
    Recycle(RawBatch),
}

/// The reading side, owned by the consumer thread.
struct Reader {
    consumer: Arc<Kafka>,
    config: KafkaSourceConfig,
    cursor: Cursor,
    /// The record that revealed a partition still to resume.
    pending: Option<OwnedMessage>,
    /// A batch handed back by the pipeline, reused for its buffers.
    spare: Option<RawBatch>,
    last_record: Instant,
    /// Partitions assigned when last checked.
    assigned: Vec<i32>,
    /// The last batch handed out was full: the source is working through a
    /// backlog.
    backlog: bool,
}

/// Where the source stands in each partition.
#[derive(Default)]
struct Cursor {
    /// Next offset per partition already read: committed by the sink, or in
    /// a batch handed out (a failed commit ends the process).
    committed: ByPartition<i64>,
    /// Partitions whose committed progress was learnt since their
    /// assignment; records of other partitions wait for `resume`.
    resumed: ByPartition<()>,
    /// Partitions asked for in the last `needs_resume`.
    awaiting: Vec<i32>,
    /// Partitions read to their end (librdkafka reported EOF) and quiet
    /// since.
    at_end: ByPartition<()>,
    skipped: Arc<AtomicU64>,
}

impl Cursor {
    /// Ask (in `filling`, which is to be cut now) for the sink's progress of
    /// every assigned partition not resumed yet, and of `partition`. False
    /// if there is none.
    fn ask_resume(
        &mut self,
        consumer: &Kafka,
        topic: &str,
        filling: &mut Filling,
        partition: Option<i32>,
    ) -> Result<bool, BoxError> {
        let mut need: Vec<i32> = assignment(consumer)?
            .into_iter()
            .filter(|p| self.resumed.get(*p).is_none())
            .collect();
        if let Some(p) = partition
            && !need.contains(&p)
        {
            need.push(p);
        }
        if need.is_empty() {
            return Ok(false);
        }
        filling.batch.needs_resume = need.iter().map(|p| progress_key(topic, *p)).collect();
        self.awaiting = need;
        Ok(true)
    }

    /// Apply revocations reported by the rebalance callback: forget the
    /// partitions' positions and drop their records from the batch.
    fn take_revocations(&mut self, consumer: &Kafka, filling: &mut Filling) {
        let revoked: Vec<i32> = std::mem::take(
            &mut *consumer
                .context()
                .revoked
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        if revoked.is_empty() {
            return;
        }
        for p in &revoked {
            self.resumed.remove(*p);
            self.committed.remove(*p);
            self.at_end.remove(*p);
        }
        filling.drop_partitions(&revoked);
    }

    /// Take one record into the batch; `false` when its partition must be
    /// resumed first (the caller keeps the record as pending).
    fn accept<M: Message>(
        &mut self,
        consumer: &Kafka,
        topic: &str,
        filling: &mut Filling,
        msg: &M,
    ) -> Result<bool, BoxError> {
        let (partition, offset) = (msg.partition(), msg.offset());
        if self.resumed.get(partition).is_none() {
            self.ask_resume(consumer, topic, filling, Some(partition))?;
            return Ok(false);
        }
        if self.committed.get(partition).is_some_and(|c| offset < c) {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(true);
        }
        filling.push(partition, offset, msg.payload().unwrap_or_default());
        self.committed.insert(partition, offset + 1);
        Ok(true)
    }
}

/// How long repositioning newly assigned partitions may take.
const SEEK_TIMEOUT: Duration = Duration::from_secs(30);

/// The sorted partitions currently assigned.
fn assignment(consumer: &Kafka) -> Result<Vec<i32>, BoxError> {
    let mut now: Vec<i32> = consumer
        .assignment()?
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect();
    now.sort_unstable();
    Ok(now)
}

/// True while no partition is assigned, or when the assignment differs from
/// the one seen last time (`last`, updated).
fn assignment_changed(consumer: &Kafka, last: &mut Vec<i32>) -> Result<bool, BoxError> {
    let now = assignment(consumer)?;
    let changed = now.is_empty() || now != *last;
    *last = now;
    Ok(changed)
}

/// Errors the consumer cannot recover from by itself: a fatal client
/// error, or the topic or group being unusable.
fn is_fatal(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::Fatal
                | C::UnknownTopicOrPartition
                | C::UnknownTopic
                | C::TopicAuthorizationFailed
                | C::GroupAuthorizationFailed
                | C::InvalidGroupId
                | C::FencedInstanceId
        )
    )
}

/// The progress key of a partition.
pub fn progress_key(topic: &str, partition: i32) -> String {
    SourceKey::Kafka {
        topic: topic.to_string(),
        partition,
    }
    .to_string()
}

/// Values per partition, indexed by partition number (partitions are small
/// non-negative integers): no hashing per record.
struct ByPartition<T>(Vec<Option<T>>);

impl<T> Default for ByPartition<T> {
    fn default() -> Self {
        ByPartition(Vec::new())
    }
}

impl<T: Copy> ByPartition<T> {
    fn get(&self, partition: i32) -> Option<T> {
        let i = usize::try_from(partition).ok()?;
        self.0.get(i).copied().flatten()
    }

    fn insert(&mut self, partition: i32, value: T) {
        let Ok(i) = usize::try_from(partition) else {
            return;
        };
        if i >= self.0.len() {
            self.0.resize_with(i + 1, || None);
        }
        self.0[i] = Some(value);
    }

    fn remove(&mut self, partition: i32) {
        if let Some(slot) = usize::try_from(partition)
            .ok()
            .and_then(|i| self.0.get_mut(i))
        {
            *slot = None;
        }
    }

    /// (partition, value) in partition order.
    fn iter(&self) -> impl Iterator<Item = (i32, T)> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (i as i32, v)))
    }
}

/// A batch being filled, with the partition of each record so that the
/// records of a revoked partition can be dropped.
struct Filling {
    batch: RawBatch,
    partitions: Vec<i32>,
    /// Partition → the offset after its last record in the batch; turned
    /// into the batch's progress by [`Filling::finish`].
    next: ByPartition<i64>,
    /// Partition → the offset of its first record in the batch.
    first: ByPartition<i64>,
}

impl Filling {
    fn push(&mut self, partition: i32, offset: i64, payload: &[u8]) {
        self.batch.push(payload);
        self.partitions.push(partition);
        if self.first.get(partition).is_none() {
            self.first.insert(partition, offset);
        }
        self.next.insert(partition, offset + 1);
    }

    /// The batch, with the progress its records complete.
    fn finish(mut self, topic: &str) -> RawBatch {
        for (p, next) in self.next.iter() {
            self.batch.progress.insert(progress_key(topic, p), next);
        }
        for (p, first) in self.first.iter() {
            self.batch.starts.insert(progress_key(topic, p), first);
        }
        self.batch
    }

    /// Forget every record of `revoked`.
    fn drop_partitions(&mut self, revoked: &[i32]) {
        if !self.partitions.iter().any(|p| revoked.contains(p)) {
            return;
        }
        let mut kept = RawBatch::with_capacity(self.batch.len(), self.batch.bytes());
        let mut parts = Vec::with_capacity(self.partitions.len());
        for (rec, &p) in self.batch.iter().zip(&self.partitions) {
            if !revoked.contains(&p) {
                kept.push(rec);
                parts.push(p);
            }
        }
        kept.needs_resume = std::mem::take(&mut self.batch.needs_resume);
        for p in revoked {
            self.next.remove(*p);
            self.first.remove(*p);
        }
        self.batch = kept;
        self.partitions = parts;
    }
}

impl KafkaSource {
    pub fn connect(config: KafkaSourceConfig) -> Result<Self, BoxError> {
        let reader = Reader::subscribe(config)?;
        let consumer = reader.consumer.clone();
        let skipped = reader.cursor.skipped.clone();
        let topic = reader.config.topic.clone();
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

/// The partition of `topic` a progress key is of.
fn partition_of(topic: &str, key: &str) -> Option<i32> {
    match key.parse() {
        Ok(SourceKey::Kafka {
            topic: of,
            partition,
        }) if of == topic => Some(partition),
        _ => None,
    }
}

impl Reader {
    /// A consumer subscribed to the topic (it joins the group as it polls).
    fn subscribe(config: KafkaSourceConfig) -> Result<Self, BoxError> {
        let mut client = ClientConfig::new();
        if let Some(id) = &config.instance_id {
            client.set("group.instance.id", id);
        }
        if config.lag.is_some() {
            client.set("statistics.interval.ms", "5000");
        }
        let consumer: Kafka = client
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            // EOF events tell the end of a backlog (see `next_batch`).
            .set("enable.partition.eof", "true")
            .set("session.timeout.ms", "10000")
            .set("partition.assignment.strategy", "cooperative-sticky")
            // Keep fetching while the application is busy: without these,
            // librdkafka stops fetching a partition for a whole second once
            // 100k messages are queued, which stalls a fast consumer. The
            // queue stays bounded by bytes (16 MiB; 64 MiB was no faster
            // and doubled the RSS).
            .set("queued.min.messages", "1000000")
            .set("queued.max.messages.kbytes", "16384")
            .set("fetch.queue.backoff.ms", "10")
            // A fetch with nothing to return waits this long at the broker
            // before librdkafka learns (and reports, as EOF) that a
            // partition is at its end. Data is never held back by it.
            .set("fetch.wait.max.ms", "100")
            .set("max.partition.fetch.bytes", "4194304")
            .create_with_context(RebalanceLog {
                revoked: Mutex::default(),
                assigned: AtomicBool::new(false),
                gate: CommitGate::default(),
                lag: config.lag.clone(),
                release: Mutex::new(None),
                topic: config.topic.clone(),
            })?;
        consumer.subscribe(&[&config.topic])?;
        Ok(Reader {
            consumer: Arc::new(consumer),
            config,
            cursor: Cursor::default(),
            pending: None,
            spare: None,
            last_record: Instant::now(),
            assigned: Vec::new(),
            backlog: false,
        })
    }

    /// Read batches until the pipeline goes away or the source ends.
    /// Nothing is read before the first resume (the sink's progress), nor
    /// after a batch asking for one until it comes.
    async fn run(
        mut self,
        tx: mpsc::Sender<Result<Option<RawBatch>, BoxError>>,
        mut control: mpsc::UnboundedReceiver<Control>,
    ) {
        let mut awaiting_resume = true;
        loop {
            loop {
                let msg = if awaiting_resume {
                    tokio::select! {
                        msg = control.recv() => msg,
                        () = tx.closed() => return,
                    }
                } else {
                    match control.try_recv() {
                        Ok(msg) => Some(msg),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => None,
                    }
                };
                match msg {
                    None => return,
                    Some(Control::Resume(committed)) => {
                        if let Err(e) = self.resume(&committed) {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                        awaiting_resume = false;
                    }
                    Some(Control::Recycle(batch)) => self.spare = Some(batch),
                }
            }
            let next = tokio::select! {
                next = self.next_batch() => next,
                () = tx.closed() => return,
            };
            let more = matches!(next, Ok(Some(_)));
            let next = next.map(|batch| {
                batch.map(|mut b| {
                    awaiting_resume = !b.needs_resume.is_empty();
                    b.hold = Some(self.consumer.context().gate.enter());
                    b
                })
            });
            if tx.send(next).await.is_err() || !more {
                return;
            }
        }
    }

    /// Take the sink's progress (the ledger) for the partitions awaiting
    /// it, and read each of them from there on.
    fn resume(&mut self, committed: &BTreeMap<String, i64>) -> Result<(), BoxError> {
        let resumed = std::mem::take(&mut self.cursor.awaiting);
        for &p in &resumed {
            self.cursor.committed.remove(p);
            self.cursor.resumed.insert(p, ());
        }
        for (key, offset) in committed {
            if let Some(p) = partition_of(&self.config.topic, key) {
                self.cursor.committed.insert(p, *offset);
            }
        }
        // Fetching began where the group last committed, which can be past
        // the ledger (a new database for an old group, a restored backup):
        // records in between would never be read. Start at the ledger, or
        // at the beginning of a partition it has nothing of.
        let assigned = assignment(&self.consumer)?;
        let mut tpl = TopicPartitionList::new();
        for &p in resumed.iter().filter(|p| assigned.contains(p)) {
            let from = self.cursor.committed.get(p);
            let offset = from.map_or(Offset::Beginning, Offset::Offset);
            tpl.add_partition_offset(&self.config.topic, p, offset)?;
            if self.pending.as_ref().is_some_and(|m| m.partition() == p) {
                self.pending = None; // read again from the new position
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        // Assignments change only in this thread's polls, not during the seek.
        let sought = self.consumer.seek_partitions(tpl, SEEK_TIMEOUT)?;
        for e in sought.elements() {
            if let Err(err) = e.error() {
                return Err(format!(
                    "cannot start reading partition {} at the ledger's offset: {err}",
                    e.partition()
                )
                .into());
            }
        }
        Ok(())
    }

    /// True when every assigned partition has been read to its end (the
    /// high watermark). False when that cannot be known (broker down).
    ///
    /// The ends come from one ListOffsets request for all partitions, not a
    /// `fetch_watermarks` per partition: each request queues behind the
    /// consumer's fetch long-poll on the same broker connection (up to
    /// `fetch.wait.max.ms`), which made the check take 6 s on 12 partitions
    /// at librdkafka's default of 500 ms.
    fn caught_up(&self) -> bool {
        let timeout = Duration::from_secs(5);
        let topic = self.config.topic.as_str();
        let Ok(assigned) = self.consumer.assignment() else {
            return false;
        };
        let parts: Vec<i32> = assigned.elements().iter().map(|e| e.partition()).collect();
        let offset_in = |list: &TopicPartitionList, p: i32| {
            list.find_partition(topic, p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
        };
        // Offsets of `parts` at their end or their start, all at once.
        let list_offsets = |at: Offset, parts: &[i32]| {
            let mut tpl = TopicPartitionList::new();
            for &p in parts {
                tpl.add_partition_offset(topic, p, at).ok()?;
            }
            self.consumer.offsets_for_times(tpl, timeout).ok()
        };
        let Some(ends) = list_offsets(Offset::End, &parts) else {
            return false;
        };
        let position = self.consumer.position().ok();
        let committed = self.consumer.committed(timeout).ok();
        let next: Vec<(i32, Option<i64>)> = parts
            .iter()
            .map(|&p| {
                // Our own next offset first: after a resume it is the
                // ledger's, where the consumer was repositioned (its
                // position still tells where it was before).
                let read = self.cursor.committed.get(p);
                let read = read.or_else(|| offset_in(position.as_ref()?, p));
                (p, read.or_else(|| offset_in(committed.as_ref()?, p)))
            })
            .collect();
        // Never read and nothing committed: it starts at its first offset.
        let unread: Vec<i32> = next.iter().filter(|n| n.1.is_none()).map(|n| n.0).collect();
        let starts = if unread.is_empty() {
            None
        } else {
            match list_offsets(Offset::Beginning, &unread) {
                Some(starts) => Some(starts),
                None => return false,
            }
        };
        next.into_iter().all(|(p, next)| {
            let next = next.or_else(|| offset_in(starts.as_ref()?, p));
            matches!((next, offset_in(&ends, p)), (Some(next), Some(end)) if next >= end)
        })
    }

    async fn next_batch(&mut self) -> Result<Option<RawBatch>, BoxError> {
        let cap = self.config.batch_records.max(1);
        let mut batch = self.spare.take().unwrap_or_default();
        batch.clear();
        let mut filling = Filling {
            batch,
            partitions: Vec::with_capacity(cap),
            next: ByPartition::default(),
            first: ByPartition::default(),
        };
        let mut first_at: Option<Instant> = None;
        let topic = self.config.topic.clone();
        // Idleness is time spent waiting here, not time spent committing
        // (a sink outage must not look like the end of the stream).
        self.last_record = Instant::now();
        if let Some(msg) = self.pending.take()
            && !self
                .cursor
                .accept(&self.consumer, &topic, &mut filling, &msg)?
        {
            self.pending = Some(msg);
            return Ok(Some(filling.finish(&topic)));
        }
        if !filling.batch.is_empty() {
            first_at = Some(Instant::now());
        }
        let mut received_any = false;
        // One stream for the whole batch (each `recv()` registers and
        // unregisters a waker under a lock).
        let mut stream = self.consumer.stream();
        loop {
            // Newly assigned partitions are repositioned at the ledger (see
            // `resume`) before anything is read: the group's offsets, where
            // fetching starts, may already be at their end.
            if self.consumer.context().take_assigned()
                && self
                    .cursor
                    .ask_resume(&self.consumer, &topic, &mut filling, None)?
            {
                return Ok(Some(filling.finish(&topic)));
            }
            // Fast path: take a record librdkafka already has, without
            // arming a timer or reading the clock.
            let received = match stream.next().now_or_never() {
                Some(ready) => Ok(ready.expect("Kafka streams never end")),
                None => {
                    let now = Instant::now();
                    if std::mem::take(&mut received_any) {
                        self.last_record = now;
                    }
                    if !filling.batch.is_empty() {
                        first_at.get_or_insert(now);
                    }
                    let wait = match first_at {
                        Some(t) => self.config.max_wait.saturating_sub(now - t),
                        None => match self.config.exit_on_idle {
                            Some(idle) => idle.saturating_sub(now - self.last_record),
                            None => Duration::from_secs(3600),
                        },
                    };
                    // With no time left, `timeout` still takes a record that
                    // is ready, and otherwise falls through to the checks
                    // below.
                    tokio::time::timeout(wait, stream.next())
                        .await
                        .map(|next| next.expect("Kafka streams never end"))
                }
            };
            self.cursor.take_revocations(&self.consumer, &mut filling);
            if filling.batch.is_empty() {
                // A revocation may have emptied the batch: wait afresh. (An
                // empty batch after the wait means idle, the end of the
                // stream; it must not mean "every record was revoked".)
                first_at = None;
            }
            let msg = match received {
                Err(_)
                    if first_at.is_none()
                        && assignment_changed(&self.consumer, &mut self.assigned)? =>
                {
                    // Not idle: still joining the group, or partitions were
                    // just (re)assigned and deserve their own idle window.
                    self.last_record = Instant::now();
                    continue;
                }
                Err(_) if first_at.is_none() && !self.caught_up() => {
                    // Quiet, but not at the end of every partition (the
                    // broker is down or restarting): not idle.
                    self.last_record = Instant::now();
                    continue;
                }
                Err(_) => break, // waited long enough
                Ok(Err(KafkaError::PartitionEOF(p))) => {
                    // The end of a backlog: hand the tail over now rather
                    // than after `max_wait` (only after a full batch, so a
                    // steady trickle still fills batches for `max_wait`).
                    self.cursor.at_end.insert(p, ());
                    if self.backlog
                        && !filling.batch.is_empty()
                        && assignment(&self.consumer)?
                            .iter()
                            .all(|&p| self.cursor.at_end.get(p).is_some())
                    {
                        break;
                    }
                    continue;
                }
                Ok(Err(e)) if is_fatal(&e) => return Err(Box::new(e)),
                Ok(Err(e)) => {
                    // Broker down, transport failures, rebalances in
                    // progress: librdkafka reconnects and retries by itself.
                    tracing::warn!(error = %e, "Kafka consumer error, continuing");
                    continue;
                }
                Ok(Ok(msg)) => msg,
            };
            received_any = true;
            self.cursor.at_end.remove(msg.partition());
            if !self
                .cursor
                .accept(&self.consumer, &topic, &mut filling, &msg)?
            {
                self.pending = Some(msg.detach());
                return Ok(Some(filling.finish(&topic)));
            }
            if filling.batch.len() >= cap {
                break;
            }
        }
        if filling.batch.is_empty() {
            return Ok(None); // idle for exit_on_idle
        }
        self.backlog = filling.batch.len() >= cap;
        Ok(Some(filling.finish(&topic)))
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
        *self
            .consumer
            .context()
            .release
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(hook);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A new one-partition topic holding `records` records, and a reader of
    /// it (a group of its own, which has committed `group_offset` if given).
    /// Needs the broker of `scripts/services up` (as `scripts/test` runs it).
    async fn reader_of(
        name: &str,
        records: usize,
        batch_records: usize,
        max_wait: Duration,
        group_offset: Option<i64>,
    ) -> (Reader, String) {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let brokers = std::env::var("TOKENTALLY_KAFKA_BROKERS")
            .expect("TOKENTALLY_KAFKA_BROKERS: start the broker with scripts/services up");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let topic = format!("tt-unit-{name}-{nanos}");
        let kafka = tokentally_ingest::kafka::KafkaConfig {
            brokers: brokers.clone(),
            ..Default::default()
        };
        tokentally_ingest::kafka::create_topics(&kafka, &[(&topic, 1)])
            .await
            .unwrap();
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        for _ in 0..records {
            let record = FutureRecord::<(), [u8]>::to(&topic).payload(b"{}");
            producer
                .send(record, Duration::from_secs(30))
                .await
                .unwrap();
        }
        if let Some(offset) = group_offset {
            let committer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", &topic)
                .create()
                .unwrap();
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, 0, Offset::Offset(offset))
                .unwrap();
            committer.commit(&tpl, CommitMode::Sync).unwrap();
        }
        let reader = Reader::subscribe(KafkaSourceConfig {
            brokers,
            topic: topic.clone(),
            group: topic.clone(),
            batch_records,
            max_wait,
            exit_on_idle: None,
            instance_id: None,
            lag: None,
        })
        .unwrap();
        (reader, topic)
    }

    #[tokio::test]
    async fn a_partition_is_read_from_the_ledger_not_from_the_groups_offset() {
        // The group committed offset 80 (say, while feeding another
        // database); the ledger of this one ends at 40.
        let max_wait = Duration::from_secs(1);
        let (mut reader, topic) = reader_of("ledger", 100, 1_000, max_wait, Some(80)).await;
        let wait = Duration::from_secs(30);
        let first = tokio::time::timeout(wait, reader.next_batch()).await;
        let first = first.unwrap().unwrap().expect("a batch");
        assert_eq!(first.needs_resume, vec![progress_key(&topic, 0)]);
        let key = progress_key(&topic, 0);
        reader.resume(&BTreeMap::from([(key.clone(), 40)])).unwrap();
        let batch = tokio::time::timeout(wait, reader.next_batch()).await;
        let batch = batch.unwrap().unwrap().expect("a batch");
        assert_eq!(batch.len(), 60, "offsets 40..100");
        assert_eq!(batch.progress, BTreeMap::from([(key, 100)]));
    }

    #[tokio::test]
    async fn the_tail_of_a_backlog_is_handed_over_without_waiting() {
        let max_wait = Duration::from_secs(60);
        let (mut reader, topic) = reader_of("tail", 150, 100, max_wait, None).await;
        let wait = Duration::from_secs(30);
        let first = tokio::time::timeout(wait, reader.next_batch()).await;
        let first = first.unwrap().unwrap().expect("a batch");
        assert_eq!(first.needs_resume, vec![progress_key(&topic, 0)]);
        reader.resume(&BTreeMap::new()).unwrap();
        let full = tokio::time::timeout(wait, reader.next_batch()).await;
        assert_eq!(full.unwrap().unwrap().expect("a batch").len(), 100);
        // The other 50 are all there is: they come at the partition's end,
        // not after the 60 s `max_wait`.
        let tail = tokio::time::timeout(wait, reader.next_batch()).await;
        let tail = tail.expect("the tail waited for max_wait");
        assert_eq!(tail.unwrap().expect("a batch").len(), 50);
    }

    #[tokio::test]
    async fn a_batch_emptied_by_a_revocation_does_not_end_the_stream() {
        let (mut reader, topic) =
            reader_of("revoked", 10, 1_000, Duration::from_secs(1), None).await;
        let wait = Duration::from_secs(30);
        let first = tokio::time::timeout(wait, reader.next_batch()).await;
        let first = first.unwrap().unwrap().expect("a batch");
        assert!(first.is_empty());
        assert_eq!(first.needs_resume, vec![progress_key(&topic, 0)]);
        reader.resume(&BTreeMap::new()).unwrap();

        // The ten records fill the next batch, which waits up to a second
        // for more; meanwhile the partition is revoked (as the rebalance
        // callback reports it).
        let context = reader.consumer.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            context.context().revoked.lock().unwrap().push(0);
        });
        match tokio::time::timeout(Duration::from_secs(4), reader.next_batch()).await {
            Err(_) => {} // still waiting for records: right
            Ok(Ok(Some(batch))) => assert!(batch.is_empty(), "revoked records were kept"),
            Ok(Ok(None)) => panic!("a revocation ended the stream"),
            Ok(Err(e)) => panic!("{e}"),
        }
    }

    #[test]
    fn dropping_a_revoked_partition_keeps_the_others() {
        let mut f = Filling {
            batch: RawBatch::default(),
            partitions: Vec::new(),
            next: ByPartition::default(),
            first: ByPartition::default(),
        };
        f.push(0, 10, b"a");
        f.push(1, 20, b"b");
        f.push(0, 11, b"c");
        f.push(2, 5, b"d");
        f.drop_partitions(&[0]);
        assert_eq!(f.partitions, vec![1, 2]);
        let batch = f.finish("t");
        let recs: Vec<&[u8]> = batch.iter().collect();
        assert_eq!(recs, vec![&b"b"[..], b"d"]);
        let progress: Vec<(&String, &i64)> = batch.progress.iter().collect();
        assert_eq!(
            progress,
            vec![
                (&"kafka:t:1".to_string(), &21),
                (&"kafka:t:2".to_string(), &6)
            ]
        );
        let starts: Vec<(&String, &i64)> = batch.starts.iter().collect();
        assert_eq!(
            starts,
            vec![
                (&"kafka:t:1".to_string(), &20),
                (&"kafka:t:2".to_string(), &5)
            ]
        );
    }
}
