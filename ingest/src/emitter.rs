//! The emitter: what an inference node embeds to send its token events to
//! Kafka.
//!
//! Every event is validated against the contract (`docs/EVENTS.md`) with
//! the same decoder the aggregator uses, so a node learns about a bad event
//! at once, with the reason, instead of finding it in the dead-letter topic
//! later. Valid events are produced with the settings of
//! [`KafkaConfig::producer`]: idempotent, `acks=all`, LZ4, batched
//! (`linger.ms`), a bounded local queue, and a delivery deadline
//! (`[kafka] delivery_timeout`). The message key is the `event_id`
//! ([`event_key`]): a retried event lands on the partition that counted it,
//! and a hot model spreads over every partition.
//!
//! Sending is two steps, which [`Emitter::send_json`] does in one:
//! [`Emitter::enqueue_json`] validates and hands the event to the local
//! queue without waiting (cheap enough for a request path), and the
//! returned [`PendingDelivery`] resolves once the broker acknowledged it —
//! or with [`EmitError::Unacknowledged`] when it could not within the
//! delivery timeout.
//!
//! The emitter is tokentally's one Kafka producer. Besides nodes it serves
//! the HTTP gateway (validated events, with the caller's `source`),
//! `tokentally produce` and `simulate --kafka`, which send lines as they
//! are so that invalid ones reach the aggregator's dead-letter path, and
//! the aggregator's dead-letter mirror (refused records with their reason
//! in headers): the last two through [`Emitter::enqueue_raw`], which
//! queues a record without validating it.
//!
//! **A full local queue** (the broker is slower than the sender, or
//! unreachable) has one policy, [`Emitter::wait_for_room`]: retry after
//! 1 ms, doubling to 50 ms with jitter (a [`RetryPolicy`]), until the
//! record is queued or the caller's wait has passed since the first
//! attempt; then [`EmitError::QueueFull`]. The `enqueue*` methods and
//! `send*` never wait (a wait of zero): they fail at once with `QueueFull`.
//! The callers' waits: the gateway 1 s (then 429), `produce` and `simulate`
//! the delivery timeout and 5 s (by then every queued record has been
//! acknowledged or has expired, so a queue still full is a stuck producer:
//! they fail), and the dead-letter mirror none (it runs in the
//! aggregator's commit callback, which must not wait; it is best-effort and
//! logs what it drops).
//!
//! Whether topics exist is checked in one place too,
//! [`Emitter::check_topics`]: by the gateway at start and on `/readyz`,
//! and by the aggregator at start.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokentally_common::retry::{RetryPolicy, Retryable, Verdict};
use tokentally_schemas::{Limits, Rejection, TokenEvent, decode};

use crate::kafka::{ErrorLog, KafkaConfig, SettingsError, event_key};

/// Kafka message header naming who sent an event (the gateway writes the
/// name of the caller's token there).
pub const SOURCE_HEADER: &str = "source";

/// The first pause of [`Emitter::wait_for_room`]; it doubles after each
/// attempt that finds the queue full, up to [`QUEUE_FULL_MAX_PAUSE`].
const QUEUE_FULL_FIRST_PAUSE: Duration = Duration::from_millis(1);
/// The longest pause of [`Emitter::wait_for_room`]: a queue that has room
/// again is used within this.
const QUEUE_FULL_MAX_PAUSE: Duration = Duration::from_millis(50);

/// Why an event was not (or may not have been) delivered.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    /// The event breaks the contract; it was not sent. Sending it again
    /// will not help.
    #[error("invalid event ({}): {}", .0.reason, .0.detail)]
    Invalid(Rejection),
    /// The local producer queue is full (the broker is slower than the
    /// sender, or unreachable), and stayed full for the caller's wait
    /// ([`Emitter::wait_for_room`]). Nothing was sent; retry after a pause.
    #[error("the local Kafka producer queue is full; retry later")]
    QueueFull,
    /// The broker did not acknowledge the event within the delivery
    /// timeout. It may or may not have been written: resending it is safe,
    /// because the aggregator counts an `event_id` once.
    #[error(
        "Kafka broker unreachable for longer than {timeout:?} (the delivery timeout): the event was not acknowledged"
    )]
    Unacknowledged { timeout: Duration },
    /// The producer was closed before the event was acknowledged.
    #[error("the Kafka producer was closed before the event was acknowledged")]
    Closed,
    /// `[kafka]` does not give a usable connection (a missing password, a
    /// refused property).
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// Any other Kafka error (configuration, a broker refusing the topic, …).
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
}

