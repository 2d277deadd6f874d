//! Webhook delivery: one HTTP attempt of a [`Message`] ([`Sender`]), and
//! the Standard Webhooks conventions (<https://www.standardwebhooks.com>)
//! of the standard format: headers `webhook-id` (derived from the
//! milestone id by [`webhook_id`], the receiver's idempotency key),
//! `webhook-timestamp` (Unix seconds) and `webhook-signature` (`v1,` +
//! base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`, keyed with the base64
//! part of a `whsec_` secret; several space-separated signatures while
//! keys rotate).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use data_encoding::BASE32_NOPAD;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tokentally_common::{error, tls};

use crate::AlertError;
use sha2::{Digest, Sha256};
use tokentally_common::retry::{Retryable, Verdict};

/// The `webhook-id` of a milestone: `msg_` + the first 20 bytes of the
/// SHA-256 of its id, in lowercase unpadded base32 (RFC 4648), 36 ASCII
/// characters. A milestone id holds the model name as it came, any UTF-8,
/// but an HTTP header is read as Latin-1 by receivers (the Standard
/// Webhooks reference libraries then reject the signature), so the header
/// carries this digest instead. It depends on the milestone id alone, so
/// every retry and every restart sends the same one; the readable id stays
/// in the body.
pub fn webhook_id(milestone_id: &str) -> String {
    let digest = Sha256::digest(milestone_id.as_bytes());
    format!(
        "msg_{}",
        BASE32_NOPAD.encode(&digest[..20]).to_ascii_lowercase()
    )
}

/// Errors about secrets and signatures.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("a webhook secret must look like whsec_<base64>")]
    BadSecret,
    #[error("no signature matches")]
    Mismatch,
    #[error("the timestamp is {0}s away from now (more than the 5 minute tolerance)")]
    Stale(i64),
    #[error("the timestamp is not a number")]
    BadTimestamp,
}

/// A `whsec_` secret, decoded.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)") // never print key material
    }
}

impl Secret {
    pub fn parse(text: &str) -> Result<Secret, SignatureError> {
        let b64 = text
            .trim()
            .strip_prefix("whsec_")
            .ok_or(SignatureError::BadSecret)?;
        let key = B64.decode(b64).map_err(|_| SignatureError::BadSecret)?;
        if key.is_empty() {
            return Err(SignatureError::BadSecret);
        }
        Ok(Secret(key))
    }

    /// The HMAC of `{id}.{timestamp}.{body}`.
    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        mac
    }

    /// `v1,<base64 signature>` of one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", B64.encode(tag))
    }
}

