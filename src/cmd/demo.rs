use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use arrow::array::{Array, AsArray};
use arrow::datatypes::{Decimal128Type, UInt64Type};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokentally_aggregate::pipeline;
use tokentally_aggregate::source::simulated::SimulatedSource;
use tokentally_alerts::rules::micros;
use tokentally_alerts::text::{headline, human_tokens, human_usd};
use tokentally_alerts::{
    Alerter, Milestone, Status, StoreTotals, Totals, TotalsSource, display_url,
};
use tokentally_ingest::Fleet;
use tokentally_schemas::prices::parse_litellm;
use tokentally_sink::embedded::prices as store_prices;
use tokentally_sink::embedded::{EmbeddedStore, StoreConfig, open_query_context};

use super::alerts::WebhookFormatArgs;
use super::serve::PageArgs;
use super::shutdown_signal;
use tokentally::config::Config;
use tokentally::serve::data::Backend;

/// Marker file that makes a directory a demo store (safe to reset).
const MARKER: &str = ".tokentally-demo";

/// Simulate one day of a large inference fleet, compressed into about a
/// minute: events stream through the same validation, dedup and DataFusion
/// roll-ups as production into a local store, with live progress, a
/// leaderboard of models by tokens today, and milestone alerts as models
/// cross 1B, 10B, 100B and 1T tokens. The store is reset on every run.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Demo store directory (recreated on each run; must be empty or a previous demo store).
    #[arg(
        long,
        env = "TOKENTALLY_DEMO_STORE",
        default_value = "tokentally-demo",
        value_name = "DIR"
    )]
    pub store: PathBuf,
    /// Requests to simulate over the day.
    #[arg(long, default_value_t = 10_000_000, value_name = "N")]
    pub events: u64,
    /// Tokens the whole fleet processes that day (the top model gets ~28%).
    #[arg(long, default_value_t = 5_000_000_000_000, value_name = "N")]
    pub tokens_per_day: u64,
    /// Wall-clock seconds the simulated day takes (0: as fast as possible).
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub wall_secs: f64,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Records per micro-batch.
    #[arg(long, default_value_t = 32_768, value_name = "N")]
    pub batch_records: usize,
    /// Models shown in the leaderboard.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub top: usize,
    /// Also deliver every milestone (thresholds, firsts, records) to this
    /// webhook, in --webhook-format. Delivery state goes to DIR/alerts.
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,
    #[command(flatten)]
    pub webhook_format: WebhookFormatArgs,
    /// Serve the rankings page (`tokentally serve`) while the day runs, and
    /// after it until Ctrl-C; prints the URL to open.
    #[arg(long)]
    pub serve: bool,
    /// Address of the rankings page, with --serve.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:8700",
        requires = "serve"
    )]
    pub listen: std::net::SocketAddr,
}

/// What the demo's milestone task ends with.
struct Watched {
    alerter: Alerter,
    totals: Totals,
    milestones: Vec<Milestone>,
}

/// The demo's milestones, from the same rules and alerter as `alerts run`.
/// One task owns the alerter and the running totals. Each batch's daily
/// deltas arrive in commit order (an unbounded channel: none is skipped),
/// and after each the rules run on the totals committed so far; new
/// milestones are shown at once. Due webhook deliveries go out every second.
fn spawn_watch(
    mut alerter: Alerter,
    mut deltas: tokio::sync::mpsc::UnboundedReceiver<Vec<arrow::array::RecordBatch>>,
    show: impl Fn(&str) + Send + 'static,
    board: ProgressBar,
    top: usize,
) -> tokio::task::JoinHandle<anyhow::Result<Watched>> {
    tokio::spawn(async move {
        let mut totals = Totals::default();
        let mut milestones = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                batch = deltas.recv() => {
                    let Some(batch) = batch else { break };
                    totals.apply_daily(&batch)?;
                    for m in alerter.detect(&totals)? {
                        // Provider and fleet milestones are recorded and
                        // delivered, not shown: the story is the models.
                        if m.model.is_some() {
                            show(&format!("MILESTONE {}", headline(&m)));
                        }
                        milestones.push(m);
                    }
                    board.set_message(leaderboard(&totals, top));
                }
                _ = tick.tick() => {
                    alerter.deliver_due().await?;
                }
            }
        }
        Ok(Watched {
            alerter,
            totals,
            milestones,
        })
    })
}

