//! Spans to events: the mapping of `docs/EVENTS.md` ("OpenTelemetry
//! spans"), one pass over each span's attributes.
//!
//! Over 600 lines: almost half is unit tests, one per row of that table
//! and per rejection, kept beside the code they check.

use std::borrow::Cow;
use std::ops::Range;

use data_encoding::HEXLOWER;
use tokentally_schemas::body::MAX_RECORDS;
use tokentally_schemas::{Limits, RejectReason, Rejection, Status, TokenEvent, check_size};

use super::wire::{ExportTraceServiceRequest, KeyValue, Status as SpanStatus, Value};

/// A span's event: its contract JSON (validated) and its `event_id`, the
/// record's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappedEvent<'a> {
    /// The span's position in the request, counting every span of every
    /// resource and scope in order.
    pub index: usize,
    pub json: &'a [u8],
    pub event_id: &'a str,
}

/// A span with GenAI usage that is not a valid event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanRejection {
    pub index: usize,
    pub rejection: Rejection,
}

/// What a request's spans became.
#[derive(Debug, Default)]
pub struct Mapped {
    /// Every event's JSON, back to back, and every `event_id`: one buffer
    /// each for the whole request, not two allocations per span.
    json: Vec<u8>,
    ids: String,
    cuts: Vec<Cut>,
    /// The first [`Mapped::LISTED`] rejected spans, in request order.
    pub rejected: Vec<SpanRejection>,
    /// Every rejected span, listed or not.
    pub rejected_count: usize,
    /// Spans without GenAI usage (HTTP, database, … spans, and model
    /// spans without a token count).
    pub skipped: usize,
}

/// Where one event lies in [`Mapped`]'s buffers.
#[derive(Debug)]
struct Cut {
    index: usize,
    json: Range<usize>,
    id: Range<usize>,
}

impl Mapped {
    /// Rejected spans kept with their reasons; the rest are only counted.
    pub const LISTED: usize = 100;

    /// Room for `json_bytes` of events' JSON. A protobuf body's size is
    /// close to its events' JSON (a span names each attribute, an event
    /// each field), so one allocation mostly holds it.
    pub(super) fn with_capacity(json_bytes: usize) -> Self {
        Mapped {
            json: Vec::with_capacity(json_bytes),
            ..Mapped::default()
        }
    }

    /// The events, in request order.
    pub fn events(&self) -> impl ExactSizeIterator<Item = MappedEvent<'_>> {
        self.cuts.iter().map(|c| MappedEvent {
            index: c.index,
            json: &self.json[c.json.clone()],
            event_id: &self.ids[c.id.clone()],
        })
    }

    /// Maps the span at `index` of the request: an event, a rejection or
    /// a skipped span.
    pub(super) fn push(
        &mut self,
        index: usize,
        span: &SpanFields<'_>,
        resource: &ResourceAttrs<'_>,
        limits: &Limits,
    ) {
        let (json_start, id_start) = (self.json.len(), self.ids.len());
        match event(span, resource, limits, &mut self.json, &mut self.ids) {
            Ok(true) => self.cuts.push(Cut {
                index,
                json: json_start..self.json.len(),
                id: id_start..self.ids.len(),
            }),
            Ok(false) => self.skipped += 1,
            Err(rejection) => {
                self.json.truncate(json_start);
                self.ids.truncate(id_start);
                self.rejected_count += 1;
                if self.rejected.len() < Mapped::LISTED {
                    self.rejected.push(SpanRejection { index, rejection });
                }
            }
        }
    }
}

