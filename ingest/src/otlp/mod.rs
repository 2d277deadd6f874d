//! OpenTelemetry traces as events: the spans of an OTLP
//! `ExportTraceServiceRequest` that carry GenAI usage become events of the
//! contract, one per span, keyed by trace and span id so that a retried
//! export counts once. The mapping is documented in `docs/EVENTS.md`
//! ("OpenTelemetry spans").
//!
//! - [`request_events`]: a body's events, what the gateway calls. A
//!   protobuf body is mapped straight from its bytes (`walk.rs`); an OTLP
//!   JSON body, and a protobuf body the walk refuses, go through
//!   [`decode`] and [`events`];
//! - [`decode`]: a body, protobuf or OTLP JSON, into the request message
//!   of [`wire`], which keeps only what the mapping reads (bounded: the
//!   body's size is the caller's, JSON nesting is checked before parsing,
//!   and the messages nest at most six deep: array and key-value-list
//!   values are skipped, not decoded);
//! - [`events`]: the request's spans as contract JSON, each held to the
//!   contract's rules (`TokenEvent::check`), with the rejected spans and
//!   their reasons and a count of the skipped (non-GenAI) ones;
//! - [`response`] and [`status`]: the bodies OTLP/HTTP answers with.
//!
//! Pure, without I/O: the gateway's `/v1/traces` route wraps it in HTTP.

#[doc(hidden)]
pub mod fuzzing;
mod json;
mod map;
mod walk;
pub mod wire;

use prost::Message;
use prost::bytes::Bytes;
use serde_json::json;
use tokentally_schemas::Limits;

pub use map::{Mapped, MappedEvent, SpanRejection, events, span_count};
pub use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
pub use wire::ExportTraceServiceRequest;

/// Deepest nesting of arrays and objects in an OTLP JSON body. A span's
/// attribute value sits at depth 10 (request, resourceSpans, …, value);
/// this leaves room for attribute values nested several arrays deep, and
/// keeps the parser's recursion far from the stack's end.
pub const MAX_JSON_DEPTH: usize = 32;

/// How an OTLP/HTTP body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Binary protobuf (`application/x-protobuf`).
    Protobuf,
    /// OTLP JSON (`application/json`): protobuf's JSON mapping with hex
    /// trace and span ids.
    Json,
}

impl Encoding {
    /// The encoding a `Content-Type` announces, `None` for any other (and
    /// for none).
    pub fn from_content_type(value: Option<&str>) -> Option<Encoding> {
        let essence = value?.split(';').next()?.trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/x-protobuf" | "application/protobuf" => Some(Encoding::Protobuf),
            "application/json" => Some(Encoding::Json),
            _ => None,
        }
    }

    /// The `Content-Type` of answers in this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// The events of the request `body` holds, validated under `limits`, or
/// why it holds none (for a 400). A protobuf body is mapped as it is
/// walked; one that the walk refuses is decoded into messages, whose
/// decoder says what is wrong with it.
pub fn request_events(body: Bytes, encoding: Encoding, limits: &Limits) -> Result<Mapped, String> {
    if encoding == Encoding::Protobuf
        && let Ok(mapped) = walk::events(&body, limits)
    {
        return Ok(mapped);
    }
    events(&decode(body, encoding)?, limits)
}

/// The request `body` holds, or why it holds none (for a 400). A protobuf
/// request's strings are slices of `body`.
pub fn decode(body: Bytes, encoding: Encoding) -> Result<ExportTraceServiceRequest, String> {
    match encoding {
        Encoding::Protobuf => ExportTraceServiceRequest::decode(body).map_err(|e| {
            format!("the body is not an OTLP ExportTraceServiceRequest in protobuf: {e}")
        }),
        Encoding::Json => json::decode(&body),
    }
}

/// The body of a 200: an `ExportTraceServiceResponse`, with
/// `partial_success` when spans were rejected.
pub fn response(encoding: Encoding, rejected_spans: usize, error_message: &str) -> Vec<u8> {
    let partial = (rejected_spans > 0).then(|| ExportTracePartialSuccess {
        rejected_spans: rejected_spans as i64,
        error_message: error_message.to_owned(),
    });
    match encoding {
        Encoding::Protobuf => ExportTraceServiceResponse {
            partial_success: partial,
        }
        .encode_to_vec(),
        // int64 as a decimal string, as protobuf's JSON mapping writes it.
        Encoding::Json => match partial {
            None => b"{}".to_vec(),
            Some(p) => json!({"partialSuccess": {
                "rejectedSpans": p.rejected_spans.to_string(),
                "errorMessage": p.error_message,
            }})
            .to_string()
            .into_bytes(),
        },
    }
}

/// `google.rpc.Status`, the body of OTLP/HTTP's error answers.
#[derive(Clone, PartialEq, Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// gRPC status codes of the error answers, by HTTP status.
pub fn rpc_code(http_status: u16) -> i32 {
    match http_status {
        400 | 413 | 415 => 3, // INVALID_ARGUMENT
        401 => 16,            // UNAUTHENTICATED
        404 => 12,            // UNIMPLEMENTED
        408 => 4,             // DEADLINE_EXCEEDED
        429 => 8,             // RESOURCE_EXHAUSTED
        503 => 14,            // UNAVAILABLE
        _ => 13,              // INTERNAL
    }
}

/// The body of an error answer: a `google.rpc.Status` with `message`.
pub fn status(encoding: Encoding, http_status: u16, message: &str) -> Vec<u8> {
    let code = rpc_code(http_status);
    match encoding {
        Encoding::Protobuf => RpcStatus {
            code,
            message: message.to_owned(),
        }
        .encode_to_vec(),
        Encoding::Json => json!({"code": code, "message": message})
            .to_string()
            .into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(
            Encoding::from_content_type(Some("application/x-protobuf")),
            Some(Encoding::Protobuf)
        );
        assert_eq!(
            Encoding::from_content_type(Some("Application/JSON; charset=utf-8")),
            Some(Encoding::Json)
        );
        assert_eq!(Encoding::from_content_type(Some("text/plain")), None);
        assert_eq!(Encoding::from_content_type(None), None);
    }

    #[test]
    fn answers_decode_as_their_messages() {
        let body = response(Encoding::Protobuf, 2, "span 0: out_of_range");
        let decoded = ExportTraceServiceResponse::decode(body.as_slice()).unwrap();
        let partial = decoded.partial_success.unwrap();
        assert_eq!(
            (partial.rejected_spans, partial.error_message.as_str()),
            (2, "span 0: out_of_range")
        );
        assert!(response(Encoding::Protobuf, 0, "").is_empty());
        assert_eq!(response(Encoding::Json, 0, ""), b"{}");
        let v: serde_json::Value =
            serde_json::from_slice(&response(Encoding::Json, 3, "why")).unwrap();
        assert_eq!(v["partialSuccess"]["rejectedSpans"], "3");
        let s = RpcStatus::decode(status(Encoding::Protobuf, 429, "busy").as_slice()).unwrap();
        assert_eq!((s.code, s.message.as_str()), (8, "busy"));
        let v: serde_json::Value =
            serde_json::from_slice(&status(Encoding::Json, 400, "bad")).unwrap();
        assert_eq!(
            (v["code"].as_i64(), v["message"].as_str()),
            (Some(3), Some("bad"))
        );
    }
}
