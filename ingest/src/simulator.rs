//! The fleet simulator: a deterministic, seeded generator of realistic
//! token-usage traffic.
//!
//! - models follow a Zipf-like popularity (see [`crate::catalog::MODELS`]);
//! - prompt and completion tokens are log-normal, scaled so the fleet
//!   processes `tokens_per_day` tokens over the simulated day;
//! - event times are spread evenly over `span` from `start_ms` (time
//!   compression is the caller's pacing, see [`Fleet::sim_time_of`]);
//! - optional duplicates (the same event re-sent), late events (hours old)
//!   and malformed lines, each at a configurable rate.
//!
//! The same seed and config always give the same lines.

use std::time::Duration;

use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::LogNormal;
use serde::{Deserialize, Serialize};
use tokentally_schemas::{Status, TokenEvent};

use crate::catalog::{APPS, MODELS, REASONING_MODELS, REGIONS};

/// Simulator settings (`[simulator]` in the config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// Seed of the generator: the same seed gives the same traffic.
    pub seed: u64,
    /// Number of events (requests) in the simulated span.
    pub events: u64,
    /// Tokens the whole fleet processes per simulated day; with `events`
    /// this sets the mean tokens per request.
    pub tokens_per_day: u64,
    /// Start of the simulated span, epoch ms (UTC). Default: today 00:00 UTC.
    pub start_ms: Option<i64>,
    /// Length of simulated time the events cover. Default 24h.
    #[serde(with = "humantime_serde")]
    pub span: Duration,
    /// Zipf exponent of model popularity (higher: the top model dominates).
    pub zipf_exponent: f64,
    /// Share of lines that re-send an earlier event (same `event_id`).
    pub duplicate_rate: f64,
    /// A re-sent event is one of the last this many events: how far behind
    /// its original a retry can arrive, in lines. Default 1024; fault tests
    /// use tens of thousands, so that retries straddle crashes and
    /// rebalances.
    pub retry_window: usize,
    /// Share of events whose time is 1–6 hours behind the stream.
    pub late_rate: f64,
    /// Share of lines that are malformed.
    pub malformed_rate: f64,
    /// Share of requests with `status: "error"`.
    pub error_rate: f64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            seed: 42,
            events: 1_000_000,
            tokens_per_day: 1_000_000_000_000,
            start_ms: None,
            span: Duration::from_secs(24 * 3600),
            zipf_exponent: 1.1,
            duplicate_rate: 0.0,
            retry_window: 1024,
            late_rate: 0.0,
            malformed_rate: 0.0,
            error_rate: 0.01,
        }
    }
}

/// Mean prompt share of a request's tokens.
const PROMPT_SHARE: f64 = 0.8;
/// Spread of the log-normal token counts.
const TOKEN_SIGMA: f64 = 0.9;

/// A simulated fleet: an iterator of NDJSON lines (without newlines).
pub struct Fleet {
    config: FleetConfig,
    rng: ChaCha8Rng,
    start_ms: i64,
    span_ms: i64,
    models: WeightedIndex<f64>,
    apps: WeightedIndex<f64>,
    prompt: LogNormal<f64>,
    completion: LogNormal<f64>,
    recent: Vec<Vec<u8>>,
    emitted: u64,
}

/// Today 00:00 UTC in epoch ms.
pub fn today_start_ms() -> i64 {
    let now = chrono::Utc::now().timestamp_millis();
    now - now.rem_euclid(86_400_000)
}

fn lognormal_with_mean(mean: f64) -> LogNormal<f64> {
    let mu = mean.max(1.0).ln() - TOKEN_SIGMA * TOKEN_SIGMA / 2.0;
    LogNormal::new(mu, TOKEN_SIGMA).expect("valid log-normal parameters")
}

fn zipf(n: usize, s: f64) -> WeightedIndex<f64> {
    WeightedIndex::new((1..=n).map(|i| 1.0 / (i as f64).powf(s))).expect("non-empty weights")
}

