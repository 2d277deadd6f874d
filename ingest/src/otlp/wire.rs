//! The OTLP trace messages as the mapping reads them, for OTLP JSON and
//! for a protobuf body the walk (`walk.rs`) refuses: prost messages with
//! the field numbers and wire types of the official `.proto` files
//! (`opentelemetry/proto/collector/trace/v1/trace_service.proto` and the
//! `trace`, `resource` and `common` files it imports), holding only the
//! fields the mapping reads. prost skips every other field, as it skips
//! fields unknown to any message, without decoding it: span names, events,
//! links, scopes, array and key-value-list contents.
//!
//! Strings and bytes are [`Bytes`] slices of the request body (decoding
//! from a [`Bytes`] body copies nothing), not an owned `String` per key
//! and per value as `opentelemetry-proto`'s types have. A key is compared
//! as bytes; a value is checked to be UTF-8 only when the mapping uses it.
//! So invalid UTF-8 in an attribute the mapping does not read no longer
//! fails the request. Measured with `cargo bench --bench core --
//! gateway_body` (docs/BENCHMARKS.md). The fuzz property
//! (`fuzzing.rs`) checks that whatever `opentelemetry-proto` decodes,
//! these types decode to the same fields.

use prost::bytes::Bytes;
use prost::{Message, Oneof};

/// `ExportTraceServiceRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct ExportTraceServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_spans: Vec<ResourceSpans>,
}

/// `ResourceSpans`, without `schema_url`.
#[derive(Clone, PartialEq, Message)]
pub struct ResourceSpans {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_spans: Vec<ScopeSpans>,
}

/// `Resource`: its attributes.
#[derive(Clone, PartialEq, Message)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

/// `ScopeSpans`: its spans (the scope itself is skipped).
#[derive(Clone, PartialEq, Message)]
pub struct ScopeSpans {
    #[prost(message, repeated, tag = "2")]
    pub spans: Vec<Span>,
}

/// `Span`: ids, times, attributes and status.
#[derive(Clone, PartialEq, Message)]
pub struct Span {
    #[prost(bytes = "bytes", tag = "1")]
    pub trace_id: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub span_id: Bytes,
    #[prost(fixed64, tag = "7")]
    pub start_time_unix_nano: u64,
    #[prost(fixed64, tag = "8")]
    pub end_time_unix_nano: u64,
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
    #[prost(message, optional, tag = "15")]
    pub status: Option<Status>,
}

/// `Status`: its code (`STATUS_CODE_ERROR` is [`Status::ERROR`]).
#[derive(Clone, PartialEq, Message)]
pub struct Status {
    #[prost(int32, tag = "3")]
    pub code: i32,
}

impl Status {
    /// `STATUS_CODE_ERROR`.
    pub const ERROR: i32 = 2;
}

/// `KeyValue`; the key is a `string` on the wire, kept as bytes.
#[derive(Clone, PartialEq, Message)]
pub struct KeyValue {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

/// `AnyValue`.
#[derive(Clone, PartialEq, Message)]
pub struct AnyValue {
    #[prost(oneof = "Value", tags = "1, 2, 3, 4, 5, 6, 7, 8")]
    pub value: Option<Value>,
}

/// `AnyValue.value`. Arrays and key-value lists keep their kind, not their
/// content (the mapping reads neither), so they nest no deeper.
#[derive(Clone, PartialEq, Oneof)]
pub enum Value {
    /// A `string` on the wire; UTF-8 is checked where it is read.
    #[prost(bytes = "bytes", tag = "1")]
    StringValue(Bytes),
    #[prost(bool, tag = "2")]
    BoolValue(bool),
    #[prost(int64, tag = "3")]
    IntValue(i64),
    #[prost(double, tag = "4")]
    DoubleValue(f64),
    #[prost(message, tag = "5")]
    ArrayValue(Skipped),
    #[prost(message, tag = "6")]
    KvlistValue(Skipped),
    #[prost(bytes = "bytes", tag = "7")]
    BytesValue(Bytes),
    #[prost(int32, tag = "8")]
    StringValueStrindex(i32),
}

/// A message whose content is skipped.
#[derive(Clone, PartialEq, Message)]
pub struct Skipped {}
