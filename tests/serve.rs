//! `tokentally serve`: the rankings page and its JSON, over a store and
//! over ClickHouse holding the same events, checked against ground truth
//! computed here from the events, against `tokentally query`, and in a
//! real browser (Debian's Chromium, driven by scripts/browser/run).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::http::http;
use common::services::{aggregated_database, clickhouse_sql, services};
use common::{append_report, bin, http_get, query, root, run_ok, s, u, wait_until};
use serde_json::Value;

/// Names that must come through as text: markup, quotes, colons, spaces
/// and non-ASCII.
const SCRIPT_MODEL: &str = "<script>alert(1)</script>";
const UNICODE_MODEL: &str = "通义/qwen 3.6 \"plus\": ünï";
const HOSTILE_APP: &str = "<img src=x onerror=alert(2)> app: \"ü\"";
const TOP_MODEL: &str = "qwen/qwen3.6-plus";
/// The newest day.
const LAST: usize = DAYS.len() - 1;

const DAYS: [&str; 7] = [
    "2026-11-21",
    "2026-11-22",
    "2026-11-23",
    "2026-11-24",
    "2026-11-25",
    "2026-11-26",
    "2026-11-27",
];

/// One generated request.
struct Event {
    day: usize,
    model: String,
    provider: String,
    app: String,
    prompt: u64,
    completion: u64,
}

/// `days` days × `models` models (the last one pushing TOP_MODEL past 1B
/// tokens on the last day), spread over three apps.
fn events(days: &[String], models: usize) -> Vec<Event> {
    let mut names: Vec<String> = (0..models.saturating_sub(3))
        .map(|i| format!("vendor-{}/model-{i}", i % 4))
        .collect();
    names.extend([SCRIPT_MODEL.into(), UNICODE_MODEL.into(), TOP_MODEL.into()]);
    let apps = ["chat", "agent", HOSTILE_APP];
    let mut out = Vec::new();
    for day in 0..days.len() {
        for (m, model) in names.iter().enumerate() {
            for k in 0..(1 + (m + day) % 3) {
                let big = model == TOP_MODEL && day + 1 == days.len();
                out.push(Event {
                    day,
                    model: model.clone(),
                    provider: format!("provider-{}", m % 3),
                    app: apps[(m + k) % apps.len()].into(),
                    // Up to 270M tokens a model and day: only the top
                    // model crosses 1B.
                    prompt: if big {
                        90_000_000
                    } else {
                        3_000_000 * (m as u64 + 1) * (2 + (day + m) as u64 % 3) / 4
                            + 17 * day as u64
                    },
                    completion: if big {
                        60_000_000
                    } else {
                        100 * (k as u64 + 1)
                    },
                });
            }
        }
    }
    // The top model alone crosses 1B tokens on the last day.
    let last = days.len() - 1;
    for k in 0..7 {
        out.push(Event {
            day: last,
            model: TOP_MODEL.into(),
            provider: "provider-2".into(),
            app: apps[k % 3].into(),
            prompt: 90_000_000,
            completion: 60_000_000,
        });
    }
    out
}

