//! What every tokentally client shares, so that each exists once:
//!
//! - [`secret`]: a password, token or signing key read from a file or an
//!   environment variable, with one precedence.
//! - [`retry`]: one retry policy (what is retried, backoff with jitter,
//!   `Retry-After`, the give-up budget) for the ClickHouse sink, webhook
//!   delivery and the Kafka producers.
//! - [`error`]: an error with its causes, on one line.
//! - [`files`]: bounded reads and atomic replacement of local files.
//! - [`tls`]: rustls settings for HTTPS clients (system roots plus an
//!   optional CA file) and for the gateway's listener.

pub mod error;
pub mod files;
pub mod retry;
pub mod secret;
pub mod tls;
