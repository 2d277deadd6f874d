//! OpenTelemetry traces through the gateway's `POST /v1/traces`, Kafka and
//! the aggregator, against a real broker: spans exported by the
//! OpenTelemetry Python SDK count exactly like the same requests posted as
//! events; OTLP JSON in the specification's shape, gzip and retried
//! exports count exactly once; invalid GenAI spans get `partial_success`;
//! and a request that fails as a whole produces nothing.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use common::gateway::Gateway;
use common::http::{Response, http};
use common::services::{Topic, read_topic, topic};
use common::{assert_same_totals, query, root, run_ok, serial, summary, totals, u};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tokentally_ingest::otlp::RpcStatus;

const TOKEN: &str = "tok-otel-0123456789abcdef0123456789";

fn gateway(t: &Topic, dir: &Path) -> Gateway {
    let tokens = dir.join(format!("tokens-{}", t.name));
    std::fs::write(&tokens, format!("otel-node:{TOKEN}\n")).unwrap();
    Gateway::start(&[
        "--kafka",
        &t.brokers,
        "--topic",
        &t.name,
        "--tokens-file",
        tokens.to_str().unwrap(),
    ])
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

fn post(gw: &Gateway, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    http(&gw.addr, "POST", path, headers, body)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(data).unwrap();
    z.finish().unwrap()
}

/// Hostile names: non-ASCII, spaces, colons, quotes, HTML.
const MODELS: [&str; 4] = [
    "通义/qwen-max-中文",
    "qwen/qwen3.6-plus",
    "vendor:model \"v2\" <b>bold</b>",
    "ünïcödé model",
];

/// The requests the Python SDK exports (see scripts/otel/export.py), with
/// spread-out values; both attribute generations, whole doubles, errors,
/// apps from the span and from the resource.
fn requests(n: u64) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17;
            let prompt = 1 + h % 9_000;
            serde_json::json!({
                "ts": 1_795_737_600_000u64 + (i % 3) * 86_400_000 + h % 86_000_000,
                "latency_ms": 10 + h % 5_000,
                "model": MODELS[(i % 4) as usize],
                "provider": (["alibaba", "open ai", "<p>"][(h % 3) as usize]),
                "app": if i.is_multiple_of(3) { serde_json::Value::Null } else { format!("app:{}", h % 4).into() },
                "prompt_tokens": prompt,
                "completion_tokens": h % 2_000,
                "cached_tokens": prompt / 2,
                "reasoning_tokens": h % 300,
                "status": if i.is_multiple_of(11) { "error" } else { "ok" },
                "legacy": i % 2 == 1,
                "float_tokens": i.is_multiple_of(5),
            })
        })
        .collect()
}

#[test]
fn spans_from_the_python_sdk_count_exactly_like_the_same_requests_posted_as_events() {
    // OTLP/HTTP protobuf.
    exported_spans_count_like_events("export.py", &[]);
}

#[test]
fn spans_from_the_javascript_sdk_count_exactly_like_the_same_requests_posted_as_events() {
    // OTLP JSON, gzipped, as the JavaScript exporter writes it.
    exported_spans_count_like_events(
        "export.js",
        &[("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip")],
    );
}