impl EmitError {
    /// The contract violation, for [`EmitError::Invalid`].
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            EmitError::Invalid(r) => Some(r),
            _ => None,
        }
    }
}

/// Where Kafka stored an acknowledged event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// Sends validated token events (or, with [`Emitter::enqueue_raw`], records
/// as they are) to one topic, the events topic of its [`KafkaConfig`].
/// Cheap to share: all methods take `&self` (wrap it in an `Arc` to share
/// it between tasks).
///
/// ```no_run
/// use tokentally_ingest::emitter::{EmitError, Emitter};
/// use tokentally_ingest::kafka::KafkaConfig;
///
/// # async fn node() -> Result<(), EmitError> {
/// let config = KafkaConfig {
///     brokers: "127.0.0.1:39092".into(),
///     ..KafkaConfig::default()
/// };
/// let emitter = Emitter::new(&config)?.with_source("node-17");
/// let event = br#"{"event_id":"node-17-000000a1","ts":1795737600000,
///     "model":"qwen/qwen3.6-plus","provider":"alibaba",
///     "prompt_tokens":5210,"completion_tokens":830}"#;
/// match emitter.send_json(event).await {
///     Ok(delivered) => println!("stored at partition {}", delivered.partition),
///     Err(EmitError::Invalid(rejection)) => eprintln!("bug in the node: {rejection}"),
///     Err(e) => eprintln!("not delivered, keep it and retry: {e}"),
/// }
/// // Before the node exits: wait for everything still queued.
/// emitter.flush(std::time::Duration::from_secs(10))?;
/// # Ok(())
/// # }
/// ```
pub struct Emitter {
    producer: FutureProducer<ErrorLog>,
    errors: ErrorLog,
    topic: String,
    limits: Limits,
    delivery_timeout: Duration,
    source: Option<String>,
}

impl Emitter {
    /// A producer for `config.topic` at `config.brokers`, with the
    /// contract's default [`Limits`]. Connecting happens in the background:
    /// this does not fail when the broker is down (sends then time out).
    pub fn new(config: &KafkaConfig) -> Result<Self, EmitError> {
        let errors = ErrorLog::default();
        Ok(Emitter {
            producer: config.producer()?.create_with_context(errors.clone())?,
            errors,
            topic: config.topic.clone(),
            limits: Limits::default(),
            delivery_timeout: config.delivery_timeout,
            source: None,
        })
    }

    /// Validate with these bounds (use the aggregator's, `[aggregate.limits]`).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Record `name` as the source of every event, in the `source` header.
    pub fn with_source(mut self, name: impl Into<String>) -> Self {
        self.source = Some(name.into());
        self
    }

    /// The topic it sends to (`config.topic`).
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Validate and send one event, and wait for the broker's acknowledgement.
    pub async fn send(&self, event: &TokenEvent<'_>) -> Result<Delivered, EmitError> {
        self.enqueue(event)?.await
    }

    /// Validate and send one raw JSON event, and wait for the broker's
    /// acknowledgement. The bytes are sent as they are.
    pub async fn send_json(&self, json: &[u8]) -> Result<Delivered, EmitError> {
        self.enqueue_json(json)?.await
    }

    /// Validate one event and queue it without waiting; await the result
    /// to learn whether the broker acknowledged it.
    pub fn enqueue(&self, event: &TokenEvent<'_>) -> Result<PendingDelivery, EmitError> {
        let json = serde_json::to_vec(event).expect("a TokenEvent always serializes");
        self.enqueue_json(&json)
    }

    /// Validate one raw JSON event and queue it without waiting. Fails at
    /// once with [`EmitError::Invalid`] or [`EmitError::QueueFull`]; the
    /// returned future resolves when the broker acknowledged the event.
    pub fn enqueue_json(&self, json: &[u8]) -> Result<PendingDelivery, EmitError> {
        self.enqueue_json_from(json, self.source.as_deref())
    }

