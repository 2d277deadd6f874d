//! The HTTP ingest gateway, for nodes that cannot embed a Kafka client.
//!
//! `POST /v1/events` takes one JSON event, a JSON array of events, or NDJSON
//! (`Content-Type: application/x-ndjson`). Each event is validated with the
//! contract's decoder; the valid ones are produced to the events topic
//! through an [`Emitter`] (key = `event_id`, header `source` = the name of
//! the caller's token), and the answer comes only once Kafka acknowledged
//! every one of them:
//!
//! | status | when | body |
//! |---|---|---|
//! | 200 | every valid event was acknowledged by Kafka | `{"accepted": N, "rejected": [{"index", "reason", "field"?, "detail"}]}` |
//! | 400 | no event can be read from the body (empty, or a malformed JSON array) | `{"error": ...}` |
//! | 401 | no bearer token, or an unknown one | `{"error": ...}` |
//! | 413 | the body is larger than the limit | `{"error": ...}` |
//! | 429 + `Retry-After` | too many bytes in flight, or the producer queue stayed full | `{"error": ...}` |
//! | 503 + `Retry-After` | Kafka did not acknowledge within the delivery timeout | `{"error": ...}` |
//!
//! Invalid events do not block valid ones: they are listed in `rejected`
//! (`index` is the position in the array, or the 0-based line number in
//! NDJSON) and are never sent. After a 429 or 503 some events of the
//! request may have been written: resend the whole request; the aggregator
//! counts each `event_id` once.
//!
//! Memory is bounded: a request is admitted only when its body fits in
//! `max_in_flight_bytes` alongside the requests already being processed;
//! it holds that share until it is answered.

mod auth;
mod body;

pub use auth::Tokens;
pub use body::{BodyFormat, split};

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde::Serialize;
use tokentally_schemas::{Limits, decode};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::emitter::{EmitError, Emitter, NotReady, PendingDelivery};

/// How long a request may wait for room among the bytes in flight.
const ADMISSION_WAIT: Duration = Duration::from_secs(1);
/// How long a request may wait for room in the producer queue.
const QUEUE_FULL_WAIT: Duration = Duration::from_secs(1);
/// `Retry-After` of a 429, in seconds.
const RETRY_AFTER_BUSY_S: u64 = 1;
/// `Retry-After` of a 503, in seconds.
const RETRY_AFTER_UNAVAILABLE_S: u64 = 5;

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Largest accepted request body, in bytes (413 beyond it).
    pub max_body_bytes: usize,
    /// Request bytes held at once by all requests being processed.
    pub max_in_flight_bytes: usize,
    /// Validation bounds (the aggregator's `[aggregate.limits]`).
    pub limits: Limits,
    /// How long `/readyz` waits for the broker's metadata.
    pub readiness_timeout: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_body_bytes: 10 << 20,
            max_in_flight_bytes: 64 << 20,
            limits: Limits::default(),
            readiness_timeout: Duration::from_secs(2),
        }
    }
}

/// Who may post.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Only holders of these bearer tokens; the token's name is the source.
    Tokens(Tokens),
    /// Anyone (`--no-auth`); events carry no source.
    Disabled,
}

/// Prometheus metrics of the gateway.
#[derive(Clone)]
pub struct GatewayMetrics {
    pub requests: prometheus::IntCounterVec,
    pub events: prometheus::IntCounterVec,
}

impl GatewayMetrics {
    pub fn register(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let m = GatewayMetrics {
            requests: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "tokentally_gateway_requests_total",
                    "HTTP requests answered, by status code.",
                ),
                &["status"],
            )?,
            events: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "tokentally_gateway_events_total",
                    "Events in answered requests: accepted (acknowledged by Kafka) or rejected (invalid).",
                ),
                &["outcome"],
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.events.clone()))?;
        for outcome in ["accepted", "rejected"] {
            m.events.with_label_values(&[outcome]);
        }
        Ok(m)
    }
}

async fn count_status(State(m): State<GatewayMetrics>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    m.requests
        .with_label_values(&[response.status().as_str()])
        .inc();
    response
}

struct Gateway {
    metrics: Option<GatewayMetrics>,
    emitter: Emitter,
    auth: Auth,
    config: GatewayConfig,
    /// Kibibytes of request bodies in flight.
    admission: Semaphore,
    admission_kib: u32,
}

/// The gateway's routes, serving with `emitter`.
pub fn router(
    emitter: Emitter,
    auth: Auth,
    config: GatewayConfig,
    metrics: Option<GatewayMetrics>,
) -> Router {
    let admission_kib = kib(config.max_in_flight_bytes.max(config.max_body_bytes));
    let max_body = config.max_body_bytes;
    let state = Arc::new(Gateway {
        metrics: metrics.clone(),
        emitter,
        auth,
        admission: Semaphore::new(admission_kib as usize),
        admission_kib,
        config,
    });
    let router = Router::new()
        .route("/v1/events", post(post_events))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state);
    match metrics {
        Some(m) => router.layer(middleware::from_fn_with_state(m, count_status)),
        None => router,
    }
}

