//! `POST /v1/traces`: OpenTelemetry traces over OTLP/HTTP, protobuf or
//! JSON, plain or gzip. The spans that carry GenAI usage become events
//! ([`crate::otlp`]); the others are skipped. The answer follows OTLP/HTTP:
//! an `ExportTraceServiceResponse` (with `partial_success` when spans were
//! rejected) or a `google.rpc.Status`, in the request's encoding.

use std::fmt::Write as _;
use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flate2::read::GzDecoder;

use super::{Gateway, Refusal};
use crate::otlp::{self, Encoding};

/// Rejected spans whose reasons an answer's `error_message` names.
const NAMED_REJECTIONS: usize = 5;

pub(super) async fn post(State(gw): State<Arc<Gateway>>, request: Request) -> Response {
    let encoding = Encoding::from_content_type(
        request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    match accept(&gw, request, encoding).await {
        Ok(response) => response,
        // Without a known encoding, errors are written in JSON.
        Err(r) => refuse(r, encoding.unwrap_or(Encoding::Json)),
    }
}

/// A `google.rpc.Status` with the refusal's message, in `encoding`.
fn refuse(r: Refusal, encoding: Encoding) -> Response {
    let body = otlp::status(encoding, r.status.as_u16(), &r.message);
    r.respond(encoding.content_type(), body)
}

/// `/v1/metrics` and `/v1/logs`: 404, saying why.
pub(super) async fn not_counted() -> Response {
    let r = Refusal::new(
        StatusCode::NOT_FOUND,
        "tokentally counts spans (POST /v1/traces), not metrics or logs: one span is one \
         request, so counting spans is exact and a retried export is recognised by its \
         trace and span id, while metric histograms arrive already aggregated",
    );
    refuse(r, Encoding::Json)
}

async fn accept(
    gw: &Gateway,
    request: Request,
    encoding: Option<Encoding>,
) -> Result<Response, Refusal> {
    let started = Instant::now();
    let source = gw.authorize(request.headers())?;
    let encoding = encoding.ok_or_else(|| {
        Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "OTLP/HTTP bodies are application/x-protobuf or application/json",
        )
    })?;
    let gzip = match request
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("").trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("" | "identity") => false,
        Some("gzip") => true,
        Some(other) => {
            return Err(Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding {other:?} is not supported; send gzip or none"),
            ));
        }
    };
    let (body, _permit) = gw.receive(request).await?;
    if body.is_empty() {
        return Err(Refusal::bad_request("the body is empty"));
    }
    let _inflated_permit;
    let body = if gzip {
        let size = gunzipped_size(&body, gw.config.max_body_bytes)?;
        // The inflated body needs room among the bytes in flight too.
        _inflated_permit = gw.admit(size).await?;
        gunzip(&body, size)?.into()
    } else {
        body
    };
    let mapped =
        otlp::request_events(body, encoding, &gw.config.limits).map_err(Refusal::bad_request)?;
    let events: Vec<_> = mapped
        .events()
        .map(|e| (e.index, e.json, e.event_id))
        .collect();
    let produced = gw.produce(&events, source.as_deref()).await?;

    let rejected = mapped.rejected_count + produced.too_large.len();
    let mut reasons: Vec<(usize, String)> = mapped
        .rejected
        .iter()
        .map(|r| {
            let field = r
                .rejection
                .field
                .map(|f| format!(" ({f})"))
                .unwrap_or_default();
            (
                r.index,
                format!("{}{field}: {}", r.rejection.reason, r.rejection.detail),
            )
        })
        .chain(
            produced
                .too_large
                .iter()
                .map(|(index, detail)| (*index, format!("message_too_large: {detail}"))),
        )
        .collect();
    reasons.sort_by_key(|(index, _)| *index);
    let mut message = String::new();
    for (index, reason) in reasons.iter().take(NAMED_REJECTIONS) {
        if !message.is_empty() {
            message.push_str("; ");
        }
        let _ = write!(message, "span {index}: {reason}");
    }
    if rejected > NAMED_REJECTIONS {
        let _ = write!(message, "; and {} more", rejected - NAMED_REJECTIONS);
    }
    tracing::debug!(
        source = source.as_deref().unwrap_or(""),
        accepted = produced.accepted,
        rejected,
        skipped = mapped.skipped,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "spans acknowledged"
    );
    gw.count(produced.accepted, rejected, mapped.skipped);
    let body = otlp::response(encoding, rejected, &message);
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(encoding.content_type()),
        )],
        body,
    )
        .into_response())
}

/// The size a gzip body says it inflates to (its trailer's ISIZE), to
/// admit before inflating; 413 above `limit`. A body that lies is caught
/// while inflating.
fn gunzipped_size(body: &[u8], limit: usize) -> Result<usize, Refusal> {
    if !body.starts_with(&[0x1f, 0x8b]) {
        return Err(Refusal::bad_request(
            "the body is not valid gzip: it does not start with gzip's magic bytes",
        ));
    }
    let trailer: [u8; 4] = body
        .len()
        .checked_sub(4)
        .filter(|_| body.len() >= 18)
        .and_then(|at| body[at..].try_into().ok())
        .ok_or_else(|| Refusal::bad_request("the body is not valid gzip: it is too short"))?;
    let size = u32::from_le_bytes(trailer) as usize;
    if size > limit {
        return Err(inflated_too_large(limit));
    }
    Ok(size)
}

/// Inflate one gzip member of `size` bytes (what its trailer says, at
/// most the body limit): reading stops one byte past it.
fn gunzip(body: &[u8], size: usize) -> Result<Vec<u8>, Refusal> {
    let mut out = Vec::with_capacity(size);
    GzDecoder::new(body)
        .take(size as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Refusal::bad_request(format!("the body is not valid gzip: {e}")))?;
    if out.len() > size {
        return Err(Refusal::bad_request(
            "the gzip body inflates to more than its trailer says (send one gzip member)",
        ));
    }
    Ok(out)
}

fn inflated_too_large(limit: usize) -> Refusal {
    Refusal::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body inflates to more than {limit} bytes; export smaller batches"),
    )
}
