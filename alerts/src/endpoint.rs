//! One webhook endpoint: its `[[alerts.webhooks]]` entry, the keys its
//! format needs (read once, when the alerter starts), and how its URL is
//! shown.

use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use data_encoding::HEXLOWER;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::format::{Format, Formatter, RoutingKey, Severity};
use crate::webhook::{DeliveryError, Message, Secret, Sender};
use crate::{AlertError, Kind, Milestone};
use tokentally_common::retry::{GaveUp, RetryPolicy};
use tokentally_common::secret::{SecretSource, SecretText};

/// The variable webhook secrets are read from by default.
pub const WEBHOOK_SECRET_ENV: &str = "TOKENTALLY_WEBHOOK_SECRET";

/// The variable a PagerDuty routing key is read from when the endpoint
/// names no `routing_key_file`.
pub const PAGERDUTY_ROUTING_KEY_ENV: &str = "TOKENTALLY_PAGERDUTY_ROUTING_KEY";

/// `[[alerts.webhooks]]`: one endpoint.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where milestones are POSTed. For Slack and Discord the URL is the
    /// credential; it is shown only as [`display_url`].
    pub url: String,
    /// The body and headers: `standard` (default: the milestone as JSON,
    /// signed), `slack`, `discord` or `pagerduty`.
    #[serde(default)]
    pub format: Format,
    /// Standard format: the environment variable holding the `whsec_`
    /// secret(s), space-separated while rotating keys. Default
    /// `TOKENTALLY_WEBHOOK_SECRET`.
    #[serde(default = "default_secret_env")]
    pub secret_env: String,
    /// Standard format: or a file holding them (first line).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// CA certificates (PEM) trusted for this `https://` receiver besides
    /// the system's (`SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PagerDuty format: a file holding the routing key (first line); else
    /// `TOKENTALLY_PAGERDUTY_ROUTING_KEY`.
    #[serde(default)]
    pub routing_key_file: Option<PathBuf>,
    /// PagerDuty format: `critical`, `error`, `warning` or `info`
    /// (default).
    #[serde(default)]
    pub severity: Option<Severity>,
    /// Only these milestone types (`threshold`, `all_time`, `first`,
    /// `record`); empty: all.
    #[serde(default)]
    pub types: Vec<Kind>,
    /// Only milestones about these models (fleet and provider milestones
    /// always pass); empty: all.
    #[serde(default)]
    pub models: Vec<String>,
}

fn default_secret_env() -> String {
    WEBHOOK_SECRET_ENV.into()
}

/// Shows the URL as [`display_url`] does: a `Debug` of the config must not
/// print a Slack or Discord token.
impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &display_url(&self.url))
            .field("format", &self.format)
            .field("secret_env", &self.secret_env)
            .field("secret_file", &self.secret_file)
            .field("routing_key_file", &self.routing_key_file)
            .field("severity", &self.severity)
            .field("types", &self.types)
            .field("models", &self.models)
            .finish()
    }
}

/// How tokentally shows an endpoint URL in logs, errors, `alerts list`
/// and the demo: `scheme://host[:port]/… [fingerprint]`, without user,
/// path or query. A Slack or Discord webhook URL is its own credential
/// (the token is in the path), and a standard endpoint's path or query
/// may hold one as well; `alerts list` reads only the state, which does
/// not know each endpoint's format. So every URL is shown this way. The
/// fingerprint (the first 4 bytes of the URL's SHA-256, in hex) tells two
/// endpoints on one host apart and reveals nothing of a token.
pub fn display_url(url: &str) -> String {
    let fingerprint = HEXLOWER.encode(&Sha256::digest(url.as_bytes())[..4]);
    match url.parse::<hyper::Uri>() {
        Ok(uri) => match (uri.scheme_str(), uri.host()) {
            (Some(scheme), Some(host)) => {
                let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
                format!("{scheme}://{host}{port}/… [{fingerprint}]")
            }
            _ => format!("(not an absolute URL) [{fingerprint}]"),
        },
        Err(_) => format!("(not a URL) [{fingerprint}]"),
    }
}

impl WebhookConfig {
    pub fn new(url: &str) -> Self {
        WebhookConfig {
            url: url.to_string(),
            format: Format::default(),
            secret_env: default_secret_env(),
            secret_file: None,
            ca_file: None,
            routing_key_file: None,
            severity: None,
            types: Vec::new(),
            models: Vec::new(),
        }
    }

    /// An endpoint of `format`.
    pub fn with_format(self, format: Format) -> Self {
        WebhookConfig { format, ..self }
    }

