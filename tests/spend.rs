//! Spend on both sinks: the same events, through the embedded store and
//! through Kafka into a real ClickHouse server, with the same price tables,
//! give the same `cost_daily`, `cost_app_daily` and `unpriced`, to the last
//! digit, and equal to costs computed by hand. Price versions, a corrected
//! table, the matching order, an alias for a hostile name, and bad price
//! files, which load nothing.

mod common;

use std::path::Path;

use serde_json::{Map, Value, json};

use std::process::Stdio;
use std::time::Duration;

use common::services::{aggregated_database, clickhouse_rows, migrated_database, services};
use common::webhook::{SECRET, receiver};
use common::{bin, query, run_ok, wait_until};
use tokentally_alerts::webhook::webhook_id;

const DAY1: i64 = 1_795_737_600_000; // 2026-11-27T00:00:00Z
const DAY2: i64 = DAY1 + 86_400_000;

/// A model name with everything a name can carry.
const HOSTILE: &str = "<b>\"Ünï 模型\": x's</b>";

/// The events, hand-written: one retried (counted once).
fn events_text() -> String {
    let ev = |id: &str, ts: i64, model: &str, app: &str, t: [u64; 4]| {
        json!({"event_id": id, "ts": ts, "model": model, "provider": "p", "app": app,
               "prompt_tokens": t[0], "cached_tokens": t[1],
               "completion_tokens": t[2], "reasoning_tokens": t[3]})
        .to_string()
    };
    let first = ev(
        "e1",
        DAY1 + 1,
        "openai/gpt-5",
        "app one",
        [1_000_000, 400_000, 200_000, 50_000],
    );
    [
        first.clone(),
        ev("e2", DAY2 + 5, "openai/gpt-5", "アプリ", [3, 0, 7, 0]),
        ev("e3", DAY1 + 9, "qwen/qwen3.6-plus", "app one", [7, 0, 3, 0]),
        ev("e4", DAY1 + 2, HOSTILE, "アプリ", [1_000, 0, 1_000, 0]),
        ev("e5", DAY1 + 3, "mystery/unknown", "app one", [5, 0, 5, 0]),
        first,
    ]
    .join("\n")
        + "\n"
}

/// Version 1: exact id (gpt-5), id without prefix (qwen3.6-plus), and
/// gpt-5-mini, which the hostile name is an alias of; a price past 12
/// digits is rounded.
const V1: &str = r#"{
  "openai/gpt-5": {"input_cost_per_token": 1.25e-06, "output_cost_per_token": 1e-05,
     "cache_read_input_token_cost": 1.25e-07, "output_cost_per_reasoning_token": 2e-05,
     "litellm_provider": "openai", "mode": "chat", "max_tokens": 128000},
  "qwen3.6-plus": {"input_cost_per_token": 4e-07, "output_cost_per_token": 1.2e-06},
  "gpt-5-mini": {"input_cost_per_token": 2.5000000000004e-07, "output_cost_per_token": 2e-06},
  "dall-e-3": {"input_cost_per_pixel": 0.04}
}"#;

/// Version 2, from the second day: gpt-5's input price falls.
const V2: &str = r#"{
  "openai/gpt-5": {"input_cost_per_token": 1e-06, "output_cost_per_token": 1e-05,
     "cache_read_input_token_cost": 1.25e-07, "output_cost_per_reasoning_token": 2e-05},
  "qwen3.6-plus": {"input_cost_per_token": 4e-07, "output_cost_per_token": 1.2e-06},
  "gpt-5-mini": {"input_cost_per_token": 2.5e-07, "output_cost_per_token": 2e-06}
}"#;

