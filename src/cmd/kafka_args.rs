use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tokentally_ingest::kafka::{SaslMechanism, SecurityProtocol};

use tokentally::config::Config;

/// How long a command waits at start for the brokers to say that its
/// topics exist (or to refuse its credentials) before it gives up.
pub const TOPIC_CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// Flags that override `[kafka]`.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, host:port[,host:port].
    #[arg(
        long = "kafka",
        env = "TOKENTALLY_KAFKA_BROKERS",
        value_name = "BROKERS"
    )]
    pub brokers: Option<String>,
    /// Events topic [default: token-events].
    #[arg(long, env = "TOKENTALLY_TOPIC", value_name = "TOPIC")]
    pub topic: Option<String>,
    /// Dead-letter topic [default: token-events-dlq].
    #[arg(long, env = "TOKENTALLY_DLQ_TOPIC", value_name = "TOPIC")]
    pub dlq_topic: Option<String>,
    #[command(flatten)]
    pub security: KafkaSecurityArgs,
}

/// Flags that override `[kafka]`'s connection security. The SASL password
/// is read from `TOKENTALLY_KAFKA_PASSWORD` or `[kafka] sasl_password_file`,
/// never from a flag.
#[derive(Debug, Clone, Args)]
pub struct KafkaSecurityArgs {
    /// plaintext, ssl, sasl_plaintext or sasl_ssl [default: plaintext].
    #[arg(
        long = "kafka-security-protocol",
        env = "TOKENTALLY_KAFKA_SECURITY_PROTOCOL",
        value_name = "PROTOCOL"
    )]
    pub security_protocol: Option<SecurityProtocol>,
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with a sasl_* protocol).
    #[arg(
        long = "kafka-sasl-mechanism",
        env = "TOKENTALLY_KAFKA_SASL_MECHANISM",
        value_name = "MECHANISM"
    )]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// SASL user name (with a sasl_* protocol).
    #[arg(
        long = "kafka-sasl-username",
        env = "TOKENTALLY_KAFKA_SASL_USERNAME",
        value_name = "USER"
    )]
    pub sasl_username: Option<String>,
    /// CA certificates (PEM) that sign the brokers' certificates [default:
    /// the system's].
    #[arg(
        long = "kafka-ssl-ca-location",
        env = "TOKENTALLY_KAFKA_SSL_CA_LOCATION",
        value_name = "FILE"
    )]
    pub ssl_ca_location: Option<PathBuf>,
}

impl KafkaArgs {
    pub fn apply(&self, config: &mut Config) {
        if let Some(b) = &self.brokers {
            config.kafka.brokers = b.clone();
        }
        if let Some(t) = &self.topic {
            config.kafka.topic = t.clone();
        }
        if let Some(t) = &self.dlq_topic {
            config.kafka.dlq_topic = t.clone();
        }
        self.security.apply(config);
    }
}

impl KafkaSecurityArgs {
    pub fn apply(&self, config: &mut Config) {
        let k = &mut config.kafka;
        if let Some(p) = self.security_protocol {
            k.security_protocol = p;
        }
        if let Some(m) = self.sasl_mechanism {
            k.sasl_mechanism = Some(m);
        }
        if let Some(u) = &self.sasl_username {
            k.sasl_username = Some(u.clone());
        }
        if let Some(ca) = &self.ssl_ca_location {
            k.ssl_ca_location = Some(ca.clone());
        }
    }
}