    /// [`Emitter::enqueue_json`] with a per-event source name.
    pub fn enqueue_json_from(
        &self,
        json: &[u8],
        source: Option<&str>,
    ) -> Result<PendingDelivery, EmitError> {
        let key = match decode(json, &self.limits) {
            Ok(event) => event.event_id.into_owned(),
            Err(rejection) => return Err(EmitError::Invalid(rejection)),
        };
        self.enqueue_valid(json, &key, source)
    }

    /// Queue an event that has already been validated, with its key.
    pub(crate) fn enqueue_valid(
        &self,
        json: &[u8],
        key: &str,
        source: Option<&str>,
    ) -> Result<PendingDelivery, EmitError> {
        debug_assert_eq!(event_key(json).as_deref(), Some(key));
        let source = source.map(|name| (SOURCE_HEADER, Some(name)));
        self.enqueue_raw(json, Some(key), source.as_slice())
    }

    /// Queue one record as it is, without validating it and without
    /// waiting: `payload`, `key` (without one the partitioner spreads
    /// records) and `headers` (name and value; `None` is a null value), in
    /// this order, and nothing else (not the emitter's source). For records
    /// that must reach the topic whatever they hold: lines replayed by
    /// `produce`, refused records mirrored to the dead-letter topic. Header
    /// values go out as ASCII ([`ascii_header`]). Fails at once with
    /// [`EmitError::QueueFull`]; the returned future resolves when the
    /// broker acknowledged the record.
    pub fn enqueue_raw(
        &self,
        payload: &[u8],
        key: Option<&str>,
        headers: &[(&str, Option<&str>)],
    ) -> Result<PendingDelivery, EmitError> {
        let mut record = FutureRecord::<str, [u8]>::to(&self.topic).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        if !headers.is_empty() {
            let values: Vec<Option<Cow<'_, str>>> =
                headers.iter().map(|(_, v)| v.map(ascii_header)).collect();
            let headers = headers.iter().zip(&values).fold(
                OwnedHeaders::new_with_capacity(headers.len()),
                |h, (&(key, _), value)| {
                    h.insert(Header {
                        key,
                        value: value.as_deref(),
                    })
                },
            );
            record = record.headers(headers);
        }
        match self.producer.send_result(record) {
            Ok(inner) => Ok(PendingDelivery {
                inner,
                timeout: self.delivery_timeout,
            }),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(EmitError::QueueFull)
            }
            Err((e, _)) => Err(EmitError::Kafka(e)),
        }
    }

    /// The queue-full policy (see the module documentation): run `enqueue`
    /// (one of the `enqueue*` methods) until it queues the record, pausing
    /// while it fails with [`EmitError::QueueFull`] — 1 ms, doubling to
    /// 50 ms, jittered — for at most `wait` after the first attempt (a
    /// pause may end up to 50 ms past it); then `QueueFull`. Other errors
    /// are returned at once; a `wait` of zero is a single attempt.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use tokentally_ingest::emitter::{EmitError, Emitter};
    /// # async fn node(emitter: &Emitter, line: &[u8]) -> Result<(), EmitError> {
    /// let pending = emitter
    ///     .wait_for_room(Duration::from_secs(1), |e| e.enqueue_json(line))
    ///     .await?;
    /// pending.await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait_for_room(
        &self,
        wait: Duration,
        mut enqueue: impl FnMut(&Self) -> Result<PendingDelivery, EmitError>,
    ) -> Result<PendingDelivery, EmitError> {
        let policy = RetryPolicy {
            first: QUEUE_FULL_FIRST_PAUSE,
            max: QUEUE_FULL_MAX_PAUSE,
            give_up_after: wait,
        };
        policy
            .run(
                |_| std::future::ready(enqueue(self).map_err(Attempt)),
                |_, _, _| {},
            )
            .await
            .map_err(|gave_up| gave_up.into_inner().0)
    }

    /// Wait until every queued event is acknowledged or `timeout` passes.
    /// Blocking: from async code, call it in `spawn_blocking`.
    pub fn flush(&self, timeout: Duration) -> Result<(), EmitError> {
        self.producer.flush(timeout).map_err(|e| match e {
            KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut) => {
                EmitError::Unacknowledged { timeout }
            }
            e => EmitError::Kafka(e),
        })
    }

    /// Ask the broker, on this emitter's connection, for the metadata of
    /// each of `topics`, waiting at most `timeout` for each: `Ok` when it
    /// answered and every one exists. The one topic check: the gateway
    /// checks its events topic at start and on `/readyz`, the aggregator
    /// the events and dead-letter topics at start.
    /// Blocking: from async code, call it in `spawn_blocking`.
    pub fn check_topics(&self, topics: &[&str], timeout: Duration) -> Result<(), NotReady> {
        for &topic in topics {
            let md = self
                .producer
                .client()
                .fetch_metadata(Some(topic), timeout)
                .map_err(|e| match self.errors.refused() {
                    Some(reason) => NotReady::Refused(reason),
                    None => NotReady::Unreachable {
                        timeout,
                        error: self.errors.explain(e),
                    },
                })?;
            let usable = md
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .is_some_and(|t| t.error().is_none() && !t.partitions().is_empty());
            if !usable {
                return Err(NotReady::MissingTopic(topic.to_owned()));
            }
        }
        Ok(())
    }
}

