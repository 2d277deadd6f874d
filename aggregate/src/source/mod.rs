//! Where raw events come from. Each backend lives in its own directory and
//! implements [`EventSource`].

pub mod file;
pub mod kafka;
pub mod simulated;

use std::collections::BTreeMap;
use std::future::Future;

/// Error type of sources and sinks: the backend's own error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A micro-batch of raw input records (one JSON document each), stored
/// contiguously to avoid an allocation per record.
#[derive(Debug, Default, Clone)]
pub struct RawBatch {
    data: Vec<u8>,
    ends: Vec<usize>,
    /// What consuming this batch advances: source partition key → the next
    /// position to read. Sinks persist it atomically with the deltas.
    pub progress: BTreeMap<String, i64>,
    /// Partitions the source was newly assigned and cannot read on from
    /// until it learns their committed progress: after committing this
    /// batch, the pipeline asks the sink (`recover_partitions`) and hands
    /// the answer to [`EventSource::resume`].
    pub needs_resume: Vec<String>,
}

impl RawBatch {
    pub fn with_capacity(records: usize, bytes: usize) -> Self {
        RawBatch {
            data: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(records),
            progress: BTreeMap::new(),
            needs_resume: Vec::new(),
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
        self.needs_resume.clear();
    }
}

/// A stream of raw micro-batches.
pub trait EventSource {
    /// Called before the first batch with the progress the sink committed,
    /// and again after every batch with `needs_resume`, with the progress of
    /// those partitions; the source continues after it.
    fn resume(&mut self, committed: &BTreeMap<String, i64>) -> Result<(), BoxError>;

    /// The next micro-batch, or `None` when the source is exhausted. A batch
    /// may be empty when it only carries `needs_resume`.
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
}
