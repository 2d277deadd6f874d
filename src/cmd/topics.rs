use clap::{Args, Subcommand};
use tokentally_ingest::kafka::{TopicOutcome, create_topics};

use super::kafka_args::KafkaArgs;
use tokentally::config::Config;

/// Manage tokentally's Kafka topics. Topics are always created explicitly,
/// never by broker auto-creation.
#[derive(Debug, Args)]
pub struct TopicsArgs {
    #[command(subcommand)]
    pub command: TopicsCommand,
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create the events topic and the dead-letter topic (existing ones are kept).
    Create {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Partitions of the events topic [default: 12].
        #[arg(long, value_name = "N")]
        partitions: Option<i32>,
    },
}

pub async fn run(mut config: Config, args: TopicsArgs) -> anyhow::Result<()> {
    let TopicsCommand::Create { kafka, partitions } = args.command;
    kafka.apply(&mut config);
    if let Some(p) = partitions {
        anyhow::ensure!(p > 0, "--partitions must be at least 1");
        config.kafka.partitions = p;
    }
    let k = &config.kafka;
    let topics = [(k.topic.as_str(), k.partitions), (k.dlq_topic.as_str(), 1)];
    let results = create_topics(k, &topics)
        .await
        .map_err(|e| anyhow::anyhow!("creating topics on {} failed: {e}", k.brokers))?;
    for (name, outcome) in results {
        match outcome {
            TopicOutcome::Created => println!("created {name}"),
            TopicOutcome::AlreadyExists => println!("exists  {name}"),
        }
    }
    Ok(())
}