/// A header value as ASCII: other characters (a model name quoted in a
/// dead letter's detail) and control characters become `\u{…}` escapes.
/// Consumers of headers, like HTTP receivers, often read them as Latin-1
/// or expect text without line breaks.
pub fn ascii_header(value: &str) -> Cow<'_, str> {
    if value.bytes().all(|b| b.is_ascii() && !b.is_ascii_control()) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 16);
    for c in value.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            out.extend(c.escape_unicode());
        }
    }
    Cow::Owned(out)
}

/// Why a topic cannot be produced to right now.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NotReady {
    #[error("Kafka did not answer within {timeout:?}: {error}")]
    Unreachable { timeout: Duration, error: String },
    /// The brokers answer but refuse the connection's settings (a wrong
    /// password, a certificate that does not verify, a plaintext client
    /// at a TLS listener): waiting will not help.
    #[error("Kafka refused the connection: {0}")]
    Refused(String),
    #[error("topic {0} does not exist; create it with `tokentally topics create`")]
    MissingTopic(String),
}

/// An error of an enqueue attempt, as [`Emitter::wait_for_room`] sees it:
/// only a full queue is worth another attempt.
struct Attempt(EmitError);

impl Retryable for Attempt {
    fn verdict(&self) -> Verdict {
        match self.0 {
            EmitError::QueueFull => Verdict::Retry(None),
            _ => Verdict::Fail,
        }
    }
}

/// An event in the local queue; resolves when the broker acknowledged it.
#[must_use = "an event is delivered only if the broker acknowledges it: await the result"]
pub struct PendingDelivery {
    inner: DeliveryFuture,
    timeout: Duration,
}

