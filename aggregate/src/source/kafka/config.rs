//! How a [`KafkaSource`](super::KafkaSource) reads, and the librdkafka
//! settings that follow from it.

use std::time::Duration;

use rdkafka::ClientConfig;
use tokentally_ingest::kafka::Connection;

/// How a [`KafkaSource`](super::KafkaSource) reads.
#[derive(Debug, Clone)]
pub struct KafkaSourceConfig {
    /// Brokers and security, shared with every other client
    /// (`KafkaConfig::connection`).
    pub connection: Connection,
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

impl KafkaSourceConfig {
    /// The consumer's settings: a group member that commits offsets only
    /// when told to (after the sink), with cooperative rebalancing.
    pub(super) fn client(&self) -> ClientConfig {
        let mut client = ClientConfig::new();
        if let Some(id) = &self.instance_id {
            client.set("group.instance.id", id);
        }
        if self.lag.is_some() {
            client.set("statistics.interval.ms", "5000");
        }
        client
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            // EOF events tell the end of a backlog (see `Reader::next_batch`).
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
            .set("max.partition.fetch.bytes", "4194304");
        self.connection.configure(client)
    }
}
