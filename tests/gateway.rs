//! The HTTP ingest gateway and the emitter library against a real Apache
//! Kafka broker (started by `scripts/services up` when
//! TOKENTALLY_KAFKA_BROKERS is not set): the ground-truth corpus sent
//! through either, then aggregated, gives exactly the totals of the file
//! path, and the gateway answers the documented statuses — never 200 for an
//! event Kafka did not acknowledge.
//!
//! Over 500 lines: the cases share the topic read-back below, which serves
//! no other test binary.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::gateway::Gateway;
use common::http::{Response, http};
use common::services::{brokers, corpus, read_topic, reference, topic};
use common::{bin, event, query, rejects, serial, summary, usage_totals};
use tokentally_ingest::emitter::{EmitError, Emitter};
use tokentally_ingest::kafka::KafkaConfig;
use tokentally_schemas::{Limits, TokenEvent, decode};

/// A simulated corpus with duplicates, late events and malformed lines, and
/// the same corpus ingested from the file into a reference store (the file
/// path is checked against independent ground truth in
/// tests/ingest_ground_truth.rs).
fn corpus_with_reference(dir: &Path, events: u32, seed: u32) -> (Vec<Vec<u8>>, PathBuf) {
    let path = corpus(dir, events, seed);
    let reference = reference(dir, &path);
    let lines: Vec<Vec<u8>> = std::fs::read(&path)
        .unwrap()
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    assert_eq!(lines.len(), events as usize);
    (lines, reference)
}

/// How many records a store refused.
fn rejected_total(store: &Path) -> u64 {
    common::u(
        &query(
            store,
            "SELECT CAST(COALESCE(SUM(count), 0) AS BIGINT UNSIGNED) AS n FROM rejected",
        )[0],
        "n",
    )
}

/// The reason the contract gives for refusing `line`.
fn reason_of(line: &[u8]) -> Option<&'static str> {
    decode(line, &Limits::default())
        .err()
        .map(|r| r.reason.as_str())
}

// ---------------------------------------------------------------------------
// A gateway process and requests to it.

const TOKEN_A: &str = "tok-fleet-a-0123456789abcdef0123456789";
const TOKEN_B: &str = "tok-fleet-b-fedcba9876543210fedcba9876";

fn tokens_file(dir: &Path) -> PathBuf {
    let path = dir.join("tokens");
    std::fs::write(
        &path,
        format!("# gateway tokens\nfleet-a:{TOKEN_A}\n\nfleet-b:{TOKEN_B}\n"),
    )
    .unwrap();
    path
}

/// Requests to the gateway under test.
trait Requests {
    fn post(&self, token: Option<&str>, content_type: &str, body: &[u8]) -> Response;
    fn get(&self, path: &str) -> Response;
}

impl Requests for Gateway {
    fn post(&self, token: Option<&str>, content_type: &str, body: &[u8]) -> Response {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", content_type)];
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        http(&self.addr, "POST", "/v1/events", &headers, body)
    }

    fn get(&self, path: &str) -> Response {
        http(&self.addr, "GET", path, &[], b"")
    }
}

// ---------------------------------------------------------------------------

/// A request of the corpus test: content type, body, and the lines it holds.
type Request<'a> = (&'static str, Vec<u8>, &'a [Vec<u8>]);

