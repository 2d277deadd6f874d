//! The HTTP ingest gateway, for nodes that cannot embed a Kafka client and
//! for OpenTelemetry exporters.
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
//! | 200 | every valid event was acknowledged by Kafka | `{"accepted": N, "rejected": [{"index", "reason", "field"?, "detail"}], "rejected_count": M}` |
//! | 400 | no event can be read from the body (empty, or a malformed JSON array), or it holds more than 100,000 records | `{"error": ...}` |
//! | 401 | no bearer token, or an unknown one | `{"error": ...}` |
//! | 408 | the body did not arrive within `body_read_timeout` (the connection is closed) | `{"error": ...}` |
//! | 413 | the body is larger than the limit | `{"error": ...}` |
//! | 429 + `Retry-After` | too many bytes in flight, or the producer queue stayed full for 1 s | `{"error": ...}` |
//! | 431 | the request head is larger than `max_header_bytes` (the connection is closed) | empty |
//! | 503 + `Retry-After` | Kafka did not acknowledge within the delivery timeout, or (on arrival, then closed) `max_connections` are being served | `{"error": ...}` |
//!
//! Invalid events do not block valid ones: they are listed in `rejected`
//! (`index` is the position in the array, or the 0-based line number in
//! NDJSON; the first 1,000 of them, all counted in `rejected_count`) and
//! are never sent. After a 429 or 503 some events of the
//! request may have been written: resend the whole request; the aggregator
//! counts each `event_id` once.
//!
//! `POST /v1/traces` takes OpenTelemetry traces (OTLP/HTTP,
//! `application/x-protobuf` or `application/json`, optionally
//! `Content-Encoding: gzip`) with the same authentication, limits and
//! admission: each span with GenAI usage becomes one event (`event_id` =
//! trace id `-` span id, so a retried export counts once; the mapping is in
//! [`crate::otlp`] and `docs/EVENTS.md`), other spans are skipped. The
//! answer is OTLP's: 200 with an `ExportTraceServiceResponse` (its
//! `partial_success` counts the rejected spans and names the first
//! reasons) once Kafka acknowledged every event; errors carry a
//! `google.rpc.Status`, in the request's encoding; 415 for another content
//! type or encoding; 413 also when a gzip body inflates past the body
//! limit. `/v1/metrics` and `/v1/logs` answer 404, saying why.
//!
//! Memory is bounded: a request is admitted only when its body fits in
//! `max_in_flight_bytes` alongside the requests already being processed;
//! it holds that share until it is answered.
//!
//! Connections are bounded too ([`serve`]): at most `max_connections` are
//! served at once (the next ones are answered 503 and closed at once), a
//! connection that does not deliver a complete request head within
//! `header_read_timeout` of opening or of its previous response is closed
//! (slow senders and idle keep-alive connections alike), heads above
//! `max_header_bytes` get 431, and a body that has not fully arrived
//! `body_read_timeout` after its request was admitted gets 408. Pipelined
//! requests are answered one after the other, in order.
//!
//! Layout: this file holds the connection (limits, deadlines) and what
//! both routes share: authorization, admission, reading the body,
//! producing and waiting for acknowledgements, and `Refusal`, the reason
//! a request is refused, which each route writes in its own body. The
//! routes are `events.rs` and `otlp.rs`; tokens live in `auth.rs`, metrics in
//! `metrics.rs`. Over 600 lines: the connection and the request path
//! share one admission state (`Gateway`, `Slot`), which reads best in one
//! place.

mod auth;
mod events;
mod metrics;
mod otlp;

pub use auth::Tokens;
pub use events::MAX_LISTED_REJECTIONS;
pub use metrics::GatewayMetrics;
pub use tokentally_schemas::body::{BodyFormat, split};

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokentally_schemas::Limits;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit, watch};
pub use tokio_rustls::TlsAcceptor;

use crate::emitter::{EmitError, Emitter, NotReady, PendingDelivery};

