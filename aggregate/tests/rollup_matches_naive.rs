//! Property: for any stream of events with duplicates, late events and
//! invalid lines, cut into any micro-batches, the summed roll-up deltas
//! equal a naive computation done independently here (no shared decoder).

use std::collections::{BTreeMap, HashSet};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Date32Type, TimestampMillisecondType, UInt64Type};
use proptest::prelude::*;
use tokentally_aggregate::rollup::{Column, Rollup};
use tokentally_aggregate::sink::Recovered;
use tokentally_aggregate::source::RawBatch;
use tokentally_aggregate::{Aggregator, AggregatorConfig};

#[derive(Debug, Clone)]
struct Ev {
    id: u32,
    ts: i64,
    model: usize,
    provider: usize,
    app: usize,
    prompt: u64,
    completion: u64,
    cached: u64,
    error: bool,
    ts_as_string: bool,
}

const MODELS: [&str; 4] = ["qwen/qwen3.6-plus", "openai/gpt-5", "模型-ü", "a\"quoted\""];
const PROVIDERS: [&str; 2] = ["alibaba", "openai"];
const APPS: [&str; 3] = ["", "cline", "aider"];
const BASE_TS: i64 = 1_795_737_600_000; // 2026-11-27T00:00:00Z

#[derive(Debug, Clone)]
enum Line {
    Valid(Ev),
    Invalid(&'static str),
}

const INVALID: [&str; 6] = [
    "not json",
    "[]",
    r#"{"event_id":"x","ts":1,"model":"m","provider":"p","prompt_tokens":-1,"completion_tokens":1}"#,
    r#"{"event_id":"x","ts":1,"model":"m","provider":"p","prompt_tokens":1}"#,
    r#"{"event_id":"x","ts":"soon","model":"m","provider":"p","prompt_tokens":1,"completion_tokens":1}"#,
    r#"{"event_id":"x","ts":1,"model":"","provider":"p","prompt_tokens":1,"completion_tokens":1}"#,
];

fn ev_strategy() -> impl Strategy<Value = Ev> {
    (
        0u32..400,
        // up to 3 days, so late events cross day boundaries
        0i64..3 * 86_400_000,
        0..MODELS.len(),
        0..PROVIDERS.len(),
        0..APPS.len(),
        0u64..100_000_000,
        0u64..5_000,
        0u64..100,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(id, off, model, provider, app, prompt, completion, cached, error, s)| Ev {
                id,
                ts: BASE_TS + off,
                model,
                provider,
                app,
                prompt,
                completion,
                cached,
                error,
                ts_as_string: s,
            },
        )
}

impl Ev {
    /// Part of the completion, varied by id.
    fn reasoning(&self) -> u64 {
        self.completion * u64::from(self.id % 3) / 4
    }
}

fn line_strategy() -> impl Strategy<Value = Line> {
    prop_oneof![
        9 => ev_strategy().prop_map(Line::Valid),
        1 => (0..INVALID.len()).prop_map(|i| Line::Invalid(INVALID[i])),
    ]
}

fn to_json(e: &Ev) -> String {
    let ts = if e.ts_as_string {
        let t = chrono::DateTime::from_timestamp_millis(e.ts).unwrap();
        serde_json::Value::String(t.to_rfc3339())
    } else {
        serde_json::Value::from(e.ts)
    };
    serde_json::json!({
        "event_id": format!("id-{}", e.id),
        "ts": ts,
        "model": MODELS[e.model],
        "provider": PROVIDERS[e.provider],
        "app": APPS[e.app],
        "prompt_tokens": e.prompt,
        "completion_tokens": e.completion,
        "cached_tokens": e.cached,
        "reasoning_tokens": e.reasoning(),
        "status": if e.error { "error" } else { "ok" },
        "unknown_field": {"ignored": true},
    })
    .to_string()
}

type Key = (i32, String, String);
/// requests, prompt, completion, total, cached, reasoning, errors
type Measures = [u64; 7];

fn naive(lines: &[Line]) -> (BTreeMap<Key, Measures>, u64) {
    let mut seen = HashSet::new();
    let mut daily = BTreeMap::new();
    let mut rejected = 0;
    for l in lines {
        match l {
            Line::Invalid(_) => rejected += 1,
            Line::Valid(e) => {
                // The first occurrence of an event_id is the one counted.
                if !seen.insert(e.id) {
                    continue;
                }
                let day = e.ts.div_euclid(86_400_000) as i32;
                let key = (
                    day,
                    MODELS[e.model].to_string(),
                    PROVIDERS[e.provider].to_string(),
                );
                let m: &mut Measures = daily.entry(key).or_default();
                m[0] += 1;
                m[1] += e.prompt;
                m[2] += e.completion;
                m[3] += e.prompt + e.completion;
                m[4] += e.cached;
                m[5] += e.reasoning();
                m[6] += u64::from(e.error);
            }
        }
    }
    (daily, rejected)
}

fn fold_daily(batches: &[RecordBatch], into: &mut BTreeMap<Key, Measures>) {
    for b in batches {
        let day = b.column(0).as_primitive::<Date32Type>();
        let model = b.column(1).as_string::<i32>();
        let provider = b.column(2).as_string::<i32>();
        let cols: Vec<_> = (3..10)
            .map(|i| b.column(i).as_primitive::<UInt64Type>())
            .collect();
        for r in 0..b.num_rows() {
            let key = (
                day.value(r),
                model.value(r).to_string(),
                provider.value(r).to_string(),
            );
            let m = into.entry(key).or_default();
            for (k, c) in cols.iter().enumerate() {
                m[k] += c.value(r);
            }
        }
    }
}

fn sum_column(batches: &[RecordBatch], col: Column) -> u64 {
    batches
        .iter()
        .map(|b| {
            let c = b
                .column_by_name(col.name())
                .unwrap()
                .as_primitive::<UInt64Type>();
            c.values().iter().sum::<u64>()
        })
        .sum()
}

struct Run {
    daily: BTreeMap<Key, Measures>,
    rejected: u64,
    minute_total: u64,
    app_total: u64,
}

fn run(lines: &[Line], cuts: &[usize]) -> Run {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        // Streams span 3 days in random order: a horizon longer than that
        // makes dedup exact for every event (the property under test).
        let mut config = AggregatorConfig::default();
        config.dedup.horizon = std::time::Duration::from_secs(7 * 86_400);
        let mut agg = Aggregator::new(config, &Recovered::default());
        let mut r = Run {
            daily: BTreeMap::new(),
            rejected: 0,
            minute_total: 0,
            app_total: 0,
        };
        let mut start = 0;
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (lines.len() + 1)).collect();
        bounds.push(lines.len());
        bounds.sort_unstable();
        for end in bounds {
            let mut raw = RawBatch::default();
            for l in &lines[start..end] {
                match l {
                    Line::Valid(e) => raw.push(to_json(e).as_bytes()),
                    Line::Invalid(s) => raw.push(s.as_bytes()),
                }
            }
            start = end;
            let out = agg.process(&raw).await.unwrap();
            fold_daily(&out.deltas.daily, &mut r.daily);
            r.rejected += out.stats.rejected_total();
            assert_eq!(out.dead_letters.len() as u64, out.stats.rejected_total());
            r.minute_total += sum_column(&out.deltas.minute, Column::TotalTokens);
            r.app_total += sum_column(&out.deltas.app_daily, Column::TotalTokens);
            for b in &out.deltas.minute {
                let m = b.column(0).as_primitive::<TimestampMillisecondType>();
                assert_eq!(m.null_count(), 0);
                assert!(m.values().iter().all(|v| v % 60_000 == 0));
            }
            for b in &out.deltas.daily {
                assert_eq!(b.schema(), Rollup::Daily.schema());
            }
        }
        r
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn rollups_equal_naive_computation(
        lines in prop::collection::vec(line_strategy(), 0..300),
        cuts in prop::collection::vec(any::<usize>(), 0..4),
    ) {
        let (expected, expected_rejected) = naive(&lines);
        let got = run(&lines, &cuts);
        prop_assert_eq!(&got.daily, &expected);
        prop_assert_eq!(got.rejected, expected_rejected);
        let total: u64 = expected.values().map(|m| m[3]).sum();
        prop_assert_eq!(got.minute_total, total, "usage_minute sums to the same total");
        prop_assert_eq!(got.app_total, total, "usage_app_daily sums to the same total");
    }
}