#[test]
fn the_corpus_through_the_gateway_gives_the_totals_of_the_file_path() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (lines, reference) = corpus_with_reference(dir.path(), 40_000, 21);
    let t = topic("gw-exact");
    let gw = Gateway::start(&[
        "--kafka",
        &t.brokers,
        "--topic",
        &t.name,
        "--tokens-file",
        tokens_file(dir.path()).to_str().unwrap(),
    ]);

    // The first events one per request (a single JSON object; a malformed
    // one is a rejected record, index 0), the rest in chunks: NDJSON, or a
    // JSON array when every line of the chunk is well-formed JSON.
    let mut requests: Vec<Request<'_>> = Vec::new();
    let singles = 20;
    for line in &lines[..singles] {
        requests.push(("application/json", line.clone(), std::slice::from_ref(line)));
    }
    let mut arrays = 0;
    for (i, chunk) in lines[singles..].chunks(997).enumerate() {
        let all_json = chunk
            .iter()
            .all(|l| serde_json::from_slice::<serde_json::Value>(l).is_ok());
        if i % 3 != 0 && all_json {
            arrays += 1;
            let mut body = b"[".to_vec();
            body.extend(chunk.join(&b",\n"[..]));
            body.extend(b"]");
            requests.push(("application/json; charset=utf-8", body, chunk));
        } else {
            let mut body = chunk.join(&b'\n');
            body.push(b'\n');
            requests.push(("application/x-ndjson", body, chunk));
        }
    }
    assert!(arrays >= 5, "only {arrays} JSON-array requests");

    // Three clients at once, with different tokens.
    let results: Vec<(usize, BTreeMap<String, u64>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|worker| {
                let gw = &gw;
                let requests = &requests;
                s.spawn(move || {
                    let token = if worker == 0 { TOKEN_A } else { TOKEN_B };
                    let mut accepted = 0;
                    let mut reasons = BTreeMap::new();
                    for (content_type, body, chunk) in requests.iter().skip(worker).step_by(3) {
                        let r = gw.post(Some(token), content_type, body);
                        assert_eq!(r.status, 200, "{}", r.text());
                        let v = r.json();
                        let n = v["accepted"].as_u64().unwrap() as usize;
                        let rejected = v["rejected"].as_array().unwrap();
                        assert_eq!(n + rejected.len(), chunk.len(), "{v}");
                        let expected: Vec<usize> = (0..chunk.len())
                            .filter(|&i| reason_of(&chunk[i]).is_some())
                            .collect();
                        let got: Vec<usize> = rejected
                            .iter()
                            .map(|r| r["index"].as_u64().unwrap() as usize)
                            .collect();
                        assert_eq!(got, expected, "{v}");
                        for r in rejected {
                            let i = r["index"].as_u64().unwrap() as usize;
                            let reason = r["reason"].as_str().unwrap();
                            assert_eq!(Some(reason), reason_of(&chunk[i]), "{r}");
                            *reasons.entry(reason.to_owned()).or_insert(0) += 1;
                        }
                        accepted += n;
                    }
                    (accepted, reasons)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let accepted: usize = results.iter().map(|(n, _)| n).sum();
    let mut reasons = BTreeMap::new();
    for (_, r) in &results {
        for (k, v) in r {
            *reasons.entry(k.clone()).or_insert(0) += v;
        }
    }
    let rejected: u64 = reasons.values().sum();
    assert!(rejected > 0, "the corpus has malformed lines");
    assert_eq!(accepted + rejected as usize, lines.len());
    assert_eq!(reasons, rejects(&reference));
    assert!(gw.stop().success());

    // Everything the gateway answered 200 for is in Kafka: aggregated, it
    // gives exactly the reference totals. Rejected events never reached it.
    let store = dir.path().join("kafka");
    let summary = summary(&mut t.aggregate_into(&store, "gw", "5"));
    assert_eq!(summary["records"], accepted as u64);
    assert_eq!(usage_totals(&store), usage_totals(&reference));
    assert_eq!(rejected_total(&store), 0);
}

#[test]
fn the_corpus_through_the_emitter_gives_the_totals_of_the_file_path() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (lines, reference) = corpus_with_reference(dir.path(), 40_000, 22);
    let t = topic("emitter");
    let config = KafkaConfig {
        brokers: t.brokers.clone(),
        topic: t.name.clone(),
        ..KafkaConfig::default()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (accepted, reasons) = runtime.block_on(async {
        let emitter = Emitter::new(&config).unwrap().with_source("emitter-test");
        let mut pending = Vec::new();
        let mut reasons = BTreeMap::new();
        for line in &lines {
            match emitter.enqueue_json(line) {
                Ok(delivery) => pending.push(delivery),
                Err(EmitError::Invalid(rejection)) => {
                    assert_eq!(Some(rejection.reason.as_str()), reason_of(line));
                    *reasons
                        .entry(rejection.reason.as_str().to_owned())
                        .or_insert(0u64) += 1;
                }
                Err(e) => panic!("enqueue failed: {e}"),
            }
        }
        let accepted = pending.len();
        for delivery in pending {
            delivery.await.expect("acknowledged by Kafka");
        }
        // The one-step API, with its error for an invalid event.
        let err = emitter
            .send_json(br#"{"event_id":"x","ts":"yesterday","model":"m","provider":"p","prompt_tokens":1,"completion_tokens":1}"#)
            .await
            .unwrap_err();
        assert_eq!(err.rejection().unwrap().reason.as_str(), "invalid_ts");
        assert!(err.to_string().starts_with("invalid event (invalid_ts)"), "{err}");
        emitter.flush(Duration::from_secs(30)).unwrap();
        (accepted, reasons)
    });
    assert_eq!(
        accepted as u64 + reasons.values().sum::<u64>(),
        lines.len() as u64
    );
    assert_eq!(reasons, rejects(&reference));

    let store = dir.path().join("kafka");
    let summary = summary(&mut t.aggregate_into(&store, "emitter", "5"));
    assert_eq!(summary["records"], accepted as u64);
    assert_eq!(usage_totals(&store), usage_totals(&reference));
    assert_eq!(rejected_total(&store), 0);
}

#[test]
fn the_gateway_answers_the_documented_statuses() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let t = topic("gw-status");
    let gw = Gateway::start(&[
        "--kafka",
        &t.brokers,
        "--topic",
        &t.name,
        "--tokens-file",
        tokens_file(dir.path()).to_str().unwrap(),
        "--max-body-bytes",
        "4096",
    ]);
    assert_eq!(gw.get("/healthz").status, 200);
    let ready = gw.get("/readyz");
    assert_eq!(ready.status, 200, "{}", ready.text());

    // Authentication.
    let one = event("status-1");
    let r = gw.post(None, "application/json", one.as_bytes());
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    let r = gw.post(
        Some("tok-fleet-a-wrong"),
        "application/json",
        one.as_bytes(),
    );
    assert_eq!(r.status, 401);
    let r = gw.post(
        Some(&TOKEN_A[..TOKEN_A.len() - 1]),
        "application/json",
        one.as_bytes(),
    );
    assert_eq!(r.status, 401);

    // Oversized body: 413, nothing sent.
    let mut big = Vec::new();
    for i in 0..60 {
        big.extend(event(&format!("big-{i}")).as_bytes());
        big.push(b'\n');
    }
    assert!(big.len() > 4096);
    let r = gw.post(Some(TOKEN_A), "application/x-ndjson", &big);
    assert_eq!(r.status, 413, "{}", r.text());

    // A body no event can be read from: 400, nothing sent.
    let r = gw.post(
        Some(TOKEN_A),
        "application/json",
        format!("[{},{{broken]", event("never-1")).as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("NDJSON"));
    let r = gw.post(Some(TOKEN_A), "application/x-ndjson", b"\n\n");
    assert_eq!(r.status, 400, "{}", r.text());

    // Malformed events: 200, listed in `rejected`, valid ones delivered.
    let r = gw.post(Some(TOKEN_A), "application/json", one.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["accepted"], 1);
    assert_eq!(r.json()["rejected"], serde_json::json!([]));
    let ndjson = format!(
        "{}\n{{\"event_id\":\"bad\"\n\n{}\r\n[1]\n",
        event("status-2"),
        event("status-3").replace("\"m\"", "\"\"")
    );
    let r = gw.post(Some(TOKEN_B), "application/x-ndjson", ndjson.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["accepted"], 1, "{v}");
    let rejected: Vec<(u64, &str)> = v["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        rejected,
        [
            (1, "invalid_json"),
            (3, "empty_value"),
            (4, "not_an_object")
        ]
    );
    assert_eq!(v["rejected"][1]["field"], "model");
    let r = gw.post(
        Some(TOKEN_B),
        "application/json",
        format!("[{}, 5]", event("status-4")).as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"accepted": 1, "rejected_count": 1, "rejected": [{"index": 1, "reason": "not_an_object",
            "detail": r.json()["rejected"][0]["detail"]}]})
    );

    // The emitter's typed API, to the same topic.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let config = KafkaConfig {
            brokers: t.brokers.clone(),
            topic: t.name.clone(),
            ..KafkaConfig::default()
        };
        let emitter = Emitter::new(&config).unwrap().with_source("typed");
        let mut ev = TokenEvent {
            event_id: "typed-1".into(),
            ts: 1_795_737_600_000,
            model: "m".into(),
            provider: "p".into(),
            app: "a".into(),
            node: Some("node-1".into()),
            region: None,
            prompt_tokens: 1,
            completion_tokens: 2,
            cached_tokens: 0,
            reasoning_tokens: 0,
            latency_ms: Some(10),
            status: Default::default(),
        };
        emitter.send(&ev).await.expect("acknowledged");
        ev.provider = "".into();
        let err = emitter.send(&ev).await.unwrap_err();
        assert_eq!(err.rejection().unwrap().reason.as_str(), "empty_value");
    });
    assert!(gw.stop().success());

    // What reached Kafka: exactly the accepted events, keyed by event_id,
    // with the token's name (or the emitter's source) as `source`.
    let messages = read_topic(&t.brokers, &t.name, 4);
    let summary: Vec<(&str, Option<&str>)> = messages
        .iter()
        .map(|(k, headers, _)| {
            let source = headers.iter().find(|(h, _)| h == "source");
            (
                k.as_deref().unwrap(),
                source.and_then(|(_, v)| v.as_deref()),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("status-1", Some("fleet-a")),
            ("status-2", Some("fleet-b")),
            ("status-4", Some("fleet-b")),
            ("typed-1", Some("typed")),
        ]
    );
    assert_eq!(messages[0].2, one);
}

