//! Where the source stands in each partition, and when a batch is cut.
//!
//! Pure bookkeeping: no consumer in here. The reader asks the consumer
//! (records, assignments, revocations), reads the clock and hands the
//! answers over, so all of this is tested without a broker (in
//! `tests.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::super::{RawBatch, SourceKey};

/// The progress key of a partition of `topic`.
pub(super) fn progress_key(topic: &str, partition: i32) -> String {
    SourceKey::Kafka {
        topic: topic.to_string(),
        partition,
    }
    .to_string()
}

/// The partition of `topic` a progress key is of.
pub(super) fn partition_of(topic: &str, key: &str) -> Option<i32> {
    match key.parse() {
        Ok(SourceKey::Kafka {
            topic: of,
            partition,
        }) if of == topic => Some(partition),
        _ => None,
    }
}

/// Where the source stands in each partition.
#[derive(Default)]
pub(super) struct Cursor {
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
    /// The count of records skipped because the sink had already committed
    /// them.
    pub(super) fn skipped(&self) -> Arc<AtomicU64> {
        self.skipped.clone()
    }

    /// The next offset of `partition` already read (committed by the sink,
    /// or in a batch handed out), if known.
    pub(super) fn next_offset(&self, partition: i32) -> Option<i64> {
        self.committed.get(partition)
    }

    /// Ask (in `filling`, which is to be cut now) for the sink's progress of
    /// every partition of `assigned` not resumed yet, and of `partition`.
    /// False if there is none.
    pub(super) fn ask_resume(
        &mut self,
        topic: &str,
        assigned: &[i32],
        filling: &mut Filling,
        partition: Option<i32>,
    ) -> bool {
        let mut need: Vec<i32> = assigned
            .iter()
            .copied()
            .filter(|p| self.resumed.get(*p).is_none())
            .collect();
        if let Some(p) = partition
            && !need.contains(&p)
        {
            need.push(p);
        }
        if need.is_empty() {
            return false;
        }
        filling.batch.needs_resume = need.iter().map(|p| progress_key(topic, *p)).collect();
        self.awaiting = need;
        true
    }

    /// Take the sink's progress (`committed`, by progress key) for the
    /// partitions asked for in the last [`Cursor::ask_resume`], and return
    /// those partitions: they are read on from their
    /// [`next_offset`](Cursor::next_offset).
    pub(super) fn resume(&mut self, topic: &str, committed: &BTreeMap<String, i64>) -> Vec<i32> {
        let resumed = std::mem::take(&mut self.awaiting);
        for &p in &resumed {
            self.committed.remove(p);
            self.resumed.insert(p, ());
        }
        for (key, offset) in committed {
            if let Some(p) = partition_of(topic, key) {
                self.committed.insert(p, *offset);
            }
        }
        resumed
    }

    /// Apply revocations reported by the rebalance callback: forget the
    /// partitions' positions and drop their records from the batch.
    pub(super) fn revoke(&mut self, revoked: &[i32], filling: &mut Filling) {
        if revoked.is_empty() {
            return;
        }
        for p in revoked {
            self.resumed.remove(*p);
            self.committed.remove(*p);
            self.at_end.remove(*p);
        }
        filling.drop_partitions(revoked);
    }

    /// Take the record of `partition` at `offset` into the batch, or skip
    /// it if the sink has it already; `false` when its partition must be
    /// resumed first (nothing taken: the caller keeps the record and asks
    /// with [`Cursor::ask_resume`]). A record read means its partition is
    /// no longer at its end.
    pub(super) fn accept(
        &mut self,
        filling: &mut Filling,
        partition: i32,
        offset: i64,
        payload: &[u8],
    ) -> bool {
        self.at_end.remove(partition);
        if self.resumed.get(partition).is_none() {
            return false;
        }
        if self.committed.get(partition).is_some_and(|c| offset < c) {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        filling.push(partition, offset, payload);
        self.committed.insert(partition, offset + 1);
        true
    }

    /// librdkafka read `partition` to its end.
    pub(super) fn reached_end(&mut self, partition: i32) {
        self.at_end.insert(partition, ());
    }

    /// Whether every partition of `assigned` is read to its end and quiet
    /// since.
    pub(super) fn all_at_end(&self, assigned: &[i32]) -> bool {
        assigned.iter().all(|&p| self.at_end.get(p).is_some())
    }
}

/// When a batch is cut (handed out):
///
/// - as soon as it holds `batch_records` records (full);
/// - `max_wait` after it got its first record;
/// - at the end of a backlog: after a full batch, as soon as every assigned
///   partition is read to its end, rather than after `max_wait`;
/// - at once, even empty, when partitions must be resumed (see
///   [`Cursor::ask_resume`]).
///
/// With no record at all, the source waits `exit_on_idle` (if set) and then
/// ends, once the reader has found every partition read to its end.
pub(super) struct CutPolicy {
    /// Most records per batch (at least one).
    cap: usize,
    max_wait: Duration,
    exit_on_idle: Option<Duration>,
    /// The last batch cut was full: the source is working through a
    /// backlog.
    backlog: bool,
}

/// How long a batch without records waits when it has no idle limit.
const NO_IDLE_LIMIT: Duration = Duration::from_secs(3600);

impl CutPolicy {
    pub(super) fn new(
        batch_records: usize,
        max_wait: Duration,
        exit_on_idle: Option<Duration>,
    ) -> Self {
        CutPolicy {
            cap: batch_records.max(1),
            max_wait,
            exit_on_idle,
            backlog: false,
        }
    }