impl Future for PendingDelivery {
    type Output = Result<Delivered, EmitError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let timeout = self.timeout;
        Pin::new(&mut self.inner).poll(cx).map(|r| match r {
            Ok(Ok(d)) => Ok(Delivered {
                partition: d.partition,
                offset: d.offset,
            }),
            Ok(Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut), _))) => {
                Err(EmitError::Unacknowledged { timeout })
            }
            Ok(Err((e, _))) => Err(EmitError::Kafka(e)),
            Err(_canceled) => Err(EmitError::Closed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_go_out_as_ascii() {
        assert!(matches!(ascii_header("invalid_ts"), Cow::Borrowed(_)));
        let detail = "`model` \"通义 <b>\"\n";
        let ascii = ascii_header(detail);
        assert!(ascii.is_ascii() && !ascii.contains('\n'), "{ascii}");
        assert_eq!(ascii, "`model` \"\\u{901a}\\u{4e49} <b>\"\\u{a}");
    }
    use tokentally_schemas::RejectReason;

    fn unreachable() -> KafkaConfig {
        KafkaConfig {
            brokers: "127.0.0.1:1".into(),
            delivery_timeout: Duration::from_millis(300),
            ..KafkaConfig::default()
        }
    }

    #[test]
    fn invalid_events_are_refused_before_anything_is_sent() {
        let emitter = Emitter::new(&unreachable()).unwrap();
        let err = emitter
            .enqueue_json(br#"{"event_id":"a","ts":1,"model":"m","provider":"p","prompt_tokens":-1,"completion_tokens":1}"#)
            .err()
            .unwrap();
        assert_eq!(err.rejection().unwrap().reason, RejectReason::OutOfRange);
        let err = emitter.enqueue_json(b"{nope").err().unwrap();
        assert_eq!(err.rejection().unwrap().reason, RejectReason::InvalidJson);
    }

    #[tokio::test]
    async fn an_unreachable_broker_is_a_timeout_error() {
        let emitter = Emitter::new(&unreachable()).unwrap();
        let err = emitter
            .send_json(br#"{"event_id":"a","ts":1,"model":"m","provider":"p","prompt_tokens":1,"completion_tokens":1}"#)
            .await
            .unwrap_err();
        assert!(matches!(err, EmitError::Unacknowledged { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("broker unreachable for longer than 300ms"),
            "{err}"
        );
        let err = emitter
            .check_topics(&[emitter.topic()], Duration::from_millis(200))
            .unwrap_err();
        assert!(matches!(err, NotReady::Unreachable { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn raw_records_are_queued_as_they_are() {
        let emitter = Emitter::new(&unreachable()).unwrap();
        // Not an event, yet queued; with no broker it is not acknowledged.
        let pending = emitter
            .enqueue_raw(
                b"{nope",
                None,
                &[("reason", Some("invalid_json")), ("field", None)],
            )
            .unwrap();
        let err = pending.await.unwrap_err();
        assert!(matches!(err, EmitError::Unacknowledged { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_full_queue_is_retried_until_there_is_room() {
        let emitter = Emitter::new(&unreachable()).unwrap();
        let mut attempts = 0;
        let queued = emitter
            .wait_for_room(Duration::from_secs(10), |e| {
                attempts += 1;
                if attempts < 4 {
                    Err(EmitError::QueueFull)
                } else {
                    e.enqueue_raw(b"x", None, &[])
                }
            })
            .await;
        assert!(queued.is_ok());
        assert_eq!(attempts, 4);
    }

    #[tokio::test]
    async fn a_queue_full_for_the_whole_wait_is_an_error_and_other_errors_are_not_retried() {
        let emitter = Emitter::new(&unreachable()).unwrap();
        let wait = Duration::from_millis(30);
        let started = std::time::Instant::now();
        let mut attempts = 0;
        let err = emitter
            .wait_for_room(wait, |_| {
                attempts += 1;
                Err(EmitError::QueueFull)
            })
            .await
            .err()
            .unwrap();
        assert!(matches!(err, EmitError::QueueFull), "{err:?}");
        assert!(started.elapsed() >= wait);
        assert!(attempts > 1);

        // No wait: one attempt.
        attempts = 0;
        let err = emitter
            .wait_for_room(Duration::ZERO, |_| {
                attempts += 1;
                Err(EmitError::QueueFull)
            })
            .await
            .err()
            .unwrap();
        assert!(matches!(err, EmitError::QueueFull), "{err:?}");
        assert_eq!(attempts, 1);

        attempts = 0;
        let err = emitter
            .wait_for_room(Duration::from_secs(10), |e| {
                attempts += 1;
                e.enqueue_json(b"{nope")
            })
            .await
            .err()
            .unwrap();
        assert!(err.rejection().is_some(), "{err:?}");
        assert_eq!(attempts, 1);
    }

    #[test]
    fn typed_events_are_validated_too() {
        let emitter = Emitter::new(&unreachable()).unwrap();
        let event = TokenEvent {
            event_id: "e".into(),
            ts: 1,
            model: "".into(),
            provider: "p".into(),
            app: "".into(),
            node: None,
            region: None,
            prompt_tokens: 1,
            completion_tokens: 1,
            cached_tokens: 0,
            reasoning_tokens: 0,
            latency_ms: None,
            status: Default::default(),
        };
        let err = emitter.enqueue(&event).err().unwrap();
        assert_eq!(err.rejection().unwrap().reason, RejectReason::EmptyValue);
    }
}
