use clap::{Args, Subcommand};
use tokentally_alerts::{AlertState, STATE};
use tokentally_sink::embedded::{Finding, Report, verify};

use tokentally::config::{Config, StoreArgs};

/// Look after the local store.
#[derive(Debug, Args)]
pub struct StoreCmdArgs {
    #[command(subcommand)]
    pub command: StoreCommand,
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Read every committed file (manifest, Parquet deltas, dedup id
    /// segments, dead letters, alert state) and name each damaged one.
    /// Changes nothing; safe beside a running writer. Exits 1 when anything
    /// is damaged: README "A damaged store" says how to recover.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(mut config: Config, args: StoreCmdArgs) -> anyhow::Result<()> {
    match args.command {
        StoreCommand::Verify(a) => {
            config.apply_store(&a.store);
            let dir = config.store.dir;
            let mut report = tokio::task::spawn_blocking({
                let dir = dir.clone();
                move || verify(&dir)
            })
            .await??;
            verify_alert_state(&dir, &mut report);
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for f in &report.damaged {
                    println!("damaged  {}: {}", f.file, f.problem);
                }
                println!(
                    "store {}: generation {}, {} files read ({} rows, {} dedup ids), {} damaged",
                    dir.display(),
                    report.generation,
                    report.files,
                    report.rows,
                    report.ids,
                    report.damaged.len()
                );
            }
            if !report.damaged.is_empty() {
                anyhow::bail!(
                    "the store at {} is damaged; see README \"A damaged store\" to recover",
                    dir.display()
                );
            }
            Ok(())
        }
    }
}

/// The alert state of `tokentally demo`, kept in the store's `alerts/`.
fn verify_alert_state(dir: &std::path::Path, report: &mut Report) {
    let alerts = dir.join("alerts");
    if !alerts.join(STATE).exists() {
        return;
    }
    report.files += 1;
    if let Err(e) = AlertState::load(&alerts) {
        report.damaged.push(Finding {
            file: format!("alerts/{STATE}"),
            problem: e.to_string(),
        });
    }
}
