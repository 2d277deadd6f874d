//! Where raw events come from. Each backend lives in its own directory and
//! implements [`EventSource`].

pub mod file;
pub mod kafka;
mod key;
pub mod simulated;

pub use key::{NotASourceKey, SourceKey};

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};

/// Error type of sources and sinks: the backend's own error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A micro-batch of raw input records (one JSON document each), stored
/// contiguously to avoid an allocation per record.
#[derive(Debug, Default)]
pub struct RawBatch {
    data: Vec<u8>,
    ends: Vec<usize>,
    /// What consuming this batch advances: source partition key (a
    /// [`SourceKey`] as stored) → the next position to read. Sinks persist
    /// it atomically with the deltas.
    pub progress: BTreeMap<String, i64>,
    /// Where this batch's range of each partition in `progress` starts (the
    /// position of its first record), for sources with positions in a
    /// shared log (Kafka): with `progress`, the range `[start, next)` this
    /// batch commits, which history checks chain together.
    pub starts: BTreeMap<String, i64>,
    /// Partitions the source was newly assigned and cannot read on from
    /// until it learns their committed progress: after committing this
    /// batch, the pipeline asks the sink (`recover_partitions`) and hands
    /// the answer to [`EventSource::resume`].
    pub needs_resume: Vec<String>,
    /// Set by sources whose partitions can be taken away (see
    /// [`CommitGate`]): the pipeline holds it until this batch's commit has
    /// landed or failed. A clone does not carry it.
    pub hold: Option<InFlight>,
}

impl Clone for RawBatch {
    fn clone(&self) -> Self {
        RawBatch {
            data: self.data.clone(),
            ends: self.ends.clone(),
            progress: self.progress.clone(),
            starts: self.starts.clone(),
            needs_resume: self.needs_resume.clone(),
            hold: None,
        }
    }
}

impl RawBatch {
    pub fn with_capacity(records: usize, bytes: usize) -> Self {
        RawBatch {
            data: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(records),
            progress: BTreeMap::new(),
            starts: BTreeMap::new(),
            needs_resume: Vec::new(),
            hold: None,
        }
    }

    /// Append one record (without its line terminator).
    pub fn push(&mut self, record: &[u8]) {
        self.data.extend_from_slice(record);
        self.ends.push(self.data.len());
    }

    /// Append a record written in place by `write` (e.g. a serializer).
    pub fn push_with<E>(
        &mut self,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = self.data.len();
        match write(&mut self.data) {
            Ok(()) => {
                self.ends.push(self.data.len());
                Ok(())
            }
            Err(e) => {
                self.data.truncate(start);
                Err(e)
            }
        }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Total payload bytes.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let rec = &self.data[start..end];
            start = end;
            rec
        })
    }

    pub fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
        self.progress.clear();
        self.starts.clear();
        self.needs_resume.clear();
        self.hold = None;
    }
}

/// A stream of raw micro-batches.
pub trait EventSource {
    /// Called before the first batch with the progress the sink committed,
    /// and again after every batch with `needs_resume`, with the progress of
    /// those partitions; the source continues after it.
    fn resume(&mut self, committed: &BTreeMap<String, i64>) -> Result<(), BoxError>;

    /// The next micro-batch, or `None` when the source is exhausted. A batch
    /// may be empty when it only carries `needs_resume`. Must be
    /// cancel-safe: the pipeline drops the future when a commit lands or a
    /// stop comes first, and calls again.
    fn next_batch(&mut self) -> impl Future<Output = Result<Option<RawBatch>, BoxError>> + Send;

    /// Called after the sink has durably committed a batch, with its
    /// progress (end-to-end acknowledgement). Sources with an upstream
    /// cursor (Kafka offsets) advance it here; the default does nothing.
    fn acknowledge(&mut self, _progress: &BTreeMap<String, i64>) -> Result<(), BoxError> {
        Ok(())
    }