    fn error(&self, what: impl fmt::Display) -> AlertError {
        AlertError::Endpoint(format!("webhook {}: {what}", display_url(&self.url)))
    }

    /// Check the entry against its format and read the keys it needs:
    /// the `whsec_` secrets of the standard format, the routing key of
    /// PagerDuty's, each from its file when one is named, else from its
    /// environment variable (see [`tokentally_common::secret`]); never
    /// from flags. A setting that does not apply to the format is an
    /// error, not ignored: it would be a key the operator thinks is used.
    pub fn resolve(&self) -> Result<Endpoint, AlertError> {
        match self.url.parse::<hyper::Uri>() {
            Ok(uri) if uri.scheme().is_some() && uri.host().is_some() => {}
            _ => return Err(self.error("not an absolute URL (scheme://host/path)")),
        }
        let standard_only = self.secret_file.is_some() || self.secret_env != WEBHOOK_SECRET_ENV;
        if self.format != Format::Standard && standard_only {
            return Err(self.error(format!(
                "secret_env and secret_file are for format standard, not {} (only the standard format is signed)",
                self.format
            )));
        }
        if self.format != Format::PagerDuty
            && (self.routing_key_file.is_some() || self.severity.is_some())
        {
            return Err(self.error(format!(
                "routing_key_file and severity are for format pagerduty, not {}",
                self.format
            )));
        }
        let formatter = match self.format {
            Format::Standard => Formatter::Standard {
                secrets: self.secrets()?,
            },
            Format::Slack => Formatter::Slack,
            Format::Discord => Formatter::Discord,
            Format::PagerDuty => Formatter::PagerDuty {
                routing_key: self.routing_key()?,
                severity: self.severity.unwrap_or_default(),
            },
        };
        Ok(Endpoint {
            config: self.clone(),
            formatter,
        })
    }

    /// Read a secret; `what` names it for the error when it is missing.
    fn secret(&self, source: SecretSource, what: &str) -> Result<SecretText, AlertError> {
        source
            .read()
            .map_err(|e| AlertError::Secret(format!("webhook {}: {e}", display_url(&self.url))))?
            .ok_or_else(|| {
                AlertError::Secret(format!(
                    "webhook {}: set {} to {what}",
                    display_url(&self.url),
                    source.env()
                ))
            })
    }

    fn secrets(&self) -> Result<Vec<Secret>, AlertError> {
        let source = SecretSource::new(&self.secret_env, self.secret_file.as_deref());
        let text = self.secret(source, "a whsec_ secret (or set secret_file)")?;
        let secret_error =
            |e| AlertError::Secret(format!("webhook {}: {e}", display_url(&self.url)));
        let secrets = text
            .first_line()
            .split_whitespace()
            .map(|s| Secret::parse(s).map_err(secret_error))
            .collect::<Result<Vec<_>, _>>()?;
        if secrets.is_empty() {
            return Err(secret_error(crate::webhook::SignatureError::BadSecret));
        }
        Ok(secrets)
    }

    fn routing_key(&self) -> Result<RoutingKey, AlertError> {
        let source = SecretSource::new(PAGERDUTY_ROUTING_KEY_ENV, self.routing_key_file.as_deref());
        let text = self.secret(
            source,
            "the integration's routing key (or set routing_key_file)",
        )?;
        RoutingKey::parse(text.first_line()).map_err(|e| {
            AlertError::Secret(format!(
                "webhook {}: {e} (in {})",
                display_url(&self.url),
                text.origin()
            ))
        })
    }

    pub(crate) fn wants(&self, m: &Milestone) -> bool {
        (self.types.is_empty() || self.types.contains(&m.kind))
            && (self.models.is_empty()
                || m.model
                    .as_ref()
                    .is_none_or(|model| self.models.contains(model)))
    }
}

/// An endpoint ready to send to: its entry and its keys.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub config: WebhookConfig,
    formatter: Formatter,
}

impl Endpoint {
    /// The request announcing `m` in the endpoint's format, for an attempt
    /// at Unix second `timestamp`.
    pub fn message(&self, m: &Milestone, timestamp: i64) -> Message {
        self.formatter.message(m, timestamp)
    }