/// The events of `request`'s spans, validated under `limits`. An error
/// (for a 400) when the request holds more than [`MAX_RECORDS`] spans.
pub fn events(request: &ExportTraceServiceRequest, limits: &Limits) -> Result<Mapped, String> {
    let spans = span_count(request);
    if spans > MAX_RECORDS {
        return Err(format!(
            "the request holds {spans} spans, more than {MAX_RECORDS}; export smaller batches"
        ));
    }
    let mut mapped = Mapped::default();
    let mut index = 0;
    for resource_spans in &request.resource_spans {
        let mut resource = ResourceAttrs::default();
        for kv in resource_spans.resource.iter().flat_map(|r| &r.attributes) {
            resource.offer(&kv.key, value(kv));
        }
        for span in resource_spans.scope_spans.iter().flat_map(|s| &s.spans) {
            let mut attrs = SpanAttrs::default();
            for kv in &span.attributes {
                attrs.offer(&kv.key, value(kv));
            }
            let fields = SpanFields {
                trace_id: &span.trace_id,
                span_id: &span.span_id,
                start_time_unix_nano: span.start_time_unix_nano,
                end_time_unix_nano: span.end_time_unix_nano,
                status_code: span.status.as_ref().map_or(0, |s| s.code),
                attrs,
            };
            mapped.push(index, &fields, &resource, limits);
            index += 1;
        }
    }
    Ok(mapped)
}

/// The spans of every resource and scope of `request`.
pub fn span_count(request: &ExportTraceServiceRequest) -> usize {
    request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum()
}

/// The value of an attribute, if it has one.
fn value(kv: &KeyValue) -> Option<ValueRef<'_>> {
    kv.value.as_ref()?.value.as_ref().map(ValueRef::of)
}

/// An attribute's value as the mapping reads it: a string's bytes, a
/// number, or only the kind of the others.
#[derive(Debug, Clone, Copy)]
pub(super) enum ValueRef<'a> {
    String(&'a [u8]),
    Bool,
    Int(i64),
    Double(f64),
    Array,
    Kvlist,
    Bytes,
    StringIndex,
}

impl<'a> ValueRef<'a> {
    fn of(value: &'a Value) -> Self {
        match value {
            Value::StringValue(s) => ValueRef::String(s),
            Value::BoolValue(_) => ValueRef::Bool,
            Value::IntValue(n) => ValueRef::Int(*n),
            Value::DoubleValue(d) => ValueRef::Double(*d),
            Value::ArrayValue(_) => ValueRef::Array,
            Value::KvlistValue(_) => ValueRef::Kvlist,
            Value::BytesValue(_) => ValueRef::Bytes,
            Value::StringValueStrindex(_) => ValueRef::StringIndex,
        }
    }
}

/// A span as the mapping reads it, borrowed from the decoded messages or
/// straight from a protobuf body (`walk.rs`).
pub(super) struct SpanFields<'a> {
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    /// The status code, 0 (unset) without a status.
    pub status_code: i32,
    pub attrs: SpanAttrs<'a>,
}

/// The resource attributes the mapping reads: UTF-8 strings only (others
/// are ignored, as absent).
#[derive(Default)]
pub(super) struct ResourceAttrs<'a> {
    service_name: Option<&'a str>,
    app: Option<&'a str>,
    host_name: Option<&'a str>,
    instance_id: Option<&'a str>,
    region: Option<&'a str>,
}

impl<'a> ResourceAttrs<'a> {
    /// Takes the resource attribute `key` (in order: the first valid
    /// string of each key is kept).
    pub(super) fn offer(&mut self, key: &[u8], value: Option<ValueRef<'a>>) {
        let slot = match key {
            b"service.name" => &mut self.service_name,
            b"tokentally.app" => &mut self.app,
            b"host.name" => &mut self.host_name,
            b"service.instance.id" => &mut self.instance_id,
            b"cloud.region" => &mut self.region,
            _ => return,
        };
        if let (None, Some(ValueRef::String(s))) = (&slot, value) {
            *slot = std::str::from_utf8(s).ok();
        }
    }
}

/// The span attributes the mapping reads: the first occurrence of each,
/// with its name (for the details of rejections).
#[derive(Default)]
pub(super) struct SpanAttrs<'a> {
    response_model: Option<Attr<'a>>,
    request_model: Option<Attr<'a>>,
    provider_name: Option<Attr<'a>>,
    system: Option<Attr<'a>>,
    input_tokens: Option<Attr<'a>>,
    prompt_tokens: Option<Attr<'a>>,
    output_tokens: Option<Attr<'a>>,
    completion_tokens: Option<Attr<'a>>,
    cache_read: Option<Attr<'a>>,
    cache_read_legacy: Option<Attr<'a>>,
    reasoning: Option<Attr<'a>>,
    app: Option<Attr<'a>>,
}

