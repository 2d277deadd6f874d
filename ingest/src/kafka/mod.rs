//! Kafka plumbing shared by every client: the connection (TLS, SASL,
//! pass-through properties: [`Connection`]), production producer
//! settings, topic creation, and the message key.

mod connection;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde::{Deserialize, Serialize};

pub use connection::{
    Connection, ErrorLog, PASSWORD_ENV, SaslMechanism, SecurityProtocol, SettingsError,
};

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
    /// Replication factor of topics tokentally creates. Default: the
    /// number of brokers, at most 3 (so 3 on a cluster, 1 on one broker).
    /// At 3 or more, the topics also get `min.insync.replicas=2`: an
    /// acknowledged event (producers use `acks=all`) is on at least two
    /// brokers, and one broker may be down without stopping producers.
    pub replication: Option<i32>,
    /// Consumer group of aggregators. Default `tokentally-aggregator`.
    pub group: String,
    /// How long a produced event may wait for the broker before the send
    /// fails. Default 30s.
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`. Also
    /// `TOKENTALLY_KAFKA_SECURITY_PROTOCOL`.
    pub security_protocol: SecurityProtocol,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`; needed with SASL. Also
    /// `TOKENTALLY_KAFKA_SASL_MECHANISM`.
    pub sasl_mechanism: Option<SaslMechanism>,
    /// Also `TOKENTALLY_KAFKA_SASL_USERNAME`.
    pub sasl_username: Option<String>,
    /// File holding the SASL password (first line); without it the
    /// password comes from `TOKENTALLY_KAFKA_PASSWORD`. Never from this
    /// file or a flag.
    pub sasl_password_file: Option<PathBuf>,
    /// CA certificates (PEM) that sign the brokers' certificates; default
    /// the system's. Also `TOKENTALLY_KAFKA_SSL_CA_LOCATION`.
    pub ssl_ca_location: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with `ssl_key_location`.
    pub ssl_certificate_location: Option<PathBuf>,
    /// The client certificate's private key (PEM, unencrypted).
    pub ssl_key_location: Option<PathBuf>,
    /// Any other librdkafka property, passed through (`[kafka.properties]`),
    /// on top of tokentally's own settings; see [`Connection::configure`]
    /// for what is refused.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: "token-events".into(),
            dlq_topic: "token-events-dlq".into(),
            partitions: 12,
            replication: None,
            group: "tokentally-aggregator".into(),
            delivery_timeout: Duration::from_secs(30),
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password_file: None,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// Producer settings for events: idempotent, acknowledged by all
    /// in-sync replicas, LZ4-compressed, batched, with bounded memory.
    pub fn producer(&self) -> Result<ClientConfig, SettingsError> {
        let mut c = ClientConfig::new();
        c.set("enable.idempotence", "true")
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
        Ok(self.connection()?.configure(c))
    }
}

/// What happened to one topic on creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    Created,
    AlreadyExists,
}

/// Why topics could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The broker refused, or did not answer; with the reason librdkafka
    /// gave for the connection, when it gave one.
    #[error("{0}")]
    Kafka(String),
}

/// What `create_topics` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedTopics {
    /// The replication factor of the topics it created.
    pub replication: i32,
    /// Their `min.insync.replicas`, when set (at replication 3 or more).
    pub min_insync_replicas: Option<i32>,
    pub topics: Vec<(String, TopicOutcome)>,
}

/// The replication factor and `min.insync.replicas` of new topics: the
/// configured factor, else the broker count up to 3; two in-sync replicas
/// from a factor of 3 on.
pub fn replication_for(configured: Option<i32>, brokers: usize) -> (i32, Option<i32>) {
    let replication = configured.unwrap_or_else(|| brokers.clamp(1, 3) as i32);
    (replication, (replication >= 3).then_some(2))
}

/// Create `topics` (name, partitions); existing topics are left as they are.
pub async fn create_topics(
    config: &KafkaConfig,
    topics: &[(&str, i32)],
) -> Result<CreatedTopics, TopicError> {
    let errors = ErrorLog::default();
    let admin: AdminClient<ErrorLog> = config
        .connection()?
        .configure(ClientConfig::new())
        .create_with_context(errors.clone())
        .map_err(|e| TopicError::Kafka(e.to_string()))?;
    let admin = std::sync::Arc::new(admin);
    let brokers = match config.replication {
        Some(_) => 0,
        None => {
            let admin = admin.clone();
            tokio::task::spawn_blocking(move || {
                admin
                    .inner()
                    .fetch_metadata(None, Duration::from_secs(30))
                    .map(|m| m.brokers().len())
            })
            .await
            .map_err(|e| TopicError::Kafka(e.to_string()))?
            .map_err(|e| TopicError::Kafka(errors.explain(e)))?
        }
    };
    let (replication, min_insync) = replication_for(config.replication, brokers);
    let min_insync_value = min_insync.map(|n| n.to_string());
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, partitions)| {
            let topic = NewTopic::new(name, *partitions, TopicReplication::Fixed(replication));
            match &min_insync_value {
                Some(n) => topic.set("min.insync.replicas", n),
                None => topic,
            }
        })
        .collect();
    // Bounded also when the brokers never answer (or refuse the credentials).
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(30)))
        .request_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .map_err(|e| TopicError::Kafka(errors.explain(e)))?;
    let topics = results
        .into_iter()
        .map(|r| match r {
            Ok(name) => Ok((name, TopicOutcome::Created)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                Ok((name, TopicOutcome::AlreadyExists))
            }
            Err((_, code)) => Err(TopicError::Kafka(errors.explain(KafkaError::AdminOp(code)))),
        })
        .collect::<Result<_, _>>()?;
    Ok(CreatedTopics {
        replication,
        min_insync_replicas: min_insync,
        topics,
    })
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
    fn replication_follows_the_brokers_up_to_three() {
        assert_eq!(replication_for(None, 1), (1, None));
        assert_eq!(replication_for(None, 2), (2, None));
        assert_eq!(replication_for(None, 3), (3, Some(2)));
        assert_eq!(replication_for(None, 9), (3, Some(2)));
        assert_eq!(replication_for(Some(1), 3), (1, None));
        assert_eq!(replication_for(Some(5), 0), (5, Some(2)));
    }

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