    /// Hand back a batch the pipeline is done with, so that a source can
    /// reuse its buffers (a fresh multi-megabyte buffer per batch costs page
    /// faults). The default drops it.
    fn recycle(&mut self, _batch: RawBatch) {}

    /// Given once, before the first batch: how to tell the sink that
    /// partitions were given up cleanly. Sources whose partitions can be
    /// taken away (Kafka) call it in a revocation, once every batch of
    /// those partitions is committed; the default ignores it.
    fn on_release(&mut self, _hook: ReleaseHook) {}
}

/// Tells the sink, and waits until it has recorded, that the source gave
/// these partitions (progress keys) up cleanly (see
/// [`UsageSink::release`](crate::sink::UsageSink::release)). Callable from
/// any thread; it blocks the caller.
#[derive(Clone)]
pub struct ReleaseHook(Arc<dyn Fn(Vec<String>) -> Result<(), String> + Send + Sync>);

impl ReleaseHook {
    pub fn new(f: impl Fn(Vec<String>) -> Result<(), String> + Send + Sync + 'static) -> Self {
        ReleaseHook(Arc::new(f))
    }

    pub fn release(&self, keys: Vec<String>) -> Result<(), String> {
        (self.0)(keys)
    }
}

impl std::fmt::Debug for ReleaseHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReleaseHook")
    }
}

/// Counts batches handed out and not yet committed, so that a source can
/// wait until there are none.
///
/// The pipeline commits a batch while the next is read and processed. A
/// source whose partitions can be taken away (a consumer-group rebalance)
/// must not let a new owner start before every batch it handed out is in
/// the sink, or the new owner would read those records again: it attaches
/// a guard from [`CommitGate::enter`] to each batch ([`RawBatch::hold`])
/// and calls [`CommitGate::wait_idle`] before giving partitions up.
#[derive(Debug, Clone, Default)]
pub struct CommitGate(Arc<(Mutex<usize>, Condvar)>);

impl CommitGate {
    /// Mark a batch as handed out; it is done when the guard is dropped.
    pub fn enter(&self) -> InFlight {
        *self.0.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        InFlight(self.clone())
    }

    /// Block the calling thread until no batch is outstanding. Returns
    /// whether it had to wait.
    pub fn wait_idle(&self) -> bool {
        let (count, idle) = &*self.0;
        let mut n = count.lock().unwrap_or_else(|e| e.into_inner());
        let waited = *n > 0;
        while *n > 0 {
            n = idle.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        waited
    }
}

/// A batch handed out and not yet committed (see [`CommitGate`]).
#[derive(Debug)]
pub struct InFlight(CommitGate);

impl Drop for InFlight {
    fn drop(&mut self) {
        let (count, idle) = &*self.0.0;
        let mut n = count.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        if *n == 0 {
            idle.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_batch_keeps_records_apart() {
        let mut b = RawBatch::with_capacity(2, 16);
        b.push(b"{}");
        b.push(b"");
        b.push_with(|buf| {
            buf.extend_from_slice(b"abc");
            Ok::<(), ()>(())
        })
        .unwrap();
        assert!(
            b.push_with(|buf| {
                buf.extend_from_slice(b"zzz");
                Err(())
            })
            .is_err()
        );
        let recs: Vec<&[u8]> = b.iter().collect();
        assert_eq!(recs, vec![&b"{}"[..], b"", b"abc"]);
        assert_eq!(b.bytes(), 5);
    }

    #[test]
    fn the_gate_opens_when_the_last_commit_ends() {
        let gate = CommitGate::default();
        assert!(!gate.wait_idle());
        let first = gate.enter();
        let second = gate.enter();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                let waited = gate.wait_idle();
                tx.send(()).unwrap();
                waited
            })
        };
        drop(first);
        let pending = rx.recv_timeout(std::time::Duration::from_millis(200));
        assert!(pending.is_err(), "opened with a commit still in flight");
        drop(second);
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the gate opened");
        assert!(waiter.join().unwrap());
    }
}
