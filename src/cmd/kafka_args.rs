use clap::Args;

use tokentally::config::Config;

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
    }
}
