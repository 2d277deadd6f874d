use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokentally_aggregate::pipeline;
use tokentally_aggregate::source::simulated::SimulatedSource;
use tokentally_ingest::Fleet;
use tokentally_sink::alerts::{Alerter, Status, WebhookConfig, totals};
use tokentally_sink::embedded::{EmbeddedStore, StoreConfig};
use tokentally_sink::milestones::{Crossing, MilestoneTracker, human_tokens};

use tokentally::config::Config;

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
    /// webhook, signed with the whsec_ secret in TOKENTALLY_WEBHOOK_SECRET
    /// (Standard Webhooks). Delivery state goes to DIR/alerts.
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,
}

/// Deliver the store's milestones to the demo's webhook while the demo runs:
/// every second, read the totals, detect, deliver what is due. Stops when
/// `stop` turns true and hands the alerter back for a last round.
fn spawn_alerter(
    mut alerter: Alerter,
    store: PathBuf,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<anyhow::Result<Alerter>> {
    tokio::spawn(async move {
        while !*stop.borrow() {
            let t = totals::from_store(&store).await.ok();
            alerter.round(t.as_ref()).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok(alerter)
    })
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

fn date(day: i32) -> String {
    chrono::NaiveDate::from_num_days_from_ce_opt(day + 719_163)
        .map(|d| d.to_string())
        .unwrap_or_else(|| day.to_string())
}

fn milestone_line(c: &Crossing) -> String {
    let first = if c.first {
        " — the first model ever to do so"
    } else {
        ""
    };
    format!(
        "MILESTONE {}  {} crossed {} tokens in a day (now {}){first}",
        date(c.day),
        c.model,
        human_tokens(c.threshold),
        human_tokens(c.total)
    )
}

fn leaderboard(tracker: &MilestoneTracker, top: usize) -> String {
    let Some(day) = tracker.latest_day() else {
        return "leaderboard: waiting for events".into();
    };
    let mut s = format!("Leaderboard {} (tokens today)\n", date(day));
    for (i, (model, tokens)) in tracker.leaderboard(day, top).iter().enumerate() {
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
    let mut tracker = MilestoneTracker::new(config.alerts.rules.daily_thresholds.clone());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let alerts = match &args.webhook {
        Some(url) => {
            let mut alerts = config.alerts.clone();
            alerts.webhooks = vec![WebhookConfig::new(url)];
            let mut alerter = Alerter::open(&args.store.join("alerts"), alerts)?;
            // A first look at the empty store, so everything after is news.
            alerter.detect(&Default::default())?;
            println!("  milestones are also delivered to {url} (signed webhooks)\n");
            Some(spawn_alerter(alerter, args.store.clone(), stopped))
        }
        None => None,
    };

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

    let started = Instant::now();
    let mut last_plain = Instant::now();
    let mut seen = 0u64;
    let mut tokens = 0u64;
    let mut milestones = Vec::new();
    let stats = pipeline::run(
        &mut source,
        store,
        config.aggregate.clone(),
        None,
        |outcome| {
            seen += outcome.stats.records;
            tokens += outcome.stats.tokens;
            for c in tracker.apply_daily(&outcome.deltas.daily) {
                let line = milestone_line(&c);
                if tty {
                    multi.suspend(|| println!("{line}"));
                } else {
                    println!("{line}");
                }
                milestones.push(c);
            }
            bar.set_position(seen);
            let rate = seen as f64 / started.elapsed().as_secs_f64().max(1e-3);
            bar.set_message(format!(
                "{}/s  {} tokens",
                human_tokens(rate as u64),
                human_tokens(tokens)
            ));
            board.set_message(leaderboard(&tracker, args.top));
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
        std::future::pending(),
    )
    .await?;
    bar.finish_and_clear();
    board.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(task) = alerts {
        stop.send_replace(true);
        let mut alerter = task.await??;
        alerter.detect(&totals::from_store(&args.store).await?)?;
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

    println!("\n{}\n", leaderboard(&tracker, args.top));
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
        "{} milestones; {} tokens counted.\n",
        milestones.len(),
        human_tokens(stats.tokens)
    );
    let s = args.store.display();
    let day = tracker.latest_day().map(date).unwrap_or_default();
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
    println!("  tokentally query --store {s} \"SELECT * FROM rejected\"");
    println!("(from a checkout: cargo run --release -- query --store {s} \"...\")");
    Ok(())
}