#[test]
fn with_the_broker_down_the_gateway_never_answers_200() {
    // No broker listens on port 1; the shared broker is left alone.
    let gw = Gateway::start(&[
        "--kafka",
        "127.0.0.1:1",
        "--topic",
        "nowhere",
        "--delivery-timeout",
        "2s",
        "--no-auth",
    ]);
    assert_eq!(gw.get("/healthz").status, 200);
    let r = gw.get("/readyz");
    assert_eq!(r.status, 503, "{}", r.text());

    for (content_type, body) in [
        ("application/json", event("down-1")),
        (
            "application/x-ndjson",
            format!("{}\n{{broken\n{}\n", event("down-2"), event("down-3")),
        ),
    ] {
        let r = gw.post(None, content_type, body.as_bytes());
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(r.header("retry-after").is_some(), "{r:?}");
        // Answered once the delivery timeout ran out (librdkafka timed the
        // message out), not at once.
        let error = r.json()["error"].as_str().unwrap().to_string();
        assert!(
            error.contains("not acknowledged")
                && error.contains("for longer than 2s (the delivery timeout)"),
            "{}",
            r.text()
        );
    }
    // Nothing to acknowledge: the rejection is the whole answer.
    let r = gw.post(None, "application/x-ndjson", b"{broken\n");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["accepted"], 0);
    assert!(gw.stop().success());
}

