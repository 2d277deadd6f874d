use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use tokentally_alerts::source::mirror_to_clickhouse;
use tokentally_alerts::webhook::{Secret, Sender, verify};
use tokentally_alerts::{
    AlertMetrics, AlertState, Alerter, ClickHouseTotals, Format, Milestone, Severity, Status,
    StoreTotals, TotalsSource, WEBHOOK_SECRET_ENV, WebhookConfig, display_url,
};
use tokentally_common::secret::SecretSource;

use super::clickhouse_args::ClickHouseArgs;
use super::metrics::MetricsArgs;
use super::shutdown_signal;
use tokentally::config::{Config, StoreArgs};
use tokentally::metrics::registry;

/// Milestone alerts: detect milestones on the authoritative totals (the
/// ClickHouse database or an embedded store) and deliver each one, once, to
/// webhooks: signed JSON (Standard Webhooks: webhook-id, webhook-timestamp,
/// webhook-signature), Slack, Discord or PagerDuty. Rules and endpoints are
/// in `[alerts]` of the config file; see README "Milestone alerts".
#[derive(Debug, Args)]
pub struct AlertsArgs {
    #[command(subcommand)]
    pub command: AlertsCommand,
}

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Watch the totals and deliver milestones until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Show recorded milestones and their delivery state.
    List(ListArgs),
    /// Check a webhook signature: body on stdin, secret from
    /// TOKENTALLY_WEBHOOK_SECRET or --secret-file. Exit 0 when valid.
    Verify(VerifyArgs),
    /// Send one sample milestone to a webhook and say how it went.
    ///
    /// The sample is plainly a test: type "test", model
    /// tokentally/test-model, today's date, and an id
    /// test:model:tokentally/test-model:DAY:UNIX_MS, new on every run. It
    /// goes through the same code as `alerts run`: the endpoint's format,
    /// the standard format's signature, and the same retries (network
    /// errors, timeouts, 5xx, 408, 429, honouring Retry-After) until
    /// --give-up-after. Nothing is recorded in the alerter's state.
    ///
    /// Prints one line: the HTTP status when delivered; else the cause,
    /// and the exit status is non-zero. Keys come from files or the
    /// environment as for `alerts run`, never from flags.
    Test(TestArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Read totals from ClickHouse (else from the embedded store).
    #[arg(long)]
    pub from_clickhouse: bool,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub state: StateArgs,
    /// Deliver to this URL too; repeatable. Endpoints with their own
    /// settings are `[[alerts.webhooks]]` entries of the config file.
    #[arg(long, value_name = "URL")]
    pub webhook: Vec<String>,
    #[command(flatten)]
    pub webhook_format: WebhookFormatArgs,
    /// How often the totals are read, e.g. 500ms [default: [alerts] interval, 1s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub interval: Option<Duration>,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// `--webhook-format`, beside `--webhook URL` flags.
#[derive(Debug, Args)]
pub struct WebhookFormatArgs {
    /// Body and headers of the --webhook URLs: standard (signed JSON, the
    /// whsec_ secret in TOKENTALLY_WEBHOOK_SECRET), slack, discord, or
    /// pagerduty (the routing key in TOKENTALLY_PAGERDUTY_ROUTING_KEY).
    #[arg(long, value_name = "FORMAT", default_value = "standard")]
    pub webhook_format: Format,
}

impl WebhookFormatArgs {
    /// The endpoint of a `--webhook URL` flag.
    pub fn endpoint(&self, url: &str) -> WebhookConfig {
        WebhookConfig::new(url).with_format(self.webhook_format)
    }
}

#[derive(Debug, Args)]
pub struct StateArgs {
    /// Directory of the alerter's state (milestones, deliveries).
    #[arg(
        long,
        env = "TOKENTALLY_ALERTS_STATE",
        default_value = "tokentally-alerts",
        value_name = "DIR"
    )]
    pub state: PathBuf,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The endpoint to send the sample to.
    #[arg(long, value_name = "URL")]
    pub webhook: String,
    /// Body and headers: standard (signed JSON), slack, discord or
    /// pagerduty.
    #[arg(
        long,
        alias = "webhook-format",
        value_name = "FORMAT",
        default_value = "standard"
    )]
    pub format: Format,
    /// Standard format: file holding the whsec_ secret (else
    /// TOKENTALLY_WEBHOOK_SECRET).
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// PagerDuty format: file holding the routing key (else
    /// TOKENTALLY_PAGERDUTY_ROUTING_KEY).
    #[arg(long, value_name = "PATH")]
    pub routing_key_file: Option<PathBuf>,
    /// CA certificates (PEM) trusted for an https:// receiver besides the
    /// system's.
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// PagerDuty format: critical, error, warning or info [default: info].
    #[arg(long, value_name = "SEVERITY")]
    pub severity: Option<Severity>,
    /// Stop retrying after this long, e.g. 5s.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "30s",
        value_parser = humantime::parse_duration
    )]
    pub give_up_after: Duration,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The `webhook-id` header.
    #[arg(long)]
    pub id: String,
    /// The `webhook-timestamp` header.
    #[arg(long)]
    pub timestamp: String,
    /// The `webhook-signature` header.
    #[arg(long)]
    pub signature: String,
    /// File holding the whsec_ secret (else TOKENTALLY_WEBHOOK_SECRET).
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
}

pub async fn run(config: Config, args: AlertsArgs) -> anyhow::Result<()> {
    match args.command {
        AlertsCommand::Run(a) => run_alerts(config, a).await,
        AlertsCommand::List(a) => list(a),
        AlertsCommand::Verify(a) => verify_cmd(a),
        AlertsCommand::Test(a) => test_cmd(&config, a).await,
    }
}