/// The `webhook-signature` header: one signature per secret.
pub fn signature_header(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a receiver does: accept if any `v1` signature in the header matches
/// (constant-time) and the timestamp is within 5 minutes of `now`.
pub fn verify(
    secret: &Secret,
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    if (now - ts).abs() > 300 {
        return Err(SignatureError::Stale(now - ts));
    }
    let mac = secret.mac(id, ts, body);
    for sig in signatures.split_whitespace() {
        if let Some(b64) = sig.strip_prefix("v1,")
            && let Ok(bytes) = B64.decode(b64)
            && mac.clone().verify_slice(&bytes).is_ok()
        {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

/// One request: a JSON body and the headers its format adds (the
/// signature headers of the standard format, none for the others).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl Message {
    /// `value` as the body, with no headers of its own.
    pub fn json(value: &serde_json::Value) -> Message {
        Message {
            body: serde_json::to_vec(value).expect("JSON values serialize"),
            headers: Vec::new(),
        }
    }
}

/// Why one delivery attempt did not deliver. Its text is the operator's
/// (the `last_error` of `alerts list`, `alerts test`'s answer), so it says
/// the cause, never the URL or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Worth retrying (network error, timeout, 5xx, 408, 429), after at
    /// least this long if the receiver said so (`Retry-After`).
    #[error("{error}")]
    Retry {
        error: String,
        after: Option<Duration>,
    },
    /// 410 Gone: the endpoint asks to be disabled.
    #[error("HTTP 410 Gone: the endpoint asks not to be sent to again")]
    Gone,
    /// Another 4xx: final.
    #[error("HTTP {status}: refused, not retried")]
    Rejected { status: u16 },
    /// The request could not be made (a URL or header HTTP does not
    /// allow): final.
    #[error("the request cannot be sent: {0}")]
    Invalid(String),
}

impl Retryable for DeliveryError {
    fn verdict(&self) -> Verdict {
        match self {
            DeliveryError::Retry { after, .. } => Verdict::Retry(*after),
            DeliveryError::Gone | DeliveryError::Rejected { .. } | DeliveryError::Invalid(_) => {
                Verdict::Fail
            }
        }
    }
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Idle pooled connections to receivers are closed after this.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends webhook requests over HTTP or HTTPS. An `https://` receiver is
/// verified against the system's roots (`SSL_CERT_FILE` honoured) plus its
/// endpoint's `ca_file`, if any: one client per CA file.
#[derive(Clone)]
pub struct Sender {
    clients: HashMap<Option<PathBuf>, HttpsClient>,
    timeout: Duration,
}

impl Sender {
    /// A sender for endpoints with these CA files (`None`: the system's
    /// roots only, always included).
    pub fn new<'a>(
        timeout: Duration,
        ca_files: impl IntoIterator<Item = &'a Option<PathBuf>>,
    ) -> Result<Sender, AlertError> {
        let mut clients = HashMap::new();
        for ca in std::iter::once(&None).chain(ca_files) {
            if !clients.contains_key(ca) {
                let client = tls::http_client(ca.as_deref(), POOL_IDLE_TIMEOUT)
                    .map_err(|e| AlertError::Endpoint(format!("webhook TLS settings: {e}")))?;
                clients.insert(ca.clone(), client);
            }
        }
        Ok(Sender { clients, timeout })
    }

    /// One attempt to POST `message` to `url`; the HTTP status when it was
    /// delivered (2xx). Every header value must be ASCII: receivers read
    /// headers as Latin-1, so anything else would reach them garbled (and
    /// a signature over it would not verify); such a message is refused
    /// here rather than sent.
    pub async fn send(
        &self,
        url: &str,
        ca_file: Option<&Path>,
        message: &Message,
    ) -> Result<u16, DeliveryError> {
        let client = self
            .clients
            .get(&ca_file.map(Path::to_path_buf))
            .expect("a client for every endpoint's CA file");
        if let Some((name, _)) = message.headers.iter().find(|(_, v)| !v.is_ascii()) {
            return Err(DeliveryError::Invalid(format!(
                "the {name} header is not ASCII"
            )));
        }
        let mut request = hyper::Request::post(url)
            .header("content-type", "application/json")
            .header(
                "user-agent",
                concat!("tokentally/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in &message.headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(Bytes::copy_from_slice(&message.body)))
            .map_err(|e| DeliveryError::Invalid(e.to_string()))?;
        let response = match tokio::time::timeout(self.timeout, client.request(request)).await {
            Err(_) => {
                return Err(DeliveryError::Retry {
                    error: format!("no answer within {:?}", self.timeout),
                    after: None,
                });
            }
            Ok(Err(e)) => {
                return Err(DeliveryError::Retry {
                    error: error::chain(&e),
                    after: None,
                });
            }
            Ok(Ok(r)) => r,
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        match status {
            200..=299 => Ok(status),
            410 => Err(DeliveryError::Gone),
            429 | 500..=599 | 408 => Err(DeliveryError::Retry {
                error: format!("HTTP {status}"),
                after: retry_after,
            }),
            _ => Err(DeliveryError::Rejected { status }),
        }
    }
}

/// An error and its sources, `: `-separated: the client's own text is
/// only `client error (Connect)`, the cause (`Connection refused`) is in
/// its sources. None of them holds the URL.
#[cfg(test)]
mod tests {
    use super::*;

    // The example of the Standard Webhooks specification's reference
    // libraries.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn webhook_ids_are_short_ascii_digests_of_the_milestone_id() {
        // Checked against Python: "msg_" + base64.b32encode(
        // hashlib.sha256(id.encode()).digest()[:20]).decode().lower().
        assert_eq!(
            webhook_id("first:model:1000000000000"),
            "msg_oj2cy43bev7ix5zhdfhr7p4k23jo3woj"
        );
        let hostile = "threshold:model:通义/qwen-max-中文:2026-11-27:1000000000000";
        let id = webhook_id(hostile);
        assert_eq!(id, "msg_5uuz4ttejpvmq6p2hhr2tpsrugkcm62n");
        assert_eq!(id, webhook_id(hostile), "deterministic");
        for id in [id, webhook_id(""), webhook_id(&"x".repeat(100_000))] {
            assert_eq!(id.len(), 36, "{id}");
            assert!(id.starts_with("msg_"), "{id}");
            assert!(
                id[4..]
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)),
                "{id}"
            );
        }
        assert_ne!(
            webhook_id("first:model:1000000000000"),
            webhook_id("first:model:1000000000001")
        );
    }

    #[tokio::test]
    async fn a_header_that_is_not_ascii_is_never_sent() {
        let message = Message {
            body: b"{}".to_vec(),
            headers: vec![("webhook-id", "first:model:通义".into())],
        };
        // Port 9 (discard): refused before any connection is tried.
        let sent = Sender::new(Duration::from_secs(1), [])
            .unwrap()
            .send("http://127.0.0.1:9/hook", None, &message)
            .await;
        assert_eq!(
            sent,
            Err(DeliveryError::Invalid(
                "the webhook-id header is not ASCII".into()
            ))
        );
    }

    #[test]
    fn signs_like_the_reference_implementation() {
        let s = Secret::parse(SECRET).unwrap();
        assert_eq!(s.sign(ID, TS, BODY), SIG);
        assert_eq!(verify(&s, ID, &TS.to_string(), SIG, BODY, TS + 10), Ok(()));
    }

    #[test]
    fn verification_rejects_tampering_staleness_and_bad_secrets() {
        let s = Secret::parse(SECRET).unwrap();
        let ts = TS.to_string();
        assert_eq!(
            verify(&s, ID, &ts, SIG, b"{}", TS),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&s, "other", &ts, SIG, BODY, TS),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&s, ID, &ts, SIG, BODY, TS + 301),
            Err(SignatureError::Stale(301))
        );
        // Rotation: any matching signature in the list is enough.
        let both = format!("v1,AAAA {SIG}");
        assert_eq!(verify(&s, ID, &ts, &both, BODY, TS), Ok(()));
        assert_eq!(
            Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err(),
            SignatureError::BadSecret
        );
        assert!(!format!("{s:?}").contains("MfKQ"));
    }
}
