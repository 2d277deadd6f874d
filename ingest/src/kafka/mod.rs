//! Kafka plumbing shared by everything that produces events: production
//! producer settings, topic creation, and the message key.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde::{Deserialize, Serialize};

/// Kafka settings (`[kafka]` in the config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`. Also `--kafka` or
    /// `TOKENTALLY_KAFKA_BROKERS`.
    pub brokers: String,
    /// Topic of raw events. Default `token-events`.
    pub topic: String,
    /// Topic of refused records. Default `token-events-dlq`.
    pub dlq_topic: String,
    /// Partitions of the events topic when tokentally creates it. Default 12.
    pub partitions: i32,
    /// Replication factor of topics tokentally creates. Default 1.
    pub replication: i32,
    /// Consumer group of aggregators. Default `tokentally-aggregator`.
    pub group: String,
    /// How long a produced event may wait for the broker before the send
    /// fails. Default 30s.
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: "token-events".into(),
            dlq_topic: "token-events-dlq".into(),
            partitions: 12,
            replication: 1,
            group: "tokentally-aggregator".into(),
            delivery_timeout: Duration::from_secs(30),
        }
    }
}

impl KafkaConfig {
    /// Producer settings for events: idempotent, acknowledged by all
    /// in-sync replicas, LZ4-compressed, batched, with bounded memory.
    pub fn producer(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            .set("batch.size", "1000000")
            .set("queue.buffering.max.messages", "200000")
            .set("queue.buffering.max.kbytes", "262144")
            .set(
                "message.timeout.ms",
                self.delivery_timeout.as_millis().to_string(),
            );
        c
    }
}

/// What happened to one topic on creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    Created,
    AlreadyExists,
}

/// Create `topics` (name, partitions); existing topics are left as they are.
pub async fn create_topics(
    config: &KafkaConfig,
    topics: &[(&str, i32)],
) -> Result<Vec<(String, TopicOutcome)>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, partitions)| {
            NewTopic::new(
                name,
                *partitions,
                TopicReplication::Fixed(config.replication),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(&new, &opts).await?;
    results
        .into_iter()
        .map(|r| match r {
            Ok(name) => Ok((name, TopicOutcome::Created)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                Ok((name, TopicOutcome::AlreadyExists))
            }
            Err((_, code)) => Err(KafkaError::AdminOp(code)),
        })
        .collect()
}

/// The message key of a raw event line: its `event_id` when one can be
/// read, so retries of an event land on the partition (and the aggregator)
/// that counted it, and load spreads evenly whatever the model. Lines
/// without a readable `event_id` get no key (spread by the partitioner).
pub fn event_key(line: &[u8]) -> Option<String> {
    // sonic-rs skips the values before `event_id` recursively: a record
    // nested too deep has no key (the aggregator refuses it as too_deep).
    tokentally_schemas::check_depth(line, tokentally_schemas::Limits::default().max_depth).ok()?;
    let value = sonic_rs::get_from_slice(line, &["event_id"]).ok()?;
    sonic_rs::JsonValueTrait::as_str(&value).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_the_event_id_when_readable() {
        assert_eq!(
            event_key(br#"{"ts":1,"event_id":"e-1","model":"m"}"#).as_deref(),
            Some("e-1")
        );
        assert_eq!(event_key(br#"{"event_id":7}"#), None);
        assert_eq!(event_key(b"not json"), None);
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(event_key(deep.as_bytes()), None);
        let deep_field = format!(r#"{{"a":{deep},"event_id":"e-2"}}"#);
        assert_eq!(event_key(deep_field.as_bytes()), None);
    }
}