/// How long a request may wait for room among the bytes in flight.
const ADMISSION_WAIT: Duration = Duration::from_secs(1);
/// How long an event may wait for room in the producer queue (the
/// emitter's [`Emitter::wait_for_room`]) before the request is answered 429.
const QUEUE_FULL_WAIT: Duration = Duration::from_secs(1);
/// `Retry-After` of a 429, in seconds.
const RETRY_AFTER_BUSY_S: u64 = 1;
/// `Retry-After` of a 503, in seconds.
const RETRY_AFTER_UNAVAILABLE_S: u64 = 5;
/// The read buffer of a connection grows up to this size (or to
/// `max_header_bytes` if larger), whatever hyper's default (~400 KB): with
/// `max_connections` connections this bounds what they buffer.
const MAX_READ_BUFFER: usize = 64 << 10;
/// Connections the kernel holds until they are accepted. Rust's default
/// (128) overflows under a burst of new connections, and each overflow
/// costs its client a SYN retransmission (1 s); the kernel caps it at
/// `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 1024;
/// The answer to a connection beyond `max_connections`, written (if the
/// socket takes it at once) just before closing it.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 46\r\n\
\r\n\
{\"error\":\"too many connections; retry later\"}\n";

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Largest accepted request body, in bytes (413 beyond it).
    pub max_body_bytes: usize,
    /// Request bytes held at once by all requests being processed.
    pub max_in_flight_bytes: usize,
    /// How long a connection may take to deliver a complete request head,
    /// counted from its acceptance or from its previous response; it is
    /// closed after that. This is also the keep-alive idle timeout.
    pub header_read_timeout: Duration,
    /// How long the body of an admitted request may take to arrive in full
    /// (408 after).
    pub body_read_timeout: Duration,
    /// Largest request head (request line and headers), in bytes (431
    /// beyond).
    pub max_header_bytes: usize,
    /// Connections served at once; the next ones are closed at once.
    pub max_connections: u32,
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
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(60),
            max_header_bytes: 32 << 10,
            max_connections: 1024,
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
        .route("/v1/events", post(events::post))
        .route("/v1/traces", post(otlp::post))
        .route("/v1/metrics", post(otlp::not_counted))
        .route("/v1/logs", post(otlp::not_counted))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state);
    match metrics {
        Some(m) => router.layer(middleware::from_fn_with_state(m, metrics::count_status)),
        None => router,
    }
}

/// A listener on `addr` for [`serve`], with room for bursts of new
/// connections.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: restarting must not wait for the old
    // connections' TIME_WAIT (on Windows it would let others take the port).
    #[cfg(not(windows))]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serve on `listener` until `shutdown` resolves, then finish the requests
/// in flight and wait for their events' acknowledgements.
///
/// HTTP/1.1 with the connection bounds of [`GatewayConfig`] (`axum::serve`
/// cannot set them): at most `max_connections` at once, each closed when
/// it does not deliver a request head within `header_read_timeout`, heads
/// of at most `max_header_bytes`. With `tls`, HTTPS: the handshake too
/// must finish within `header_read_timeout`.
pub async fn serve(
    listener: TcpListener,
    emitter: Emitter,
    auth: Auth,
    config: GatewayConfig,
    metrics: Option<GatewayMetrics>,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let max_connections = config.max_connections;
    let handshake_timeout = config.header_read_timeout;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_header_size(config.max_header_bytes)
        .max_buf_size(config.max_header_bytes.max(MAX_READ_BUFFER));
    let service = TowerToHyperService::new(router(emitter, auth, config, metrics.clone()));
    let slots = Arc::new(Semaphore::new(max_connections as usize));
    // Dropped on shutdown: every connection then finishes its request in
    // flight and closes.
    let (stop, stopped) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refuse(&stream);
            if let Some(m) = &metrics {
                m.connections_refused.inc();
            }
            continue;
        };
        // Responses are written whole; waiting to coalesce them (Nagle)
        // only delays pipelined ones.
        let _ = stream.set_nodelay(true);
        let slot = Slot::new(permit, metrics.as_ref());
        let (http, service, stopped, tls) =
            (http.clone(), service.clone(), stopped.clone(), tls.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let result = match tls {
                None => serve_connection(&http, stream, service, stopped).await,
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_connection(&http, stream, service, stopped).await,
                        Ok(Err(e)) => {
                            // Scanners, plain HTTP at the TLS port, clients
                            // that do not trust the certificate.
                            tracing::debug!(error = %e, "TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = result {
                // Slow or idle clients, oversized heads and broken
                // connections: expected under abuse, so not warnings.
                tracing::debug!(error = %e, "connection closed");
            }
        });
    }
    drop(listener);
    drop(stop);
    // Every slot back: every connection has closed.
    let _all = slots.acquire_many(max_connections).await;
    Ok(())
}