/// Version 1 corrected, loaded later, valid from the first day: qwen's
/// output price was wrong.
const V1_FIXED: &str = r#"{
  "openai/gpt-5": {"input_cost_per_token": 1.25e-06, "output_cost_per_token": 1e-05,
     "cache_read_input_token_cost": 1.25e-07, "output_cost_per_reasoning_token": 2e-05},
  "qwen3.6-plus": {"input_cost_per_token": 4e-07, "output_cost_per_token": 1.6e-06},
  "gpt-5-mini": {"input_cost_per_token": 2.5e-07, "output_cost_per_token": 2e-06}
}"#;

/// `cost_daily` by hand, after V1 (from 2026-11-01) and V2 (from
/// 2026-11-28):
/// - gpt-5, day 1: (1,000,000 − 400,000)·0.00000125 + 400,000·0.000000125
///   + (200,000 − 50,000)·0.00001 + 50,000·0.00002 = 0.75 + 0.05 + 1.5 + 1
/// - gpt-5, day 2 (V2): 3·0.000001 + 7·0.00001
/// - qwen, day 1: 7·0.0000004 + 3·0.0000012
/// - the alias, day 1: 1,000·0.00000025 + 1,000·0.000002
/// - mystery: no price, NULL.
fn expected(qwen: &str) -> Vec<(String, String, Option<String>)> {
    let row = |day: &str, model: &str, cost: Option<&str>| {
        (day.to_string(), model.to_string(), cost.map(str::to_string))
    };
    vec![
        row("2026-11-27", HOSTILE, Some("0.002250000000")),
        row("2026-11-27", "mystery/unknown", None),
        row("2026-11-27", "openai/gpt-5", Some("3.300000000000")),
        row("2026-11-27", "qwen/qwen3.6-plus", Some(qwen)),
        row("2026-11-28", "openai/gpt-5", Some("0.000073000000")),
    ]
}

/// A config whose aliases map the hostile name to gpt-5-mini.
fn config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("tokentally.toml");
    let mut aliases = toml_string(HOSTILE);
    aliases.push_str(" = \"gpt-5-mini\"\n");
    std::fs::write(&path, format!("[prices.aliases]\n{aliases}")).unwrap();
    path
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    // JSON string escapes are valid TOML basic-string escapes.
    serde_json::to_string(s).unwrap()
}

/// The events of `file` in a new store under `dir` and, through Kafka, in
/// a new ClickHouse database: (store, database).
fn both_sinks(dir: &Path, file: &Path, tag: &str) -> (std::path::PathBuf, String) {
    let store = dir.join("store");
    run_ok(
        bin()
            .args(["ingest", "--store"])
            .arg(&store)
            .arg("--file")
            .arg(file),
    );
    (store, aggregated_database(file, tag))
}

