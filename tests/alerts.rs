//! Milestone alerts end to end. Against the real Kafka broker and the real
//! ClickHouse server: events through Kafka into ClickHouse, `alerts run`
//! watching ClickHouse, and a real HTTP receiver that verifies every
//! Standard Webhooks signature, fails its first attempts (two 500s, then a
//! timeout), while the aggregator and the alerter are SIGKILLed and
//! restarted between the two models' crossings. Without services, over
//! an embedded store and real HTTP receivers: `alerts test` in every
//! format, and a model with a hostile name through `alerts run` to a
//! standard and a Slack endpoint.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::services::{migrated_database, produce, services, topic};
use common::webhook::{
    Received, SECRET, Seen, answering, receiver, store_alerter, verify_with_reference_library,
};
use common::{bin, run_ok, wait_until};
use serde_json::Value;
use tokentally_alerts::webhook::{Secret, webhook_id};
use tokentally_alerts::{AlertState, Status, display_url};

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

/// Whether the alerter whose state is in `dir` has settled: no delivery
/// pending, every milestone copied to ClickHouse.
fn settled(dir: &Path) -> bool {
    AlertState::load(dir).unwrap().is_some_and(|s| {
        s.milestones
            .values()
            .all(|r| r.mirrored && r.deliveries.values().all(|d| d.status != Status::Pending))
    })
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
    // The rest of what the alerter recorded (A's lower thresholds among
    // them) may still be on its way: wait until its state says every
    // delivery is done and every milestone is in ClickHouse, so that what
    // the receiver and the table hold below is final.
    wait_until(
        Duration::from_secs(60),
        200,
        || settled(&state),
        || {
            format!(
                "the alerter did not settle within 60 s: {:#?}",
                AlertState::load(&state)
            )
        },
    );
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

/// A PagerDuty routing key, for the tests: it must never be printed.
const ROUTING_KEY: &str = "R0UT1NGKEYf0rTESTS0123456789abcd";

/// `alerts test --webhook url` with `args`; its output, stdout then
/// stderr, and whether it succeeded.
fn alerts_test(url: &str, args: &[&str]) -> (String, bool) {
    let out = bin()
        .args(["alerts", "test", "--webhook", url])
        .args(args)
        .env("TOKENTALLY_WEBHOOK_SECRET", SECRET)
        .env("TOKENTALLY_PAGERDUTY_ROUTING_KEY", ROUTING_KEY)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains(ROUTING_KEY), "{text}");
    assert!(
        !text.contains("/hook"),
        "the URL's path is never shown: {text}"
    );
    (text, out.status.success())
}

/// The one request a receiver got, after checking that every header value
/// is ASCII.
fn only_request(seen: &Mutex<Seen>) -> Received {
    let s = seen.lock().unwrap();
    assert_eq!(s.received.len(), 1);
    let r = s.received[0].clone();
    for (name, value) in &r.headers {
        assert!(value.is_ascii(), "{name}: {value:?}");
    }
    r
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no {pointer} in {v}"))
}

