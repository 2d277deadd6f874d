//! OTLP JSON (`application/json`) into the message types of [`super::wire`],
//! the ones the protobuf body decodes to.
//!
//! Written to the OTLP specification's JSON encoding rather than derived:
//! trace and span ids are hex (not base64, as protobuf's JSON mapping has
//! bytes), 64-bit integers arrive as decimal strings or as numbers, enums
//! as integers (or their names), keys in lowerCamelCase (the proto's
//! snake_case names are accepted too), `null` means absent, and unknown
//! fields are ignored. Only what the mapping reads is kept: attribute
//! values that are arrays, key-value lists or bytes keep their kind, not
//! their content.

use std::marker::PhantomData;
use std::str::FromStr;

use data_encoding::HEXLOWER_PERMISSIVE;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as ProtoStatusCode;
use prost::bytes::Bytes;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, de::DeserializeOwned};
use tokentally_schemas::check_depth;

use super::MAX_JSON_DEPTH;
use super::wire::{self, ExportTraceServiceRequest, Skipped, Value};

/// The request in `body`, or why it is not one (for a 400).
pub(super) fn decode(body: &[u8]) -> Result<ExportTraceServiceRequest, String> {
    // serde_json recurses per level: bound the depth before it runs.
    check_depth(body, MAX_JSON_DEPTH).map_err(|_| {
        format!("the body nests arrays or objects deeper than {MAX_JSON_DEPTH} levels")
    })?;
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(
            "the body is not an OTLP ExportTraceServiceRequest in JSON: \
                    it must be a JSON object"
                .into(),
        );
    }
    let request: Request = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not an OTLP ExportTraceServiceRequest in JSON: {e}"))?;
    Ok(request.into())
}