    /// Deliver `m` now, with the alerter's retries (the shared
    /// [`RetryPolicy`], here from 1 s doubling to 5 s) until `budget` has
    /// passed, then no longer: what `alerts test` does. Nothing is
    /// recorded. The HTTP status when delivered; else the final error, or
    /// the last one when the budget ran out.
    pub async fn deliver_now(
        &self,
        sender: &Sender,
        m: &Milestone,
        budget: Duration,
    ) -> Result<u16, GaveUp<DeliveryError>> {
        let policy = RetryPolicy {
            first: Duration::from_secs(1),
            max: Duration::from_secs(5),
            give_up_after: budget,
        };
        let last = Mutex::new(None);
        let attempts = policy.run(
            |_| {
                let message = self.message(m, chrono::Utc::now().timestamp());
                async move {
                    sender
                        .send(&self.config.url, self.config.ca_file.as_deref(), &message)
                        .await
                }
            },
            |e: &DeliveryError, attempt, wait| {
                tracing::info!(endpoint = display_url(&self.config.url), error = %e, attempt, retry_in = ?wait, "delivery failed");
                *last.lock().expect("not poisoned") = Some(e.clone());
            },
        );
        // A retry may start just before the budget runs out: the budget
        // bounds the whole, not only when the last attempt starts.
        match tokio::time::timeout(budget, attempts).await {
            Ok(outcome) => outcome,
            Err(_) => Err(GaveUp::Exhausted {
                after: budget,
                last: last.into_inner().expect("not poisoned").unwrap_or_else(|| {
                    DeliveryError::Retry {
                        error: format!("no answer within {budget:?}"),
                        after: None,
                    }
                }),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_user_path_or_query() {
        let slack = "https://hooks.slack.com/services/T000/B000/XXXXT0KEN?x=1";
        let shown = display_url(slack);
        assert!(shown.starts_with("https://hooks.slack.com/… ["), "{shown}");
        assert!(
            !shown.contains("T0KEN") && !shown.contains("T000"),
            "{shown}"
        );
        assert_eq!(
            display_url("http://user:pw@127.0.0.1:8080/hook")
                .split(' ')
                .next(),
            Some("http://127.0.0.1:8080/…")
        );
        // Two endpoints on one host are told apart.
        assert_ne!(
            display_url("https://hooks.slack.com/services/A"),
            display_url("https://hooks.slack.com/services/B")
        );
        let garbled = display_url("not a url with a tok3n");
        assert!(!garbled.contains("tok3n"), "{garbled}");
        let config = WebhookConfig::new(slack).with_format(Format::Slack);
        assert!(!format!("{config:?}").contains("T0KEN"));
    }

    #[test]
    fn settings_of_another_format_are_refused_and_errors_hide_the_url() {
        let url = "https://hooks.slack.com/services/T000/B000/XXXXT0KEN";
        let slack = WebhookConfig {
            secret_file: Some("/run/secrets/whsec".into()),
            ..WebhookConfig::new(url).with_format(Format::Slack)
        };
        let err = slack.resolve().unwrap_err().to_string();
        assert!(
            err.contains("secret_file are for format standard, not slack"),
            "{err}"
        );
        assert!(!err.contains("T0KEN"), "{err}");
        let discord = WebhookConfig {
            severity: Some(Severity::Critical),
            ..WebhookConfig::new(url).with_format(Format::Discord)
        };
        let err = discord.resolve().unwrap_err().to_string();
        assert!(
            err.contains("severity are for format pagerduty, not discord"),
            "{err}"
        );
        let err = WebhookConfig::new("/relative")
            .with_format(Format::Slack)
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an absolute URL"), "{err}");
        assert!(
            WebhookConfig::new(url)
                .with_format(Format::Slack)
                .resolve()
                .is_ok()
        );
    }

    #[test]
    fn the_routing_key_comes_from_its_file_and_never_shows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routing-key");
        std::fs::write(&path, "R0UT1NGKEY\n").unwrap();
        let config = WebhookConfig {
            routing_key_file: Some(path.clone()),
            severity: Some(Severity::Error),
            ..WebhookConfig::new("http://127.0.0.1:9/v2/enqueue").with_format(Format::PagerDuty)
        };
        let endpoint = config.resolve().unwrap();
        assert!(!format!("{endpoint:?}").contains("R0UT1NGKEY"));
        let m = crate::format::tests::milestone("m");
        let body: serde_json::Value =
            serde_json::from_slice(&endpoint.message(&m, 0).body).unwrap();
        assert_eq!(body["routing_key"], "R0UT1NGKEY");
        assert_eq!(body["payload"]["severity"], "error");

        std::fs::write(&path, "R0UT 1NGKEY\n").unwrap();
        let err = config.resolve().unwrap_err().to_string();
        assert!(
            err.contains("printable ASCII") && err.contains("routing-key"),
            "{err}"
        );
        assert!(!err.contains("R0UT"), "{err}");
        let missing = WebhookConfig {
            routing_key_file: Some(dir.path().join("nope")),
            ..config
        };
        let err = missing.resolve().unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }
}