/// One connection, plain or TLS, until it closes or, after `stopped`
/// fires, its request in flight is answered.
async fn serve_connection<I>(
    http: &hyper::server::conn::http1::Builder,
    io: I,
    service: TowerToHyperService<Router>,
    mut stopped: watch::Receiver<()>,
) -> hyper::Result<()>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connection = http.serve_connection(TokioIo::new(io), service);
    let mut connection = pin!(connection);
    tokio::select! {
        result = connection.as_mut() => result,
        _ = stopped.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    }
}

/// A served connection's place among `max_connections`, counted in the
/// open-connections gauge while it lasts.
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: Option<prometheus::IntGauge>,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, metrics: Option<&GatewayMetrics>) -> Slot {
        let open = metrics.map(|m| m.connections_open.clone());
        if let Some(g) = &open {
            g.inc();
        }
        Slot {
            _permit: permit,
            open,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(g) = &self.open {
            g.dec();
        }
    }
}

/// Close a connection beyond `max_connections` at once, telling the client
/// why if its socket takes the answer without waiting (never waits: this
/// must stay cheap under a flood of connections).
fn refuse(stream: &TcpStream) {
    let _ = stream.try_write(TOO_MANY_CONNECTIONS);
}

/// After a failed `accept`: a connection that died in the backlog is
/// nothing; out of file descriptors or memory, pause instead of spinning
/// (connections wait in the backlog meanwhile).
async fn accept_failed(e: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %e, "accepting a connection failed; retrying in 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn kib(bytes: usize) -> u32 {
    bytes.div_ceil(1024).min(u32::MAX as usize) as u32
}

/// Why a request is answered without producing (or after failing to): the
/// status, a message for the client, and how to answer. Each route writes
/// it in its own body: `{"error": ...}` for `/v1/events`, a
/// `google.rpc.Status` for OTLP.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
    retry_after_s: Option<u64>,
    /// The rest of the body may still come: do not read it as the next
    /// request.
    close: bool,
    /// Ask for a bearer token (`WWW-Authenticate`).
    authenticate: bool,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
            retry_after_s: None,
            close: false,
            authenticate: false,
        }
    }

    fn bad_request(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::BAD_REQUEST, message)
    }

    fn unauthorized() -> Refusal {
        Refusal {
            authenticate: true,
            ..Refusal::new(
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is required (Authorization: Bearer TOKEN)",
            )
        }
    }

    fn too_large(limit: usize) -> Refusal {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {limit} bytes; split it into smaller requests"),
        )
    }

    /// 429: retry in a second.
    fn busy(message: impl Into<String>) -> Refusal {
        Refusal {
            retry_after_s: Some(RETRY_AFTER_BUSY_S),
            ..Refusal::new(StatusCode::TOO_MANY_REQUESTS, message)
        }
    }

    /// 503: retry in a few seconds.
    fn unavailable(message: impl Into<String>) -> Refusal {
        Refusal {
            retry_after_s: Some(RETRY_AFTER_UNAVAILABLE_S),
            ..Refusal::new(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }

    /// The answer, with `body` of `content_type`.
    fn respond(self, content_type: &'static str, body: Vec<u8>) -> Response {
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            body,
        )
            .into_response();
        let headers = response.headers_mut();
        if let Some(after) = self.retry_after_s {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(after));
        }
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.authenticate {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tokentally\""),
            );
        }
        response
    }
}

/// What [`Gateway::produce`] did with a request's valid events.
struct Produced {
    /// Events acknowledged by Kafka.
    accepted: usize,
    /// Events larger than the broker takes in one message: their index and
    /// the detail of their `message_too_large` rejection (the rest are
    /// still sent).
    too_large: Vec<(usize, String)>,
}

impl Gateway {
    /// The name of the caller's token (`None` without authentication).
    fn authorize(&self, headers: &HeaderMap) -> Result<Option<String>, Refusal> {
        match &self.auth {
            Auth::Disabled => Ok(None),
            Auth::Tokens(tokens) => {
                let given = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
                tokens
                    .authorize(given)
                    .map(|name| Some(name.to_owned()))
                    .ok_or_else(Refusal::unauthorized)
            }
        }
    }