#[test]
fn alerts_test_sends_a_sample_in_every_format() {
    let sample = "tokentally/test-model";
    for format in ["standard", "slack", "discord", "pagerduty"] {
        let (url, seen) = receiver(false);
        let (out, ok) = alerts_test(&url, &["--format", format]);
        assert!(ok, "{out}");
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(
            out.starts_with("delivered: HTTP 200 from http://127.0.0.1:")
                && out.contains(&format!(
                    "({format} format, sample milestone test:model:{sample}:"
                )),
            "{out}"
        );
        let r = only_request(&seen);
        let body = r.json();
        let signed = r.header("webhook-signature").is_some();
        assert_eq!(signed, format == "standard", "{format}: {:?}", r.headers);
        let sentence = format!("Test from tokentally: {sample} crossed 1T tokens in a day on ");
        match format {
            "standard" => {
                assert_eq!(seen.lock().unwrap().bad_signatures, 0);
                assert_eq!(body["type"], "test");
                assert_eq!(body["model"], sample);
                let id = text(&body, "/id");
                assert!(id.starts_with(&format!("test:model:{sample}:")), "{id}");
                assert_eq!(r.header("webhook-id"), Some(webhook_id(id).as_str()));
            }
            "slack" => {
                assert!(text(&body, "/text").starts_with(&sentence), "{body}");
                assert_eq!(body["blocks"][0]["type"], "section");
                assert_eq!(body["blocks"][0]["text"]["type"], "mrkdwn");
                assert_eq!(body["blocks"][0]["text"]["text"], body["text"]);
                assert_eq!(body["blocks"][1]["type"], "context");
                assert!(text(&body, "/blocks/1/elements/0/text").contains("*type:* test"));
            }
            "discord" => {
                assert!(text(&body, "/content").starts_with(&sentence), "{body}");
                assert_eq!(body["allowed_mentions"]["parse"], serde_json::json!([]));
                assert_eq!(body["embeds"][0]["title"], "Test from tokentally");
                assert_eq!(body["embeds"][0]["description"], body["content"]);
                assert_eq!(body["embeds"][0]["fields"][1]["value"], sample);
                assert!(text(&body, "/embeds/0/timestamp").ends_with('Z'));
            }
            "pagerduty" => {
                assert_eq!(body["routing_key"], ROUTING_KEY);
                assert_eq!(body["event_action"], "trigger");
                assert!(text(&body, "/dedup_key").starts_with("test:model:"));
                assert!(text(&body, "/payload/summary").starts_with(&sentence));
                assert_eq!(body["payload"]["source"], "tokentally");
                assert_eq!(body["payload"]["severity"], "info");
                assert_eq!(body["payload"]["custom_details"]["type"], "test");
            }
            _ => unreachable!(),
        }
    }

    // The routing key file wins over the variable; the severity is the
    // endpoint's.
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("routing-key");
    std::fs::write(&key_file, "FR0MTHEF1LE\n").unwrap();
    let (url, seen) = receiver(false);
    let key_file = key_file.to_str().unwrap();
    let (out, ok) = alerts_test(
        &url,
        &[
            "--format",
            "pagerduty",
            "--routing-key-file",
            key_file,
            "--severity",
            "critical",
        ],
    );
    assert!(ok && !out.contains("FR0MTHEF1LE"), "{out}");
    let body = only_request(&seen).json();
    assert_eq!(body["routing_key"], "FR0MTHEF1LE");
    assert_eq!(body["payload"]["severity"], "critical");
}