impl Fleet {
    pub fn new(config: FleetConfig) -> Self {
        let start_ms = config.start_ms.unwrap_or_else(today_start_ms);
        let span_ms = (config.span.as_millis() as i64).max(1);
        let mean_tokens = config.tokens_per_day as f64 / config.events.max(1) as f64
            * (config.span.as_secs_f64() / 86_400.0);
        Fleet {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            start_ms,
            span_ms,
            models: zipf(MODELS.len(), config.zipf_exponent),
            apps: zipf(APPS.len(), 0.9),
            prompt: lognormal_with_mean(mean_tokens * PROMPT_SHARE),
            completion: lognormal_with_mean(mean_tokens * (1.0 - PROMPT_SHARE)),
            recent: Vec::with_capacity(config.retry_window.clamp(1, 1 << 16)),
            emitted: 0,
            config,
        }
    }

    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    /// Lines emitted so far.
    pub fn emitted(&self) -> u64 {
        self.emitted
    }

    /// Mean tokens per request implied by the config.
    pub fn mean_tokens_per_event(&self) -> f64 {
        self.config.tokens_per_day as f64 / self.config.events.max(1) as f64
            * (self.config.span.as_secs_f64() / 86_400.0)
    }

    /// Simulated event time of the `i`-th line (before jitter and lateness).
    pub fn sim_time_of(&self, i: u64) -> i64 {
        let frac = i as f64 / self.config.events.max(1) as f64;
        self.start_ms + (frac * self.span_ms as f64) as i64
    }

    /// Append the next line to `out` (no newline). `None` when all
    /// `events` lines have been emitted.
    pub fn next_line(&mut self, out: &mut Vec<u8>) -> Option<()> {
        if self.emitted >= self.config.events {
            return None;
        }
        let i = self.emitted;
        self.emitted += 1;
        let roll: f64 = self.rng.random();
        let c = &self.config;
        if roll < c.malformed_rate {
            let kind = self.rng.random_range(0..MALFORMED.len());
            out.extend_from_slice(MALFORMED[kind].as_bytes());
            return Some(());
        }
        if roll < c.malformed_rate + c.duplicate_rate && !self.recent.is_empty() {
            let k = self.rng.random_range(0..self.recent.len());
            out.extend_from_slice(&self.recent[k]);
            return Some(());
        }
        let start = out.len();
        self.write_event(i, out);
        let line = out[start..].to_vec();
        let window = self.config.retry_window.max(1);
        if self.recent.len() < window {
            self.recent.push(line);
        } else {
            let k = (i as usize) % window;
            self.recent[k] = line;
        }
        Some(())
    }

    fn write_event(&mut self, i: u64, out: &mut Vec<u8>) {
        let max = tokentally_schemas::Limits::default().max_tokens as f64;
        let (model, provider) = MODELS[self.models.sample(&mut self.rng)];
        let app = APPS[self.apps.sample(&mut self.rng)];
        let end = self.start_ms + self.span_ms - 1;
        let mut ts = (self.sim_time_of(i) + self.rng.random_range(0..2_000)).min(end);
        if self.rng.random::<f64>() < self.config.late_rate {
            ts -= self.rng.random_range(3_600_000..6 * 3_600_000);
        }
        let prompt = self.prompt.sample(&mut self.rng).min(max) as u64;
        let completion = self.completion.sample(&mut self.rng).min(max) as u64;
        let node = self.rng.random_range(0..64u32);
        let cached = if self.rng.random::<f64>() < 0.3 {
            prompt / 2
        } else {
            0
        };
        // Part of the completion, as providers report it; no draw from
        // the generator, so the rest of the traffic stays the same.
        let reasoning = if REASONING_MODELS.contains(&model) {
            completion * 3 / 10
        } else {
            0
        };
        let status = if self.rng.random::<f64>() < self.config.error_rate {
            Status::Error
        } else {
            Status::Ok
        };
        let node_name = format!("node-{node:02}");
        let event_id = format!("{:08x}-{i:010x}", self.config.seed as u32);
        let ev = TokenEvent {
            event_id: event_id.into(),
            ts: ts.max(0),
            model: model.into(),
            provider: provider.into(),
            app: app.into(),
            node: Some(node_name.into()),
            region: Some(REGIONS[node as usize % REGIONS.len()].into()),
            prompt_tokens: prompt,
            completion_tokens: completion,
            cached_tokens: cached,
            reasoning_tokens: reasoning,
            latency_ms: Some(200 + completion / 50),
            status,
        };
        serde_json::to_writer(out, &ev).expect("writing JSON to a Vec cannot fail");
    }
}

