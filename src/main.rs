//! `tokentally`: real-time token-usage metrics for LLM inference fleets.

mod cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use tokentally::config::Config;

#[derive(Parser)]
#[command(
    name = "tokentally",
    version,
    about = "Real-time token-usage metrics for LLM inference fleets",
    long_about = "Real-time token-usage metrics for LLM inference fleets.\n\n\
        Inference nodes emit one JSON event per request (see docs/EVENTS.md). tokentally \
        validates, deduplicates (by event_id) and rolls them up with DataFusion into exact \
        per-model per-day, per-minute and per-app totals, stored as Parquet deltas and \
        queryable with SQL.\n\n\
        Start with `tokentally demo`, then `tokentally query --store tokentally-demo \"SELECT ...\"`."
)]
struct Cli {
    /// TOML configuration file (see tokentally.example.toml); flags and environment override it.
    #[arg(long, global = true, env = "TOKENTALLY_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Log format on stderr (level from RUST_LOG, default warn).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Simulate a fleet's day through the pipeline into a local store, live.
    Demo(cmd::demo::DemoArgs),
    /// Read NDJSON events from a file or stdin into the store.
    Ingest(cmd::ingest::IngestArgs),
    /// Run SQL over the store (tables usage_daily, usage_minute, usage_app_daily, rejected).
    Query(cmd::query::QueryArgs),
    /// Check the local store: `store verify` names every damaged file.
    Store(cmd::store::StoreCmdArgs),
    /// Write simulated fleet traffic as NDJSON.
    Simulate(cmd::simulate::SimulateArgs),
    /// Create tokentally's Kafka topics.
    Topics(cmd::topics::TopicsArgs),
    /// Send NDJSON lines to the events topic as they are (replays, backfills, tests).
    Produce(cmd::produce::ProduceArgs),
    /// Consume the events topic into a sink, exactly once.
    Aggregate(cmd::aggregate::AggregateCmdArgs),
    /// Milestone alerts: detect, record, and deliver signed webhooks.
    Alerts(cmd::alerts::AlertsArgs),
    /// Create or upgrade the ClickHouse schema (idempotent).
    Migrate(cmd::migrate::MigrateArgs),
    /// Price tables for spend: `prices load FILE`, `prices list`.
    Prices(cmd::prices::PricesArgs),
    /// The rankings page: tokens per model per day in a browser, live, read-only.
    Serve(cmd::serve::ServeArgs),
    /// HTTP ingest gateway: POST /v1/events and OTLP's POST /v1/traces → validated → Kafka, answered after Kafka acknowledged.
    Gateway(cmd::gateway::GatewayArgs),
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = Config::load(cli.config.as_deref()).and_then(|config| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            match cli.command {
                Command::Demo(a) => cmd::demo::run(config, a).await,
                Command::Ingest(a) => cmd::ingest::run(config, a).await,
                Command::Query(a) => cmd::query::run(config, a).await,
                Command::Simulate(a) => cmd::simulate::run(config, a).await,
                Command::Store(a) => cmd::store::run(config, a).await,
                Command::Topics(a) => cmd::topics::run(config, a).await,
                Command::Produce(a) => cmd::produce::run(config, a).await,
                Command::Aggregate(a) => cmd::aggregate::run(config, a).await,
                Command::Migrate(a) => cmd::migrate::run(config, a).await,
                Command::Prices(a) => cmd::prices::run(config, a).await,
                Command::Alerts(a) => cmd::alerts::run(config, a).await,
                Command::Gateway(a) => cmd::gateway::run(config, a).await,
                Command::Serve(a) => cmd::serve::run(config, a).await,
            }
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", tokentally_common::error::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
