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
        /// Replication factor [default: the number of brokers, at most 3].
        /// At 3 or more the topics also get min.insync.replicas=2.
        #[arg(long, value_name = "N")]
        replication: Option<i32>,
    },
}

pub async fn run(mut config: Config, args: TopicsArgs) -> anyhow::Result<()> {
    let TopicsCommand::Create {
        kafka,
        partitions,
        replication,
    } = args.command;
    kafka.apply(&mut config);
    if let Some(p) = partitions {
        anyhow::ensure!(p > 0, "--partitions must be at least 1");
        config.kafka.partitions = p;
    }
    if let Some(r) = replication {
        anyhow::ensure!(r > 0, "--replication must be at least 1");
        config.kafka.replication = Some(r);
    }
    let k = &config.kafka;
    let topics = [(k.topic.as_str(), k.partitions), (k.dlq_topic.as_str(), 1)];
    let created = create_topics(k, &topics)
        .await
        .map_err(|e| anyhow::anyhow!("creating topics on {} failed: {e}", k.brokers))?;
    let replicas = match created.min_insync_replicas {
        Some(n) => format!(
            "replication {}, min.insync.replicas {n}",
            created.replication
        ),
        None => format!("replication {}", created.replication),
    };
    for (name, outcome) in created.topics {
        match outcome {
            TopicOutcome::Created => println!("created {name} ({replicas})"),
            TopicOutcome::AlreadyExists => println!("exists  {name} (left as it is)"),
        }
    }
    Ok(())
}
