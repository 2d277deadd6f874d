//! The reading thread: the consumer, polled for records, assignments and
//! revocations, whose answers the [`Cursor`] and the [`CutPolicy`] turn
//! into batches.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::super::{BoxError, RawBatch};
use super::config::KafkaSourceConfig;
use super::cursor::{BatchClock, Cursor, CutPolicy, Filling};
use super::rebalance::RebalanceLog;

pub(super) type Kafka = StreamConsumer<RebalanceLog>;

/// From the pipeline to the reading thread.
pub(super) enum Control {
    Resume(BTreeMap<String, i64>),
    Recycle(RawBatch),
}

/// The reading side, owned by the consumer thread.
pub(super) struct Reader {
    consumer: Arc<Kafka>,
    config: KafkaSourceConfig,
    cursor: Cursor,
    policy: CutPolicy,
    /// The record that revealed a partition still to resume.
    pending: Option<OwnedMessage>,
    /// A batch handed back by the pipeline, reused for its buffers.
    spare: Option<RawBatch>,
    /// Partitions assigned when last checked.
    assigned: Vec<i32>,
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
pub(super) fn is_fatal(e: &KafkaError) -> bool {
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

impl Reader {
    /// A consumer subscribed to the topic (it joins the group as it polls).
    pub(super) fn subscribe(config: KafkaSourceConfig) -> Result<Self, BoxError> {
        let consumer: Kafka = config
            .client()
            .create_with_context(RebalanceLog::new(&config))?;
        consumer.subscribe(&[&config.topic])?;
        Ok(Reader {
            consumer: Arc::new(consumer),
            policy: CutPolicy::new(config.batch_records, config.max_wait, config.exit_on_idle),
            config,
            cursor: Cursor::default(),
            pending: None,
            spare: None,
            assigned: Vec::new(),
        })
    }

    /// The consumer, shared with the handle (which commits offsets to
    /// Kafka and sets the release hook).
    pub(super) fn consumer(&self) -> Arc<Kafka> {
        self.consumer.clone()
    }

    /// The count of records skipped because the sink had them already.
    pub(super) fn skipped(&self) -> Arc<AtomicU64> {
        self.cursor.skipped()
    }

    /// Read batches until the pipeline goes away or the source ends.
    /// Nothing is read before the first resume (the sink's progress), nor
    /// after a batch asking for one until it comes.
    pub(super) async fn run(
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
                    b.hold = Some(self.consumer.context().hand_out());
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
        let resumed = self.cursor.resume(&self.config.topic, committed);
        // Fetching began where the group last committed, which can be past
        // the ledger (a new database for an old group, a restored backup):
        // records in between would never be read. Start at the ledger, or
        // at the beginning of a partition it has nothing of.
        let assigned = assignment(&self.consumer)?;
        let mut tpl = TopicPartitionList::new();
        for &p in resumed.iter().filter(|p| assigned.contains(p)) {
            let from = self.cursor.next_offset(p);
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
        // A partition whose committed offset librdkafka is still fetching
        // (the group coordinator moved: a broker restarted) refuses a seek
        // with a state error until that fetch is done: seek it again.
        let started = Instant::now();
        loop {
            let sought = self.consumer.seek_partitions(tpl, SEEK_TIMEOUT)?;
            let mut again = TopicPartitionList::new();
            for e in sought.elements() {
                match e.error() {
                    Ok(()) => {}
                    Err(KafkaError::OffsetFetch(RDKafkaErrorCode::State))
                        if started.elapsed() < SEEK_TIMEOUT =>
                    {
                        let from = self.cursor.next_offset(e.partition());
                        let offset = from.map_or(Offset::Beginning, Offset::Offset);
                        again.add_partition_offset(e.topic(), e.partition(), offset)?;
                    }
                    Err(err) => {
                        return Err(format!(
                            "cannot start reading partition {} at the ledger's offset: {err}",
                            e.partition()
                        )
                        .into());
                    }
                }
            }
            if again.count() == 0 {
                return Ok(());
            }
            tracing::debug!(
                partitions = again.count(),
                "seeking again: offsets still being fetched"
            );
            std::thread::sleep(Duration::from_millis(200));
            tpl = again;
        }
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
                let read = self.cursor.next_offset(p);
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

    /// Take one record into the batch; `false` when its partition must be
    /// resumed first: the batch then asks for it (and is to be cut now),
    /// and the caller keeps the record as pending.
    fn accept<M: Message>(&mut self, filling: &mut Filling, msg: &M) -> Result<bool, BoxError> {
        let (partition, offset) = (msg.partition(), msg.offset());
        let payload = msg.payload().unwrap_or_default();
        if self.cursor.accept(filling, partition, offset, payload) {
            return Ok(true);
        }
        let assigned = assignment(&self.consumer)?;
        let topic = &self.config.topic;
        self.cursor
            .ask_resume(topic, &assigned, filling, Some(partition));
        Ok(false)
    }

    /// The next batch, cut as [`CutPolicy`] has it; `None` once the source
    /// has been idle for `exit_on_idle`.
    async fn next_batch(&mut self) -> Result<Option<RawBatch>, BoxError> {
        let mut filling = self.policy.start(self.spare.take().unwrap_or_default());
        let topic = self.config.topic.clone();
        let mut clock = BatchClock::start(Instant::now());
        if let Some(msg) = self.pending.take()
            && !self.accept(&mut filling, &msg)?
        {
            self.pending = Some(msg);
            return Ok(Some(filling.finish(&topic)));
        }
        clock.tick(Instant::now(), &filling);
        // One stream for the whole batch (each `recv()` registers and
        // unregisters a waker under a lock), of a handle of its own so that
        // the records it lends leave `self` free.
        let consumer = self.consumer.clone();
        let mut stream = consumer.stream();
        loop {
            // Newly assigned partitions are repositioned at the ledger (see
            // `resume`) before anything is read: the group's offsets, where
            // fetching starts, may already be at their end.
            if self.consumer.context().take_assigned()
                && self
                    .cursor
                    .ask_resume(&topic, &assignment(&self.consumer)?, &mut filling, None)
            {
                return Ok(Some(filling.finish(&topic)));
            }
            // Fast path: take a record librdkafka already has, without
            // arming a timer or reading the clock.
            let received = match stream.next().now_or_never() {
                Some(ready) => Ok(ready.expect("Kafka streams never end")),
                None => {
                    let now = Instant::now();
                    clock.tick(now, &filling);
                    let wait = self.policy.wait(&clock, now);
                    // With no time left, `timeout` still takes a record that
                    // is ready, and otherwise falls through to the checks
                    // below.
                    tokio::time::timeout(wait, stream.next())
                        .await
                        .map(|next| next.expect("Kafka streams never end"))
                }
            };
            let revoked = self.consumer.context().take_revoked();
            self.cursor.revoke(&revoked, &mut filling);
            clock.revoked(&filling);
            let msg = match received {
                Err(_)
                    if !clock.has_records()
                        && assignment_changed(&self.consumer, &mut self.assigned)? =>
                {
                    // Not idle: still joining the group, or partitions were
                    // just (re)assigned and deserve their own idle window.
                    clock.busy(Instant::now());
                    continue;
                }
                Err(_) if !clock.has_records() && !self.caught_up() => {
                    // Quiet, but not at the end of every partition (the
                    // broker is down or restarting): not idle.
                    clock.busy(Instant::now());
                    continue;
                }
                Err(_) => break, // waited long enough
                Ok(Err(KafkaError::PartitionEOF(p))) => {
                    // The end of a backlog: hand the tail over now rather
                    // than after `max_wait`.
                    self.cursor.reached_end(p);
                    if self.policy.cuts_at_end(&filling)
                        && self.cursor.all_at_end(&assignment(&self.consumer)?)
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
            clock.received();
            if !self.accept(&mut filling, &msg)? {
                self.pending = Some(msg.detach());
                return Ok(Some(filling.finish(&topic)));
            }
            if self.policy.is_full(&filling) {
                break;
            }
        }
        Ok(self.policy.cut(filling).map(|f| f.finish(&topic)))
    }
}
