//! The in-memory hot path, one core: decode + validate + dedup + roll-up.
//!
//! `cargo bench --bench core` (criterion). Throughput is reported in
//! events/s ("elem/s"). The `decode` group measures our validating decoder
//! on the records as emitters write them (its one-pass fast path) and with a
//! space after the opening brace (which sends every record to the general
//! decoder: sonic-rs through a hand-written visitor), next to serde_json and
//! sonic-rs decoding the same fields into a derived struct *without* our
//! validation. The `gateway_body` group measures what the gateway does
//! with a request's body before producing: the same 1,000 events as an
//! NDJSON body for `/v1/events` (split + validate) and as GenAI spans in
//! OTLP protobuf and OTLP JSON bodies for `/v1/traces` (decode + map to
//! validated contract JSON).

use std::borrow::Cow;
use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use data_encoding::HEXLOWER;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use prost::bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tokentally_aggregate::sink::Recovered;
use tokentally_aggregate::source::RawBatch;
use tokentally_aggregate::{Aggregator, AggregatorConfig};
use tokentally_ingest::otlp::{self, Encoding};
use tokentally_ingest::{Fleet, FleetConfig};
use tokentally_schemas::body::{BodyFormat, split};
use tokentally_schemas::{Limits, TokenEvent, decode};

const EVENTS: usize = 65_536;

fn corpus() -> RawBatch {
    let mut fleet = Fleet::new(FleetConfig {
        events: EVENTS as u64,
        start_ms: Some(1_795_737_600_000),
        ..FleetConfig::default()
    });
    let mut raw = RawBatch::with_capacity(EVENTS, EVENTS * 300);
    while raw.push_with(|buf| fleet.next_line(buf).ok_or(())).is_ok() {}
    raw
}

/// The fields we read, decoded with no validation beyond types.
#[derive(Deserialize)]
#[allow(dead_code)] // fields are read by the decoder only
struct Plain<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    ts: i64,
    #[serde(borrow)]
    model: Cow<'a, str>,
    #[serde(borrow)]
    provider: Cow<'a, str>,
    #[serde(borrow, default)]
    app: Cow<'a, str>,
    prompt_tokens: u64,
    completion_tokens: u64,
    #[serde(default)]
    cached_tokens: u64,
}