/// A list that may be `null`.
fn list<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Request {
    #[serde(alias = "resource_spans", deserialize_with = "list")]
    resource_spans: Vec<ResourceSpans>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ResourceSpans {
    resource: Option<Resource>,
    #[serde(alias = "scope_spans", deserialize_with = "list")]
    scope_spans: Vec<ScopeSpans>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Resource {
    #[serde(deserialize_with = "list")]
    attributes: Vec<KeyValue>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ScopeSpans {
    #[serde(deserialize_with = "list")]
    spans: Vec<Span>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Span {
    #[serde(alias = "trace_id")]
    trace_id: Option<HexId>,
    #[serde(alias = "span_id")]
    span_id: Option<HexId>,
    #[serde(alias = "start_time_unix_nano")]
    start_time_unix_nano: Option<Int<u64>>,
    #[serde(alias = "end_time_unix_nano")]
    end_time_unix_nano: Option<Int<u64>>,
    #[serde(deserialize_with = "list")]
    attributes: Vec<KeyValue>,
    status: Option<Status>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Status {
    code: Option<StatusCode>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct KeyValue {
    key: String,
    value: Option<AnyValue>,
}

/// A trace or span id: hex, any case; `""` is empty.
struct HexId(Vec<u8>);

impl<'de> Deserialize<'de> for HexId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        HEXLOWER_PERMISSIVE
            .decode(text.as_bytes())
            .map(HexId)
            .map_err(|_| {
                de::Error::custom(format!(
                    "{text:?} is not a hex id (OTLP JSON writes trace and span ids in hex, not base64)"
                ))
            })
    }
}

/// An integer, `u64` or `i64`: a number or a decimal string (OTLP JSON
/// writes 64-bit integers as strings; exporters also send numbers).
struct Int<T>(T);

impl<'de, T: TryFrom<u64> + TryFrom<i64> + FromStr> Deserialize<'de> for Int<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<T: TryFrom<u64> + TryFrom<i64> + FromStr> Visitor<'_> for V<T> {
            type Value = Int<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(
                    f,
                    "a 64-bit integer ({}), as a number or a decimal string",
                    std::any::type_name::<T>()
                )
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int<T>, E> {
                T::try_from(v)
                    .map(Int)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int<T>, E> {
                T::try_from(v)
                    .map(Int)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Int<T>, E> {
                v.parse()
                    .map(Int)
                    .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// A double: a number, or a string (`"NaN"`, `"Infinity"`, `"-Infinity"`
/// or a decimal), as protobuf's JSON mapping allows.
struct F64(f64);

impl<'de> Deserialize<'de> for F64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = F64;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a double, as a number or a string")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<F64, E> {
                Ok(F64(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<F64, E> {
                Ok(F64(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<F64, E> {
                Ok(F64(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<F64, E> {
                match v {
                    "NaN" => Ok(F64(f64::NAN)),
                    "Infinity" => Ok(F64(f64::INFINITY)),
                    "-Infinity" => Ok(F64(f64::NEG_INFINITY)),
                    _ => v
                        .parse()
                        .map(F64)
                        .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A span status code: its number, or its name.
struct StatusCode(i32);

impl<'de> Deserialize<'de> for StatusCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StatusCode;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a status code: 0, 1 or 2, or STATUS_CODE_UNSET, _OK or _ERROR")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StatusCode, E> {
                i32::try_from(v)
                    .map(StatusCode)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StatusCode, E> {
                i32::try_from(v)
                    .map(StatusCode)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StatusCode, E> {
                ProtoStatusCode::from_str_name(v)
                    .map(|c| StatusCode(c as i32))
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

/// An attribute value: one of `stringValue`, `boolValue`, `intValue`,
/// `doubleValue`, `arrayValue`, `kvlistValue`, `bytesValue` (the last one
/// present wins; `{}` is no value).
struct AnyValue(Option<Value>);

impl<'de> Deserialize<'de> for AnyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AnyValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an AnyValue object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnyValue, A::Error> {
                let mut value = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    let next = match key.as_ref() {
                        "stringValue" | "string_value" => map
                            .next_value::<Option<String>>()?
                            .map(|s| Value::StringValue(s.into())),
                        "boolValue" | "bool_value" => {
                            map.next_value::<Option<bool>>()?.map(Value::BoolValue)
                        }
                        "intValue" | "int_value" => map
                            .next_value::<Option<Int<i64>>>()?
                            .map(|v| Value::IntValue(v.0)),
                        "doubleValue" | "double_value" => map
                            .next_value::<Option<F64>>()?
                            .map(|v| Value::DoubleValue(v.0)),
                        "arrayValue" | "array_value" => map
                            .next_value::<Option<IgnoredAny>>()?
                            .map(|_| Value::ArrayValue(Skipped {})),
                        "kvlistValue" | "kvlist_value" => map
                            .next_value::<Option<IgnoredAny>>()?
                            .map(|_| Value::KvlistValue(Skipped {})),
                        "bytesValue" | "bytes_value" => map
                            .next_value::<Option<IgnoredAny>>()?
                            .map(|_| Value::BytesValue(Bytes::new())),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    if next.is_some() {
                        value = next;
                    }
                }
                Ok(AnyValue(value))
            }
        }
        d.deserialize_map(V)
    }
}

impl From<Request> for ExportTraceServiceRequest {
    fn from(r: Request) -> Self {
        ExportTraceServiceRequest {
            resource_spans: r.resource_spans.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<ResourceSpans> for wire::ResourceSpans {
    fn from(r: ResourceSpans) -> Self {
        wire::ResourceSpans {
            resource: r.resource.map(|r| wire::Resource {
                attributes: attributes(r.attributes),
            }),
            scope_spans: r
                .scope_spans
                .into_iter()
                .map(|s| wire::ScopeSpans {
                    spans: s.spans.into_iter().map(Into::into).collect(),
                })
                .collect(),
        }
    }
}

impl From<Span> for wire::Span {
    fn from(s: Span) -> Self {
        wire::Span {
            trace_id: s.trace_id.map(|h| h.0.into()).unwrap_or_default(),
            span_id: s.span_id.map(|h| h.0.into()).unwrap_or_default(),
            start_time_unix_nano: s.start_time_unix_nano.map_or(0, |t| t.0),
            end_time_unix_nano: s.end_time_unix_nano.map_or(0, |t| t.0),
            attributes: attributes(s.attributes),
            status: s.status.map(|st| wire::Status {
                code: st.code.map_or(0, |c| c.0),
            }),
        }
    }
}

fn attributes(list: Vec<KeyValue>) -> Vec<wire::KeyValue> {
    list.into_iter()
        .map(|kv| wire::KeyValue {
            key: kv.key.into(),
            value: kv.value.map(|v| wire::AnyValue { value: v.0 }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::{Encoding, events};
    use prost::Message;
    use tokentally_schemas::Limits;

    /// A body in the shape the OTLP specification's JSON encoding gives
    /// (hex ids, int64 as strings, enums as integers), with what real
    /// exporters add: unknown fields, nested attribute values, `null`s.
    const BODY: &str = r#"{"resourceSpans":[{"resource":{"attributes":[
        {"key":"service.name","value":{"stringValue":"chat-ui"}},
        {"key":"host.name","value":{"stringValue":"node-7"}},
        {"key":"process.command_args","value":{"arrayValue":{"values":[{"stringValue":"python"}]}}}
      ],"droppedAttributesCount":0},
      "scopeSpans":[{"scope":{"name":"opentelemetry.instrumentation.openai","version":"0.40.0"},
        "spans":[
          {"traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"EEE19B7EC3C1B174","parentSpanId":"",
           "name":"chat qwen","kind":3,"startTimeUnixNano":"1795737600000000000","endTimeUnixNano":"1795737601250000000",
           "attributes":[
             {"key":"gen_ai.request.model","value":{"stringValue":"通义/qwen-max-中文"}},
             {"key":"gen_ai.provider.name","value":{"stringValue":"alibaba"}},
             {"key":"gen_ai.usage.input_tokens","value":{"intValue":"5210"}},
             {"key":"gen_ai.usage.output_tokens","value":{"intValue":830}},
             {"key":"gen_ai.usage.cache_read.input_tokens","value":{"doubleValue":4096.0}},
             {"key":"gen_ai.request.stop","value":{"kvlistValue":{"values":[]}}},
             {"key":"blob","value":{"bytesValue":"AAEC"}},
             {"key":"nothing","value":{}}
           ],
           "events":[{"timeUnixNano":"1795737601000000000","name":"gen_ai.content.prompt"}],
           "links":null,
           "status":{"code":2,"message":"boom"}},
          {"trace_id":"5b8efff798038103d269b633813fc60c","span_id":"0000000000000002",
           "start_time_unix_nano":1795737600000000000,"end_time_unix_nano":1795737602000000000,
           "attributes":[{"key":"http.method","value":{"string_value":"POST"}}],
           "status":{"code":"STATUS_CODE_OK"}}
        ]}]}]}"#;

    #[test]
    fn the_specified_json_encoding_decodes_to_the_protobuf_message() {
        let request = decode(BODY.as_bytes()).unwrap();
        // Through protobuf and back: the same message, the same events.
        let again = ExportTraceServiceRequest::decode(request.encode_to_vec().as_slice()).unwrap();
        assert_eq!(again, request);
        let m = events(&request, &Limits::default()).unwrap();
        assert_eq!((m.events().len(), m.skipped, m.rejected_count), (1, 1, 0));
        let event = m.events().next().unwrap();
        assert_eq!(
            event.event_id,
            "5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174"
        );
        let e: serde_json::Value = serde_json::from_slice(event.json).unwrap();
        assert_eq!(e["model"], "通义/qwen-max-中文");
        assert_eq!(e["ts"], 1_795_737_601_250i64);
        assert_eq!(
            (
                e["prompt_tokens"].as_u64(),
                e["completion_tokens"].as_u64(),
                e["cached_tokens"].as_u64()
            ),
            (Some(5210), Some(830), Some(4096))
        );
        assert_eq!(
            (e["status"].as_str(), e["app"].as_str()),
            (Some("error"), Some("chat-ui"))
        );
        let span = &request.resource_spans[0].scope_spans[0].spans[1];
        assert_eq!(span.status.as_ref().unwrap().code, 1);
        assert_eq!(span.span_id[..], [0, 0, 0, 0, 0, 0, 0, 2]);
    }

    #[test]
    fn malformed_encodings_are_errors_that_say_why() {
        let cases = [
            (
                r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"W4jv95gDgQPSabYzgT/GDA=="}]}]}]}"#,
                "not a hex id",
            ),
            (
                r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"attributes":[{"key":"k","value":{"intValue":"12a"}}]}]}]}]}"#,
                "64-bit integer",
            ),
            (
                r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"endTimeUnixNano":"-1"}]}]}]}"#,
                "64-bit integer (u64)",
            ),
            (
                r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"status":{"code":"STATUS_CODE_MAYBE"}}]}]}]}"#,
                "status code",
            ),
            (r#"{"resourceSpans":"#, "EOF"),
            ("[]", "ExportTraceServiceRequest"),
        ];
        for (body, expected) in cases {
            let err = decode(body.as_bytes()).unwrap_err();
            assert!(err.contains(expected), "{body}: {err}");
        }
        let deep = format!(
            r#"{{"resourceSpans":[{{"x":{}{}}}]}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let err = decode(deep.as_bytes()).unwrap_err();
        assert!(err.contains("deeper than 32"), "{err}");
        // Empty and null parts are an empty request, not an error.
        for body in [
            "{}",
            r#"{"resourceSpans":null}"#,
            r#"{"resourceSpans":[{"resource":null,"scopeSpans":[{"spans":null}]}]}"#,
        ] {
            let request = decode(body.as_bytes()).unwrap();
            assert_eq!(
                events(&request, &Limits::default()).unwrap().events().len(),
                0
            );
        }
    }

    #[test]
    fn protobuf_that_is_truncated_is_an_error_and_deep_values_are_skipped() {
        let body = crate::otlp::decode(Bytes::from_static(BODY.as_bytes()), Encoding::Json)
            .unwrap()
            .encode_to_vec();
        let err = crate::otlp::decode(
            Bytes::copy_from_slice(&body[..body.len() - 3]),
            Encoding::Protobuf,
        )
        .unwrap_err();
        assert!(err.contains("protobuf"), "{err}");
        // An attribute value of arrays nested 10,000 deep: its content is
        // skipped, not decoded, so it costs no recursion on a small stack.
        let mut value = Vec::new();
        for _ in 0..10_000 {
            // AnyValue.array_value (5) holding ArrayValue.values (1).
            let mut array = vec![0x0a];
            prost::encoding::encode_varint(value.len() as u64, &mut array);
            array.extend_from_slice(&value);
            value = vec![0x2a];
            prost::encoding::encode_varint(array.len() as u64, &mut value);
            value.extend_from_slice(&array);
        }
        let handle = std::thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(move || wire::AnyValue::decode(value.as_slice()).unwrap().value)
            .unwrap();
        assert_eq!(handle.join().unwrap(), Some(Value::ArrayValue(Skipped {})));
    }
}