type Attr<'a> = (&'static str, ValueRef<'a>);

impl<'a> SpanAttrs<'a> {
    /// Takes the span attribute `key` (in order: the first value of each
    /// key is kept).
    pub(super) fn offer(&mut self, key: &[u8], value: Option<ValueRef<'a>>) {
        let (name, slot) = match key {
            b"gen_ai.response.model" => ("gen_ai.response.model", &mut self.response_model),
            b"gen_ai.request.model" => ("gen_ai.request.model", &mut self.request_model),
            b"gen_ai.provider.name" => ("gen_ai.provider.name", &mut self.provider_name),
            b"gen_ai.system" => ("gen_ai.system", &mut self.system),
            b"gen_ai.usage.input_tokens" => ("gen_ai.usage.input_tokens", &mut self.input_tokens),
            b"gen_ai.usage.prompt_tokens" => {
                ("gen_ai.usage.prompt_tokens", &mut self.prompt_tokens)
            }
            b"gen_ai.usage.output_tokens" => {
                ("gen_ai.usage.output_tokens", &mut self.output_tokens)
            }
            b"gen_ai.usage.completion_tokens" => (
                "gen_ai.usage.completion_tokens",
                &mut self.completion_tokens,
            ),
            b"gen_ai.usage.cache_read.input_tokens" => {
                ("gen_ai.usage.cache_read.input_tokens", &mut self.cache_read)
            }
            b"gen_ai.usage.cache_read_input_tokens" => (
                "gen_ai.usage.cache_read_input_tokens",
                &mut self.cache_read_legacy,
            ),
            b"gen_ai.usage.reasoning.output_tokens" => {
                ("gen_ai.usage.reasoning.output_tokens", &mut self.reasoning)
            }
            b"tokentally.app" => ("tokentally.app", &mut self.app),
            _ => return,
        };
        if slot.is_none() {
            *slot = value.map(|v| (name, v));
        }
    }

    fn has_usage(&self) -> bool {
        [
            &self.input_tokens,
            &self.prompt_tokens,
            &self.output_tokens,
            &self.completion_tokens,
            &self.cache_read,
            &self.cache_read_legacy,
            &self.reasoning,
        ]
        .iter()
        .any(|a| a.is_some())
    }
}

