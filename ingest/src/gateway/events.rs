//! `POST /v1/events`: events of the contract, as JSON or NDJSON.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokentally_schemas::body::{BodyFormat, split};
use tokentally_schemas::decode;

use super::{Gateway, Refusal};

#[derive(Debug, Serialize)]
struct Accepted {
    accepted: usize,
    /// The first [`MAX_LISTED_REJECTIONS`] invalid events, in body order.
    rejected: Vec<Rejected>,
    /// Every invalid event, listed or not.
    rejected_count: usize,
}

/// Invalid events listed in one answer, with their reasons. A body of
/// millions of tiny invalid records must not become an answer (and a
/// memory peak) of hundreds of megabytes; the rest are only counted.
pub const MAX_LISTED_REJECTIONS: usize = 1_000;

#[derive(Debug, Serialize)]
struct Rejected {
    index: usize,
    /// A reason of the contract (`docs/EVENTS.md`), or `message_too_large`
    /// when a valid event exceeds the broker's message size.
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'static str>,
    detail: String,
}

/// `{"error": message}`.
fn refuse(r: Refusal) -> Response {
    let body = serde_json::json!({ "error": r.message }).to_string();
    r.respond("application/json", body.into_bytes())
}

pub(super) async fn post(State(gw): State<Arc<Gateway>>, request: Request) -> Response {
    match accept(&gw, request).await {
        Ok(response) => response,
        Err(refusal) => refuse(refusal),
    }
}

async fn accept(gw: &Gateway, request: Request) -> Result<Response, Refusal> {
    let started = Instant::now();
    let source = gw.authorize(request.headers())?;
    let format = BodyFormat::from_content_type(
        request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    let (body, _permit) = gw.receive(request).await?;
    let records = split(&body, format).map_err(Refusal::bad_request)?;

    let mut rejected = Vec::new();
    let mut rejected_count = 0;
    let mut reject = |r: Rejected| {
        rejected_count += 1;
        if rejected.len() < MAX_LISTED_REJECTIONS {
            rejected.push(r);
        }
    };
    let mut valid = Vec::with_capacity(records.len());
    for (index, raw) in records {
        match decode(raw, &gw.config.limits) {
            Ok(event) => valid.push((index, raw, event.event_id)),
            Err(r) => reject(Rejected {
                index,
                reason: r.reason.as_str(),
                field: r.field,
                detail: r.detail,
            }),
        }
    }
    let valid: Vec<_> = valid
        .iter()
        .map(|(i, raw, id)| (*i, *raw, id.as_ref()))
        .collect();
    let produced = gw.produce(&valid, source.as_deref()).await?;
    for (index, detail) in produced.too_large {
        reject(Rejected {
            index,
            reason: "message_too_large",
            field: None,
            detail,
        });
    }
    rejected.sort_by_key(|r| r.index);
    let accepted = produced.accepted;
    tracing::debug!(
        source = source.as_deref().unwrap_or(""),
        accepted,
        rejected = rejected_count,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "events acknowledged"
    );
    gw.count(accepted, rejected_count, 0);
    Ok(axum::Json(Accepted {
        accepted,
        rejected,
        rejected_count,
    })
    .into_response())
}