fn write_events(path: &Path, days: &[String], events: &[Event]) {
    let start = chrono::NaiveDate::parse_from_str(&days[0], "%Y-%m-%d").unwrap();
    let mut text = String::new();
    for (i, e) in events.iter().enumerate() {
        let ts = (start + chrono::Duration::days(e.day as i64))
            .and_hms_opt(12, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp_millis();
        let line = serde_json::json!({
            "event_id": format!("serve-{i}"),
            "ts": ts,
            "model": e.model,
            "provider": e.provider,
            "app": e.app,
            "prompt_tokens": e.prompt,
            "completion_tokens": e.completion,
        });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// (model, provider) → (tokens, requests) on `day`, from the events.
fn truth(events: &[Event], day: usize) -> BTreeMap<(String, String), (u64, u64)> {
    let mut t = BTreeMap::new();
    for e in events.iter().filter(|e| e.day == day) {
        let v = t
            .entry((e.model.clone(), e.provider.clone()))
            .or_insert((0, 0));
        v.0 += e.prompt + e.completion;
        v.1 += 1;
    }
    t
}

/// A running `tokentally serve` and its address.
struct Served {
    child: Child,
    addr: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tokentally serve ARGS --listen 127.0.0.1:0`, once it printed its URL.
fn serve(args: &[&str], env: &[(&str, &str)]) -> Served {
    let mut child = bin()
        .arg("serve")
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("TOKENTALLY_SERVE_TOKENS")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("open http://")
        .and_then(|a| a.strip_suffix('/'))
        .unwrap_or_else(|| panic!("serve printed {line:?}"))
        .to_string();
    Served { child, addr }
}

fn api(addr: &str, path: &str) -> Value {
    let (status, body) = http_get(addr, path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// `events` written to DIR/events.ndjson and ingested into DIR/store:
/// (file, store).
fn ingested(dir: &Path, days: &[String], events: &[Event]) -> (PathBuf, PathBuf) {
    let file = dir.join("events.ndjson");
    write_events(&file, days, events);
    let store = dir.join("store");
    run_ok(
        bin()
            .args(["ingest", "--store"])
            .arg(&store)
            .arg("--file")
            .arg(&file),
    );
    (file, store)
}

/// The store, with the example prices and its milestones as `tokentally
/// alerts run` records them.
fn with_alerts(store: PathBuf) -> PathBuf {
    load_prices(&["--store", store.to_str().unwrap()]);
    let state = store.join("alerts");
    let mut alerter = bin()
        .args(["alerts", "run", "--interval", "1s", "--store"])
        .arg(&store)
        .arg("--state")
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        Duration::from_secs(60),
        100,
        || {
            std::fs::read_to_string(state.join("alerts.json"))
                .is_ok_and(|t| t.contains("\"first:model:"))
        },
        || "the alerter recorded no milestone".into(),
    );
    alerter.kill().unwrap();
    alerter.wait().unwrap();
    store
}

fn load_prices(target: &[&str]) {
    run_ok(
        bin()
            .args(["prices", "load"])
            .arg(root().join("deploy/prices/example.json"))
            .args(["--valid-from", "2026-11-01"])
            .args(target),
    );
}

fn days() -> Vec<String> {
    DAYS.iter().map(|d| d.to_string()).collect()
}

#[test]
fn the_api_agrees_with_the_events_and_with_query() {
    let dir = tempfile::tempdir().unwrap();
    let days = days();
    let events = events(&days, 12);
    let store = with_alerts(ingested(dir.path(), &days, &events).1);
    let page = serve(&["--store", store.to_str().unwrap()], &[]);

    // The series: every day, the top 10 models, the rest as others; each
    // day sums to the events' tokens.
    let series = api(&page.addr, "/api/series?days=7&top=10");
    assert_eq!(series["days"], serde_json::json!(DAYS));
    let models = series["models"].as_array().unwrap();
    assert_eq!(models.len(), 10);
    assert_eq!(models[0]["model"], TOP_MODEL);
    for (d, _) in DAYS.iter().enumerate() {
        let shown: u64 = models
            .iter()
            .map(|m| m["tokens"][d].as_u64().unwrap())
            .sum::<u64>()
            + series["others"][d].as_u64().unwrap();
        let expected: u64 = truth(&events, d).values().map(|v| v.0).sum();
        assert_eq!(shown, expected, "tokens on {}", DAYS[d]);
    }

    // The leaderboard of the newest day: the events' totals, in the order
    // and with the numbers `tokentally query` gives.
    let board = api(&page.addr, "/api/leaderboard");
    assert_eq!(board["day"], DAYS[LAST]);
    let rows = board["rows"].as_array().unwrap();
    let expected = truth(&events, LAST);
    assert_eq!(rows.len(), expected.len());
    for r in rows {
        let key = (
            r["model"].as_str().unwrap().to_string(),
            r["provider"].as_str().unwrap().to_string(),
        );
        let (tokens, requests) = expected[&key];
        assert_eq!(
            (r["tokens"].as_u64(), r["requests"].as_u64()),
            (Some(tokens), Some(requests))
        );
        let before = truth(&events, LAST - 1).get(&key).map(|v| v.0);
        assert_eq!(r["previous_tokens"].as_u64(), before, "{key:?}");
    }
    assert_eq!(ranked(&board), query_ranked(&store, DAYS[LAST]));
    assert!(rows.iter().any(|r| r["model"] == SCRIPT_MODEL));
    assert!(rows.iter().any(|r| r["model"] == UNICODE_MODEL));
    // Spend: the example table prices the top model, not the made-up ones.
    let top = &rows[0];
    assert_eq!(top["model"], TOP_MODEL);
    assert!(top["cost_usd"].is_string(), "{top}");
    assert!(rows.iter().any(|r| r["cost_usd"].is_null()));

    // Apps: each app's tokens on the day.
    let apps = api(&page.addr, &format!("/api/apps?day={}", DAYS[2]));
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for e in events.iter().filter(|e| e.day == 2) {
        *expected.entry(e.app.clone()).or_default() += e.prompt + e.completion;
    }
    let shown: BTreeMap<String, u64> = apps["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["app"].as_str().unwrap().into(),
                a["tokens"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(shown, expected);

    // Milestones: what the alerter recorded, as sentences.
    let feed = api(&page.addr, "/api/milestones");
    let headlines: Vec<&str> = feed["milestones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["headline"].as_str().unwrap())
        .collect();
    assert!(
        headlines
            .iter()
            .any(|h| h.contains(TOP_MODEL) && h.contains("first model ever")),
        "{headlines:?}"
    );

    // Bounded, and nothing but dates and counts reaches a query.
    for bad in [
        "/api/series?days=400",
        "/api/series?days=0",
        "/api/series?top=51",
        "/api/series?from=2026-11-27&to=2026-11-01",
        "/api/series?from=2025-01-01&to=2026-11-27",
        "/api/series?from=2026-11-01&days=3",
        "/api/leaderboard?day=2026-13-01",
        "/api/leaderboard?day=-262143-01-01",
        "/api/leaderboard?day=+2026-11-27",
        "/api/leaderboard?day=2026-11-27%27%20OR%201=1",
        "/api/leaderboard?day=2026-11-27&day=2026-11-26",
        "/api/apps?app=x",
        "/api/milestones?limit=100000",
    ] {
        let (status, body) = http_get(&page.addr, bad);
        assert_eq!(status, 400, "{bad}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v["error"].is_string(), "{bad}: {body}");
    }
    let (status, _) = http_get(&page.addr, "/api/nothing");
    assert_eq!(status, 404);
    assert_eq!(
        http(&page.addr, "POST", "/api/series", &[], b"").status,
        405
    );
    // A day without data is an empty leaderboard, not an error.
    let empty = api(&page.addr, "/api/leaderboard?day=2020-01-01");
    assert_eq!(empty["rows"], serde_json::json!([]));
}

/// (model, provider, tokens, requests) of a leaderboard, in its order.
fn ranked(board: &Value) -> Vec<(String, String, u64, u64)> {
    board["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["model"].as_str().unwrap().into(),
                r["provider"].as_str().unwrap().into(),
                r["tokens"].as_u64().unwrap(),
                r["requests"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The same from `tokentally query`.
fn query_ranked(store: &Path, day: &str) -> Vec<(String, String, u64, u64)> {
    query(
        store,
        &format!(
            "SELECT model, provider, total_tokens, requests FROM usage_daily \
             WHERE day = DATE '{day}' ORDER BY total_tokens DESC, model, provider"
        ),
    )
    .iter()
    .map(|r| {
        (
            s(r, "model").into(),
            s(r, "provider").into(),
            u(r, "total_tokens"),
            u(r, "requests"),
        )
    })
    .collect()
}

#[test]
fn tokens_guard_the_page_and_an_open_page_stays_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let days = days();
    let (_, store) = ingested(dir.path(), &days, &events(&days, 4));
    let store = store.to_str().unwrap();

    let token = "0123456789abcdef0123456789abcdef";
    let page = serve(
        &["--store", store],
        &[("TOKENTALLY_SERVE_TOKENS", &format!("viewer:{token}"))],
    );
    for path in ["/", "/api/series", "/chart.umd.min.js"] {
        let r = http(&page.addr, "GET", path, &[], b"");
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Basic realm=\"tokentally\", charset=\"UTF-8\"")
        );
    }
    let bearer = format!("Bearer {token}");
    let r = http(
        &page.addr,
        "GET",
        "/api/series",
        &[("Authorization", &bearer)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let basic = format!(
        "Basic {}",
        data_encoding::BASE64.encode(format!("viewer:{token}").as_bytes())
    );
    let r = http(&page.addr, "GET", "/", &[("Authorization", &basic)], b"");
    assert_eq!(r.status, 200);
    let csp = r.header("content-security-policy").unwrap();
    assert!(
        csp.starts_with("default-src 'none'; script-src 'self';"),
        "{csp}"
    );
    let wrong = format!("Bearer {token}x");
    assert_eq!(
        http(&page.addr, "GET", "/", &[("Authorization", &wrong)], b"").status,
        401
    );
    drop(page);

    // Without tokens, anything but loopback is refused unless --no-auth.
    let out = bin()
        .args(["serve", "--store", store, "--listen", "0.0.0.0:0"])
        .env_remove("TOKENTALLY_SERVE_TOKENS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a loopback address") && err.contains("--no-auth"),
        "{err}"
    );
    // The token never shows in help or errors.
    let out = bin()
        .args([
            "serve",
            "--store",
            store,
            "--no-auth",
            "--listen",
            "127.0.0.1:0",
        ])
        .env("TOKENTALLY_SERVE_TOKENS", format!("viewer:{token}"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("choose one") && !err.contains(token),
        "{err}"
    );
}

/// What scripts/browser/run rankings.mjs saw.
fn browse(url: &str, screenshot: &Path) -> Value {
    let out = Command::new(root().join("scripts/browser/run"))
        .args(["rankings.mjs", url])
        .arg(screenshot)
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/browser/run (node and Chromium; scripts/test installs them)");
    assert!(out.status.success(), "the browser run failed");
    serde_json::from_slice(&out.stdout).expect("rankings.mjs prints JSON")
}

#[test]
fn the_page_in_a_browser_shows_the_data_as_text() {
    let dir = tempfile::tempdir().unwrap();
    let days = days();
    let events = events(&days, 12);
    let store = with_alerts(ingested(dir.path(), &days, &events).1);
    let page = serve(&["--store", store.to_str().unwrap()], &[]);
    let shot = std::env::var_os("TOKENTALLY_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.path().join("rankings.png"));
    let seen = browse(&format!("http://{}/?days=7", page.addr), &shot);

    assert_eq!(seen["consoleErrors"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["dialogs"], serde_json::json!([]), "{seen}");
    // Only the page's own two scripts: the names added none.
    assert_eq!(seen["scripts"], 2);
    // One bar group per day of the range, one bar per day in each dataset.
    let shown_days = seen["days"].as_array().unwrap();
    assert_eq!(shown_days.len(), 7);
    assert_eq!(shown_days.last().unwrap(), DAYS[LAST]);
    for bars in seen["bars"].as_array().unwrap() {
        assert_eq!(bars.as_u64(), Some(7));
    }
    // The table: the numbers of `tokentally query`, names as text.
    assert_eq!(seen["day"], DAYS[LAST]);
    let table: Vec<(String, String, u64, u64)> = seen["leaderboard"]
        .as_array()
        .unwrap()
        .iter()
        .map(|cells| {
            let n = |i: usize| {
                cells[i]
                    .as_str()
                    .unwrap()
                    .replace(',', "")
                    .parse::<u64>()
                    .unwrap()
            };
            (
                cells[1].as_str().unwrap().into(),
                cells[2].as_str().unwrap().into(),
                n(3),
                n(4),
            )
        })
        .collect();
    assert_eq!(table, query_ranked(&store, DAYS[LAST]));
    assert!(
        table
            .iter()
            .any(|r| r.0 == SCRIPT_MODEL && r.0.starts_with("<script>"))
    );
    assert!(table.iter().any(|r| r.0 == UNICODE_MODEL));
    let apps: Vec<&str> = seen["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|cells| cells[1].as_str().unwrap())
        .collect();
    assert!(apps.contains(&HOSTILE_APP), "{apps:?}");
    let milestones = seen["milestones"].to_string();
    assert!(milestones.contains("the first model ever"), "{milestones}");
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    eprintln!(
        "rankings page: first render in {} ms; screenshot {}",
        seen["loadMs"],
        shot.display()
    );
}

#[test]
fn ninety_days_of_thirty_models_load_in_the_browser() {
    let dir = tempfile::tempdir().unwrap();
    let start = chrono::NaiveDate::from_ymd_opt(2026, 9, 1).unwrap();
    let days: Vec<String> = (0..90)
        .map(|i| (start + chrono::Duration::days(i)).to_string())
        .collect();
    let events = events(&days, 30);
    let (_, store) = ingested(dir.path(), &days, &events);
    let page = serve(&["--store", store.to_str().unwrap()], &[]);
    let seen = browse(
        &format!("http://{}/?days=90", page.addr),
        &dir.path().join("ninety.png"),
    );
    assert_eq!(seen["consoleErrors"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["days"].as_array().unwrap().len(), 90);
    assert_eq!(seen["leaderboard"].as_array().unwrap().len(), 30);
    let line = serde_json::json!({
        "test": "serve_ninety_days",
        "events": events.len(),
        "days": 90,
        "models": 30,
        "load_ms": seen["loadMs"],
    });
    eprintln!("{line}");
    append_report("TOKENTALLY_SERVE_REPORT", &line);
}

#[test]
fn clickhouse_serves_the_same_page_as_the_store() {
    let s = services();
    let dir = tempfile::tempdir().unwrap();
    let days = days();
    let events = events(&days, 12);
    let (file, store) = ingested(dir.path(), &days, &events);
    load_prices(&["--store", store.to_str().unwrap()]);
    let db = aggregated_database(&file, "serve");
    load_prices(&["--clickhouse", &s.clickhouse, "--clickhouse-database", &db]);
    clickhouse_sql(
        &s.clickhouse,
        &format!(
            "INSERT INTO {db}.milestones_log (id, type, scope, model, day, threshold, value, detected_at) \
             VALUES ('first:model:{TOP_MODEL}:1000000000', 'first', 'model', '{TOP_MODEL}', '{}', \
             1000000000, 1200000000, now())",
            DAYS[LAST]
        ),
    )
    .unwrap();

    let on_store = serve(&["--store", store.to_str().unwrap()], &[]);
    let on_clickhouse = serve(
        &["--clickhouse", &s.clickhouse, "--clickhouse-database", &db],
        &[],
    );
    for path in [
        "/api/series?days=7&top=10".to_string(),
        "/api/series?from=2026-11-20&to=2026-11-27&top=3".to_string(),
        "/api/leaderboard".to_string(),
        format!("/api/leaderboard?day={}", DAYS[1]),
        format!("/api/apps?day={}", DAYS[LAST]),
        "/api/apps?day=2020-01-01".to_string(),
    ] {
        assert_eq!(
            api(&on_clickhouse.addr, &path),
            api(&on_store.addr, &path),
            "GET {path}: ClickHouse and the store differ"
        );
    }
    let feed = api(&on_clickhouse.addr, "/api/milestones");
    let headline = feed["milestones"][0]["headline"].as_str().unwrap();
    assert!(
        headline.contains(TOP_MODEL) && headline.contains("the first model ever"),
        "{headline}"
    );
}

#[test]
fn the_demo_serves_its_day_until_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("demo");
    let mut demo = bin()
        .args(["demo", "--serve", "--listen", "127.0.0.1:0"])
        .args(["--events", "20000", "--wall-secs", "0", "--store"])
        .arg(&store)
        .env_remove("TOKENTALLY_SERVE_TOKENS")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let mut addr = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(url) = line.trim().strip_prefix("rankings page: open http://") {
            addr = Some(url.trim_end_matches('/').to_string());
        }
        if line.contains("stays up until Ctrl-C") {
            break;
        }
    }
    let addr = addr.expect("the demo printed the page's URL");
    let board = api(&addr, "/api/leaderboard");
    let day = board["day"].as_str().unwrap().to_string();
    assert_eq!(ranked(&board), query_ranked(&store, &day));
    let feed = api(&addr, "/api/milestones");
    assert!(!feed["milestones"].as_array().unwrap().is_empty(), "{feed}");
    // SIGTERM: the page stops and the demo exits cleanly.
    assert_eq!(unsafe { libc::kill(demo.id() as i32, libc::SIGTERM) }, 0);
    assert!(demo.wait().unwrap().success());
}
