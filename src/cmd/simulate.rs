use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tokentally_ingest::Fleet;

use super::kafka_args::KafkaSecurityArgs;
use super::produce::LineSender;

use super::metrics::MetricsArgs;
use tokentally::config::{Config, FleetArgs};
use tokentally::metrics::{register_simulate, registry};

/// Simulated fleet traffic: a seeded, deterministic mix of real-looking
/// models (Zipf-like popularity), log-normal token counts and apps, with
/// optional duplicates, late events and malformed lines. Written as NDJSON
/// (pipe it into `tokentally ingest --file -`), or with --kafka produced to
/// the events topic, optionally paced with --rate.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Output file, or - for standard output.
    #[arg(long, value_name = "PATH", default_value = "-")]
    pub out: PathBuf,
    /// Produce to Kafka at these bootstrap servers instead of writing NDJSON.
    #[arg(long = "kafka", value_name = "BROKERS")]
    pub kafka: Option<String>,
    /// Events topic when producing [default: token-events].
    #[arg(long, value_name = "TOPIC", requires = "kafka")]
    pub topic: Option<String>,
    /// Target rate in events/s when producing [default: as fast as possible].
    #[arg(long, value_name = "EVENTS_PER_S", requires = "kafka")]
    pub rate: Option<f64>,
    #[command(flatten)]
    pub kafka_security: KafkaSecurityArgs,
    #[command(flatten)]
    pub fleet: FleetArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

pub async fn run(mut config: Config, args: SimulateArgs) -> anyhow::Result<()> {
    config.apply_fleet(&args.fleet)?;
    if let Some(brokers) = &args.kafka {
        config.kafka.brokers = brokers.clone();
        args.kafka_security.apply(&mut config);
        if let Some(t) = &args.topic {
            config.kafka.topic = t.clone();
        }
        let registry = registry();
        let produced = register_simulate(&registry)?;
        args.metrics.serve(&registry).await?;
        return to_kafka(config, args.rate, produced).await;
    }
    let sink: Box<dyn Write> = if args.out.as_os_str() == "-" {
        Box::new(io::stdout().lock())
    } else {
        Box::new(
            File::create(&args.out)
                .with_context(|| format!("cannot create {}", args.out.display()))?,
        )
    };
    let mut out = BufWriter::with_capacity(1 << 20, sink);
    let mut fleet = Fleet::new(config.simulator);
    let mut line = Vec::with_capacity(512);
    while fleet.next_line(&mut line).is_some() {
        line.push(b'\n');
        match out.write_all(&line) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            r => r?,
        }
        line.clear();
    }
    match out.flush() {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

async fn to_kafka(
    config: Config,
    rate: Option<f64>,
    produced: prometheus::IntCounter,
) -> anyhow::Result<()> {
    if let Some(r) = rate {
        anyhow::ensure!(r > 0.0, "--rate must be positive, got {r}");
    }
    let total = config.simulator.events;
    let mut out = LineSender::new(&config.kafka)?;
    let mut fleet = Fleet::new(config.simulator);
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {human_pos}/{human_len} events  {msg}",
        )
        .expect("valid template"),
    );
    let started = Instant::now();
    let mut line = Vec::with_capacity(512);
    while fleet.next_line(&mut line).is_some() {
        out.send(&line).await?;
        line.clear();
        let sent = out.sent();
        if sent % 1024 == 0 {
            if let Some(r) = rate {
                let due = Duration::from_secs_f64(sent as f64 / r);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
            produced.inc_by(1024);
            bar.set_position(sent);
            bar.set_message(format!(
                "{:.0}/s",
                sent as f64 / started.elapsed().as_secs_f64().max(1e-3)
            ));
        }
    }
    let sent = out.finish().await?;
    produced.inc_by(sent % 1024);
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "produced {sent} simulated events to {} in {elapsed:.2}s ({:.0} events/s)",
        config.kafka.topic,
        sent as f64 / elapsed.max(1e-9)
    );
    Ok(())
}