/// Resolves once `stop` says so.
fn stopped(stop: &tokio::sync::watch::Sender<bool>) -> impl Future<Output = ()> + Send + 'static {
    let mut rx = stop.subscribe();
    async move {
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
}

fn reset_store(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let is_demo = dir.join(MARKER).exists();
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if !is_demo && !empty {
            bail!(
                "{} exists and is not a demo store; pass --store with a new directory",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot reset {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join(MARKER),
        "created by `tokentally demo`; reset on each demo run\n",
    )?;
    Ok(())
}

/// The example price table the demo prices its day with (not real
/// prices; see the file's notice).
const EXAMPLE_PRICES: &str = include_str!("../../deploy/prices/example.json");

/// The final leaderboard: tokens and spend per model on `day`, from the
/// store's `cost_daily` (the view `tokentally query` reads).
async fn spend_leaderboard(store: &Path, day: &str, top: usize) -> anyhow::Result<String> {
    let ctx = open_query_context(store).await?;
    let sql = format!(
        "SELECT model, CAST(SUM(total_tokens) AS BIGINT UNSIGNED) AS tokens, SUM(cost_usd) AS cost \
         FROM cost_daily WHERE day = DATE '{day}' GROUP BY model ORDER BY tokens DESC, model"
    );
    let batches = ctx.sql(&sql).await?.collect().await?;
    let mut rows = Vec::new();
    for b in &batches {
        let models = b.column(0).as_string::<i32>();
        let tokens = b.column(1).as_primitive::<UInt64Type>();
        let cost = b.column(2).as_primitive::<Decimal128Type>();
        for i in 0..b.num_rows() {
            let cost = (!cost.is_null(i)).then(|| cost.value(i));
            rows.push((models.value(i).to_string(), tokens.value(i), cost));
        }
    }
    let spend: i128 = rows.iter().filter_map(|r| r.2).sum();
    let unpriced = rows.iter().filter(|r| r.2.is_none()).count();
    let mut s = format!(
        "Leaderboard {day} (tokens and spend today, at the example prices in deploy/prices/example.json)\n"
    );
    for (i, (model, tokens, cost)) in rows.iter().take(top).enumerate() {
        let cost = cost.map_or_else(|| "unpriced".to_string(), |c| human_usd(micros(c)));
        s.push_str(&format!(
            "{:>3}. {model:<40} {:>10} {cost:>16}\n",
            i + 1,
            human_tokens(*tokens)
        ));
    }
    s.push_str(&format!(
        "     spend of all models: {} ({unpriced} unpriced: see the view `unpriced`)",
        human_usd(micros(spend))
    ));
    Ok(s)
}

fn leaderboard(totals: &Totals, top: usize) -> String {
    let Some(day) = totals.latest_day() else {
        return "leaderboard: waiting for events".into();
    };
    let mut s = format!("Leaderboard {day} (tokens today)\n");
    for (i, (model, tokens)) in totals.leaderboard(day, top).iter().enumerate() {
        s.push_str(&format!(
            "{:>3}. {model:<40} {:>10}\n",
            i + 1,
            human_tokens(*tokens)
        ));
    }
    s.trim_end().to_string()
}

pub async fn run(mut config: Config, args: DemoArgs) -> anyhow::Result<()> {
    reset_store(&args.store)?;
    config.store = StoreConfig {
        dir: args.store.clone(),
        ..config.store
    };
    let mut fleet = config.simulator.clone();
    fleet.events = args.events;
    fleet.tokens_per_day = args.tokens_per_day;
    fleet.seed = args.seed;
    if fleet.duplicate_rate == 0.0 && fleet.malformed_rate == 0.0 && fleet.late_rate == 0.0 {
        fleet.duplicate_rate = 0.002;
        fleet.malformed_rate = 0.0005;
        fleet.late_rate = 0.001;
    }
    let mean = Fleet::new(fleet.clone()).mean_tokens_per_event();
    println!(
        "tokentally demo: one simulated day of {} requests ({} tokens, ~{} per request) in ~{:.0}s",
        args.events,
        human_tokens(args.tokens_per_day),
        human_tokens(mean as u64),
        args.wall_secs
    );
    println!(
        "  with {:.2}% duplicates, {:.2}% malformed lines and {:.2}% late events injected; store: {}\n",
        fleet.duplicate_rate * 100.0,
        fleet.malformed_rate * 100.0,
        fleet.late_rate * 100.0,
        args.store.display()
    );

    let wall = (args.wall_secs > 0.0).then(|| Duration::from_secs_f64(args.wall_secs));
    let mut source = SimulatedSource::start(fleet, args.batch_records, wall);
    let store = EmbeddedStore::open(config.store.clone())?;
    let prices = parse_litellm(EXAMPLE_PRICES.as_bytes(), &config.prices.aliases)
        .context("the example price table")?;
    // Valid from 1970-01-01: every simulated day is priced.
    let epoch = chrono::NaiveDate::from_epoch_days(0).expect("a valid date");
    store_prices::save(&args.store, epoch, &prices.prices)?;
    let mut alerts = config.alerts.clone();
    alerts.webhooks = args
        .webhook
        .iter()
        .map(|u| args.webhook_format.endpoint(u))
        .collect();
    let mut alerter = Alerter::open(&args.store.join("alerts"), alerts)?;
    // With the page up, Ctrl-C stops the day and then the page (without
    // it, Ctrl-C ends the process as usual).
    let (stop, _) = tokio::sync::watch::channel(false);
    let page = if args.serve {
        let signal = stop.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            signal.send_replace(true);
        });
        let page = PageArgs {
            listen: args.listen,
            alerts_state: None,
            query_timeout: Duration::from_secs(10),
            tokens_file: None,
            no_auth: false,
        };
        let backend = Backend::Store {
            dir: args.store.clone(),
            alerts: args.store.join("alerts"),
        };
        let (addr, server) = page.start(backend, stopped(&stop)).await?;
        println!("  rankings page: open http://{addr}/\n");
        Some((addr, tokio::spawn(server)))
    } else {
        None
    };
    // A first look at the empty store, so that everything after is news.
    alerter.detect(&Totals::default())?;
    if let Some(url) = &args.webhook {
        println!(
            "  milestones are also delivered to {} ({} format)\n",
            display_url(url),
            args.webhook_format.webhook_format
        );
    }

    let tty = std::io::stderr().is_terminal();
    let multi = MultiProgress::with_draw_target(if tty {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let bar = multi.add(ProgressBar::new(args.events));
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40.cyan/blue}] {human_pos}/{human_len} events  {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let board = multi.add(ProgressBar::new_spinner());
    board.set_style(ProgressStyle::with_template("{msg}").expect("valid template"));

    let show = {
        let multi = multi.clone();
        move |line: &str| {
            if tty {
                multi.suspend(|| println!("{line}"));
            } else {
                println!("{line}");
            }
        }
    };
    let (deltas, received) = tokio::sync::mpsc::unbounded_channel();
    let watch = spawn_watch(alerter, received, show, board.clone(), args.top);

    let started = Instant::now();
    let mut last_plain = Instant::now();
    let mut seen = 0u64;
    let mut tokens = 0u64;
    let stats = pipeline::run(
        &mut source,
        store,
        config.aggregate.clone(),
        None,
        |outcome| {
            seen += outcome.stats.records;
            tokens += outcome.stats.tokens;
            // The task ends only after this sender is dropped.
            let _ = deltas.send(outcome.deltas.daily.clone());
            bar.set_position(seen);
            let rate = seen as f64 / started.elapsed().as_secs_f64().max(1e-3);
            bar.set_message(format!(
                "{}/s  {} tokens",
                human_tokens(rate as u64),
                human_tokens(tokens)
            ));
            if !tty && last_plain.elapsed() >= Duration::from_secs(5) {
                last_plain = Instant::now();
                println!(
                    "progress: {seen}/{} events, {} tokens, {:.0}s",
                    args.events,
                    human_tokens(tokens),
                    started.elapsed().as_secs_f64()
                );
            }
        },
        {
            let serving = page.is_some();
            let stopped = stopped(&stop);
            async move {
                if serving {
                    stopped.await
                } else {
                    std::future::pending().await
                }
            }
        },
    )
    .await?;
    drop(deltas);
    let Watched {
        mut alerter,
        totals,
        milestones,
    } = watch.await??;
    bar.finish_and_clear();
    board.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    // The running totals the rules saw are the store's, or the demo is
    // wrong: check it against the store as `alerts run` would read it.
    let stored = StoreTotals {
        dir: args.store.clone(),
    }
    .read()
    .await?;
    anyhow::ensure!(
        stored.daily == totals.daily,
        "the demo's running totals differ from the store's usage_daily"
    );
    if args.webhook.is_some() {
        let deadline = Instant::now() + Duration::from_secs(30);
        while alerter.deliver_due().await? > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let deliveries: Vec<Status> = alerter
            .state()
            .milestones
            .values()
            .flat_map(|r| r.deliveries.values().map(|d| d.status))
            .collect();
        let delivered = deliveries
            .iter()
            .filter(|s| **s == Status::Delivered)
            .count();
        println!(
            "\nwebhook: {delivered} of {} milestones delivered (`tokentally alerts list --state {}` for details)",
            deliveries.len(),
            args.store.join("alerts").display()
        );
    }

    let day = totals.latest_day().unwrap_or_default();
    println!(
        "\n{}\n",
        spend_leaderboard(&args.store, day, args.top).await?
    );
    println!(
        "{} records in {elapsed:.1}s ({:.0} events/s): {} counted, {} duplicates dropped, {} rejected, {} late",
        stats.records,
        stats.records as f64 / elapsed.max(1e-9),
        stats.accepted,
        stats.duplicates,
        stats.rejected_total(),
        stats.late
    );
    println!(
        "{} milestones ({} about models, shown above; all in `tokentally alerts list --state {}`); {} tokens counted.\n",
        milestones.len(),
        milestones.iter().filter(|m| m.model.is_some()).count(),
        args.store.join("alerts").display(),
        human_tokens(stats.tokens)
    );
    let s = args.store.display();
    println!("Explore the result with SQL:");
    println!(
        "  tokentally query --store {s} \"SELECT model, total_tokens, requests FROM usage_daily WHERE day = DATE '{day}' ORDER BY total_tokens DESC LIMIT 10\""
    );
    println!(
        "  tokentally query --store {s} \"SELECT minute, SUM(total_tokens) AS tokens FROM usage_minute GROUP BY minute ORDER BY minute DESC LIMIT 5\""
    );
    println!(
        "  tokentally query --store {s} --format csv \"SELECT app, SUM(total_tokens) AS tokens FROM usage_app_daily GROUP BY app ORDER BY tokens DESC\""
    );
    println!(
        "  tokentally query --store {s} \"SELECT app, SUM(cost_usd) AS usd FROM cost_app_daily GROUP BY app ORDER BY usd DESC NULLS LAST\""
    );
    println!("  tokentally query --store {s} \"SELECT * FROM rejected\"");
    println!("(from a checkout: cargo run --release -- query --store {s} \"...\")");
    if let Some((addr, server)) = page {
        println!("\nThe rankings page stays up until Ctrl-C: open http://{addr}/");
        server.await??;
    }
    Ok(())
}