#[test]
fn alerts_test_says_why_a_delivery_failed() {
    // A final refusal: one attempt, the status in the answer.
    let (url, seen) = answering(400);
    let started = Instant::now();
    let (out, ok) = alerts_test(&url, &["--format", "slack"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("not delivered to http://127.0.0.1:")
            && out.contains("(slack format): HTTP 400: refused, not retried"),
        "{out}"
    );
    assert_eq!(seen.lock().unwrap().requests, 1);
    assert!(started.elapsed() < Duration::from_secs(10));

    // A failing receiver: retried with the same webhook-id, signed anew
    // each time, until the budget runs out.
    let (url, seen) = answering(503);
    let started = Instant::now();
    let (out, ok) = alerts_test(&url, &["--give-up-after", "3s"]);
    assert!(!ok, "{out}");
    assert!(out.contains("still failing after 3s: HTTP 503"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let s = seen.lock().unwrap();
    assert!(s.requests >= 2, "retried: {}", s.requests);
    assert_eq!(s.bad_signatures, 0);
    let ids: BTreeSet<_> = s.received.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    drop(s);

    // Nobody listening: the cause is named.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", listener.local_addr().unwrap())
    };
    let (out, ok) = alerts_test(&closed, &["--format", "discord", "--give-up-after", "1s"]);
    assert!(!ok && out.contains("Connection refused"), "{out}");

    // Keys of another format are refused before anything is sent.
    let (out, ok) = alerts_test(&url, &["--format", "slack", "--secret-file", "/dev/null"]);
    assert!(
        !ok && out.contains("secret_file are for format standard, not slack"),
        "{out}"
    );
}

/// A model whose name is markup, quotes and non-ASCII at once.
const HOSTILE: &str = "通义/qwen-max-中文 \"x\" <b>";

#[test]
fn a_hostile_model_name_reaches_receivers_with_ascii_headers_and_valid_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    run_ok(
        bin()
            .args(["ingest", "--file", "/dev/null", "--store"])
            .arg(&store),
    );
    let (standard, seen) = receiver(false);
    let (slack, seen_by_slack) = receiver(false);
    let config = dir.path().join("tokentally.toml");
    std::fs::write(
        &config,
        format!(
            "[alerts]\ninterval = \"200ms\"\n\
             [alerts.rules]\ndaily_thresholds = [1000]\nall_time_thresholds = [5000]\n\
             [[alerts.webhooks]]\nformat = \"slack\"\nurl = \"{slack}\"\n"
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let mut alerter = store_alerter(&config, &store, &state, &standard);
    let events = dir.path().join("events.ndjson");
    let lines: Vec<String> = (0..6)
        .map(|i| {
            serde_json::json!({
                "event_id": format!("hostile-{i}"),
                "ts": DAY_MS + i * 1000,
                "model": HOSTILE,
                "provider": "供应商 <i>",
                "prompt_tokens": 600,
                "completion_tokens": 400,
            })
            .to_string()
        })
        .collect();
    std::fs::write(&events, lines.join("\n")).unwrap();
    run_ok(
        bin()
            .args(["ingest", "--file"])
            .arg(&events)
            .arg("--store")
            .arg(&store),
    );
    // Thresholds of the model, its provider and the fleet, the model's
    // all-time threshold and the first model to 1000.
    let expected = [
        "threshold:model:通义/qwen-max-中文 \"x\" <b>:2026-11-27:1000",
        "threshold:provider:供应商 <i>:2026-11-27:1000",
        "threshold:fleet:all:2026-11-27:1000",
        "all_time:model:通义/qwen-max-中文 \"x\" <b>:5000",
        "first:model:1000",
    ];
    wait_until(
        Duration::from_secs(60),
        200,
        || {
            seen_by_slack
                .lock()
                .unwrap()
                .delivered
                .values()
                .flatten()
                .count()
                == expected.len()
        },
        || "the slack endpoint did not get every milestone".into(),
    );
    wait_for(&seen, &expected, Duration::from_secs(60));
    alerter.kill().unwrap();
    alerter.wait().unwrap();

    let s = seen.lock().unwrap();
    assert_eq!(s.bad_signatures, 0, "every signature verifies");
    assert_eq!(s.delivered.len(), expected.len());
    for r in &s.received {
        for (name, value) in &r.headers {
            assert!(value.is_ascii(), "{name}: {value:?}");
        }
        let id = r.json()["id"].as_str().unwrap().to_string();
        assert_eq!(r.header("webhook-id"), Some(webhook_id(&id).as_str()));
    }
    let first = &s.delivered[&webhook_id("first:model:1000")][0];
    assert_eq!(first["model"], HOSTILE, "the body keeps the name as it is");
    // And a receiver in Python, with the reference library, agrees.
    verify_with_reference_library(&s.received);

    let slack = seen_by_slack.lock().unwrap();
    for r in &slack.received {
        assert!(r.headers.iter().all(|(_, v)| v.is_ascii()));
        assert!(r.header("webhook-signature").is_none());
        let text = r.json()["text"].as_str().unwrap().to_string();
        assert!(!text.contains(['<', '>']), "{text}");
    }
    let texts: Vec<String> = slack
        .received
        .iter()
        .map(|r| r.json()["text"].as_str().unwrap().to_string())
        .collect();
    assert!(
        texts.contains(
            &"通义/qwen-max-中文 \"x\" &lt;b&gt; crossed 1K tokens in a day on \
                         2026-11-27, the first model ever (6K)"
                .to_string()
        ),
        "{texts:?}"
    );
}