/// `span`'s event: its JSON appended to `json` and its `event_id` to
/// `ids`; `false` when it carries no GenAI usage (no token count). On a
/// rejection, the caller cuts what was appended.
fn event(
    span: &SpanFields<'_>,
    resource: &ResourceAttrs<'_>,
    limits: &Limits,
    json: &mut Vec<u8>,
    ids: &mut String,
) -> Result<bool, Rejection> {
    let attrs = &span.attrs;
    if !attrs.has_usage() {
        return Ok(false);
    }
    let model = match first_text(&[attrs.response_model, attrs.request_model], "model")? {
        Some(model) => model,
        None => {
            return Err(Rejection::new(
                RejectReason::MissingField,
                Some("model"),
                "the span has token counts but neither gen_ai.response.model nor \
                 gen_ai.request.model"
                    .into(),
            ));
        }
    };
    let provider = match first_text(&[attrs.provider_name, attrs.system], "provider")? {
        Some(provider) => provider,
        None => {
            return Err(Rejection::new(
                RejectReason::MissingField,
                Some("provider"),
                "the span has neither gen_ai.provider.name nor gen_ai.system".into(),
            ));
        }
    };
    let app = match attrs.app {
        Some(attr) => text(attr, "app")?,
        None => resource.app.or(resource.service_name).unwrap_or(""),
    };
    let id_start = ids.len();
    event_id(span, ids)?;
    let event_id = &ids[id_start..];
    if span.end_time_unix_nano == 0 {
        return Err(Rejection::new(
            RejectReason::MissingField,
            Some("ts"),
            "the span has no end time (endTimeUnixNano)".into(),
        ));
    }
    let count = |attrs: [Option<Attr<'_>>; 2], field| -> Result<u64, Rejection> {
        attrs
            .into_iter()
            .flatten()
            .next()
            .map_or(Ok(0), |attr| tokens(attr, field, limits.max_tokens))
    };
    let event = TokenEvent {
        event_id: Cow::Borrowed(event_id),
        ts: (span.end_time_unix_nano / 1_000_000) as i64,
        model: Cow::Borrowed(model),
        provider: Cow::Borrowed(provider),
        app: Cow::Borrowed(app),
        node: resource
            .host_name
            .or(resource.instance_id)
            .map(Cow::Borrowed),
        region: resource.region.map(Cow::Borrowed),
        prompt_tokens: count([attrs.input_tokens, attrs.prompt_tokens], "prompt_tokens")?,
        completion_tokens: count(
            [attrs.output_tokens, attrs.completion_tokens],
            "completion_tokens",
        )?,
        cached_tokens: count([attrs.cache_read, attrs.cache_read_legacy], "cached_tokens")?,
        reasoning_tokens: count([attrs.reasoning, None], "reasoning_tokens")?,
        latency_ms: (span.start_time_unix_nano > 0
            && span.end_time_unix_nano >= span.start_time_unix_nano)
            .then(|| (span.end_time_unix_nano - span.start_time_unix_nano) / 1_000_000),
        status: match span.status_code {
            SpanStatus::ERROR => Status::Error,
            _ => Status::Ok,
        },
    };
    // The contract's own rules (lengths, the time's range, the bounds), on
    // the event rather than on its JSON: the fuzz property checks that the
    // contract's decoder accepts every event mapped.
    event.check(limits)?;
    let json_start = json.len();
    sonic_rs::to_writer(&mut *json, &event).expect("a TokenEvent always serializes");
    check_size(json.len() - json_start, limits)?;
    Ok(true)
}

/// `trace id-span id` in lowercase hex, appended to `out`.
fn event_id(span: &SpanFields<'_>, out: &mut String) -> Result<(), Rejection> {
    let invalid =
        |detail: String| Rejection::new(RejectReason::InvalidValue, Some("event_id"), detail);
    if span.trace_id.is_empty() || span.span_id.is_empty() {
        return Err(Rejection::new(
            RejectReason::MissingField,
            Some("event_id"),
            "the span has no traceId or no spanId".into(),
        ));
    }
    if span.trace_id.len() != 16 || span.span_id.len() != 8 {
        return Err(invalid(format!(
            "a traceId has 16 bytes and a spanId 8; this span's have {} and {}",
            span.trace_id.len(),
            span.span_id.len()
        )));
    }
    if span.trace_id.iter().all(|b| *b == 0) || span.span_id.iter().all(|b| *b == 0) {
        return Err(invalid("an all-zero traceId or spanId is invalid".into()));
    }
    HEXLOWER.encode_append(span.trace_id, out);
    out.push('-');
    HEXLOWER.encode_append(span.span_id, out);
    Ok(())
}

/// The first of `attrs` that is a non-empty string; an attribute of
/// another type is `wrong_type`. `Some("")` when all present are empty
/// (the contract then says `empty_value`).
fn first_text<'a>(
    attrs: &[Option<Attr<'a>>],
    field: &'static str,
) -> Result<Option<&'a str>, Rejection> {
    let mut found = None;
    for attr in attrs.iter().flatten() {
        let s = text(*attr, field)?;
        if !s.is_empty() {
            return Ok(Some(s));
        }
        found = Some(s);
    }
    Ok(found)
}

fn text<'a>((name, value): Attr<'a>, field: &'static str) -> Result<&'a str, Rejection> {
    match value {
        ValueRef::String(s) => std::str::from_utf8(s).map_err(|_| {
            Rejection::new(
                RejectReason::InvalidValue,
                Some(field),
                format!("{name} is not valid UTF-8"),
            )
        }),
        other => Err(Rejection::new(
            RejectReason::WrongType,
            Some(field),
            format!("{name} is {}, not a string", kind(&other)),
        )),
    }
}