#[test]
fn the_gateway_refuses_to_start_without_tokens() {
    let out = bin()
        .args([
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--kafka",
            "127.0.0.1:1",
        ])
        .env_remove("TOKENTALLY_GATEWAY_TOKENS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no bearer tokens") && err.contains("--no-auth"),
        "{err}"
    );

    // Tokens from the environment work too; --no-auth with tokens is refused.
    let out = bin()
        .args([
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--kafka",
            "127.0.0.1:1",
        ])
        .arg("--no-auth")
        .env("TOKENTALLY_GATEWAY_TOKENS", format!("env-node:{TOKEN_A}"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("choose one"), "{err}");
    assert!(!err.contains(TOKEN_A), "a token was printed: {err}");
}

#[test]
fn the_gateway_refuses_a_missing_topic() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["gateway", "--listen", "127.0.0.1:0", "--kafka", &brokers()])
        .args(["--topic", "tt-gateway-no-such-topic", "--tokens-file"])
        .arg(tokens_file(dir.path()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("topic tt-gateway-no-such-topic does not exist"),
        "{err}"
    );
}

#[test]
fn hostile_bodies_are_refused_and_the_gateway_stays_up() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let t = topic("gw-hostile");
    let gw = Gateway::start(&[
        "--kafka",
        &t.brokers,
        "--topic",
        &t.name,
        "--tokens-file",
        tokens_file(dir.path()).to_str().unwrap(),
    ]);
    // 100,000 '[' then 100,000 ']': it aborted the gateway (stack overflow).
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let r = gw.post(Some(TOKEN_A), "application/json", deep.as_bytes());
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("deeper than"), "{}", r.text());
    // The same, and nested objects, as records of an NDJSON body: each is
    // refused with its reason; the valid event between them is accepted.
    let field = format!(
        r#"{{"event_id":"gw-deep","ts":1795737600000,"model":"m","provider":"p","prompt_tokens":1,"completion_tokens":1,"extra":{deep}}}"#
    );
    let object = format!("{}1{}", "{\"a\":".repeat(50_000), "}".repeat(50_000));
    let body = format!("{deep}\n{field}\n{}\n{object}\n", event("gw-hostile-ok"));
    let r = gw.post(Some(TOKEN_A), "application/x-ndjson", body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    assert_eq!(answer["accepted"], 1);
    let reasons: Vec<&str> = answer["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["too_deep", "too_deep", "too_deep"]);
    // Millions of one-byte records (a 10 MiB body of them took the gateway
    // to 2 GB and an answer of 890 MB): refused whole past 100,000 records;
    // below that, the answer lists the first 1,000 and counts the rest.
    let r = gw.post(
        Some(TOKEN_A),
        "application/x-ndjson",
        "1\n".repeat(3_000_000).as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("more than 100000 records"),
        "{}",
        r.text()
    );
    let r = gw.post(
        Some(TOKEN_A),
        "application/x-ndjson",
        "1\n".repeat(99_999).as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().len() < 200_000,
        "an answer of {} bytes",
        r.text().len()
    );
    let answer = r.json();
    assert_eq!(answer["accepted"], 0);
    assert_eq!(answer["rejected_count"], 99_999);
    assert_eq!(answer["rejected"].as_array().unwrap().len(), 1_000);
    // Still up for healthy clients.
    assert_eq!(gw.get("/healthz").status, 200);
    let r = gw.post(
        Some(TOKEN_B),
        "application/json",
        event("gw-after").as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(gw.stop().success());
}