fn bench(c: &mut Criterion) {
    let raw = corpus();
    let bytes = raw.bytes() / raw.len();
    println!(
        "corpus: {} events, {bytes} bytes/event on average",
        raw.len()
    );

    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(raw.len() as u64));
    g.bench_function("tokentally_validating", |b| {
        let limits = Limits::default();
        b.iter(|| {
            for rec in raw.iter() {
                black_box(decode(rec, &limits).is_ok());
            }
        })
    });
    // The same events, but not compact: the fast path declines each at its
    // second byte and the general decoder parses it.
    let mut spaced = RawBatch::with_capacity(raw.len(), raw.bytes() + raw.len());
    for rec in raw.iter() {
        spaced.push(&[b"{ ", &rec[1..]].concat());
    }
    g.bench_function("tokentally_validating_general", |b| {
        let limits = Limits::default();
        b.iter(|| {
            for rec in spaced.iter() {
                black_box(decode(rec, &limits).is_ok());
            }
        })
    });
    g.bench_function("sonic_rs_unvalidated", |b| {
        b.iter(|| {
            for rec in raw.iter() {
                black_box(sonic_rs::from_slice::<Plain>(rec).is_ok());
            }
        })
    });
    g.bench_function("serde_json_unvalidated", |b| {
        b.iter(|| {
            for rec in raw.iter() {
                black_box(serde_json::from_slice::<Plain>(rec).is_ok());
            }
        })
    });
    g.finish();

    let (ndjson, protobuf, otlp_json) = bodies(&raw, 1_000);
    // As the gateway holds a body: cloning it shares, it does not copy.
    let (protobuf, otlp_json) = (Bytes::from(protobuf), Bytes::from(otlp_json));
    let mut g = c.benchmark_group("gateway_body");
    g.throughput(Throughput::Elements(1_000));
    let limits = Limits::default();
    g.bench_function("ndjson_events", |b| {
        b.iter(|| {
            let records = split(&ndjson, BodyFormat::Ndjson).unwrap();
            let valid = records
                .iter()
                .filter(|(_, raw)| decode(raw, &limits).is_ok())
                .count();
            assert_eq!(valid, 1_000);
        })
    });
    // What the gateway does (protobuf walked, JSON decoded), and protobuf
    // decoded into the messages as JSON is, for comparison.
    for (name, body, encoding) in [
        ("otlp_protobuf_traces", &protobuf, Encoding::Protobuf),
        ("otlp_json_traces", &otlp_json, Encoding::Json),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mapped = otlp::request_events(body.clone(), encoding, &limits).unwrap();
                assert_eq!(mapped.events().len(), 1_000);
                black_box(mapped)
            })
        });
    }
    g.bench_function("otlp_protobuf_messages", |b| {
        b.iter(|| {
            let request = otlp::decode(protobuf.clone(), Encoding::Protobuf).unwrap();
            let mapped = otlp::events(&request, &limits).unwrap();
            assert_eq!(mapped.events().len(), 1_000);
            black_box(mapped)
        })
    });
    g.finish();

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(raw.len() as u64));
    g.sample_size(20);
    g.bench_function("decode_validate_dedup_rollup", |b| {
        b.iter_batched(
            || {
                // One core: decode on the benchmark's thread only.
                let config = AggregatorConfig {
                    decode_threads: 1,
                    ..AggregatorConfig::default()
                };
                Aggregator::new(config, &Recovered::default())
            },
            |mut agg| {
                let out = rt.block_on(agg.process(&raw)).unwrap();
                assert_eq!(out.stats.accepted as usize, EVENTS);
                black_box(out)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// The first `n` events of `raw` as one request body in each format: NDJSON,
/// and GenAI spans (one resource per node and region, eight attributes per
/// span, as `scripts/otel/bodies.py` writes them) in OTLP protobuf and OTLP
/// JSON.
fn bodies(raw: &RawBatch, n: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let limits = Limits::default();
    let events: Vec<TokenEvent<'_>> = raw
        .iter()
        .take(n)
        .map(|r| decode(r, &limits).unwrap())
        .collect();
    let ndjson = raw.iter().take(n).collect::<Vec<_>>().join(&b'\n');
    let mut groups: Vec<((&str, &str), Vec<&TokenEvent<'_>>)> = Vec::new();
    for e in &events {
        let key = (
            e.node.as_deref().unwrap_or(""),
            e.region.as_deref().unwrap_or(""),
        );
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, group)) => group.push(e),
            None => groups.push((key, vec![e])),
        }
    }
    let ids = |e: &TokenEvent<'_>| {
        // Distinct non-zero ids, one pair per event.
        let h = e.event_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        }) | 1;
        (
            [h.to_be_bytes(), (!h).to_be_bytes()].concat(),
            h.to_le_bytes().to_vec(),
        )
    };
    let times = |e: &TokenEvent<'_>| {
        let end = e.ts as u64 * 1_000_000;
        (end - e.latency_ms.unwrap_or(0) * 1_000_000, end)
    };
    let attributes = |e: &TokenEvent<'_>| {
        let text = |s: &str| any_value::Value::StringValue(s.to_owned());
        let int = |n: u64| any_value::Value::IntValue(n as i64);
        [
            ("gen_ai.operation.name", text("chat")),
            ("gen_ai.response.model", text(&e.model)),
            ("gen_ai.provider.name", text(&e.provider)),
            ("tokentally.app", text(&e.app)),
            ("gen_ai.usage.input_tokens", int(e.prompt_tokens)),
            ("gen_ai.usage.output_tokens", int(e.completion_tokens)),
            ("gen_ai.usage.cache_read.input_tokens", int(e.cached_tokens)),
            (
                "gen_ai.usage.reasoning.output_tokens",
                int(e.reasoning_tokens),
            ),
        ]
    };
    fn resource<'a>((node, region): (&'a str, &'a str)) -> [(&'static str, &'a str); 2] {
        [("host.name", node), ("cloud.region", region)]
    }
    let protobuf = ExportTraceServiceRequest {
        resource_spans: groups
            .iter()
            .map(|(key, group)| ResourceSpans {
                resource: Some(Resource {
                    attributes: resource(*key)
                        .into_iter()
                        .map(|(k, v)| KeyValue {
                            key: k.into(),
                            value: Some(AnyValue {
                                value: Some(any_value::Value::StringValue(v.into())),
                            }),
                            ..KeyValue::default()
                        })
                        .collect(),
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: group
                        .iter()
                        .map(|e| {
                            let (trace_id, span_id) = ids(e);
                            let (start, end) = times(e);
                            Span {
                                trace_id,
                                span_id,
                                name: format!("chat {}", e.model),
                                kind: 3,
                                start_time_unix_nano: start,
                                end_time_unix_nano: end,
                                attributes: attributes(e)
                                    .into_iter()
                                    .map(|(k, v)| KeyValue {
                                        key: k.into(),
                                        value: Some(AnyValue { value: Some(v) }),
                                        ..KeyValue::default()
                                    })
                                    .collect(),
                                ..Span::default()
                            }
                        })
                        .collect(),
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            })
            .collect(),
    }
    .encode_to_vec();
    // OTLP JSON as the specification encodes it: hex ids, int64 as strings.
    let json_value = |v: any_value::Value| match v {
        any_value::Value::StringValue(s) => json!({ "stringValue": s }),
        any_value::Value::IntValue(n) => json!({ "intValue": n.to_string() }),
        other => unreachable!("no such attribute: {other:?}"),
    };
    let otlp_json = json!({ "resourceSpans": groups
        .iter()
        .map(|(key, group)| json!({
            "resource": { "attributes": resource(*key)
                .into_iter()
                .map(|(k, v)| json!({ "key": k, "value": { "stringValue": v } }))
                .collect::<Vec<_>>() },
            "scopeSpans": [{ "spans": group
                .iter()
                .map(|e| {
                    let (trace_id, span_id) = ids(e);
                    let (start, end) = times(e);
                    json!({
                        "traceId": HEXLOWER.encode(&trace_id),
                        "spanId": HEXLOWER.encode(&span_id),
                        "name": format!("chat {}", e.model),
                        "kind": 3,
                        "startTimeUnixNano": start.to_string(),
                        "endTimeUnixNano": end.to_string(),
                        "attributes": attributes(e)
                            .into_iter()
                            .map(|(k, v)| json!({ "key": k, "value": json_value(v) }))
                            .collect::<Vec<_>>(),
                    })
                })
                .collect::<Vec<_>>() }],
        }))
        .collect::<Vec<_>>() })
    .to_string()
    .into_bytes();
    (ndjson, protobuf, otlp_json)
}

criterion_group!(benches, bench);
criterion_main!(benches);