/// Serve on `listener` until `shutdown` resolves, then finish the requests
/// in flight and wait for their events' acknowledgements.
pub async fn serve(
    listener: TcpListener,
    emitter: Emitter,
    auth: Auth,
    config: GatewayConfig,
    metrics: Option<GatewayMetrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(emitter, auth, config, metrics))
        .with_graceful_shutdown(shutdown)
        .await
}

fn kib(bytes: usize) -> u32 {
    bytes.div_ceil(1024).min(u32::MAX as usize) as u32
}

#[derive(Debug, Serialize)]
struct Accepted {
    accepted: usize,
    rejected: Vec<Rejected>,
}

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

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": message.into() })),
    )
        .into_response()
}

fn retry_later(status: StatusCode, after_s: u64, message: impl Into<String>) -> Response {
    let mut response = error(status, message);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(after_s));
    response
}

fn unauthorized() -> Response {
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "a valid bearer token is required (Authorization: Bearer TOKEN)",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"tokentally\""),
    );
    response
}

fn too_large(limit: usize) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is larger than {limit} bytes; split it into smaller requests"),
    )
}

async fn post_events(State(gw): State<Arc<Gateway>>, request: Request) -> Response {
    let started = Instant::now();
    let headers = request.headers();
    let source = match &gw.auth {
        Auth::Disabled => None,
        Auth::Tokens(tokens) => {
            let given = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
            match tokens.authorize(given) {
                Some(name) => Some(name.to_owned()),
                None => return unauthorized(),
            }
        }
    };
    let max_body = gw.config.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return too_large(max_body);
    }
    let format = BodyFormat::from_content_type(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );

    // Admission: hold this request's share of the bytes in flight until it
    // is answered (without a Content-Length, assume the largest body).
    let share = kib(declared.unwrap_or(max_body)).clamp(1, gw.admission_kib);
    let _permit = match tokio::time::timeout(ADMISSION_WAIT, gw.admission.acquire_many(share)).await
    {
        Ok(Ok(permit)) => permit,
        _ => {
            return retry_later(
                StatusCode::TOO_MANY_REQUESTS,
                RETRY_AFTER_BUSY_S,
                "too many bytes in flight; retry later",
            );
        }
    };

    let body = match Bytes::from_request(request, &()).await {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return too_large(max_body);
        }
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    let records = match split(&body, format) {
        Ok(records) => records,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };

    let mut rejected = Vec::new();
    let mut pending: Vec<PendingDelivery> = Vec::with_capacity(records.len());
    for (index, raw) in records {
        let event = match decode(raw, &gw.config.limits) {
            Ok(event) => event,
            Err(r) => {
                rejected.push(Rejected {
                    index,
                    reason: r.reason.as_str(),
                    field: r.field,
                    detail: r.detail,
                });
                continue;
            }
        };
        let queued_at = Instant::now();
        loop {
            match gw
                .emitter
                .enqueue_valid(raw, &event.event_id, source.as_deref())
            {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err(EmitError::QueueFull) if queued_at.elapsed() < QUEUE_FULL_WAIT => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(EmitError::QueueFull) => {
                    tracing::warn!(
                        queued = pending.len(),
                        "the producer queue is full; answering 429"
                    );
                    return retry_later(
                        StatusCode::TOO_MANY_REQUESTS,
                        RETRY_AFTER_BUSY_S,
                        "the Kafka producer queue is full; retry later (events of this \
                         request may have been sent: resending them is safe)",
                    );
                }
                Err(EmitError::Kafka(KafkaError::MessageProduction(
                    RDKafkaErrorCode::MessageSizeTooLarge,
                ))) => {
                    rejected.push(Rejected {
                        index,
                        reason: "message_too_large",
                        field: None,
                        detail: format!(
                            "the event is {} bytes, more than the broker accepts in one message",
                            raw.len()
                        ),
                    });
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "producing failed; answering 503");
                    return retry_later(
                        StatusCode::SERVICE_UNAVAILABLE,
                        RETRY_AFTER_UNAVAILABLE_S,
                        format!("{e}; retry later"),
                    );
                }
            }
        }
    }

    let accepted = pending.len();
    let mut failed = 0usize;
    let mut first_error = None;
    for delivery in pending {
        if let Err(e) = delivery.await {
            failed += 1;
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        tracing::warn!(
            source = source.as_deref().unwrap_or(""),
            failed,
            accepted,
            error = %e,
            "events not acknowledged by Kafka; answering 503"
        );
        return retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            RETRY_AFTER_UNAVAILABLE_S,
            format!(
                "{failed} of {accepted} events were not acknowledged by Kafka: {e}; \
                 resend the request later (resending is safe)"
            ),
        );
    }
    tracing::debug!(
        source = source.as_deref().unwrap_or(""),
        accepted,
        rejected = rejected.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "events acknowledged"
    );
    if let Some(m) = &gw.metrics {
        m.events
            .with_label_values(&["accepted"])
            .inc_by(accepted as u64);
        m.events
            .with_label_values(&["rejected"])
            .inc_by(rejected.len() as u64);
    }
    axum::Json(Accepted { accepted, rejected }).into_response()
}

async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    let timeout = gw.config.readiness_timeout;
    let check = tokio::task::spawn_blocking(move || gw.emitter.check_topic(timeout)).await;
    match check {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => not_ready(&e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn not_ready(e: &NotReady) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response()
}