async fn test_cmd(config: &Config, args: TestArgs) -> anyhow::Result<()> {
    let endpoint = WebhookConfig {
        secret_file: args.secret_file,
        routing_key_file: args.routing_key_file,
        severity: args.severity,
        ca_file: args.ca_file,
        ..WebhookConfig::new(&args.webhook).with_format(args.format)
    }
    .resolve()?;
    let sample = Milestone::sample(chrono::Utc::now());
    let sender = Sender::new(config.alerts.request_timeout, [&endpoint.config.ca_file])?;
    let shown = display_url(&args.webhook);
    let format = args.format;
    match endpoint
        .deliver_now(&sender, &sample, args.give_up_after)
        .await
    {
        Ok(status) => {
            println!(
                "delivered: HTTP {status} from {shown} ({format} format, sample milestone {})",
                sample.id
            );
            Ok(())
        }
        Err(e) => anyhow::bail!("not delivered to {shown} ({format} format): {e}"),
    }
}

async fn run_alerts(mut config: Config, args: RunArgs) -> anyhow::Result<()> {
    args.clickhouse.apply(&mut config)?;
    config.apply_store(&args.store);
    let mut alerts = config.alerts.clone();
    alerts
        .webhooks
        .extend(args.webhook.iter().map(|u| args.webhook_format.endpoint(u)));
    if let Some(i) = args.interval {
        alerts.interval = i;
    }
    let registry = registry();
    let mut alerter =
        Alerter::open(&args.state.state, alerts)?.with_metrics(AlertMetrics::register(&registry)?);
    args.metrics.serve(&registry).await?;
    if args.from_clickhouse {
        let source = ClickHouseTotals {
            client: config.clickhouse.client()?,
            database: config.clickhouse.database.clone(),
            url: config.clickhouse.url.clone(),
        };
        watch(&mut alerter, &source, Some(&source), &args.state.state).await
    } else {
        let source = StoreTotals {
            dir: config.store.dir.clone(),
        };
        watch(&mut alerter, &source, None, &args.state.state).await
    }
}

/// Every interval: read the totals, detect and deliver, and copy new
/// milestones to ClickHouse when `mirror` is given. Runs until an error or
/// a shutdown signal.
async fn watch(
    alerter: &mut Alerter,
    source: &impl TotalsSource,
    mirror: Option<&ClickHouseTotals>,
    state: &Path,
) -> anyhow::Result<()> {
    eprintln!(
        "watching {} every {:?}; state in {}",
        source.describe(),
        alerter.interval(),
        state.display()
    );
    tokio::select! {
        r = rounds(alerter, source, mirror) => r,
        _ = shutdown_signal() => Ok(()),
    }
}

async fn rounds(
    alerter: &mut Alerter,
    source: &impl TotalsSource,
    mirror: Option<&ClickHouseTotals>,
) -> anyhow::Result<()> {
    loop {
        let read = source.read().await;
        // Totals unavailable (server down, store not created yet): keep
        // delivering what is pending, try again next round.
        if let Err(e) = &read {
            tracing::warn!(error = %e, "reading totals failed");
        }
        for m in alerter.round(read.ok().as_ref()).await? {
            eprintln!("milestone {}: {}", m.id, serde_json::to_string(&m)?);
        }
        if let Some(ch) = mirror {
            let pending = alerter.unmirrored();
            match mirror_to_clickhouse(&ch.client, &ch.database, &pending).await {
                Ok(()) if !pending.is_empty() => {
                    let ids: Vec<String> = pending.into_iter().map(|m| m.id).collect();
                    alerter.mark_mirrored(&ids)?;
                }
                Ok(()) => {}
                Err(e) => tracing::warn!(
                    error = %e,
                    "recording milestones in ClickHouse failed; retrying next round"
                ),
            }
        }
        tokio::time::sleep(alerter.interval()).await;
    }
}

fn list(args: ListArgs) -> anyhow::Result<()> {
    // Endpoint URLs are shown without their path: for Slack and Discord it
    // holds the token.
    let state = AlertState::load(&args.state.state)?
        .unwrap_or_default()
        .shown();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&state)?);
        return Ok(());
    }
    if state.milestones.is_empty() {
        println!("no milestones recorded in {}", args.state.state.display());
    }
    for (id, r) in &state.milestones {
        let m = &r.milestone;
        println!("{id}  value={}  detected_at={}", m.value, m.detected_at);
        for (url, d) in &r.deliveries {
            let status = match d.status {
                Status::Pending => "pending",
                Status::Delivered => "delivered",
                Status::Failed => "failed",
                Status::Disabled => "disabled",
                Status::Skipped => "skipped (before first start)",
            };
            let err = d
                .last_error
                .as_deref()
                .map(|e| format!(" last error: {e}"))
                .unwrap_or_default();
            println!("    {url}: {status} after {} attempt(s){err}", d.attempts);
        }
    }
    for url in &state.disabled {
        println!("endpoint disabled (410): {url}");
    }
    Ok(())
}

fn verify_cmd(args: VerifyArgs) -> anyhow::Result<()> {
    let text = SecretSource::new(WEBHOOK_SECRET_ENV, args.secret_file.as_deref())
        .read()?
        .with_context(|| format!("set {WEBHOOK_SECRET_ENV} or pass --secret-file"))?;
    let secret = Secret::parse(text.first_line())?;
    let mut body = Vec::new();
    std::io::stdin().read_to_end(&mut body)?;
    let now = chrono::Utc::now().timestamp();
    verify(
        &secret,
        &args.id,
        &args.timestamp,
        &args.signature,
        &body,
        now,
    )
    .map_err(|e| anyhow::anyhow!("invalid webhook: {e}"))?;
    println!("valid");
    Ok(())
}
