use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use tokentally_aggregate::core::{BatchOutcome, BatchStats};
use tokentally_aggregate::metrics::PipelineMetrics;
use tokentally_aggregate::pipeline;
use tokentally_aggregate::sink::UsageSink;
use tokentally_aggregate::source::kafka::{KafkaSource, KafkaSourceConfig};
use tokentally_ingest::emitter::Emitter;
use tokentally_ingest::kafka::{Connection, KafkaConfig};
use tokentally_sink::clickhouse::{ClickHouseSink, SinkMetrics};
use tokentally_sink::embedded::EmbeddedStore;

use super::clickhouse_args::ClickHouseArgs;
use super::kafka_args::{KafkaArgs, TOPIC_CHECK_TIMEOUT};
use super::metrics::MetricsArgs;
use super::shutdown_signal;
use super::summary::Summary;
use tokentally::config::{AggregateArgs, Config, StoreArgs};
use tokentally::metrics::registry;

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
    /// Where roll-ups go.
    #[arg(long, value_enum, default_value_t = SinkKind::Embedded)]
    pub sink: SinkKind,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    #[command(flatten)]
    pub aggregate: AggregateArgs,
    /// Static group membership id (e.g. the pod or host name): a restarted
    /// aggregator with the same id takes its partitions back at once instead
    /// of waiting for the 10s session timeout.
    #[arg(long, env = "TOKENTALLY_INSTANCE_ID", value_name = "ID")]
    pub instance_id: Option<String>,
    /// Longest a micro-batch waits to fill before it is committed (freshness).
    /// After a full batch (a backlog), the next goes as soon as every assigned
    /// partition is read to its end.
    #[arg(long, default_value_t = 500, value_name = "MS")]
    pub max_wait_ms: u64,
    /// After SECS without new records, once every assigned partition has been
    /// read to its end: commit and exit 0 (backfills, tests). A broker outage
    /// is not idleness: it waits until the broker is back. Every rebalance
    /// starts the SECS afresh. A member with no partitions is idle too, so
    /// that members beyond the partition count leave. After a crash, use
    /// more than the 10s session timeout, so that the dead member's
    /// partitions are reassigned before the survivors leave.
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
    /// ClickHouse (run `tokentally migrate` first); any number of
    /// aggregators in one group may share it.
    Clickhouse,
}

pub async fn run(mut config: Config, args: AggregateCmdArgs) -> anyhow::Result<()> {
    args.kafka.apply(&mut config);
    config.apply_store(&args.store);
    config.apply_aggregate(&args.aggregate);
    args.clickhouse.apply(&mut config)?;
    if let Some(g) = &args.group {
        config.kafka.group = g.clone();
    }
    let k = config.kafka.clone();
    let dlq = Emitter::new(&KafkaConfig {
        topic: k.dlq_topic.clone(),
        ..k.clone()
    })
    .context("creating the dead-letter producer")?;
    let connection = k.connection()?;
    dlq.check_topics(&[&k.topic, &k.dlq_topic], TOPIC_CHECK_TIMEOUT)
        .map_err(|e| anyhow::anyhow!("{e} (on {connection})"))?;
    let registry = registry();
    let metrics = PipelineMetrics::register(&registry)?;
    match args.sink {
        SinkKind::Embedded => {
            let store = EmbeddedStore::open(config.store.clone())?;
            let at = store.dir().display().to_string();
            args.metrics.serve(&registry).await?;
            consume(&config, &args, connection, store, &at, metrics, dlq).await
        }
        SinkKind::Clickhouse => {
            let ch = config.clickhouse.clone();
            let sink = ClickHouseSink::connect(ch.clone(), config.aggregate.dedup.horizon)
                .await?
                .with_metrics(SinkMetrics::register(&registry)?);
            let at = format!(
                "{} (database {}, ClickHouse {})",
                ch.url,
                ch.database,
                sink.server().version
            );
            args.metrics.serve(&registry).await?;
            consume(&config, &args, connection, sink, &at, metrics, dlq).await
        }
    }
}

/// Run the consumer-group pipeline into `sink` until idle or a signal,
/// mirroring dead letters through `dlq`.
async fn consume<K: UsageSink + Send + 'static>(
    config: &Config,
    args: &AggregateCmdArgs,
    connection: Connection,
    sink: K,
    sink_name: &str,
    metrics: PipelineMetrics,
    dlq: Emitter,
) -> anyhow::Result<()> {
    let k = &config.kafka;
    let at = connection.to_string();
    let mut source = KafkaSource::connect(KafkaSourceConfig {
        connection,
        topic: k.topic.clone(),
        group: k.group.clone(),
        batch_records: config.source.batch_records,
        max_wait: Duration::from_millis(args.max_wait_ms),
        exit_on_idle: args.exit_on_idle.map(Duration::from_secs_f64),
        instance_id: args.instance_id.clone(),
        lag: Some(metrics.consumer_lag.clone()),
    })
    .map_err(|e| anyhow::anyhow!("connecting to Kafka at {at}: {e}"))?;
    tracing::info!(brokers = %at, topic = %k.topic, group = %k.group, sink = sink_name, "aggregating");

    let started = Instant::now();
    let stop = async {
        shutdown_signal().await;
        eprintln!(
            "shutting down: waiting (at most {:?}) for the batch being committed; the batch being read will be read again",
            pipeline::SHUTDOWN_GRACE
        );
    };
    let run = pipeline::run(
        &mut source,
        sink,
        config.aggregate.clone(),
        Some(metrics),
        |outcome| {
            tracing::debug!(records = outcome.stats.records, accepted = outcome.stats.accepted, progress = ?outcome.progress, "committed batch");
            mirror_dead_letters(&dlq, outcome);
        },
        stop,
    )
    .await;
    let stats: BatchStats = match run {
        Ok(stats) => stats,
        Err(e @ tokentally_aggregate::Error::Abandoned(_)) => {
            // Leaving the group now could let a new owner read the ledger
            // before that commit lands: exit without closing the consumer.
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context("aggregation failed; every batch committed before the failure is kept"));
        }
    };
    // Every queued dead letter is delivered or expired within the delivery
    // timeout (a broker that just restarted can take a while to accept an
    // idempotent producer again).
    dlq.flush(k.delivery_timeout + Duration::from_secs(5))
        .context("delivering the last dead letters to the dead-letter topic")?;
    let summary = Summary {
        already_committed: Some(source.skipped_records()),
        ..Summary::new(&stats, started, sink_name)
    };
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

/// Copy a committed batch's refused records to the dead-letter topic, with
/// the reason, field and detail in headers. The sink keeps every dead
/// letter; the topic is a mirror for tools that watch Kafka, best-effort:
/// this runs in the commit callback, which must not wait, so a record that
/// finds the producer's queue full is dropped (logged), and deliveries are
/// not awaited (the flush on exit waits for what is queued).
fn mirror_dead_letters(dlq: &Emitter, outcome: &BatchOutcome) {
    for dl in &outcome.dead_letters {
        let headers = [
            ("reason", Some(dl.rejection.reason.as_str())),
            ("field", dl.rejection.field),
            ("detail", Some(dl.rejection.detail.as_str())),
        ];
        if let Err(e) = dlq.enqueue_raw(&dl.raw, None, &headers) {
            tracing::warn!(error = %e, topic = dlq.topic(), "dead-letter mirror send failed");
        }
    }
}
