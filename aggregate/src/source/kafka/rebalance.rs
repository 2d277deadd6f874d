//! The consumer's context: what librdkafka's callbacks (rebalances,
//! errors, statistics) tell the reading thread and the sink.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::super::{CommitGate, InFlight, ReleaseHook};
use super::config::KafkaSourceConfig;
use super::cursor::progress_key;

/// Records partitions revoked by rebalances, for the batch builder, holds
/// revocations until every batch handed out is committed, and publishes
/// consumer lag from librdkafka's statistics.
pub(super) struct RebalanceLog {
    revoked: Mutex<Vec<i32>>,
    /// Partitions were assigned since the reader last looked.
    assigned: AtomicBool,
    gate: CommitGate,
    lag: Option<prometheus::IntGaugeVec>,
    /// Tells the sink that partitions were given up cleanly.
    release: Mutex<Option<ReleaseHook>>,
    topic: String,
}

impl RebalanceLog {
    pub(super) fn new(config: &KafkaSourceConfig) -> Self {
        RebalanceLog {
            revoked: Mutex::default(),
            assigned: AtomicBool::new(false),
            gate: CommitGate::default(),
            lag: config.lag.clone(),
            release: Mutex::new(None),
            topic: config.topic.clone(),
        }
    }

    /// Whether partitions were assigned since the last call (a relaxed load
    /// first: this runs once per record).
    pub(super) fn take_assigned(&self) -> bool {
        self.assigned.load(Ordering::Relaxed) && self.assigned.swap(false, Ordering::Acquire)
    }

    /// The partitions revoked since the last call.
    pub(super) fn take_revoked(&self) -> Vec<i32> {
        std::mem::take(&mut *self.revoked.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Mark a batch as handed out: revocations wait until it is committed.
    pub(super) fn hand_out(&self) -> InFlight {
        self.gate.enter()
    }

    /// How to tell the sink that partitions were given up cleanly.
    pub(super) fn set_release(&self, hook: ReleaseHook) {
        *self.release.lock().unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }
}

impl ClientContext for RebalanceLog {
    /// As rdkafka's default (log at error level), except that a partition
    /// read to its end is no error: librdkafka reports it here as well as
    /// through the consumer (where `Reader::next_batch` uses it), since
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