    /// Room for `bytes` among the bytes in flight, held until the permit
    /// drops; 429 when none frees up within [`ADMISSION_WAIT`].
    async fn admit(&self, bytes: usize) -> Result<SemaphorePermit<'_>, Refusal> {
        let share = kib(bytes).clamp(1, self.admission_kib);
        match tokio::time::timeout(ADMISSION_WAIT, self.admission.acquire_many(share)).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Refusal::busy("too many bytes in flight; retry later")),
        }
    }

    /// Admit `request` by its declared length (without one, the largest
    /// body) and read its body within `body_read_timeout`; the permit
    /// holds its share until the request is answered.
    async fn receive(&self, request: Request) -> Result<(Bytes, SemaphorePermit<'_>), Refusal> {
        let max_body = self.config.max_body_bytes;
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if declared.is_some_and(|n| n > max_body) {
            return Err(Refusal::too_large(max_body));
        }
        let permit = self.admit(declared.unwrap_or(max_body)).await?;
        let read = tokio::time::timeout(
            self.config.body_read_timeout,
            Bytes::from_request(request, &()),
        );
        match read.await {
            Err(_) => Err(Refusal {
                close: true,
                ..Refusal::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the body did not arrive within {:?}; send it faster or in smaller requests",
                        self.config.body_read_timeout
                    ),
                )
            }),
            Ok(Ok(body)) => Ok((body, permit)),
            Ok(Err(rejection)) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(Refusal::too_large(max_body))
            }
            Ok(Err(rejection)) => Err(Refusal::new(rejection.status(), rejection.body_text())),
        }
    }

    /// Send valid events (index in the request, contract JSON, `event_id`)
    /// with the caller's `source`, and wait until Kafka acknowledged every
    /// one: 429 when the producer queue stays full, 503 when Kafka fails
    /// or does not acknowledge in time (some events may have been written
    /// then; a resend counts each `event_id` once).
    async fn produce(
        &self,
        events: &[(usize, &[u8], &str)],
        source: Option<&str>,
    ) -> Result<Produced, Refusal> {
        let mut pending: Vec<PendingDelivery> = Vec::with_capacity(events.len());
        let mut too_large = Vec::new();
        for &(index, json, event_id) in events {
            let queued = self
                .emitter
                .wait_for_room(QUEUE_FULL_WAIT, |e| e.enqueue_valid(json, event_id, source))
                .await;
            match queued {
                Ok(delivery) => pending.push(delivery),
                Err(EmitError::QueueFull) => {
                    tracing::warn!(
                        queued = pending.len(),
                        "the producer queue is full; answering 429"
                    );
                    return Err(Refusal::busy(
                        "the Kafka producer queue is full; retry later (events of this \
                         request may have been sent: resending them is safe)",
                    ));
                }
                Err(EmitError::Kafka(KafkaError::MessageProduction(
                    RDKafkaErrorCode::MessageSizeTooLarge,
                ))) => too_large.push((
                    index,
                    format!(
                        "the event is {} bytes, more than the broker accepts in one message",
                        json.len()
                    ),
                )),
                Err(e) => {
                    tracing::warn!(error = %e, "producing failed; answering 503");
                    return Err(Refusal::unavailable(format!("{e}; retry later")));
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
                source = source.unwrap_or(""),
                failed,
                accepted,
                error = %e,
                "events not acknowledged by Kafka; answering 503"
            );
            return Err(Refusal::unavailable(format!(
                "{failed} of {accepted} events were not acknowledged by Kafka: {e}; \
                 resend the request later (resending is safe)"
            )));
        }
        Ok(Produced {
            accepted,
            too_large,
        })
    }

    /// Count a request's events in the metrics.
    fn count(&self, accepted: usize, rejected: usize, skipped: usize) {
        if let Some(m) = &self.metrics {
            for (outcome, n) in [
                ("accepted", accepted),
                ("rejected", rejected),
                ("skipped", skipped),
            ] {
                if n > 0 {
                    m.events.with_label_values(&[outcome]).inc_by(n as u64);
                }
            }
        }
    }
}

async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    let timeout = gw.config.readiness_timeout;
    let check = tokio::task::spawn_blocking(move || {
        gw.emitter.check_topics(&[gw.emitter.topic()], timeout)
    })
    .await;
    match check {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => not_ready(&e),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

fn not_ready(e: &NotReady) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_too_many_connections_answer_is_well_framed() {
        let text = std::str::from_utf8(TOO_MANY_CONNECTIONS).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len());
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("too many connections")
        );
    }
}
