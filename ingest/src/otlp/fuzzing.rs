//! The property the `otlp` fuzz target checks (`fuzz/`, run by
//! `scripts/fuzz`), written here so that its committed corpus replays as an
//! ordinary test on stable (`ingest/tests/fuzz_corpus.rs`).

use opentelemetry_proto::tonic::collector::trace::v1 as full;
use opentelemetry_proto::tonic::common::v1 as common;
use prost::Message;
use prost::bytes::Bytes;
use tokentally_schemas::Limits;
use tokentally_schemas::body::MAX_RECORDS;

use super::wire::{self, Skipped, Value};
use super::{Encoding, decode, events, span_count, walk};

/// Any bytes, read as protobuf and as OTLP JSON, decode to a request or an
/// error without panicking; a request's spans are each an event, a
/// rejection or skipped; each event is valid under the contract with the
/// limits it was mapped under and keyed by its `event_id` (trace id `-`
/// span id in hex); a request survives protobuf's round trip; bytes
/// that `opentelemetry-proto`'s complete types decode, the pruned types of
/// [`wire`] decode to the same fields; and the walk over protobuf bytes
/// (`walk.rs`) maps what decoding them into [`wire`]'s messages maps, with
/// the same events, rejections and skipped spans, or both refuse.
pub fn decode_is_sound(data: &[u8]) {
    if let Ok(complete) = full::ExportTraceServiceRequest::decode(data) {
        let request = decode(Bytes::copy_from_slice(data), Encoding::Protobuf)
            .expect("what the complete types decode, the pruned ones decode");
        assert!(
            request == pruned(complete),
            "the pruned types read other fields"
        );
    }
    let tight = Limits {
        max_tokens: 1_000,
        max_depth: 3,
        max_record_bytes: 512,
    };
    for encoding in [Encoding::Protobuf, Encoding::Json] {
        let Ok(request) = decode(Bytes::copy_from_slice(data), encoding) else {
            continue;
        };
        // Compared as bytes: a NaN attribute is not equal to itself.
        let bytes = request.encode_to_vec();
        let again =
            decode(bytes.clone().into(), Encoding::Protobuf).expect("an encoded request decodes");
        assert_eq!(again.encode_to_vec(), bytes);
        let spans = span_count(&request);
        for limits in [Limits::default(), tight] {
            if encoding == Encoding::Protobuf {
                walk_agrees(data, &request, &limits);
            }
            let Ok(mapped) = events(&request, &limits) else {
                assert!(spans > MAX_RECORDS);
                continue;
            };
            assert_eq!(
                mapped.events().len() + mapped.rejected_count + mapped.skipped,
                spans
            );
            assert!(mapped.rejected.len() <= mapped.rejected_count);
            for e in mapped.events() {
                let event = tokentally_schemas::decode(e.json, &limits)
                    .unwrap_or_else(|r| panic!("a mapped event is invalid: {r}"));
                assert_eq!(event.event_id, e.event_id);
                assert_eq!(e.event_id.len(), 49);
                assert!(
                    e.event_id
                        .bytes()
                        .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                );
            }
        }
    }
    if decode(Bytes::copy_from_slice(data), Encoding::Protobuf).is_err() {
        assert!(
            walk::events(data, &Limits::default()).is_err(),
            "the walk maps bytes that the messages refuse"
        );
    }
}

/// The walk over `data` maps what `request`, decoded from it, maps.
fn walk_agrees(data: &[u8], request: &wire::ExportTraceServiceRequest, limits: &Limits) {
    match (walk::events(data, limits), events(request, limits)) {
        (Ok(walked), Ok(decoded)) => {
            assert!(walked.events().eq(decoded.events()), "other events");
            assert_eq!(
                (&walked.rejected, walked.rejected_count, walked.skipped),
                (&decoded.rejected, decoded.rejected_count, decoded.skipped)
            );
        }
        (Err(_), Err(_)) => {}
        (walked, decoded) => panic!(
            "the walk gave {:?}, the messages {:?}",
            walked.map(|m| m.events().len()),
            decoded.map(|m| m.events().len())
        ),
    }
}

/// The fields of `request` that [`wire`] keeps.
fn pruned(request: full::ExportTraceServiceRequest) -> wire::ExportTraceServiceRequest {
    let attributes = |list: Vec<common::KeyValue>| -> Vec<wire::KeyValue> {
        list.into_iter()
            .map(|kv| wire::KeyValue {
                key: kv.key.into(),
                value: kv.value.map(|v| wire::AnyValue {
                    value: v.value.map(|v| {
                        use common::any_value::Value as V;
                        match v {
                            V::StringValue(s) => Value::StringValue(s.into()),
                            V::BoolValue(b) => Value::BoolValue(b),
                            V::IntValue(i) => Value::IntValue(i),
                            V::DoubleValue(d) => Value::DoubleValue(d),
                            V::ArrayValue(_) => Value::ArrayValue(Skipped {}),
                            V::KvlistValue(_) => Value::KvlistValue(Skipped {}),
                            V::BytesValue(b) => Value::BytesValue(b.into()),
                            V::StringValueStrindex(i) => Value::StringValueStrindex(i),
                        }
                    }),
                }),
            })
            .collect()
    };
    wire::ExportTraceServiceRequest {
        resource_spans: request
            .resource_spans
            .into_iter()
            .map(|r| wire::ResourceSpans {
                resource: r.resource.map(|r| wire::Resource {
                    attributes: attributes(r.attributes),
                }),
                scope_spans: r
                    .scope_spans
                    .into_iter()
                    .map(|s| wire::ScopeSpans {
                        spans: s
                            .spans
                            .into_iter()
                            .map(|s| wire::Span {
                                trace_id: s.trace_id.into(),
                                span_id: s.span_id.into(),
                                start_time_unix_nano: s.start_time_unix_nano,
                                end_time_unix_nano: s.end_time_unix_nano,
                                attributes: attributes(s.attributes),
                                status: s.status.map(|st| wire::Status { code: st.code }),
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
    }
}
