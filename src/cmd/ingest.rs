use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use tokentally_aggregate::pipeline;
use tokentally_aggregate::source::file::{FileSource, Input};
use tokentally_sink::embedded::EmbeddedStore;

use super::summary::Summary;
use tokentally::config::{AggregateArgs, Config, StoreArgs};

/// Read NDJSON events (one per line) through validation, dedup and roll-up
/// into the store. Invalid lines go to DIR/dead-letter/*.ndjson with their
/// reasons. Each micro-batch is committed atomically with the file offset it
/// reached, so ingesting the same file again (after a crash, or by mistake)
/// continues after the last committed line; events already counted from any
/// other file are dropped as duplicates (by event_id, within the dedup
/// horizon).
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// NDJSON input file, or - for standard input.
    #[arg(long, value_name = "PATH")]
    pub file: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub aggregate: AggregateArgs,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(mut config: Config, args: IngestArgs) -> anyhow::Result<()> {
    config.apply_store(&args.store);
    config.apply_aggregate(&args.aggregate);
    let store = EmbeddedStore::open(config.store.clone())?;
    let dir = store.dir().to_path_buf();
    let mut source = FileSource::open(Input::parse(&args.file), config.source.batch_records)?;
    let started = Instant::now();
    let stats = pipeline::run(
        &mut source,
        store,
        config.aggregate.clone(),
        None,
        |_| {},
        std::future::pending(),
    )
    .await
    .context("ingest failed; the store keeps every batch committed before the failure")?;
    let summary = Summary {
        resumed_at_byte: Some(source.skipped_bytes()),
        ..Summary::new(&stats, started, dir.display())
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(())
}

fn print_summary(s: &Summary<'_>) {
    if let Some(byte) = s.resumed_at_byte.filter(|b| *b > 0) {
        println!("resumed after byte {byte} (committed by an earlier run)");
    }
    println!("records     {:>12}", s.stats.records);
    println!("accepted    {:>12}", s.stats.accepted);
    println!("duplicates  {:>12}", s.stats.duplicates);
    println!("rejected    {:>12}", s.rejected_total);
    for (reason, n) in &s.stats.rejected {
        println!("  {:<22}{n:>8}", reason.as_str());
    }
    println!("late        {:>12}", s.stats.late);
    println!("tokens      {:>12}", s.stats.tokens);
    println!(
        "elapsed     {:>11.2}s  ({:.0} events/s)",
        s.elapsed_s, s.events_per_s
    );
    println!("store       {}", s.sink);
    if s.rejected_total > 0 {
        println!("dead letters: {}/dead-letter/*.ndjson", s.sink);
    }
}
