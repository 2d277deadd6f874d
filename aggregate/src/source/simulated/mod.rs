//! The fleet simulator as a source: generated NDJSON lines, optionally
//! paced so the simulated span passes in a given wall time (time
//! compression). Generation runs on its own thread.

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

use tokentally_ingest::{Fleet, FleetConfig};
use tokio::sync::mpsc;

use super::{BoxError, EventSource, RawBatch};

/// Simulated traffic in micro-batches.
pub struct SimulatedSource {
    rx: mpsc::Receiver<RawBatch>,
}

impl SimulatedSource {
    /// Generate `config.events` lines in batches of `batch_records`. With
    /// `wall` set, batches are released evenly over that wall time.
    pub fn start(config: FleetConfig, batch_records: usize, wall: Option<Duration>) -> Self {
        let (tx, rx) = mpsc::channel(4);
        let batch_records = batch_records.max(1);
        thread::Builder::new()
            .name("simulator".into())
            .spawn(move || {
                let total = config.events.max(1);
                let mut fleet = Fleet::new(config);
                let started = Instant::now();
                loop {
                    let mut batch = RawBatch::with_capacity(batch_records, batch_records * 300);
                    while batch.len() < batch_records {
                        if batch
                            .push_with(|buf| fleet.next_line(buf).ok_or(()))
                            .is_err()
                        {
                            break;
                        }
                    }
                    if batch.is_empty() {
                        return;
                    }
                    if let Some(wall) = wall {
                        let due = wall.mul_f64(fleet.emitted() as f64 / total as f64);
                        if let Some(wait) = due.checked_sub(started.elapsed()) {
                            thread::sleep(wait);
                        }
                    }
                    if tx.blocking_send(batch).is_err() {
                        return;
                    }
                }
            })
            .expect("spawning the simulator thread");
        SimulatedSource { rx }
    }
}

impl EventSource for SimulatedSource {
    /// Generated traffic has no position to resume from; dedup drops what
    /// a rerun with the same seed repeats.
    fn resume(&mut self, _committed: &BTreeMap<String, i64>) -> Result<(), BoxError> {
        Ok(())
    }

    async fn next_batch(&mut self) -> Result<Option<RawBatch>, BoxError> {
        Ok(self.rx.recv().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn yields_every_line_once() {
        let cfg = FleetConfig {
            events: 1_000,
            start_ms: Some(0),
            ..FleetConfig::default()
        };
        let mut src = SimulatedSource::start(cfg, 300, None);
        let mut n = 0;
        while let Some(b) = src.next_batch().await.unwrap() {
            n += b.len();
        }
        assert_eq!(n, 1_000);
    }
}
