//! `tokentally ingest` on a corpus with duplicates, late events, valid edge
//! cases and malformed lines: every `usage_daily` row and every reject count
//! must equal totals computed independently here, and ingesting the same
//! file again must change no total.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use common::{bin, query, run_ok, s, u};
use serde_json::json;

const DAY0: i64 = 1_795_737_600_000; // 2026-11-27T00:00:00Z
const MODELS: [(&str, &str); 5] = [
    ("qwen/qwen3.6-plus", "alibaba"),
    ("anthropic/claude-sonnet-4.5", "anthropic"),
    ("通义千问/qwen-max", "阿里云"),
    ("mistralai/mistral-medium-3.1", "mistral"),
    ("emoji-🚀-model", "p\"quoted\\provider"),
];

/// Measures of one usage_daily row: requests, prompt, completion, total,
/// cached, error_requests.
type Row = [u64; 7];

struct Corpus {
    text: String,
    daily: BTreeMap<(String, String, String), Row>,
    minute_total: u64,
    apps: BTreeMap<String, u64>,
    rejected: BTreeMap<&'static str, u64>,
    accepted: u64,
    duplicates: u64,
}

fn date(ts: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ts)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string()
}

/// A deterministic pseudo-random sequence (no shared code with tokentally).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

fn corpus() -> Corpus {
    let mut c = Corpus {
        text: String::new(),
        daily: BTreeMap::new(),
        minute_total: 0,
        apps: BTreeMap::new(),
        rejected: BTreeMap::new(),
        accepted: 0,
        duplicates: 0,
    };
    let mut rng = Lcg(7);
    let mut emitted: Vec<String> = Vec::new();
    for i in 0..20_000u64 {
        // Mostly in order over two days, 3% late by 1-20 hours (within the
        // 24h dedup horizon, so their retries are still caught).
        let mut ts = DAY0 + (i as i64) * 8_640;
        if rng.next(100) < 3 {
            ts -= (1 + rng.next(20) as i64) * 3_600_000;
        }
        let (model, provider) = MODELS[rng.next(MODELS.len() as u64) as usize];
        let prompt = rng.next(100_000_001); // up to the inclusive bound
        let completion = rng.next(5_000);
        let cached = if rng.next(4) == 0 { prompt / 3 } else { 0 };
        let reasoning = if rng.next(3) == 0 { completion / 4 } else { 0 };
        let error = rng.next(20) == 0;
        let app = ["", "cline", "aider", "アプリ"][rng.next(4) as usize];
        let mut ev = serde_json::Map::new();
        ev.insert("event_id".into(), json!(format!("evt-{i}")));
        // ts as epoch ms, as RFC 3339 UTC, or RFC 3339 with an offset
        let t = chrono::DateTime::from_timestamp_millis(ts).unwrap();
        let ts_json = match i % 3 {
            0 => json!(ts),
            1 => json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            _ => json!(
                t.with_timezone(&chrono::FixedOffset::east_opt(5 * 3600 + 1800).unwrap())
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
            ),
        };
        ev.insert("ts".into(), ts_json);
        ev.insert("model".into(), json!(model));
        ev.insert("provider".into(), json!(provider));
        ev.insert("prompt_tokens".into(), json!(prompt));
        ev.insert("completion_tokens".into(), json!(completion));
        if cached > 0 {
            ev.insert("cached_tokens".into(), json!(cached));
        }
        if reasoning > 0 {
            ev.insert("reasoning_tokens".into(), json!(reasoning));
        }
        if error {
            ev.insert("status".into(), json!("error"));
        } else if rng.next(2) == 0 {
            ev.insert("status".into(), json!("ok"));
        }
        if !app.is_empty() {
            ev.insert("app".into(), json!(app));
        }
        if rng.next(5) == 0 {
            ev.insert("future_field".into(), json!({"nested": [1, "x", null]}));
            ev.insert("region".into(), json!(null));
        }
        let line = serde_json::Value::Object(ev).to_string();
        writeln!(c.text, "{line}").unwrap();
        emitted.push(line);

        let row = c
            .daily
            .entry((date(ts), model.to_string(), provider.to_string()))
            .or_default();
        row[0] += 1;
        row[1] += prompt;
        row[2] += completion;
        row[3] += prompt + completion;
        row[4] += cached;
        row[5] += reasoning;
        row[6] += u64::from(error);
        c.minute_total += prompt + completion;
        *c.apps.entry(app.to_string()).or_default() += prompt + completion;
        c.accepted += 1;

        // 2%: an exact re-send of one of the last 2,000 events (a retry,
        // within ~5 hours of event time: well inside the 24h dedup horizon)
        if rng.next(50) == 0 {
            let recent = emitted.len().min(2_000);
            let k = emitted.len() - 1 - rng.next(recent as u64) as usize;
            writeln!(c.text, "{}", emitted[k]).unwrap();
            c.duplicates += 1;
        }
        // 0.5%: the same event_id again with other content: still a duplicate
        if rng.next(200) == 0 {
            writeln!(
                c.text,
                r#"{{"event_id":"evt-{i}","ts":{},"model":"other","provider":"x","prompt_tokens":999,"completion_tokens":1}}"#,
                DAY0 - 86_400_000
            )
            .unwrap();
            c.duplicates += 1;
        }
        // 1%: a malformed line of a known kind
        if rng.next(100) == 0 {
            let (reason, bad) = malformed(rng.next(14) as usize, i);
            writeln!(c.text, "{bad}").unwrap();
            *c.rejected.entry(reason).or_default() += 1;
        }
        if i % 5_000 == 0 {
            c.text.push_str("\n   \n"); // blank lines are skipped
        }
    }
    c
}

