use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokentally_aggregate::pipeline;
use tokentally_aggregate::source::kafka::{KafkaSource, KafkaSourceConfig};
use tokentally_ingest::kafka::ensure_topics_exist;
use tokentally_sink::embedded::EmbeddedStore;

use super::ingest::Summary;
use super::kafka_args::KafkaArgs;
use crate::config::{AggregateArgs, Config, StoreArgs};

/// Consume the events topic as a member of a consumer group and roll it up
/// into a sink. Each micro-batch is committed to the sink atomically with
/// the Kafka offsets it covers; on start the aggregator resumes from the
/// sink's offsets, so restarts and crashes never lose or double-count an
/// event. Kafka's own committed offsets are advanced only after the sink
/// commit. Invalid records are kept in the sink's dead letters and mirrored
/// to the dead-letter topic with the reason in headers. SIGINT/SIGTERM stop
/// it between commits.
#[derive(Debug, Args)]
pub struct AggregateCmdArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Consumer group [default: tokentally-aggregator].
    #[arg(long, env = "TOKENTALLY_GROUP", value_name = "GROUP")]
    pub group: Option<String>,
    /// Where roll-ups go. (The ClickHouse sink is not built yet.)
    #[arg(long, value_enum, default_value_t = SinkKind::Embedded)]
    pub sink: SinkKind,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub aggregate: AggregateArgs,
    /// Longest a micro-batch waits to fill before it is committed (freshness).
    #[arg(long, default_value_t = 500, value_name = "MS")]
    pub max_wait_ms: u64,
    /// After SECS without new records on its partitions: commit and exit 0
    /// (backfills, tests). After a crash, use more than the 10s session
    /// timeout, so the dead member's partitions are reassigned first.
    #[arg(long, value_name = "SECS")]
    pub exit_on_idle: Option<f64>,
    /// Print the final summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SinkKind {
    /// The local Parquet store (one aggregator process per store directory).
    Embedded,
}

pub async fn run(mut config: Config, args: AggregateCmdArgs) -> anyhow::Result<()> {
    args.kafka.apply(&mut config);
    config.apply_store(&args.store);
    config.apply_aggregate(&args.aggregate);
    if let Some(g) = &args.group {
        config.kafka.group = g.clone();
    }
    let SinkKind::Embedded = args.sink;
    let k = config.kafka.clone();
    ensure_topics_exist(&k, &[&k.topic, &k.dlq_topic]).map_err(anyhow::Error::msg)?;
    let mut store = EmbeddedStore::open(config.store.clone())?;
    let mut source = KafkaSource::connect(KafkaSourceConfig {
        brokers: k.brokers.clone(),
        topic: k.topic.clone(),
        group: k.group.clone(),
        batch_records: config.source.batch_records,
        max_wait: Duration::from_millis(args.max_wait_ms),
        exit_on_idle: args.exit_on_idle.map(Duration::from_secs_f64),
    })
    .map_err(|e| anyhow::anyhow!("connecting to Kafka at {}: {e}", k.brokers))?;
    let dlq: FutureProducer = k
        .producer()
        .create()
        .context("creating the dead-letter producer")?;
    tracing::info!(brokers = %k.brokers, topic = %k.topic, group = %k.group, store = %store.dir().display(), "aggregating");

    let started = Instant::now();
    let run = pipeline::run(
        &mut source,
        &mut store,
        config.aggregate.clone(),
        None,
        |outcome| {
            tracing::debug!(records = outcome.stats.records, accepted = outcome.stats.accepted, progress = ?outcome.progress, "committed batch");
            for dl in &outcome.dead_letters {
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "reason",
                        value: Some(dl.rejection.reason.as_str()),
                    })
                    .insert(Header {
                        key: "field",
                        value: dl.rejection.field,
                    })
                    .insert(Header {
                        key: "detail",
                        value: Some(dl.rejection.detail.as_str()),
                    });
                let record = FutureRecord::<(), [u8]>::to(&k.dlq_topic)
                    .payload(&dl.raw)
                    .headers(headers);
                if let Err((e, _)) = dlq.send_result(record) {
                    // The store keeps every dead letter; the topic is a mirror.
                    tracing::warn!(error = %e, topic = %k.dlq_topic, "dead-letter mirror send failed");
                }
            }
        },
    );
    let stats = tokio::select! {
        r = run => r.context("aggregation failed; every batch committed before the failure is kept")?,
        _ = shutdown_signal() => {
            eprintln!("shutting down: the last committed batch is kept, the batch in flight will be read again");
            return Ok(());
        }
    };
    dlq.flush(Duration::from_secs(10))?;
    let summary = Summary::new(&stats, started, store.dir(), 0);
    let elapsed = summary.elapsed_s;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "{} records ({} accepted, {} duplicates, {} rejected, {} already committed) in {elapsed:.1}s",
            stats.records,
            stats.accepted,
            stats.duplicates,
            stats.rejected_total(),
            source.skipped_records()
        );
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
