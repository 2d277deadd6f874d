//! Configuration: defaults, overridden by an optional TOML file
//! (`--config` / `TOKENTALLY_CONFIG`), overridden by environment variables
//! and flags. See README "Configuration" and `tokentally.example.toml`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};
use tokentally_aggregate::AggregatorConfig;
use tokentally_ingest::FleetConfig;
use tokentally_ingest::kafka::KafkaConfig;
use tokentally_sink::alerts::AlertsConfig;
use tokentally_sink::clickhouse::ClickHouseConfig;
use tokentally_sink::embedded::StoreConfig;

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub store: StoreConfig,
    pub source: SourceConfig,
    pub aggregate: AggregatorConfig,
    pub simulator: FleetConfig,
    pub kafka: KafkaConfig,
    pub clickhouse: ClickHouseConfig,
    pub alerts: AlertsConfig,
}

/// `[source]`: how input is cut into micro-batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    /// Records per micro-batch; each batch is one atomic commit. Default 262,144.
    pub batch_records: usize,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            batch_records: 262_144,
        }
    }
}

impl Config {
    /// Load `path` if given; defaults otherwise.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }
}

/// `--store`.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Store directory [default: ./tokentally-data, or [store] dir].
    #[arg(long, env = "TOKENTALLY_STORE", value_name = "DIR")]
    pub store: Option<PathBuf>,
}

/// Flags that override `[aggregate]`.
#[derive(Debug, Clone, Args)]
pub struct AggregateArgs {
    /// Records per micro-batch (each batch is one atomic commit).
    #[arg(long, value_name = "N")]
    pub batch_records: Option<usize>,
    /// Upper bound for token counts in an event.
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<u64>,
    /// How far behind the newest event time ids are remembered for dedup (e.g. 24h).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub dedup_horizon: Option<Duration>,
    /// Most event ids remembered for dedup (~24 bytes of memory each).
    #[arg(long, value_name = "N")]
    pub dedup_max_ids: Option<usize>,
    /// Events older than the watermark by more than this count as late (e.g. 5m).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub allowed_lateness: Option<Duration>,
}

/// Flags that override `[simulator]`.
#[derive(Debug, Clone, Args)]
pub struct FleetArgs {
    /// Number of requests (events) to generate.
    #[arg(long, value_name = "N")]
    pub events: Option<u64>,
    /// Tokens the fleet processes per simulated day (sets tokens per request).
    #[arg(long, value_name = "N")]
    pub tokens_per_day: Option<u64>,
    /// Generator seed: the same seed gives the same traffic.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Start of the simulated day, epoch milliseconds [default: today 00:00 UTC].
    #[arg(long, value_name = "MS")]
    pub start_ms: Option<i64>,
    /// Share of lines that re-send an earlier event (0..1).
    #[arg(long, value_name = "RATE")]
    pub duplicate_rate: Option<f64>,
    /// A re-sent event is one of the last N events [default: 1024].
    #[arg(long, value_name = "N")]
    pub retry_window: Option<usize>,
    /// Share of events 1–6 hours late (0..1).
    #[arg(long, value_name = "RATE")]
    pub late_rate: Option<f64>,
    /// Share of malformed lines (0..1).
    #[arg(long, value_name = "RATE")]
    pub malformed_rate: Option<f64>,
}

impl Config {
    pub fn apply_store(&mut self, a: &StoreArgs) {
        if let Some(dir) = &a.store {
            self.store.dir = dir.clone();
        }
    }

    pub fn apply_aggregate(&mut self, a: &AggregateArgs) {
        if let Some(v) = a.batch_records {
            self.source.batch_records = v;
        }
        let s = &mut self.aggregate;
        if let Some(v) = a.max_tokens {
            s.limits.max_tokens = v;
        }
        if let Some(v) = a.dedup_horizon {
            s.dedup.horizon = v;
        }
        if let Some(v) = a.dedup_max_ids {
            s.dedup.max_ids = v;
        }
        if let Some(v) = a.allowed_lateness {
            s.allowed_lateness = v;
        }
    }

    pub fn apply_fleet(&mut self, a: &FleetArgs) -> anyhow::Result<()> {
        let s = &mut self.simulator;
        if let Some(v) = a.events {
            s.events = v;
        }
        if let Some(v) = a.tokens_per_day {
            s.tokens_per_day = v;
        }
        if let Some(v) = a.seed {
            s.seed = v;
        }
        if let Some(v) = a.start_ms {
            s.start_ms = Some(v);
        }
        if let Some(v) = a.retry_window {
            anyhow::ensure!(v >= 1, "--retry-window must be at least 1");
            s.retry_window = v;
        }
        for (name, flag, slot) in [
            ("--duplicate-rate", a.duplicate_rate, &mut s.duplicate_rate),
            ("--late-rate", a.late_rate, &mut s.late_rate),
            ("--malformed-rate", a.malformed_rate, &mut s.malformed_rate),
        ] {
            if let Some(v) = flag {
                anyhow::ensure!(
                    (0.0..=1.0).contains(&v),
                    "{name} must be between 0 and 1, got {v}"
                );
                *slot = v;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_matches_defaults() {
        let text = include_str!("../tokentally.example.toml");
        let cfg: Config = toml::from_str(text).expect("example config is valid");
        assert_eq!(cfg, Config::default(), "the example documents the defaults");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = toml::from_str::<Config>("[store]\ndirr = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("dirr"), "{err}");
    }
}
