//! The demo and `alerts run` are one engine: fed the same totals, in the
//! same steps, they name the same milestones. The demo folds each batch's
//! daily deltas into running totals; `alerts run` reads the store's
//! `usage_daily` through [`StoreTotals`]. Both go through
//! [`Alerter::detect`] and the one rule set.

use tokentally_aggregate::sink::{Recovered, UsageSink};
use tokentally_aggregate::source::RawBatch;
use tokentally_aggregate::{Aggregator, AggregatorConfig};
use tokentally_alerts::{
    Alerter, AlertsConfig, Kind, Milestone, RulesConfig, StoreTotals, Totals, TotalsSource,
};
use tokentally_sink::embedded::{EmbeddedStore, StoreConfig};

const MODELS: [&str; 4] = [
    "qwen/qwen3.6-plus",
    "通义/qwen-max-中文",
    "a \"quoted\": <b>model</b>",
    "openai/gpt-5",
];
const DAY_MS: i64 = 86_400_000;
const BASE_TS: i64 = 1_795_737_600_000; // 2026-11-27T00:00:00Z

fn config() -> AlertsConfig {
    AlertsConfig {
        rules: RulesConfig {
            daily_thresholds: vec![10_000, 100_000, 1_000_000],
            all_time_thresholds: vec![500_000, 2_000_000],
            first: true,
            records: true,
            record_min_tokens: 1,
            ..RulesConfig::default()
        },
        ..AlertsConfig::default()
    }
}

/// Batch `b` of the stream: over two days, models whose volumes grow at
/// different rates, so that leaders change, records fall and thresholds
/// are crossed by several models on the same day.
fn batch(b: usize) -> RawBatch {
    let mut raw = RawBatch::default();
    for i in 0..50 {
        let model = (b + i) % MODELS.len();
        let day = i64::from(b >= 20);
        let tokens = 100 * (model as u64 + 1) * (b as u64 % 7 + 1);
        let line = serde_json::json!({
            "event_id": format!("e-{b}-{i}"),
            "ts": BASE_TS + day * DAY_MS + (i as i64) * 1_000,
            "model": MODELS[model],
            "provider": if model.is_multiple_of(2) { "alibaba" } else { "openai" },
            "prompt_tokens": tokens,
            "completion_tokens": tokens / 3,
        });
        raw.push(line.to_string().as_bytes());
    }
    raw
}

/// Milestones without the time they were detected.
fn comparable(ms: Vec<Milestone>) -> Vec<Milestone> {
    ms.into_iter()
        .map(|m| Milestone {
            detected_at: String::new(),
            ..m
        })
        .collect()
}

#[tokio::test]
async fn the_demo_and_alerts_run_name_the_same_milestones() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = EmbeddedStore::open(StoreConfig {
        dir: dir.path().join("store"),
        ..StoreConfig::default()
    })
    .unwrap();
    let recovered = store.recover().await.unwrap();
    let mut aggregator = Aggregator::new(AggregatorConfig::default(), &recovered);
    assert_eq!(recovered, Recovered::default());

    let mut demo = Alerter::open(&dir.path().join("demo-state"), config()).unwrap();
    let mut run = Alerter::open(&dir.path().join("run-state"), config()).unwrap();
    // Both start on an empty store, so that everything after is news.
    demo.detect(&Totals::default()).unwrap();
    run.detect(&Totals::default()).unwrap();
    let source = StoreTotals {
        dir: dir.path().join("store"),
    };

    let mut running = Totals::default();
    let (mut by_demo, mut by_run) = (Vec::new(), Vec::new());
    for b in 0..40 {
        let outcome = aggregator.process(&batch(b)).await.unwrap();
        store.commit(&outcome).await.unwrap();

        running.apply_daily(&outcome.deltas.daily).unwrap();
        by_demo.extend(demo.detect(&running).unwrap());

        let read = source.read().await.unwrap();
        assert_eq!(read, running, "batch {b}: the store's totals differ");
        by_run.extend(run.detect(&read).unwrap());
    }

    let (by_demo, by_run) = (comparable(by_demo), comparable(by_run));
    assert_eq!(by_demo, by_run);
    // The stream reaches every kind, for models with any name.
    for kind in [Kind::Threshold, Kind::AllTime, Kind::First, Kind::Record] {
        assert!(by_demo.iter().any(|m| m.kind == kind), "no {kind:?}");
    }
    let named: Vec<_> = by_demo.iter().filter_map(|m| m.model.as_deref()).collect();
    for model in MODELS {
        assert!(named.contains(&model), "{model} reached nothing");
    }
}