/// Malformed lines the simulator injects, one per kind of mistake.
const MALFORMED: &[&str] = &[
    r#"{"event_id":"broken","ts":1764201600000,"model":"m""#,
    r#"{"event_id":"neg","ts":1764201600000,"model":"m","provider":"p","prompt_tokens":-5,"completion_tokens":1}"#,
    r#"{"event_id":"nomodel","ts":1764201600000,"provider":"p","prompt_tokens":5,"completion_tokens":1}"#,
    r#"{"event_id":"str","ts":1764201600000,"model":"m","provider":"p","prompt_tokens":"5","completion_tokens":1}"#,
    r#"{"event_id":"badts","ts":"yesterday","model":"m","provider":"p","prompt_tokens":5,"completion_tokens":1}"#,
    r#"["not","an","object"]"#,
];

#[cfg(test)]
mod tests {
    use super::*;
    use tokentally_schemas::{Limits, decode};

    fn lines(cfg: FleetConfig) -> Vec<Vec<u8>> {
        let mut fleet = Fleet::new(cfg);
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while fleet.next_line(&mut buf).is_some() {
            out.push(std::mem::take(&mut buf));
        }
        out
    }

    #[test]
    fn same_seed_same_traffic() {
        let cfg = FleetConfig {
            events: 500,
            start_ms: Some(1_764_201_600_000),
            duplicate_rate: 0.05,
            malformed_rate: 0.05,
            ..FleetConfig::default()
        };
        assert_eq!(lines(cfg.clone()), lines(cfg.clone()));
        let other = FleetConfig {
            seed: 7,
            ..cfg.clone()
        };
        assert_ne!(lines(cfg), lines(other));
    }

    #[test]
    fn clean_traffic_is_valid_and_hits_the_token_target() {
        let cfg = FleetConfig {
            events: 20_000,
            tokens_per_day: 2_000_000_000,
            start_ms: Some(1_764_201_600_000),
            ..FleetConfig::default()
        };
        let mut total = 0u64;
        let mut by_model = std::collections::HashMap::new();
        for l in lines(cfg) {
            let ev = decode(&l, &Limits::default()).expect("simulated events are valid");
            assert!((1_764_201_600_000..1_764_201_600_000 + 86_400_000).contains(&ev.ts));
            total += ev.total_tokens();
            *by_model.entry(ev.model.to_string()).or_insert(0u64) += 1;
        }
        let ratio = total as f64 / 2e9;
        assert!(
            (0.9..1.1).contains(&ratio),
            "fleet tokens off target: {ratio}"
        );
        let top = by_model["qwen/qwen3.6-plus"];
        assert!(by_model.values().all(|&n| n <= top), "the top model leads");
    }

    #[test]
    fn injected_faults_appear_at_their_rates() {
        let cfg = FleetConfig {
            events: 20_000,
            start_ms: Some(1_764_201_600_000),
            malformed_rate: 0.1,
            duplicate_rate: 0.1,
            late_rate: 0.1,
            ..FleetConfig::default()
        };
        let all = lines(cfg);
        let bad = all
            .iter()
            .filter(|l| decode(l, &Limits::default()).is_err())
            .count();
        assert!((1_600..2_400).contains(&bad), "malformed: {bad}");
        let mut ids = std::collections::HashSet::new();
        let mut dups = 0;
        for l in &all {
            if let Ok(ev) = decode(l, &Limits::default())
                && !ids.insert(ev.event_id.to_string())
            {
                dups += 1;
            }
        }
        assert!((1_600..2_400).contains(&dups), "duplicates: {dups}");
    }
}