fn malformed(kind: usize, i: u64) -> (&'static str, String) {
    let base = |field: &str, value: &str| {
        let mut m = serde_json::Map::new();
        m.insert("event_id".into(), json!(format!("bad-{i}")));
        m.insert("ts".into(), json!(DAY0));
        m.insert("model".into(), json!("m"));
        m.insert("provider".into(), json!("p"));
        m.insert("prompt_tokens".into(), json!(1));
        m.insert("completion_tokens".into(), json!(1));
        let mut text = serde_json::Value::Object(m).to_string();
        if !field.is_empty() {
            // replace the field's value textually, keeping everything else valid
            let v = serde_json::to_string(&json!(field)).unwrap();
            let start = text.find(&format!("{v}:")).unwrap() + v.len() + 1;
            let end = start + text[start..].find([',', '}']).unwrap();
            text.replace_range(start..end, value);
        }
        text
    };
    match kind {
        0 => ("invalid_json", "{\"event_id\": \"x\", ".to_string()),
        1 => ("invalid_json", "this is not json".to_string()),
        2 => ("not_an_object", "[1, 2, 3]".to_string()),
        3 => (
            "missing_field",
            r#"{"event_id":"x","ts":1,"provider":"p","prompt_tokens":1,"completion_tokens":1}"#
                .to_string(),
        ),
        4 => ("wrong_type", base("prompt_tokens", "\"12\"")),
        5 => ("not_an_integer", base("completion_tokens", "1.5")),
        6 => ("out_of_range", base("prompt_tokens", "-3")),
        7 => ("out_of_range", base("completion_tokens", "100000001")),
        8 => ("empty_value", base("model", "\"\"")),
        9 => (
            "too_long",
            base("event_id", &format!("\"{}\"", "x".repeat(129))),
        ),
        10 => ("invalid_ts", base("ts", "\"2026-13-45T00:00:00Z\"")),
        11 => ("invalid_ts", base("ts", "\"2026-11-28 10:00:00\"")),
        12 => (
            "invalid_value",
            format!(
                "{},\"status\":\"timeout\"}}",
                base("", "").trim_end_matches('}')
            ),
        ),
        _ => (
            "duplicate_field",
            format!(
                "{},\"model\":\"again\"}}",
                base("", "").trim_end_matches('}')
            ),
        ),
    }
}