    /// An empty batch to fill, reusing the buffers of `batch`.
    pub(super) fn start(&self, mut batch: RawBatch) -> Filling {
        batch.clear();
        Filling {
            batch,
            partitions: Vec::with_capacity(self.cap),
            next: ByPartition::default(),
            first: ByPartition::default(),
        }
    }

    /// The batch is full: cut it.
    pub(super) fn is_full(&self, filling: &Filling) -> bool {
        filling.len() >= self.cap
    }

    /// Whether every assigned partition being read to its end cuts
    /// `filling` now: only after a full batch, so that a steady trickle
    /// still fills batches for `max_wait`.
    pub(super) fn cuts_at_end(&self, filling: &Filling) -> bool {
        self.backlog && !filling.is_empty()
    }

    /// How long to wait at `now` for the next record: until `max_wait`
    /// after the batch's first record, or, without one, until
    /// `exit_on_idle` after the last sign of life (or an hour without that
    /// limit). Zero once the time is up.
    pub(super) fn wait(&self, clock: &BatchClock, now: Instant) -> Duration {
        match clock.first_at {
            Some(t) => self.max_wait.saturating_sub(now - t),
            None => match self.exit_on_idle {
                Some(idle) => idle.saturating_sub(now - clock.last_record),
                None => NO_IDLE_LIMIT,
            },
        }
    }

    /// The batch as cut after a wait, a full batch or the end of a
    /// backlog: `None` if it is empty (the source is idle, the end of the
    /// stream).
    pub(super) fn cut(&mut self, filling: Filling) -> Option<Filling> {
        if filling.is_empty() {
            return None;
        }
        self.backlog = self.is_full(&filling);
        Some(filling)
    }
}

/// The times that decide how long the batch being filled waits.
pub(super) struct BatchClock {
    /// When the batch was first seen holding records; `None` while empty.
    first_at: Option<Instant>,
    /// When a record last came, or the source was last found busy: where
    /// the idle window starts.
    last_record: Instant,
    /// Records came since the clock was last brought up to date.
    received_any: bool,
}

impl BatchClock {
    /// A batch started at `now`. Idleness is time spent waiting for this
    /// batch, not time spent committing the last one (a sink outage must
    /// not look like the end of the stream).
    pub(super) fn start(now: Instant) -> Self {
        BatchClock {
            first_at: None,
            last_record: now,
            received_any: false,
        }
    }

    /// Bring the clock up to `now` (before waiting for a record, which
    /// reads the clock; records taken without waiting do not): records
    /// received since the last time move the idle window, and a batch
    /// holding records has had its first record by now.
    pub(super) fn tick(&mut self, now: Instant, filling: &Filling) {
        if std::mem::take(&mut self.received_any) {
            self.last_record = now;
        }
        if !filling.is_empty() {
            self.first_at.get_or_insert(now);
        }
    }

    /// A record came.
    pub(super) fn received(&mut self) {
        self.received_any = true;
    }

    /// The source is not idle (still joining the group, or not read to the
    /// end of every partition): the idle window starts afresh at `now`.
    pub(super) fn busy(&mut self, now: Instant) {
        self.last_record = now;
    }

    /// After revocations: a batch they emptied waits afresh, for records,
    /// not for `max_wait` (an empty batch after the wait means idle, the
    /// end of the stream; it must not mean "every record was revoked").
    pub(super) fn revoked(&mut self, filling: &Filling) {
        if filling.is_empty() {
            self.first_at = None;
        }
    }

    /// Whether the batch held records when the clock was last brought up
    /// to date.
    pub(super) fn has_records(&self) -> bool {
        self.first_at.is_some()
    }
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
pub(super) struct Filling {
    batch: RawBatch,
    partitions: Vec<i32>,
    /// Partition → the offset after its last record in the batch; turned
    /// into the batch's progress by [`Filling::finish`].
    next: ByPartition<i64>,
    /// Partition → the offset of its first record in the batch.
    first: ByPartition<i64>,
}

impl Filling {
    pub(super) fn len(&self) -> usize {
        self.batch.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    fn push(&mut self, partition: i32, offset: i64, payload: &[u8]) {
        self.batch.push(payload);
        self.partitions.push(partition);
        if self.first.get(partition).is_none() {
            self.first.insert(partition, offset);
        }
        self.next.insert(partition, offset + 1);
    }

    /// The batch, with the progress its records complete.
    pub(super) fn finish(mut self, topic: &str) -> RawBatch {
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
