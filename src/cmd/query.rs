use std::io::Write;

use anyhow::Context;
use arrow::array::RecordBatch;
use clap::{Args, ValueEnum};
use tokentally_sink::embedded::{open_query_context, verify};

use tokentally::config::{Config, StoreArgs};

/// Run SQL (DataFusion dialect) over the store. Tables: usage_daily(day,
/// model, provider, requests, prompt_tokens, completion_tokens, total_tokens,
/// cached_tokens, reasoning_tokens, error_requests), usage_minute(minute,
/// model, ...), usage_app_daily(day, app, model, requests, prompt_tokens,
/// completion_tokens, total_tokens, cached_tokens, reasoning_tokens),
/// rejected(reason, count); spend: prices, cost_daily(day, model, provider,
/// requests, prompt_tokens, cached_tokens, completion_tokens,
/// reasoning_tokens, total_tokens, cost_usd), cost_app_daily(day, app,
/// model, ...), unpriced(model, provider, first_day, last_day, requests,
/// total_tokens).
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The SQL statement.
    pub sql: String,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

pub async fn run(mut config: Config, args: QueryArgs) -> anyhow::Result<()> {
    config.apply_store(&args.store);
    let ctx = open_query_context(&config.store.dir).await?;
    let df = ctx.sql(&args.sql).await.context("invalid query")?;
    let batches = match df.collect().await {
        Ok(b) => b,
        Err(e) => return Err(damage_or(&config.store.dir, e)),
    };
    let mut out = std::io::stdout().lock();
    write(&mut out, &batches, args.format)?;
    out.flush()?;
    Ok(())
}

pub fn write(out: &mut impl Write, batches: &[RecordBatch], format: Format) -> anyhow::Result<()> {
    match format {
        Format::Table => writeln!(
            out,
            "{}",
            arrow::util::pretty::pretty_format_batches(batches)?
        )?,
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(out);
            for b in batches {
                w.write(b)?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::ArrayWriter::new(&mut *out);
            let refs: Vec<&RecordBatch> = batches.iter().collect();
            w.write_batches(&refs)?;
            w.finish()?; // writes `[]` for an empty result too
            writeln!(out)?;
        }
    }
    Ok(())
}

/// A query that failed on the store's files: name the damaged ones (a
/// DataFusion error names none), or else give the error as it is.
fn damage_or(dir: &std::path::Path, e: datafusion::error::DataFusionError) -> anyhow::Error {
    let damaged = verify(dir).map(|r| r.damaged).unwrap_or_default();
    if damaged.is_empty() {
        return anyhow::Error::new(e).context("query failed");
    }
    let files: Vec<String> = damaged
        .iter()
        .map(|f| format!("{}: {}", f.file, f.problem))
        .collect();
    anyhow::anyhow!(
        "query failed: {e}; the store at {} is damaged ({}); see README \"A damaged store\"",
        dir.display(),
        files.join("; ")
    )
}