#[test]
fn ingest_matches_independent_ground_truth_and_is_idempotent() {
    let c = corpus();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.ndjson");
    std::fs::write(&input, &c.text).unwrap();
    let store = dir.path().join("store");

    let ingest = || {
        let out = run_ok(
            bin()
                .args(["ingest", "--json", "--batch-records", "3000"])
                // the corpus spans two days of event time; remember all of it
                .args(["--dedup-horizon", "72h", "--file"])
                .arg(&input)
                .arg("--store")
                .arg(&store),
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("summary JSON")
    };
    let summary = ingest();
    assert_eq!(summary["accepted"], c.accepted);
    assert_eq!(summary["duplicates"], c.duplicates);
    assert_eq!(summary["rejected_total"], c.rejected.values().sum::<u64>());

    let check_usage = || {
        let rows = query(
            &store,
            "SELECT * FROM usage_daily ORDER BY day, model, provider",
        );
        let got: BTreeMap<(String, String, String), Row> = rows
            .iter()
            .map(|r| {
                (
                    (
                        s(r, "day").to_string(),
                        s(r, "model").to_string(),
                        s(r, "provider").to_string(),
                    ),
                    [
                        u(r, "requests"),
                        u(r, "prompt_tokens"),
                        u(r, "completion_tokens"),
                        u(r, "total_tokens"),
                        u(r, "cached_tokens"),
                        u(r, "reasoning_tokens"),
                        u(r, "error_requests"),
                    ],
                )
            })
            .collect();
        assert_eq!(got.len(), rows.len(), "no duplicate keys in usage_daily");
        assert_eq!(got, c.daily, "every usage_daily row is exact");

        let minute = query(
            &store,
            "SELECT CAST(SUM(total_tokens) AS BIGINT UNSIGNED) AS t FROM usage_minute",
        );
        assert_eq!(u(&minute[0], "t"), c.minute_total);
        let apps = query(
            &store,
            "SELECT app, CAST(SUM(total_tokens) AS BIGINT UNSIGNED) AS t FROM usage_app_daily GROUP BY app",
        );
        let apps: BTreeMap<String, u64> = apps
            .iter()
            .map(|r| (s(r, "app").to_string(), u(r, "t")))
            .collect();
        assert_eq!(apps, c.apps);
    };
    check_usage();

    let rejected: BTreeMap<String, u64> = query(&store, "SELECT reason, count FROM rejected")
        .iter()
        .map(|r| (s(r, "reason").to_string(), u(r, "count")))
        .collect();
    let expected: BTreeMap<String, u64> = c
        .rejected
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    assert_eq!(rejected, expected, "rejects by reason");

    // Dead letters keep the raw line and a machine-readable reason.
    let mut dead = Vec::new();
    for f in std::fs::read_dir(store.join("dead-letter")).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        dead.extend(
            text.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()),
        );
    }
    assert_eq!(dead.len() as u64, c.rejected.values().sum::<u64>());
    assert!(
        dead.iter()
            .all(|d| d["raw"].is_string() && d["reason"].is_string() && d["detail"].is_string())
    );
    assert!(dead.iter().any(|d| d["raw"] == "this is not json"));

    // Again: the run resumes after the committed end of the file; nothing moves.
    let again = ingest();
    assert_eq!(again["records"], 0);
    assert_eq!(again["resumed_at_byte"], c.text.len());
    check_usage();

    // The same events under another file name: the dedup state persisted in
    // the store recognises every one of them.
    let copy = dir.path().join("copy.ndjson");
    std::fs::copy(&input, &copy).unwrap();
    let out = run_ok(
        bin()
            .args(["ingest", "--json", "--dedup-horizon", "72h", "--file"])
            .arg(&copy)
            .arg("--store")
            .arg(&store),
    );
    let copied: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(copied["accepted"], 0);
    assert_eq!(copied["duplicates"], c.accepted + c.duplicates);
    check_usage();
}