/// `scripts/otel/run SCRIPT`: a real OpenTelemetry SDK exports the corpus
/// through the gateway (every batch twice), and prints the events it
/// expects; they must be exactly what reaches Kafka, and aggregate like
/// the same events posted to `/v1/events` and like the corpus's sums.
fn exported_spans_count_like_events(script: &str, env: &[(&str, &str)]) {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let requests = requests(600);
    let corpus = d.join("requests.ndjson");
    let lines: Vec<String> = requests.iter().map(|r| r.to_string()).collect();
    std::fs::write(&corpus, lines.join("\n") + "\n").unwrap();

    // The SDK's exporter, configured by its own environment, exports every
    // batch twice (a retry); it prints the events it expects.
    let traces = topic("otlp-sdk");
    let gw = gateway(&traces, d);
    let out = run_ok(
        Command::new(root().join("scripts/otel/run"))
            .arg(script)
            .arg(&corpus)
            .envs(env.iter().copied())
            .env(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                format!("http://{}/v1/traces", gw.addr),
            )
            .env(
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                format!("Authorization=Bearer%20{TOKEN}"),
            ),
    );
    assert!(gw.stop().success());
    let expected = String::from_utf8(out.stdout).unwrap();
    assert_eq!(expected.lines().count(), requests.len());

    // Kafka holds each GenAI span of both exports, as exactly the event
    // the SDK's side expects, keyed by its event_id, with the token's name.
    let mut want: Vec<(String, serde_json::Value)> = expected
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["event_id"].as_str().unwrap().to_owned(), v)
        })
        .collect();
    want.extend(want.clone());
    want.sort_by(|a, b| a.0.cmp(&b.0));
    let got: Vec<(String, serde_json::Value)> =
        read_topic(&traces.brokers, &traces.name, want.len())
            .into_iter()
            .map(|(key, headers, payload)| {
                assert_eq!(
                    headers,
                    [("source".to_owned(), Some("otel-node".to_owned()))]
                );
                (key.unwrap(), serde_json::from_str(&payload).unwrap())
            })
            .collect();
    assert_eq!(got.len(), want.len());
    for ((k, v), (wk, wv)) in got.iter().zip(&want) {
        assert_eq!((k, v), (wk, wv));
    }

    // The same requests as events, through /v1/events.
    let events = topic("otlp-sdk-events");
    let gw = gateway(&events, d);
    let r = post(
        &gw,
        "/v1/events",
        &[
            ("Authorization", &bearer()),
            ("Content-Type", "application/x-ndjson"),
        ],
        expected.as_bytes(),
    );
    assert_eq!(
        (r.status, r.json()["accepted"].as_u64()),
        (200, Some(600)),
        "{}",
        r.text()
    );
    assert!(gw.stop().success());

    let (a, b) = (d.join("from-spans"), d.join("from-events"));
    let s = summary(&mut traces.aggregate_into(&a, "otlp", "3"));
    assert_eq!(
        (s["records"].as_u64(), s["accepted"].as_u64()),
        (Some(1200), Some(600)),
        "{s}"
    );
    summary(&mut events.aggregate_into(&b, "otlp", "3"));
    assert_same_totals(&totals(&a), &totals(&b));

    // And both are the corpus's own sums.
    let mut by_app: BTreeMap<(String, String), [u64; 3]> = BTreeMap::new();
    let mut by_model: BTreeMap<String, [u64; 2]> = BTreeMap::new();
    for r in &requests {
        let model = r["model"].as_str().unwrap().to_owned();
        let app = r["app"].as_str().unwrap_or("chat-ü <svc> \"x\"").to_owned();
        let t = by_app.entry((model.clone(), app)).or_default();
        t[0] += 1;
        t[1] += r["prompt_tokens"].as_u64().unwrap();
        t[2] += r["completion_tokens"].as_u64().unwrap();
        let m = by_model.entry(model).or_default();
        m[0] += r["cached_tokens"].as_u64().unwrap();
        m[1] += u64::from(r["status"] == "error");
    }
    let rows = query(
        &a,
        "SELECT model, app, CAST(SUM(requests) AS BIGINT UNSIGNED) AS r, \
         CAST(SUM(prompt_tokens) AS BIGINT UNSIGNED) AS p, \
         CAST(SUM(completion_tokens) AS BIGINT UNSIGNED) AS c \
         FROM usage_app_daily GROUP BY model, app",
    );
    let got: BTreeMap<(String, String), [u64; 3]> = rows
        .iter()
        .map(|row| {
            let key = (
                common::s(row, "model").to_owned(),
                common::s(row, "app").to_owned(),
            );
            (key, [u(row, "r"), u(row, "p"), u(row, "c")])
        })
        .collect();
    assert_eq!(got, by_app);
    let rows = query(
        &a,
        "SELECT model, CAST(SUM(cached_tokens) AS BIGINT UNSIGNED) AS k, \
         CAST(SUM(error_requests) AS BIGINT UNSIGNED) AS e FROM usage_daily GROUP BY model",
    );
    let got: BTreeMap<String, [u64; 2]> = rows
        .iter()
        .map(|row| {
            (
                common::s(row, "model").to_owned(),
                [u(row, "k"), u(row, "e")],
            )
        })
        .collect();
    assert_eq!(got, by_model);
}

fn string(key: &str, value: &str) -> serde_json::Value {
    serde_json::json!({"key": key, "value": {"stringValue": value}})
}

/// An int attribute the way OTLP JSON writes int64: a decimal string.
fn int(key: &str, value: i64) -> serde_json::Value {
    serde_json::json!({"key": key, "value": {"intValue": value.to_string()}})
}