/// `prices list --format json --on DAY`, without the load time.
fn list(sink: &Sink, on: &str) -> Vec<Value> {
    let out = run_ok(
        bin()
            .args(["prices", "list", "--format", "json", "--on", on])
            .args(sink.args()),
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    rows.into_iter()
        .map(|mut r| {
            r.as_object_mut().unwrap().remove("loaded_at");
            r
        })
        .collect()
}

enum Sink<'a> {
    Store(&'a Path),
    ClickHouse(&'a str, &'a str),
}

impl Sink<'_> {
    fn args(&self) -> Vec<String> {
        match self {
            Sink::Store(dir) => vec!["--store".into(), dir.display().to_string()],
            Sink::ClickHouse(url, db) => vec![
                "--clickhouse".into(),
                url.to_string(),
                "--clickhouse-database".into(),
                db.to_string(),
            ],
        }
    }

    fn load(&self, config: &Path, file: &Path, valid_from: &str) -> String {
        let out = run_ok(
            bin()
                .arg("--config")
                .arg(config)
                .args(["prices", "load"])
                .arg(file)
                .args(["--valid-from", valid_from])
                .args(self.args()),
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Rows of a query written for both dialects but for the cast to text,
    /// NULLs left out (as `tokentally query` writes them).
    fn rows(&self, sql: &str) -> Vec<Map<String, Value>> {
        let mut rows = match self {
            Sink::Store(dir) => query(
                dir,
                &sql.replace("TEXT(", "CAST((")
                    .replace(")T", ") AS VARCHAR)"),
            ),
            Sink::ClickHouse(url, db) => clickhouse_rows(
                url,
                &sql.replace("TEXT(", "toString((")
                    .replace(")T", "))")
                    .replace(" FROM ", &format!(" FROM {db}.")),
            ),
        };
        for r in &mut rows {
            r.retain(|_, v| !v.is_null());
        }
        rows
    }

    fn cost_daily(&self) -> Vec<(String, String, Option<String>)> {
        self.rows(
            "SELECT TEXT(day)T AS day, model, TEXT(cost_usd)T AS cost FROM cost_daily \
             ORDER BY day, model",
        )
        .iter()
        .map(|r| {
            (
                r["day"].as_str().unwrap().to_string(),
                r["model"].as_str().unwrap().to_string(),
                r.get("cost").and_then(Value::as_str).map(str::to_string),
            )
        })
        .collect()
    }

    /// Everything spend exposes, as text: both sinks must agree on it.
    fn everything(&self) -> Vec<Map<String, Value>> {
        let mut rows = self.rows(
            "SELECT TEXT(day)T AS day, model, provider, requests, prompt_tokens, cached_tokens, \
             completion_tokens, reasoning_tokens, total_tokens, TEXT(cost_usd)T AS cost \
             FROM cost_daily ORDER BY day, model",
        );
        rows.extend(self.rows(
            "SELECT TEXT(day)T AS day, app, model, requests, cached_tokens, reasoning_tokens, \
             TEXT(cost_usd)T AS cost FROM cost_app_daily ORDER BY day, app, model",
        ));
        rows.extend(self.rows(
            "SELECT model, TEXT(first_day)T AS first_day, requests, total_tokens FROM unpriced \
             ORDER BY model",
        ));
        rows.extend(self.rows(
            "SELECT TEXT(valid_from)T AS v, model, alias_of, TEXT(input)T AS i, TEXT(output)T AS o, \
             TEXT(cache_read)T AS c, TEXT(reasoning)T AS r FROM prices ORDER BY v, model",
        ));
        rows
    }
}

#[test]
fn cost_is_exact_and_the_same_on_both_sinks() {
    let s = services();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let events = file("events.ndjson", &events_text());
    let (v1, v2, v1_fixed) = (
        file("v1.json", V1),
        file("v2.json", V2),
        file("v1-fixed.json", V1_FIXED),
    );

    let (store, db) = both_sinks(dir.path(), &events, "spend");
    let sinks = [Sink::Store(&store), Sink::ClickHouse(&s.clickhouse, &db)];

    for sink in &sinks {
        let said = sink.load(&config, &v1, "2026-11-01");
        assert!(
            said.contains("loaded 4 priced models (1 from aliases) valid from 2026-11-01")
                && said.contains("skipped 1 entries")
                && said.contains("rounded 1 prices"),
            "{said}"
        );
        sink.load(&config, &v2, "2026-11-28");
        assert_eq!(sink.cost_daily(), expected("0.000006400000"));
    }
    assert_eq!(sinks[0].everything(), sinks[1].everything());

    // The corrected first version recomputes its days, not the later ones.
    for sink in &sinks {
        sink.load(&config, &v1_fixed, "2026-11-27");
        // 7·0.0000004 + 3·0.0000016
        assert_eq!(sink.cost_daily(), expected("0.000007600000"));
    }
    let (a, b) = (sinks[0].everything(), sinks[1].everything());
    assert_eq!(a, b);
    // Per app: the same costs, split by app, summing to the same.
    let app_rows = a.iter().filter(|r| r.contains_key("app")).count();
    assert_eq!(app_rows, 5, "{a:?}");
    assert!(a.iter().any(|r| r.get("app") == Some(&json!("アプリ"))
        && r["model"] == json!(HOSTILE)
        && r["cost"] == json!("0.002250000000")));
    let unpriced: Vec<&Map<String, Value>> =
        a.iter().filter(|r| r.contains_key("first_day")).collect();
    assert_eq!(unpriced.len(), 1);
    assert_eq!(unpriced[0]["model"], json!("mystery/unknown"));
    assert_eq!(unpriced[0]["total_tokens"], json!(10));

    // `prices list` shows the version in force, the same from both.
    for on in ["2026-11-27", "2026-12-31"] {
        assert_eq!(list(&sinks[0], on), list(&sinks[1], on), "{on}");
    }
    let in_force = list(&sinks[0], "2026-12-31");
    // V2's three models and the alias, which every load applies.
    assert_eq!(in_force.len(), 4);
    assert_eq!(in_force[0]["model"], json!(HOSTILE));
    assert_eq!(in_force[0]["alias_of"], json!("gpt-5-mini"));
    assert_eq!(in_force[2]["model"], json!("openai/gpt-5"));
    assert_eq!(in_force[2]["valid_from"], json!("2026-11-28"));
    assert_eq!(in_force[2]["input"], json!(0.000001));
    let none = bin()
        .args(["prices", "list", "--on", "2026-10-01"])
        .args(sinks[1].args())
        .output()
        .unwrap();
    assert!(!none.status.success());
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("no price table is valid on 2026-10-01")
    );
}

#[test]
fn a_bad_price_file_names_the_problem_and_loads_nothing() {
    let s = services();
    let dir = tempfile::tempdir().unwrap();
    let db = migrated_database(&s.clickhouse, "spend_bad");
    let store = dir.path().join("store");
    let sinks = [Sink::Store(&store), Sink::ClickHouse(&s.clickhouse, &db)];
    let good = dir.path().join("good.json");
    std::fs::write(&good, V2).unwrap();
    let no_config = dir.path().join("empty.toml");
    std::fs::write(&no_config, "").unwrap();
    let cases = [
        ("not json at all", "not a JSON object of models"),
        (
            r#"{"m": {"input_cost_per_token": -0.000001}}"#,
            "model \"m\": `input_cost_per_token` is -0.000001, a negative price",
        ),
        (
            r#"{"ok": {"input_cost_per_token": 1e-6}, "m": {"output_cost_per_token": "2e-6"}}"#,
            "model \"m\": `output_cost_per_token` is \"2e-6\", not a number",
        ),
        (
            r#"{"gpt-5": {"input_cost_per_token": 1e-6}, "gpt-5": {"input_cost_per_token": 2e-6}}"#,
            "model \"gpt-5\" appears twice in the price file",
        ),
    ];
    for sink in &sinks {
        sink.load(&no_config, &good, "2026-11-01");
        let before = list(sink, "2026-11-01");
        assert_eq!(before.len(), 3);
        for (i, (text, message)) in cases.iter().enumerate() {
            let bad = dir.path().join(format!("bad-{i}.json"));
            std::fs::write(&bad, text).unwrap();
            let out = bin()
                .arg("--config")
                .arg(&no_config)
                .args(["prices", "load"])
                .arg(&bad)
                .args(["--valid-from", "2026-11-01"])
                .args(sink.args())
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{text}");
            assert!(
                err.contains(message) && err.contains("nothing loaded"),
                "{err}"
            );
            assert_eq!(list(sink, "2026-11-01"), before, "{text}");
        }
    }
}

/// A table the size of LiteLLM's (about 5,000 entries, some without token
/// prices) loads whole into both sinks.
#[test]
fn a_table_of_thousands_of_models_loads_into_both_sinks() {
    let s = services();
    let dir = tempfile::tempdir().unwrap();
    let mut table = Map::new();
    for i in 0..5_000 {
        let entry = if i % 5 == 0 {
            json!({"input_cost_per_pixel": 0.01, "mode": "image_generation"})
        } else {
            json!({"input_cost_per_token": 1e-7 * f64::from(i % 97 + 1),
                   "output_cost_per_token": 4e-7 * f64::from(i % 89 + 1),
                   "cache_read_input_token_cost": 1e-8 * f64::from(i % 13),
                   "litellm_provider": format!("provider-{}", i % 40),
                   "max_input_tokens": 200_000, "supports_vision": i % 2 == 0})
        };
        table.insert(format!("provider-{}/model-{i}", i % 40), entry);
    }
    let file = dir.path().join("big.json");
    std::fs::write(&file, serde_json::to_vec(&Value::Object(table)).unwrap()).unwrap();
    let no_config = dir.path().join("empty.toml");
    std::fs::write(&no_config, "").unwrap();
    let db = migrated_database(&s.clickhouse, "spend_big");
    let store = dir.path().join("store");
    for sink in [Sink::Store(&store), Sink::ClickHouse(&s.clickhouse, &db)] {
        let said = sink.load(&no_config, &file, "2026-01-01");
        assert!(said.contains("loaded 4000 priced models"), "{said}");
        assert!(said.contains("skipped 1000 entries"), "{said}");
        let list = run_ok(
            bin()
                .args(["prices", "list", "--format", "csv", "--on", "2026-06-01"])
                .args(sink.args()),
        );
        assert_eq!(String::from_utf8_lossy(&list.stdout).lines().count(), 4_001);
    }
}

/// Budgets and spend milestones from both sinks: `alerts run` watches each
/// while the prices arrive (before them there is no spend); each fraction
/// of each budget goes out once per period, with the same ids and bodies
/// from the store and from ClickHouse, and lands in ClickHouse's
/// `milestones`.
#[test]
fn budget_alerts_go_out_once_per_fraction_and_period_from_both_sinks() {
    let s = services();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.ndjson");
    std::fs::write(&events, events_text()).unwrap();
    let (store, db) = both_sinks(dir.path(), &events, "spend_alerts");
    let (v1, v2) = (dir.path().join("v1.json"), dir.path().join("v2.json"));
    std::fs::write(&v1, V1).unwrap();
    std::fs::write(&v2, V2).unwrap();
    let config = dir.path().join("alerts.toml");
    let mut text = std::fs::read_to_string(self::config(dir.path())).unwrap();
    text.push_str(concat!(
        "[alerts]\ninterval = \"300ms\"\n",
        "[alerts.rules]\nfirst_spend_usd = [1, 3, 10]\n",
        "[[alerts.budgets]]\nname = \"app-one-daily\"\napp = \"app one\"\nlimit_usd = 4\n",
        "[[alerts.budgets]]\nname = \"fleet-monthly\"\nlimit_usd = 3.30001\nperiod = \"month\"\n",
    ));
    // TOML wants [prices.aliases] before [alerts] tables: it is, being first.
    std::fs::write(&config, text).unwrap();

    let (url, seen) = receiver(false);
    let sinks = [Sink::Store(&store), Sink::ClickHouse(&s.clickhouse, &db)];
    let mut bodies = Vec::new();
    for (i, sink) in sinks.iter().enumerate() {
        let state = dir.path().join(format!("state-{i}"));
        let mut cmd = bin();
        cmd.arg("--config")
            .arg(&config)
            .args(["alerts", "run", "--webhook", &url, "--state"])
            .arg(&state)
            .env("TOKENTALLY_WEBHOOK_SECRET", SECRET)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match sink {
            Sink::Store(dir) => cmd.arg("--store").arg(dir),
            Sink::ClickHouse(url, db) => cmd
                .args(["--from-clickhouse", "--clickhouse", url])
                .args(["--clickhouse-database", db]),
        };
        let mut alerter = cmd.spawn().unwrap();
        // Its first look, without prices, is the history; spend comes after.
        wait_until(
            Duration::from_secs(60),
            100,
            || state.join("alerts.json").exists(),
            || "the alerter did not start".into(),
        );
        sink.load(&config, &v1, "2026-11-01");
        sink.load(&config, &v2, "2026-11-28");
        let expected = [
            "budget:app-one-daily:2026-11-27:50",
            "budget:app-one-daily:2026-11-27:80",
            "budget:fleet-monthly:2026-11-01:50",
            "budget:fleet-monthly:2026-11-01:80",
            "budget:fleet-monthly:2026-11-01:100",
            "first_spend:model:1",
            "first_spend:model:3",
        ];
        wait_until(
            Duration::from_secs(60),
            200,
            || {
                let seen = seen.lock().unwrap();
                expected
                    .iter()
                    .all(|id| seen.delivered.contains_key(&webhook_id(id)))
            },
            || {
                format!(
                    "not all of {expected:?} delivered: {:?}",
                    seen.lock().unwrap().delivered.keys()
                )
            },
        );
        // Another round changes nothing: each goes out once.
        let state_file = state.join("alerts.json");
        let before = std::fs::read_to_string(&state_file).unwrap();
        std::thread::sleep(Duration::from_secs(1));
        alerter.kill().unwrap();
        alerter.wait().unwrap();
        let recorded: Value =
            serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
        let ids: Vec<&str> = recorded["milestones"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .filter(|id| id.starts_with("budget:") || id.contains("spend"))
            .collect();
        assert_eq!(ids.len(), expected.len(), "{ids:?} (was {before})");
        let mut seen = seen.lock().unwrap();
        let mut got: Vec<Value> = expected
            .iter()
            .map(|id| {
                let all = &seen.delivered[&webhook_id(id)];
                assert_eq!(all.len(), 1, "{id} delivered more than once");
                let mut body = all[0].clone();
                body.as_object_mut().unwrap().remove("detected_at");
                body
            })
            .collect();
        got.sort_by_key(|b| b["id"].as_str().unwrap().to_string());
        bodies.push(got);
        seen.delivered.clear();
    }
    assert_eq!(bodies[0], bodies[1], "the same milestones from both sinks");
    let by_id = |id: &str| bodies[0].iter().find(|b| b["id"] == id).unwrap().clone();
    let app = by_id("budget:app-one-daily:2026-11-27:80");
    assert_eq!(app["type"], "budget");
    assert_eq!(app["unit"], "usd_micros");
    assert_eq!(app["scope"], "app");
    assert_eq!(app["app"], "app one");
    // gpt-5's 3.3 and qwen's 0.0000064 on day 1, in micro-USD, rounded down.
    assert_eq!(app["value"], 3_300_006);
    assert_eq!(app["threshold"], 3_200_000);
    assert_eq!(
        app["budget"],
        json!({"name": "app-one-daily", "period": "day", "limit": 4_000_000, "percent": 80})
    );
    let fleet = by_id("budget:fleet-monthly:2026-11-01:100");
    // 3.3 + 0.0000064 + 0.00225 + 0.000073 over the month.
    assert_eq!(fleet["value"], 3_302_329);
    assert_eq!(by_id("first_spend:model:3")["model"], "openai/gpt-5");

    // The ClickHouse alerter copied them to `milestones`.
    let rows = clickhouse_rows(
        &s.clickhouse,
        &format!(
            "SELECT id, unit, app, budget, budget_period, budget_limit, budget_percent, value \
             FROM {db}.milestones WHERE type = 'budget' ORDER BY id"
        ),
    );
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert_eq!(rows[1]["id"], "budget:app-one-daily:2026-11-27:80");
    assert_eq!(rows[1]["unit"], "usd_micros");
    assert_eq!(rows[1]["app"], "app one");
    assert_eq!(rows[1]["budget_limit"], 4_000_000);
    assert_eq!(rows[1]["budget_percent"], 80);
    assert_eq!(rows[1]["value"], 3_300_006);
}
