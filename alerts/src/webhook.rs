//! Webhook delivery following the Standard Webhooks conventions
//! (<https://www.standardwebhooks.com>): headers `webhook-id` (derived
//! from the milestone id by [`webhook_id`], the receiver's idempotency
//! key), `webhook-timestamp` (Unix seconds) and `webhook-signature` (`v1,`
//! + base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`, keyed with the base64
//! part of a `whsec_` secret; several space-separated signatures while keys
//! rotate).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use data_encoding::BASE32_NOPAD;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};

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

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// 2xx.
    Delivered,
    /// Worth retrying (network error, timeout, 5xx, 429), after at least
    /// this long if the receiver said so (`Retry-After`).
    Retry {
        error: String,
        after: Option<Duration>,
    },
    /// 410 Gone: the endpoint asks to be disabled.
    Gone,
    /// Another 4xx: final.
    Rejected { status: u16 },
}

/// Sends signed webhook requests over HTTP.
#[derive(Clone)]
pub struct Sender {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl Sender {
    pub fn new(timeout: Duration) -> Sender {
        Sender {
            client: Client::builder(TokioExecutor::new()).build_http(),
            timeout,
        }
    }

    /// One attempt to POST `body` to `url`, signed.
    pub async fn send(
        &self,
        url: &str,
        secrets: &[Secret],
        id: &str,
        timestamp: i64,
        body: &[u8],
    ) -> Attempt {
        let request = hyper::Request::post(url)
            .header("content-type", "application/json")
            .header(
                "user-agent",
                concat!("tokentally/", env!("CARGO_PKG_VERSION")),
            )
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                signature_header(secrets, id, timestamp, body),
            )
            .body(Full::new(Bytes::copy_from_slice(body)));
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(url, error = %e, "webhook request could not be built");
                return Attempt::Rejected { status: 0 };
            }
        };
        let response = match tokio::time::timeout(self.timeout, self.client.request(request)).await
        {
            Err(_) => {
                return Attempt::Retry {
                    error: format!("no answer within {:?}", self.timeout),
                    after: None,
                };
            }
            Ok(Err(e)) => {
                return Attempt::Retry {
                    error: e.to_string(),
                    after: None,
                };
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
            200..=299 => Attempt::Delivered,
            410 => Attempt::Gone,
            429 | 500..=599 | 408 => Attempt::Retry {
                error: format!("HTTP {status}"),
                after: retry_after,
            },
            _ => Attempt::Rejected { status },
        }
    }
}

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
