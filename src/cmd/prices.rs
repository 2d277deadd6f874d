use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use chrono::NaiveDate;
use clap::{Args, Subcommand};
use tokentally_common::files::read_bounded;
use tokentally_schemas::prices::{MAX_PRICE_FILE_BYTES, PRICE_SCALE, parse_litellm};
use tokentally_sink::clickhouse::prices as ch_prices;
use tokentally_sink::embedded::prices::{self as store_prices, PriceVersion, prices_batch};

use super::clickhouse_args::ClickHouseArgs;
use super::query::{Format, write};
use tokentally::config::{Config, StoreArgs};

/// Price tables: turn the exact token totals into cost. `load` stores a
/// table in LiteLLM's `model_prices_and_context_window.json` format as the
/// version valid from a date; `list` shows the version in force. The views
/// `cost_daily`, `cost_app_daily` and `unpriced` price each day with the
/// newest version valid on it (docs/SQL.md, "Spend").
///
/// Where: the embedded store (`--store`, the default), or ClickHouse when
/// `--clickhouse URL` (or TOKENTALLY_CLICKHOUSE_URL) is given without
/// `--store` (after `tokentally migrate`).
#[derive(Debug, Args)]
pub struct PricesArgs {
    #[command(subcommand)]
    pub command: PricesCommand,
}

#[derive(Debug, Subcommand)]
pub enum PricesCommand {
    /// Store a price table. Nothing of a file with an error is stored:
    /// not JSON, a negative or non-numeric price, a model named twice, an
    /// alias to a model the file lacks. Prices are rounded half to even to
    /// 12 decimal digits (USD per token). `[prices] aliases` in the config
    /// are applied now.
    Load(LoadArgs),
    /// Show the version in force on a day (default: today, UTC).
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct Where {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The price file (LiteLLM's JSON format).
    pub file: PathBuf,
    /// First UTC day (YYYY-MM-DD) this table prices; days from then on use
    /// it until a version with a later date. A table loaded again with
    /// the same date replaces it [default: today].
    #[arg(long, value_name = "DATE")]
    pub valid_from: Option<NaiveDate>,
    #[command(flatten)]
    pub target: Where,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// The day (YYYY-MM-DD) whose prices to show [default: today].
    #[arg(long, value_name = "DATE")]
    pub on: Option<NaiveDate>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    #[command(flatten)]
    pub target: Where,
}

/// Which sink a command reads or writes (prices, `serve`): the store
/// unless ClickHouse was named and the store was not.
pub(super) enum Destination {
    Store(PathBuf),
    ClickHouse(Box<clickhouse::Client>, String),
}

pub(super) fn destination(config: &mut Config, target: &Where) -> anyhow::Result<Destination> {
    if target.store.store.is_none() && target.clickhouse.url.is_some() {
        target.clickhouse.apply(config)?;
        let ch = &config.clickhouse;
        return Ok(Destination::ClickHouse(
            Box::new(ch.client()?),
            ch.database.clone(),
        ));
    }
    config.apply_store(&target.store);
    Ok(Destination::Store(config.store.dir.clone()))
}

fn today() -> NaiveDate {
    chrono::Utc::now().date_naive()
}

pub async fn run(mut config: Config, args: PricesArgs) -> anyhow::Result<()> {
    match args.command {
        PricesCommand::Load(a) => load(&mut config, a).await,
        PricesCommand::List(a) => list(&mut config, a).await,
    }
}

async fn load(config: &mut Config, args: LoadArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let bytes = read_bounded(&args.file, MAX_PRICE_FILE_BYTES as u64)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let table = parse_litellm(&bytes, &config.prices.aliases)
        .with_context(|| format!("{}: nothing loaded", args.file.display()))?;
    let valid_from = args.valid_from.unwrap_or_else(today);
    let place = match destination(config, &args.target)? {
        Destination::Store(dir) => {
            store_prices::save(&dir, valid_from, &table.prices)
                .with_context(|| format!("storing the prices in {}", dir.display()))?;
            format!("the store at {}", dir.display())
        }
        Destination::ClickHouse(client, db) => {
            ch_prices::save(&client, &db, valid_from, &table.prices).await?;
            format!("ClickHouse database {db}")
        }
    };
    let aliases = table
        .prices
        .iter()
        .filter(|p| !p.alias_of.is_empty())
        .count();
    // Written, not printed: a closed stdout (`| head`) is an error, not a panic.
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "loaded {} priced models ({aliases} from aliases) valid from {valid_from} into {place} in {} ms",
        table.prices.len(),
        started.elapsed().as_millis()
    )?;
    if table.skipped > 0 {
        writeln!(
            out,
            "skipped {} entries without token prices",
            table.skipped
        )?;
    }
    if table.rounded > 0 {
        writeln!(
            out,
            "rounded {} prices to {PRICE_SCALE} decimal digits (half to even)",
            table.rounded
        )?;
    }
    if !table.shadowed_aliases.is_empty() {
        writeln!(
            out,
            "aliases not used, the file prices these ids itself (or without their provider/ prefix): {}",
            table.shadowed_aliases.join(", ")
        )?;
    }
    out.flush()?;
    Ok(())
}

async fn list(config: &mut Config, args: ListArgs) -> anyhow::Result<()> {
    let day = args.on.unwrap_or_else(today);
    let version: Option<PriceVersion> = match destination(config, &args.target)? {
        Destination::Store(dir) => store_prices::load_all(&dir)
            .with_context(|| format!("reading the prices in {}", dir.display()))?
            .into_iter()
            .rev()
            .find(|v| v.valid_from <= day),
        Destination::ClickHouse(client, db) => ch_prices::in_force(&client, &db, day).await?,
    };
    let Some(version) = version else {
        anyhow::bail!("no price table is valid on {day}: load one with `tokentally prices load`");
    };
    let batch = prices_batch(std::slice::from_ref(&version))?;
    let mut out = std::io::stdout().lock();
    write(&mut out, &[batch], args.format)?;
    out.flush()?;
    Ok(())
}