/// A span in the OTLP JSON encoding: hex ids, int64 as strings, enums as
/// integers.
fn span(n: u64, attributes: Vec<serde_json::Value>) -> serde_json::Value {
    serde_json::json!({
        "traceId": "0AF7651916CD43DD8448EB211C80319C",
        "spanId": format!("{n:016x}"),
        "parentSpanId": "",
        "name": "chat",
        "kind": 3,
        "startTimeUnixNano": "1795737600000000000",
        "endTimeUnixNano": format!("{}", 1_795_737_600_000_000_000u64 + n * 60_000_000_000),
        "attributes": attributes,
        "droppedAttributesCount": 0,
        "events": [],
        "status": {"code": if n.is_multiple_of(7) { 2 } else { 0 }}
    })
}

#[test]
fn otlp_json_gzip_retries_partial_success_and_bad_requests() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let t = topic("otlp-json");
    let gw = gateway(&t, dir.path());
    let auth = bearer();

    // 50 GenAI spans, one HTTP span, and four invalid GenAI spans.
    let mut spans: Vec<serde_json::Value> = (1..=50u64)
        .map(|n| {
            span(
                n,
                vec![
                    string("gen_ai.request.model", MODELS[(n % 4) as usize]),
                    string("gen_ai.provider.name", "alibaba"),
                    int("gen_ai.usage.input_tokens", (n * 100) as i64),
                    int("gen_ai.usage.output_tokens", n as i64),
                ],
            )
        })
        .collect();
    spans.push(span(51, vec![string("http.request.method", "GET")]));
    let model = || string("gen_ai.request.model", "m");
    let provider = || string("gen_ai.system", "p");
    spans.push(span(
        52,
        vec![model(), provider(), int("gen_ai.usage.input_tokens", -5)],
    ));
    spans.push(span(
        53,
        vec![
            model(),
            provider(),
            serde_json::json!({"key": "gen_ai.usage.output_tokens", "value": {"doubleValue": 1.5}}),
        ],
    ));
    spans.push(span(
        54,
        vec![
            model(),
            provider(),
            string("gen_ai.usage.input_tokens", "many"),
        ],
    ));
    spans.push(span(
        55,
        vec![provider(), int("gen_ai.usage.input_tokens", 3)],
    ));
    let body = serde_json::json!({"resourceSpans": [{
        "resource": {"attributes": [string("service.name", "json-app")]},
        "scopeSpans": [{"scope": {"name": "openlit", "version": "1.0"}, "spans": spans}]
    }]})
    .to_string();
    let gz = gzip(body.as_bytes());
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
        ("Content-Encoding", "gzip"),
    ];
    for _ in 0..2 {
        let r = post(&gw, "/v1/traces", &headers, &gz);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        let partial = &r.json()["partialSuccess"];
        assert_eq!(partial["rejectedSpans"], "4", "{}", r.text());
        let message = partial["errorMessage"].as_str().unwrap();
        for expected in [
            "span 51: out_of_range (prompt_tokens)",
            "span 52: not_an_integer (completion_tokens)",
            "span 53: wrong_type (prompt_tokens)",
            "span 54: missing_field (model)",
        ] {
            assert!(message.contains(expected), "{message}");
        }
    }

    // One protobuf request; its answer is an empty ExportTraceServiceResponse.
    let one = span(
        60,
        vec![
            string("gen_ai.response.model", MODELS[0]),
            string("gen_ai.system", "alibaba"),
            int("gen_ai.usage.prompt_tokens", 7),
        ],
    );
    let proto_json = serde_json::json!({"resourceSpans": [{"scopeSpans": [{"spans": [one]}]}]});
    let proto = tokentally_ingest::otlp::decode(
        proto_json.to_string().into(),
        tokentally_ingest::otlp::Encoding::Json,
    )
    .unwrap()
    .encode_to_vec();
    let pb = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/x-protobuf"),
    ];
    let r = post(&gw, "/v1/traces", &pb, &proto);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
    assert_eq!(
        ExportTraceServiceResponse::decode(r.body.as_slice())
            .unwrap()
            .partial_success,
        None
    );

    // Requests that fail whole: a clear status and body, nothing produced.
    let status = |r: &Response| -> (u16, String) {
        let message = match r.header("content-type") {
            Some("application/x-protobuf") => RpcStatus::decode(r.body.as_slice()).unwrap().message,
            _ => r.json()["message"].as_str().unwrap_or_default().to_owned(),
        };
        (r.status, message)
    };
    let json_headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let bomb = gzip(&vec![b' '; 64 << 20]);
    // A bomb whose trailer claims 10 bytes: inflating stops at the 11th.
    let mut liar = bomb.clone();
    let at = liar.len() - 4;
    liar[at..].copy_from_slice(&10u32.to_le_bytes());
    let deep = format!(
        "{{\"resourceSpans\":{}{}}}",
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    let cases: Vec<(Response, u16, &str)> = vec![
        (
            post(&gw, "/v1/traces", &pb, &proto[..proto.len() - 5]),
            400,
            "not an OTLP ExportTraceServiceRequest in protobuf",
        ),
        (
            post(
                &gw,
                "/v1/traces",
                &[("Authorization", &auth), ("Content-Type", "text/plain")],
                b"hello",
            ),
            415,
            "application/x-protobuf or application/json",
        ),
        (
            post(
                &gw,
                "/v1/traces",
                &[
                    ("Authorization", &auth),
                    ("Content-Type", "application/json"),
                    ("Content-Encoding", "br"),
                ],
                b"{}",
            ),
            415,
            "Content-Encoding",
        ),
        (
            post(&gw, "/v1/traces", &headers, &liar),
            400,
            "more than its trailer says",
        ),
        (
            post(&gw, "/v1/traces", &headers, &bomb),
            413,
            "inflates to more than",
        ),
        (
            post(
                &gw,
                "/v1/traces",
                &headers,
                b"{\"resourceSpans\":[]} not gzip at all",
            ),
            400,
            "not valid gzip",
        ),
        (post(&gw, "/v1/traces", &pb, b""), 400, "the body is empty"),
        (
            post(&gw, "/v1/traces", &json_headers, deep.as_bytes()),
            400,
            "deeper than 32",
        ),
        (
            post(
                &gw,
                "/v1/traces",
                &[
                    ("Authorization", "Bearer tok-unknown"),
                    ("Content-Type", "application/json"),
                ],
                body.as_bytes(),
            ),
            401,
            "bearer token",
        ),
        (
            post(&gw, "/v1/metrics", &json_headers, b"{}"),
            404,
            "counts spans",
        ),
        (
            post(&gw, "/v1/logs", &json_headers, b"{}"),
            404,
            "counts spans",
        ),
    ];
    for (r, code, message) in &cases {
        let (got, text) = status(r);
        assert_eq!(got, *code, "{text}");
        assert!(text.contains(message), "{code}: {text}");
    }
    assert!(gw.stop().success());

    // Kafka holds the 50 valid spans of both gzip posts and the protobuf
    // one, and nothing more; aggregated, each span counts once.
    let messages = read_topic(&t.brokers, &t.name, 101);
    assert_eq!(messages.len(), 101);
    let store = dir.path().join("store");
    let s = summary(&mut t.aggregate_into(&store, "otlp", "3"));
    assert_eq!(
        (s["records"].as_u64(), s["accepted"].as_u64()),
        (Some(101), Some(51)),
        "{s}"
    );
    let rows = query(
        &store,
        "SELECT model, CAST(SUM(requests) AS BIGINT UNSIGNED) AS r, \
         CAST(SUM(prompt_tokens) AS BIGINT UNSIGNED) AS p, \
         CAST(SUM(completion_tokens) AS BIGINT UNSIGNED) AS c, \
         CAST(SUM(error_requests) AS BIGINT UNSIGNED) AS e FROM usage_daily GROUP BY model",
    );
    let got: BTreeMap<String, [u64; 4]> = rows
        .iter()
        .map(|row| {
            (
                common::s(row, "model").to_owned(),
                [u(row, "r"), u(row, "p"), u(row, "c"), u(row, "e")],
            )
        })
        .collect();
    let mut want: BTreeMap<String, [u64; 4]> = BTreeMap::new();
    for n in 1..=50u64 {
        let w = want.entry(MODELS[(n % 4) as usize].to_owned()).or_default();
        w[0] += 1;
        w[1] += n * 100;
        w[2] += n;
        w[3] += u64::from(n.is_multiple_of(7));
    }
    let w = want.entry(MODELS[0].to_owned()).or_default();
    w[0] += 1;
    w[1] += 7;
    assert_eq!(got, want);
    let apps = query(
        &store,
        "SELECT DISTINCT app FROM usage_app_daily ORDER BY app",
    );
    let apps: Vec<&str> = apps.iter().map(|r| common::s(r, "app")).collect();
    assert_eq!(apps, ["", "json-app"]);
}
