//! OTLP protobuf mapped straight from the body: one walk over the wire
//! format with prost's own primitives (`prost::encoding`: keys, varints,
//! wire-type checks, skipping), reading each attribute's key before its
//! value and handing the mapping slices of the body. Nothing is built per
//! span: no message, no vector of attributes, no reference count per
//! string, as decoding into the messages of [`super::wire`] does.
//!
//! It reads the body as prost reads it into those messages: the same
//! fields, the last of a repeated scalar and the merge of a repeated
//! message, fields in any order (a resource after its spans), the same
//! wire-type checks and the same recursion limit for groups nested in
//! unknown fields. Where it cannot map a body it says only [`Refused`],
//! and [`super::map`] decodes the body into the messages instead, whose
//! error names what is wrong. The fuzz property (`fuzzing.rs`) checks
//! that for any bytes both ways give the same events, rejections and
//! skipped spans, or both refuse.

use prost::DecodeError;
use prost::encoding::{
    DecodeContext, WireType, check_wire_type, decode_key, decode_varint, skip_field,
};
use tokentally_schemas::Limits;
use tokentally_schemas::body::MAX_RECORDS;

use super::map::{Mapped, ResourceAttrs, SpanAttrs, SpanFields, ValueRef};

/// The body is not a request the walk maps: malformed, or more than
/// [`MAX_RECORDS`] spans. The messages' decoder says which.
#[derive(Debug)]
pub(super) struct Refused;

impl From<DecodeError> for Refused {
    fn from(_: DecodeError) -> Self {
        Refused
    }
}

type Walk<T> = Result<T, Refused>;

/// prost's recursion budget (`RECURSION_LIMIT`) as it stands for the
/// fields of each message: a request's fields have all of it, and each
/// nested message one less. Only groups in unknown fields can exhaust it.
const REQUEST: u32 = 100;

/// The events of the `ExportTraceServiceRequest` in `body`.
pub(super) fn events(body: &[u8], limits: &Limits) -> Walk<Mapped> {
    let mut mapped = Mapped::with_capacity(body.len());
    let mut index = 0;
    let mut buf = body;
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        match tag {
            1 => {
                let resource_spans = delimited(wire_type, &mut buf)?;
                walk_resource_spans(resource_spans, limits, &mut mapped, &mut index)?;
            }
            _ => skip(wire_type, tag, &mut buf, REQUEST)?,
        }
    }
    Ok(mapped)
}

/// `ResourceSpans`: first its resource (merged from every occurrence,
/// wherever it lies), then its spans.
fn walk_resource_spans(
    body: &[u8],
    limits: &Limits,
    mapped: &mut Mapped,
    index: &mut usize,
) -> Walk<()> {
    const DEPTH: u32 = REQUEST - 1;
    let mut resource = ResourceAttrs::default();
    let mut buf = body;
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        match tag {
            1 => {
                let mut fields = delimited(wire_type, &mut buf)?;
                while !fields.is_empty() {
                    let (tag, wire_type) = decode_key(&mut fields)?;
                    match tag {
                        1 => {
                            let kv = delimited(wire_type, &mut fields)?;
                            let (key, value) = key_value(kv, DEPTH - 2)?;
                            resource.offer(key, value);
                        }
                        _ => skip(wire_type, tag, &mut fields, DEPTH - 1)?,
                    }
                }
            }
            2 => {
                delimited(wire_type, &mut buf)?;
            }
            _ => skip(wire_type, tag, &mut buf, DEPTH)?,
        }
    }
    let mut buf = body;
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        match tag {
            2 => {
                let mut fields = delimited(wire_type, &mut buf)?;
                while !fields.is_empty() {
                    let (tag, wire_type) = decode_key(&mut fields)?;
                    match tag {
                        2 => {
                            let span = walk_span(delimited(wire_type, &mut fields)?, DEPTH - 2)?;
                            if *index == MAX_RECORDS {
                                return Err(Refused);
                            }
                            mapped.push(*index, &span, &resource, limits);
                            *index += 1;
                        }
                        _ => skip(wire_type, tag, &mut fields, DEPTH - 1)?,
                    }
                }
            }
            // Read in the first pass.
            1 => {
                delimited(wire_type, &mut buf)?;
            }
            _ => skip(wire_type, tag, &mut buf, DEPTH)?,
        }
    }
    Ok(())
}