/// A token count: an integer, or a double holding a whole number, in
/// `0..=max`.
fn tokens((name, value): Attr<'_>, field: &'static str, max: u64) -> Result<u64, Rejection> {
    let out_of_range = |shown: String| {
        Rejection::new(
            RejectReason::OutOfRange,
            Some(field),
            format!("{name} is {shown}, outside 0..={max}"),
        )
    };
    let n = match value {
        ValueRef::Int(n) => u64::try_from(n).map_err(|_| out_of_range(n.to_string()))?,
        ValueRef::Double(d) if d.is_finite() && d.fract() != 0.0 => {
            return Err(Rejection::new(
                RejectReason::NotAnInteger,
                Some(field),
                format!("{name} is {d}, not a whole number"),
            ));
        }
        ValueRef::Double(d) if d.is_finite() => {
            if d < 0.0 || d > max as f64 {
                return Err(out_of_range(d.to_string()));
            }
            d as u64
        }
        other => {
            return Err(Rejection::new(
                RejectReason::WrongType,
                Some(field),
                format!("{name} is {}, not an integer", kind(&other)),
            ));
        }
    };
    if n > max {
        return Err(out_of_range(n.to_string()));
    }
    Ok(n)
}

fn kind(value: &ValueRef<'_>) -> &'static str {
    match value {
        ValueRef::String(_) => "a string",
        ValueRef::StringIndex => "a string-table reference",
        ValueRef::Bool => "a boolean",
        ValueRef::Int(_) => "an integer",
        ValueRef::Double(d) if d.is_nan() => "NaN",
        ValueRef::Double(_) => "an infinite double",
        ValueRef::Array => "an array",
        ValueRef::Kvlist => "a key-value list",
        ValueRef::Bytes => "bytes",
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::otlp::wire::{AnyValue, Resource, ResourceSpans, ScopeSpans, Span};
    use prost::bytes::Bytes;

    pub(crate) fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Some(AnyValue { value: Some(value) }),
        }
    }

    pub(crate) fn s(v: &str) -> Value {
        Value::StringValue(Bytes::copy_from_slice(v.as_bytes()))
    }

    pub(crate) fn span(n: u8, attributes: Vec<KeyValue>) -> Span {
        Span {
            trace_id: vec![0xab; 16].into(),
            span_id: vec![0, 0, 0, 0, 0, 0, 0, n].into(),
            start_time_unix_nano: 1_795_737_600_000_000_000,
            end_time_unix_nano: 1_795_737_601_250_999_999,
            attributes,
            status: None,
        }
    }

    fn request(resource: Vec<KeyValue>, spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: resource,
                }),
                scope_spans: vec![ScopeSpans { spans }],
            }],
        }
    }

    fn json(m: MappedEvent<'_>) -> serde_json::Value {
        serde_json::from_slice(m.json).unwrap()
    }

    fn nth(m: &Mapped, n: usize) -> MappedEvent<'_> {
        m.events().nth(n).unwrap()
    }

    #[test]
    fn current_and_legacy_names_map_to_the_same_event() {
        let resource = vec![
            kv("service.name", s("chat-ui")),
            kv("host.name", s("node-7")),
            kv("cloud.region", s("eu-central")),
        ];
        let current = span(
            1,
            vec![
                kv("gen_ai.request.model", s("qwen-plus")),
                kv("gen_ai.response.model", s("通义/qwen-max-中文")),
                kv("gen_ai.provider.name", s("alibaba")),
                kv("gen_ai.usage.input_tokens", Value::IntValue(5210)),
                kv("gen_ai.usage.output_tokens", Value::DoubleValue(830.0)),
                kv(
                    "gen_ai.usage.cache_read.input_tokens",
                    Value::IntValue(4096),
                ),
                kv("gen_ai.usage.reasoning.output_tokens", Value::IntValue(300)),
                kv("http.method", s("POST")),
            ],
        );
        let mut legacy = span(
            2,
            vec![
                kv("gen_ai.request.model", s("通义/qwen-max-中文")),
                kv("gen_ai.system", s("alibaba")),
                kv("gen_ai.usage.prompt_tokens", Value::IntValue(5210)),
                kv("gen_ai.usage.completion_tokens", Value::IntValue(830)),
                kv(
                    "gen_ai.usage.cache_read_input_tokens",
                    Value::IntValue(4096),
                ),
                kv("gen_ai.usage.reasoning.output_tokens", Value::IntValue(300)),
            ],
        );
        legacy.status = Some(SpanStatus {
            code: SpanStatus::ERROR,
        });
        let m = events(
            &request(resource, vec![current, legacy]),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!((m.rejected_count, m.skipped), (0, 0));
        let [a, b] = [json(nth(&m, 0)), json(nth(&m, 1))];
        assert_eq!(
            nth(&m, 0).event_id,
            format!("{}-0000000000000001", "ab".repeat(16))
        );
        assert_eq!(a["event_id"], nth(&m, 0).event_id);
        assert_eq!(a["ts"], 1_795_737_601_250i64);
        assert_eq!(a["latency_ms"], 1250);
        for (k, v) in [
            ("model", "通义/qwen-max-中文"),
            ("provider", "alibaba"),
            ("app", "chat-ui"),
            ("node", "node-7"),
            ("region", "eu-central"),
        ] {
            assert_eq!((a[k].as_str(), b[k].as_str()), (Some(v), Some(v)), "{k}");
        }
        for (k, v) in [
            ("prompt_tokens", 5210),
            ("completion_tokens", 830),
            ("cached_tokens", 4096),
            ("reasoning_tokens", 300),
        ] {
            assert_eq!((a[k].as_u64(), b[k].as_u64()), (Some(v), Some(v)), "{k}");
        }
        assert_eq!(
            (a["status"].as_str(), b["status"].as_str()),
            (Some("ok"), Some("error"))
        );
    }

    #[test]
    fn spans_without_usage_are_skipped_and_the_app_can_be_overridden() {
        let spans = vec![
            span(
                1,
                vec![kv("http.method", s("GET")), kv("gen_ai.system", s("x"))],
            ),
            span(2, vec![kv("gen_ai.request.model", s("m"))]),
            span(
                3,
                vec![
                    kv("gen_ai.request.model", s("m")),
                    kv("gen_ai.system", s("p")),
                    kv("gen_ai.usage.output_tokens", Value::IntValue(7)),
                    kv("tokentally.app", s("billing <b>\"x\"</b>")),
                ],
            ),
        ];
        let resource = vec![
            kv("service.name", s("svc")),
            kv("tokentally.app", s("from-resource")),
            kv("service.instance.id", s("i-1")),
        ];
        let m = events(
            &request(resource.clone(), spans.clone()),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!((m.events().len(), m.skipped, m.rejected_count), (1, 2, 0));
        let e = json(nth(&m, 0));
        assert_eq!(nth(&m, 0).index, 2);
        assert_eq!(e["app"], "billing <b>\"x\"</b>");
        assert_eq!(e["node"], "i-1");
        assert_eq!(
            (e["prompt_tokens"].as_u64(), e["completion_tokens"].as_u64()),
            (Some(0), Some(7))
        );
        // Without the span's own, the resource's tokentally.app wins over
        // service.name.
        let mut plain = spans[2].clone();
        plain.attributes.pop();
        let m = events(&request(resource, vec![plain]), &Limits::default()).unwrap();
        assert_eq!(json(nth(&m, 0))["app"], "from-resource");
    }

    #[test]
    fn invalid_genai_spans_are_rejected_with_the_contract_reasons() {
        let limits = Limits {
            max_tokens: 1_000,
            ..Limits::default()
        };
        let ok = |more: Vec<KeyValue>| {
            let mut a = vec![
                kv("gen_ai.request.model", s("m")),
                kv("gen_ai.system", s("p")),
            ];
            a.extend(more);
            a
        };
        let tokens = |v: Value| ok(vec![kv("gen_ai.usage.input_tokens", v)]);
        let cases: Vec<(Span, RejectReason, &str)> = vec![
            (
                span(1, tokens(Value::IntValue(-5))),
                RejectReason::OutOfRange,
                "prompt_tokens",
            ),
            (
                span(2, tokens(Value::IntValue(1_001))),
                RejectReason::OutOfRange,
                "prompt_tokens",
            ),
            (
                span(3, tokens(Value::DoubleValue(2.5))),
                RejectReason::NotAnInteger,
                "prompt_tokens",
            ),
            (
                span(4, tokens(Value::DoubleValue(-3.0))),
                RejectReason::OutOfRange,
                "prompt_tokens",
            ),
            (
                span(5, tokens(s("12"))),
                RejectReason::WrongType,
                "prompt_tokens",
            ),
            (
                span(6, tokens(Value::BoolValue(true))),
                RejectReason::WrongType,
                "prompt_tokens",
            ),
            (
                span(7, tokens(Value::DoubleValue(f64::NAN))),
                RejectReason::WrongType,
                "prompt_tokens",
            ),
            (
                span(
                    8,
                    vec![
                        kv("gen_ai.usage.input_tokens", Value::IntValue(1)),
                        kv("gen_ai.system", s("p")),
                    ],
                ),
                RejectReason::MissingField,
                "model",
            ),
            (
                span(
                    9,
                    vec![
                        kv("gen_ai.request.model", s("m")),
                        kv("gen_ai.usage.input_tokens", Value::IntValue(1)),
                    ],
                ),
                RejectReason::MissingField,
                "provider",
            ),
            (
                span(
                    10,
                    ok(vec![
                        kv("gen_ai.usage.input_tokens", Value::IntValue(1)),
                        kv("tokentally.app", Value::IntValue(1)),
                    ]),
                ),
                RejectReason::WrongType,
                "app",
            ),
            (
                span(
                    11,
                    vec![
                        kv("gen_ai.request.model", s(&"x".repeat(300))),
                        kv("gen_ai.system", s("p")),
                        kv("gen_ai.usage.input_tokens", Value::IntValue(1)),
                    ],
                ),
                RejectReason::TooLong,
                "model",
            ),
            (
                span(
                    16,
                    vec![
                        kv(
                            "gen_ai.request.model",
                            Value::StringValue(Bytes::from_static(b"qwen\xff")),
                        ),
                        kv("gen_ai.system", s("p")),
                        kv("gen_ai.usage.input_tokens", Value::IntValue(1)),
                    ],
                ),
                RejectReason::InvalidValue,
                "model",
            ),
            (
                Span {
                    trace_id: Bytes::new(),
                    ..span(12, tokens(Value::IntValue(1)))
                },
                RejectReason::MissingField,
                "event_id",
            ),
            (
                Span {
                    span_id: vec![0; 8].into(),
                    ..span(13, tokens(Value::IntValue(1)))
                },
                RejectReason::InvalidValue,
                "event_id",
            ),
            (
                Span {
                    end_time_unix_nano: 0,
                    ..span(14, tokens(Value::IntValue(1)))
                },
                RejectReason::MissingField,
                "ts",
            ),
            (
                Span {
                    end_time_unix_nano: u64::MAX,
                    ..span(15, tokens(Value::IntValue(1)))
                },
                RejectReason::InvalidTs,
                "ts",
            ),
        ];
        let n = cases.len();
        let mut spans: Vec<Span> = cases.iter().map(|c| c.0.clone()).collect();
        spans.push(span(99, tokens(Value::DoubleValue(1_000.0))));
        let m = events(&request(vec![], spans), &limits).unwrap();
        assert_eq!((m.events().len(), m.rejected_count, m.skipped), (1, n, 0));
        assert_eq!(json(nth(&m, 0))["prompt_tokens"], 1_000);
        for (r, (_, reason, field)) in m.rejected.iter().zip(&cases) {
            assert_eq!(
                (r.rejection.reason, r.rejection.field),
                (*reason, Some(*field)),
                "span {}: {}",
                r.index,
                r.rejection.detail
            );
        }
        assert!(
            m.rejected[0]
                .rejection
                .detail
                .contains("gen_ai.usage.input_tokens")
        );
    }

    #[test]
    fn too_many_spans_are_refused_whole() {
        let spans = vec![Span::default(); MAX_RECORDS + 1];
        assert!(events(&request(vec![], spans), &Limits::default()).is_err());
    }
}
