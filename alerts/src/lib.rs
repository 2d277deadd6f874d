//! Milestone alerts: one rule set, fed by one source of totals, with a
//! durable record of every milestone and signed webhook delivery.
//!
//! - [`rules`]: the pure rules (thresholds, all-time, firsts, records) with
//!   deterministic ids, over [`Totals`]; the demo and `alerts run` both use
//!   them, through [`Alerter::detect`].
//! - [`source`]: [`TotalsSource`], the daily totals of an embedded store or
//!   of a ClickHouse database, and the copy of milestones to ClickHouse.
//! - [`state`]: what the alerter remembers (`alerts.json`, replaced
//!   atomically).
//! - [`Alerter`]: detection and the delivery schedule (the shared
//!   [`tokentally_common::retry::RetryPolicy`]: exponential
//!   backoff with jitter, `Retry-After`; 410 disables an endpoint, other
//!   4xx are final).
//! - [`webhook`]: Standard Webhooks signing, verification and one HTTP attempt.
//! - [`text`]: milestones and token counts as people read them.

pub mod alerter;
pub mod rules;
pub mod source;
pub mod state;
pub mod text;
pub mod webhook;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::alerter::{AlertMetrics, Alerter};
pub use self::rules::{Kind, Milestone, RulesConfig, Totals, evaluate};
pub use self::source::{ClickHouseTotals, StoreTotals, TotalsError, TotalsSource};
pub use self::state::{AlertState, Delivery, Recorded, STATE, Status};
use self::webhook::Secret;
use tokentally_common::retry::RetryPolicy;
use tokentally_common::secret::SecretSource;

/// `[[alerts.webhooks]]`: one endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// Environment variable holding the `whsec_` secret(s), space-separated
    /// while rotating keys. Default `TOKENTALLY_WEBHOOK_SECRET`.
    #[serde(default = "default_secret_env")]
    pub secret_env: String,
    /// Or a file holding them (first line).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Only these milestone types (`threshold`, `all_time`, `first`,
    /// `record`); empty: all.
    #[serde(default)]
    pub types: Vec<Kind>,
    /// Only milestones about these models (fleet and provider milestones
    /// always pass); empty: all.
    #[serde(default)]
    pub models: Vec<String>,
}

/// The variable webhook secrets are read from by default.
pub const WEBHOOK_SECRET_ENV: &str = "TOKENTALLY_WEBHOOK_SECRET";

fn default_secret_env() -> String {
    WEBHOOK_SECRET_ENV.into()
}

impl WebhookConfig {
    pub fn new(url: &str) -> Self {
        WebhookConfig {
            url: url.to_string(),
            secret_env: default_secret_env(),
            secret_file: None,
            types: Vec::new(),
            models: Vec::new(),
        }
    }

    /// The secrets: from `secret_file` when it is set, else from the
    /// `secret_env` variable (see [`tokentally_common::secret`]); never
    /// from flags.
    pub fn secrets(&self) -> Result<Vec<Secret>, AlertError> {
        let text = SecretSource::new(&self.secret_env, self.secret_file.as_deref())
            .read()
            .map_err(|e| AlertError::Secret(format!("webhook {}: {e}", self.url)))?
            .ok_or_else(|| {
                AlertError::Secret(format!(
                    "webhook {}: set {} to a whsec_ secret (or secret_file)",
                    self.url, self.secret_env
                ))
            })?;
        let secrets = text
            .first_line()
            .split_whitespace()
            .map(|s| {
                Secret::parse(s)
                    .map_err(|e| AlertError::Secret(format!("webhook {}: {e}", self.url)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if secrets.is_empty() {
            return Err(AlertError::Secret(format!(
                "webhook {}: empty secret",
                self.url
            )));
        }
        Ok(secrets)
    }

    pub(crate) fn wants(&self, m: &Milestone) -> bool {
        (self.types.is_empty() || self.types.contains(&m.kind))
            && (self.models.is_empty()
                || m.model
                    .as_ref()
                    .is_none_or(|model| self.models.contains(model)))
    }
}

/// `[alerts]` in the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// `[alerts.rules]`.
    pub rules: RulesConfig,
    /// How often the totals are read. Default 1s.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// One webhook request waits this long for an answer. Default 10s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A delivery still failing this long after detection is given up.
    /// Default 24h.
    #[serde(with = "humantime_serde")]
    pub give_up_after: Duration,
    pub webhooks: Vec<WebhookConfig>,
}

impl AlertsConfig {
    /// Webhook retries: from 2 s, doubling to 5 min, given up
    /// `give_up_after` after the milestone was detected.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            first: Duration::from_secs(2),
            max: Duration::from_secs(300),
            give_up_after: self.give_up_after,
        }
    }
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            rules: RulesConfig::default(),
            interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
            give_up_after: Duration::from_secs(86_400),
            webhooks: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("{0}")]
    Secret(String),
    #[error("alert state in {dir}: {source}")]
    State {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("alert state {0} is in use by another `tokentally alerts run`")]
    Locked(String),
}