/// `Span`, whose fields have the recursion budget `depth`.
fn walk_span(mut buf: &[u8], depth: u32) -> Walk<SpanFields<'_>> {
    let mut span = SpanFields {
        trace_id: &[],
        span_id: &[],
        start_time_unix_nano: 0,
        end_time_unix_nano: 0,
        status_code: 0,
        attrs: SpanAttrs::default(),
    };
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        match tag {
            1 => span.trace_id = delimited(wire_type, &mut buf)?,
            2 => span.span_id = delimited(wire_type, &mut buf)?,
            7 => span.start_time_unix_nano = fixed64(wire_type, &mut buf)?,
            8 => span.end_time_unix_nano = fixed64(wire_type, &mut buf)?,
            9 => {
                let (key, value) = key_value(delimited(wire_type, &mut buf)?, depth - 1)?;
                span.attrs.offer(key, value);
            }
            15 => {
                let mut status = delimited(wire_type, &mut buf)?;
                while !status.is_empty() {
                    let (tag, wire_type) = decode_key(&mut status)?;
                    match tag {
                        3 => span.status_code = varint(wire_type, &mut status)? as i32,
                        _ => skip(wire_type, tag, &mut status, depth - 1)?,
                    }
                }
            }
            _ => skip(wire_type, tag, &mut buf, depth)?,
        }
    }
    Ok(span)
}

/// `KeyValue`, whose fields have the recursion budget `depth`: its key
/// (the last one) and its value (the last one of the `AnyValue`s merged).
fn key_value(mut buf: &[u8], depth: u32) -> Walk<(&[u8], Option<ValueRef<'_>>)> {
    let (mut key, mut value) = (&[][..], None);
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        match tag {
            1 => key = delimited(wire_type, &mut buf)?,
            2 => {
                let mut any = delimited(wire_type, &mut buf)?;
                while !any.is_empty() {
                    let (tag, wire_type) = decode_key(&mut any)?;
                    value = Some(match tag {
                        1 => ValueRef::String(delimited(wire_type, &mut any)?),
                        2 => {
                            varint(wire_type, &mut any)?;
                            ValueRef::Bool
                        }
                        3 => ValueRef::Int(varint(wire_type, &mut any)? as i64),
                        4 => ValueRef::Double(f64::from_bits(fixed64(wire_type, &mut any)?)),
                        5 | 6 => {
                            // Arrays and key-value lists: their content is
                            // skipped, as the messages skip it.
                            let mut content = delimited(wire_type, &mut any)?;
                            while !content.is_empty() {
                                let (tag, wire_type) = decode_key(&mut content)?;
                                skip(wire_type, tag, &mut content, depth - 2)?;
                            }
                            if tag == 5 {
                                ValueRef::Array
                            } else {
                                ValueRef::Kvlist
                            }
                        }
                        7 => {
                            delimited(wire_type, &mut any)?;
                            ValueRef::Bytes
                        }
                        8 => {
                            varint(wire_type, &mut any)?;
                            ValueRef::StringIndex
                        }
                        _ => {
                            skip(wire_type, tag, &mut any, depth - 1)?;
                            continue;
                        }
                    });
                }
            }
            _ => skip(wire_type, tag, &mut buf, depth)?,
        }
    }
    Ok((key, value))
}

/// A length-delimited field's content (a message, a string or bytes).
fn delimited<'a>(wire_type: WireType, buf: &mut &'a [u8]) -> Walk<&'a [u8]> {
    check_wire_type(WireType::LengthDelimited, wire_type)?;
    let len = decode_varint(buf)?;
    if len > buf.len() as u64 {
        return Err(Refused);
    }
    let (content, rest) = buf.split_at(len as usize);
    *buf = rest;
    Ok(content)
}

fn varint(wire_type: WireType, buf: &mut &[u8]) -> Walk<u64> {
    check_wire_type(WireType::Varint, wire_type)?;
    Ok(decode_varint(buf)?)
}

