//! Configuration: defaults, overridden by an optional TOML file
//! (`--config` / `TOKENTALLY_CONFIG`), overridden by environment variables
//! and flags. See README "Configuration" and `tokentally.example.toml`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};
use tokentally_aggregate::AggregatorConfig;
use tokentally_alerts::AlertsConfig;
use tokentally_common::files::read_bounded;
use tokentally_ingest::FleetConfig;
use tokentally_ingest::kafka::KafkaConfig;
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
    pub prices: PricesConfig,
}

/// `[prices]`: how event model ids find their price (see docs/SQL.md,
/// "Spend").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PricesConfig {
    /// Model id in events → model id in the price file, for ids neither
    /// matched exactly nor without their `provider/` prefix. Applied when
    /// `tokentally prices load` stores a table: load it again after a
    /// change.
    pub aliases: std::collections::BTreeMap<String, String>,
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

/// A config file is a few kilobytes; this bound is for a wrong path (a
/// log, a device) or a hostile file.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

impl Config {
    /// Load `path` if given; defaults otherwise.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let bytes = read_bounded(path, MAX_CONFIG_BYTES)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let text = std::str::from_utf8(&bytes)
            .with_context(|| format!("config file {} is not UTF-8", path.display()))?;
        Config::parse(text)
            .map_err(|e| anyhow::anyhow!("invalid config file {}: {e}", path.display()))
    }

    /// Parse a config file's text. The error says where and what, in at
    /// most a few hundred bytes: toml's own message quotes the whole
    /// offending line, which in a hostile file is a megabyte.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let mut message: String = e.message().chars().take(300).collect();
            if message.len() < e.message().len() {
                message.push('…');
            }
            match e.span() {
                Some(span) => {
                    let before = text.get(..span.start).unwrap_or(text);
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!("line {line}, column {column}: {message}")
                }
                None => message,
            }
        })
    }
}

/// The property the `config` fuzz target checks (`fuzz/`), and its
/// committed corpus replays (below): any bytes are a config, or an error
/// of at most a few hundred characters; never a panic.
#[doc(hidden)]
pub fn parse_is_bounded(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Err(e) = Config::parse(text)
    {
        let n = e.chars().count();
        assert!(n < 400, "an error of {n} characters: {e}");
    }
}

/// `--store`.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Store directory [default: ./tokentally-data, or [store] dir].
    // The doc is clap's help text, where brackets mean brackets.
    #[allow(rustdoc::broken_intra_doc_links)]
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
    fn the_example_webhooks_parse() {
        let text = include_str!("../tokentally.example.toml");
        let start = text
            .find("# [[alerts.webhooks]]")
            .expect("webhook examples");
        let end = text.find("webhooks = []").expect("webhooks key");
        let uncommented: String = text[start..end]
            .lines()
            .map(|l| l.strip_prefix('#').unwrap_or(l).trim_start())
            .map(|l| format!("{l}\n"))
            .collect();
        let cfg = Config::parse(&uncommented).expect("the commented webhooks are valid");
        let formats: Vec<_> = cfg.alerts.webhooks.iter().map(|w| w.format).collect();
        use tokentally_alerts::Format;
        assert_eq!(
            formats,
            [
                Format::Standard,
                Format::Slack,
                Format::Discord,
                Format::PagerDuty
            ]
        );
        assert_eq!(
            cfg.alerts.webhooks[3].severity,
            Some(tokentally_alerts::Severity::Info)
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = Config::parse("[store]\ndirr = \"x\"\n").unwrap_err();
        assert!(err.contains("line 2") && err.contains("dirr"), "{err}");
    }

    #[test]
    fn hostile_config_files_are_short_errors() {
        let deep = 100_000;
        let cases = [
            format!("x = {}{}", "[".repeat(deep), "]".repeat(deep)),
            format!("x = {}1{}", "{a=".repeat(deep), "}".repeat(deep)),
            format!("a{} = 1", ".a".repeat(deep)),
            format!("[store]\n{} = 1", "k".repeat(1 << 20)),
            format!("[store]\ndir = \"{}", "x".repeat(1 << 20)),
            "\u{0}[[[\u{feff}".to_string(),
        ];
        for text in cases {
            assert!(Config::parse(&text).is_err());
            parse_is_bounded(text.as_bytes());
        }
    }

    #[test]
    fn the_config_fuzz_corpus_holds() {
        let dir =
            Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
                .join("fuzz/corpus/config");
        tokentally_schemas::fuzzing::replay_corpus(&dir, parse_is_bounded);
    }

    #[test]
    fn a_config_file_past_the_bound_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.toml");
        std::fs::write(&path, "#".repeat(MAX_CONFIG_BYTES as usize + 1)).unwrap();
        let err = format!("{:#}", Config::load(Some(&path)).unwrap_err());
        assert!(
            err.contains("huge.toml") && err.contains("larger than"),
            "{err}"
        );
    }
}
