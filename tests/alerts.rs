//! Milestone alerts end to end, against the real Kafka broker and the real
//! ClickHouse server: events through Kafka into ClickHouse, `alerts run`
//! watching ClickHouse, and a real HTTP receiver that verifies every
//! Standard Webhooks signature, fails its first attempts (two 500s, then a
//! timeout), while the aggregator and the alerter are SIGKILLed and
//! restarted between the two models' crossings.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::services::{migrated_database, produce, services, topic};
use common::webhook::{SECRET, Seen, receiver};
use common::{bin, run_ok};
use serde_json::Value;
use tokentally_alerts::display_url;
use tokentally_alerts::webhook::{Secret, webhook_id};

const DAY_MS: i64 = 1_795_737_600_000; // 2026-11-27T00:00:00Z
const T1: u64 = 1_000_000_000_000;

/// `n` events of `model`, 200M tokens each, on 2026-11-27.
fn events(path: &Path, model: &str, n: u32) {
    let mut out = String::new();
    for i in 0..n {
        out.push_str(&format!(
            r#"{{"event_id":"{model}-{i}","ts":{},"model":"{model}","provider":"p-{model}","prompt_tokens":100000000,"completion_tokens":100000000}}"#,
            DAY_MS + i64::from(i) * 1000
        ));
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
}

struct Procs {
    aggregator: Child,
    alerter: Child,
}

/// Wait until the milestones `ids` were delivered (the receiver keys
/// them by `webhook-id`).
fn wait_for(seen: &Mutex<Seen>, ids: &[&str], limit: Duration) {
    let started = Instant::now();
    loop {
        {
            let s = seen.lock().unwrap();
            if ids
                .iter()
                .all(|id| s.delivered.contains_key(&webhook_id(id)))
            {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "not delivered within {limit:?}: {:?}; delivered: {:?}",
                ids,
                s.delivered.keys().collect::<Vec<_>>()
            );
        }
        sleep(Duration::from_millis(200));
    }
}

#[test]
fn milestones_are_delivered_once_signed_through_failures_and_restarts() {
    let s = services();
    let dir = tempfile::tempdir().unwrap();
    let t = topic("alerts");
    let db = migrated_database(&s.clickhouse, "alerts");
    let (url, seen) = receiver(true);
    let config = dir.path().join("tokentally.toml");
    std::fs::write(
        &config,
        "[alerts]\nrequest_timeout = \"2s\"\ninterval = \"300ms\"\n",
    )
    .unwrap();
    let state = dir.path().join("alerts-state");

    let aggregator = || -> Child {
        t.aggregate("alerts")
            .args(["--instance-id", "alerts-1"])
            .args([
                "--sink",
                "clickhouse",
                "--clickhouse",
                &s.clickhouse,
                "--clickhouse-database",
                &db,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let alerter = || -> Child {
        bin()
            .arg("--config")
            .arg(&config)
            .args([
                "alerts",
                "run",
                "--from-clickhouse",
                "--clickhouse",
                &s.clickhouse,
            ])
            .args(["--clickhouse-database", &db, "--webhook", &url, "--state"])
            .arg(&state)
            .env("TOKENTALLY_WEBHOOK_SECRET", SECRET)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut procs = Procs {
        aggregator: aggregator(),
        alerter: alerter(),
    };
    // The alerter's first look (no totals yet) must precede the traffic, or
    // what it finds counts as history.
    let started = Instant::now();
    while !state.join("alerts.json").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "alerter did not start"
        );
        sleep(Duration::from_millis(100));
    }

    // Model A: 6,000 × 200M = 1.2T tokens on the day.
    let a = dir.path().join("a.ndjson");
    events(&a, "model-a", 6_000);
    produce(&t, &a);
    let first = format!("first:model:{T1}");
    let a_1t = format!("threshold:model:model-a:2026-11-27:{T1}");
    wait_for(&seen, &[&first, &a_1t], Duration::from_secs(90));

    // Both restarted, hard.
    for child in [&mut procs.aggregator, &mut procs.alerter] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    procs = Procs {
        aggregator: aggregator(),
        alerter: alerter(),
    };

    // Model B: 7,500 × 200M = 1.5T, passing A's 1.2T.
    let b = dir.path().join("b.ndjson");
    events(&b, "model-b", 7_500);
    produce(&t, &b);
    let b_1t = format!("threshold:model:model-b:2026-11-27:{T1}");
    let record = "record:top_model:2026-11-27:model-b".to_string();
    wait_for(&seen, &[&b_1t, &record], Duration::from_secs(90));
    sleep(Duration::from_secs(2)); // anything else in flight
    for child in [&mut procs.aggregator, &mut procs.alerter] {
        child.kill().unwrap();
        child.wait().unwrap();
    }

    let s = seen.lock().unwrap();
    assert_eq!(s.bad_signatures, 0, "every request is signed");
    assert!(s.requests >= 3, "the receiver's failures were exercised");
    // One id per crossing: a redelivery (if any) carries the same
    // webhook-id, derived from the milestone id in the body, and the same
    // milestone.
    for (id, bodies) in &s.delivered {
        assert!(
            bodies.iter().all(|b| b == &bodies[0]),
            "{id} changed between deliveries"
        );
        assert_eq!(&webhook_id(bodies[0]["id"].as_str().unwrap()), id);
    }
    let body = |id: &str| &s.delivered[&webhook_id(id)][0];
    let firsts: Vec<&Value> = s
        .delivered
        .values()
        .map(|b| &b[0])
        .filter(|b| b["id"].as_str().unwrap().starts_with("first:model:"))
        .collect();
    assert_eq!(
        body(&first)["model"],
        "model-a",
        "the first to cross 1T is A"
    );
    assert_eq!(body(&first)["type"], "first");
    assert_eq!(
        firsts.len(),
        4,
        "one first per threshold A reached (1B..1T)"
    );
    assert!(firsts.iter().all(|b| b["model"] == "model-a"));
    assert!(body(&b_1t)["value"].as_u64().unwrap() >= T1);
    let r = body(&record);
    assert_eq!(r["type"], "record");
    assert_eq!(r["previous_holder"], "model-a");
    assert_eq!(r["previous_record"], 1_200_000_000_000u64);
    assert_eq!(r["value"], 1_500_000_000_000u64);

    // Recorded in ClickHouse too, once per id.
    let rows = common::services::clickhouse_rows(
        &services().clickhouse,
        &format!(
            "SELECT id, previous_holder FROM {db}.milestones WHERE type = 'record' AND scope = 'top_model'"
        ),
    );
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["previous_holder"], "model-a");

    // `alerts list` shows them delivered, and `alerts verify` accepts a
    // correctly signed body and refuses a tampered one.
    let list = run_ok(
        bin()
            .args(["alerts", "list", "--json", "--state"])
            .arg(&state),
    );
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(
        list["milestones"][&record]["deliveries"][&display_url(&url)]["status"],
        "delivered"
    );
    // Endpoint URLs are shown without their path, where Slack and Discord
    // keep the token.
    let text = run_ok(bin().args(["alerts", "list", "--state"]).arg(&state)).stdout;
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains(&display_url(&url)) && !text.contains("/hook"),
        "{text}"
    );
    let secret = Secret::parse(SECRET).unwrap();
    let payload = br#"{"id":"x"}"#;
    let ts = chrono::Utc::now().timestamp();
    let sig = secret.sign("x", ts, payload);
    let check = |body: &[u8]| {
        let mut child = bin()
            .args([
                "alerts",
                "verify",
                "--id",
                "x",
                "--timestamp",
                &ts.to_string(),
                "--signature",
                &sig,
            ])
            .env("TOKENTALLY_WEBHOOK_SECRET", SECRET)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(body).unwrap();
        child.wait().unwrap().success()
    };
    assert!(check(payload));
    assert!(!check(br#"{"id":"y"}"#));
}