fn fixed64(wire_type: WireType, buf: &mut &[u8]) -> Walk<u64> {
    check_wire_type(WireType::SixtyFourBit, wire_type)?;
    let (bytes, rest) = buf.split_first_chunk::<8>().ok_or(Refused)?;
    *buf = rest;
    Ok(u64::from_le_bytes(*bytes))
}

/// Skips a field the mapping does not read, in a message whose fields have
/// the recursion budget `depth`. prost's `skip_field` takes a budget only
/// from its own decoders, so groups, the one kind of field that nests, are
/// walked here against `depth` as prost walks them; every other kind is
/// prost's to skip.
fn skip(wire_type: WireType, tag: u32, buf: &mut &[u8], depth: u32) -> Walk<()> {
    if depth == 0 {
        return Err(Refused);
    }
    if wire_type != WireType::StartGroup {
        return Ok(skip_field(wire_type, tag, buf, DecodeContext::default())?);
    }
    loop {
        let (inner, inner_type) = decode_key(buf)?;
        if inner_type == WireType::EndGroup {
            return if inner == tag { Ok(()) } else { Err(Refused) };
        }
        skip(inner_type, inner, buf, depth - 1)?;
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use prost::bytes::Bytes;
    use prost::encoding::{encode_key, encode_varint};

    use super::*;
    use crate::otlp::map::tests::{kv, s, span};
    use crate::otlp::wire::{
        AnyValue, ExportTraceServiceRequest, Resource, ResourceSpans, ScopeSpans, Span, Status,
        Value,
    };
    use crate::otlp::{Encoding, decode, map};

    /// Asserts that the walk and the messages agree on `body`, and returns
    /// whether the walk mapped it.
    fn agree(body: &[u8]) -> bool {
        let walked = events(body, &Limits::default());
        let through_messages = decode(Bytes::copy_from_slice(body), Encoding::Protobuf)
            .and_then(|r| map::events(&r, &Limits::default()));
        match (&walked, &through_messages) {
            (Ok(w), Ok(m)) => {
                assert_eq!(
                    w.events().collect::<Vec<_>>(),
                    m.events().collect::<Vec<_>>()
                );
                assert_eq!(
                    (&w.rejected, w.rejected_count, w.skipped),
                    (&m.rejected, m.rejected_count, m.skipped)
                );
                true
            }
            (Err(Refused), Err(_)) => false,
            (w, m) => panic!("the walk gave {w:?}, the messages {m:?}"),
        }
    }

    /// A span with GenAI usage and an error status.
    fn genai(n: u8, model: &str) -> Span {
        let mut span = span(
            n,
            vec![
                kv("http.method", s("POST")),
                kv("gen_ai.request.model", s(model)),
                kv("gen_ai.system", s("p")),
                kv("gen_ai.usage.input_tokens", Value::IntValue(i64::from(n))),
                kv("gen_ai.usage.output_tokens", Value::DoubleValue(7.0)),
                kv("gen_ai.usage.reasoning.output_tokens", Value::IntValue(3)),
            ],
        );
        span.status = Some(Status { code: 2 });
        span
    }

    fn field(tag: u32, content: &[u8], out: &mut Vec<u8>) {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(content.len() as u64, out);
        out.extend_from_slice(content);
    }

    #[test]
    fn the_walk_reads_what_the_messages_read() {
        let resource = Resource {
            attributes: vec![
                kv("service.name", s("chat <b>ui</b>")),
                kv("host.name", Value::StringValue(Bytes::from_static(b"\xff"))),
                kv("host.name", s("node-7")),
                kv("cloud.region", Value::IntValue(3)),
            ],
        };
        let odd = span(
            9,
            vec![
                kv("gen_ai.usage.input_tokens", Value::IntValue(1)),
                kv("gen_ai.response.model", s("通义/qwen")),
                kv("gen_ai.provider.name", Value::BoolValue(true)),
            ],
        );
        let request = ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: Some(resource),
                    scope_spans: vec![
                        ScopeSpans {
                            spans: vec![genai(1, "a"), span(2, vec![]), genai(3, "b")],
                        },
                        ScopeSpans {
                            spans: vec![odd, Span::default()],
                        },
                    ],
                },
                ResourceSpans {
                    resource: None,
                    scope_spans: vec![ScopeSpans {
                        spans: vec![genai(4, "c")],
                    }],
                },
            ],
        };
        let body = request.encode_to_vec();
        assert!(agree(&body));
        let m = events(&body, &Limits::default()).unwrap();
        assert_eq!((m.events().len(), m.skipped, m.rejected_count), (3, 2, 1));
        // Every prefix is refused by both or mapped the same by both.
        for end in 0..body.len() {
            agree(&body[..end]);
        }
    }

    #[test]
    fn fields_in_any_order_repeated_and_merged() {
        let spans = ScopeSpans {
            spans: vec![genai(1, "a")],
        }
        .encode_to_vec();
        let resource = |name: &str| {
            Resource {
                attributes: vec![kv("service.name", s(name))],
            }
            .encode_to_vec()
        };
        // The resource after its spans, and twice (merged: the first
        // service.name stays).
        let mut resource_spans = Vec::new();
        field(2, &spans, &mut resource_spans);
        field(1, &resource("first"), &mut resource_spans);
        field(1, &resource("second"), &mut resource_spans);
        let mut body = Vec::new();
        field(1, &resource_spans, &mut body);
        assert!(agree(&body));
        let m = events(&body, &Limits::default()).unwrap();
        let e: serde_json::Value = serde_json::from_slice(m.events().next().unwrap().json).unwrap();
        assert_eq!(e["app"], "first");

        // A key-value whose key comes last and twice, and whose value is
        // two merged AnyValues (the last variant wins).
        let mut attr = Vec::new();
        field(
            2,
            &AnyValue {
                value: Some(s("x")),
            }
            .encode_to_vec(),
            &mut attr,
        );
        field(1, b"gen_ai.request.model", &mut attr);
        field(
            2,
            &AnyValue {
                value: Some(s("m")),
            }
            .encode_to_vec(),
            &mut attr,
        );
        field(2, &AnyValue { value: None }.encode_to_vec(), &mut attr);
        field(1, b"gen_ai.response.model", &mut attr);
        let mut span_bytes = span(
            5,
            vec![
                kv("gen_ai.system", s("p")),
                kv("gen_ai.usage.input_tokens", Value::IntValue(2)),
            ],
        )
        .encode_to_vec();
        field(9, &attr, &mut span_bytes);
        let mut scope = Vec::new();
        field(2, &span_bytes, &mut scope);
        let mut resource_spans = Vec::new();
        field(2, &scope, &mut resource_spans);
        let mut body = Vec::new();
        field(1, &resource_spans, &mut body);
        assert!(agree(&body));
        let m = events(&body, &Limits::default()).unwrap();
        let e: serde_json::Value = serde_json::from_slice(m.events().next().unwrap().json).unwrap();
        assert_eq!(e["model"], "m");
    }

    #[test]
    fn groups_nest_to_prosts_recursion_limit_and_no_further() {
        // `depth` groups nested in an array value of a span attribute.
        let body = |depth: usize| {
            let mut groups = Vec::new();
            for _ in 0..depth {
                encode_key(4, WireType::StartGroup, &mut groups);
            }
            encode_key(1, WireType::Varint, &mut groups);
            encode_varint(1, &mut groups);
            for _ in 0..depth {
                encode_key(4, WireType::EndGroup, &mut groups);
            }
            let mut any = Vec::new();
            field(5, &groups, &mut any);
            let mut attr = Vec::new();
            field(1, b"x", &mut attr);
            field(2, &any, &mut attr);
            let mut span_bytes = genai(1, "a").encode_to_vec();
            field(9, &attr, &mut span_bytes);
            let mut scope = Vec::new();
            field(2, &span_bytes, &mut scope);
            let mut resource_spans = Vec::new();
            field(2, &scope, &mut resource_spans);
            let mut out = Vec::new();
            field(1, &resource_spans, &mut out);
            out
        };
        let mapped: Vec<bool> = (90..100).map(|depth| agree(&body(depth))).collect();
        assert!(mapped[0] && !mapped[9], "{mapped:?}");
    }

    #[test]
    fn too_many_spans_are_refused() {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: None,
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span::default(); MAX_RECORDS + 1],
                }],
            }],
        };
        assert!(!agree(&request.encode_to_vec()));
    }
}
