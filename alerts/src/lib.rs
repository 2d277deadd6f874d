//! Milestone alerts: one rule set, fed by one source of totals, with a
//! durable record of every milestone and webhook delivery (signed JSON,
//! Slack, Discord or PagerDuty).
//!
//! - [`rules`]: the pure rules (thresholds, all-time, firsts, records, of
//!   tokens and of spend) with deterministic ids, over [`Totals`]; the demo
//!   and `alerts run` both use them, through [`Alerter::detect`].
//! - [`budgets`]: spend limits per app, model, provider or fleet, per day or
//!   month, firing at fractions of the limit.
//! - [`source`]: [`TotalsSource`], the daily totals of an embedded store or
//!   of a ClickHouse database, and the copy of milestones to ClickHouse.
//! - [`state`]: what the alerter remembers (`alerts.json`, replaced
//!   atomically).
//! - [`Alerter`]: detection and the delivery schedule (the shared
//!   [`tokentally_common::retry::RetryPolicy`]: exponential
//!   backoff with jitter, `Retry-After`; 410 disables an endpoint, other
//!   4xx are final).
//! - [`endpoint`]: one endpoint's configuration, its keys, and its URL as
//!   shown ([`display_url`]).
//! - [`format`](mod@format): the body and headers of each format (standard signed
//!   JSON, Slack, Discord, PagerDuty), one file each.
//! - [`webhook`]: Standard Webhooks ids, signing and verification, and one
//!   HTTP attempt.
//! - [`text`]: milestones and token counts as people read them.

pub mod alerter;
pub mod budgets;
pub mod endpoint;
pub mod format;
pub mod rules;
pub mod source;
pub mod state;
pub mod text;
pub mod webhook;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::alerter::{AlertMetrics, Alerter};
pub use self::budgets::{BudgetConfig, Period};
pub use self::endpoint::{
    Endpoint, PAGERDUTY_ROUTING_KEY_ENV, WEBHOOK_SECRET_ENV, WebhookConfig, display_url,
};
pub use self::format::{Format, Severity};
pub use self::rules::{BudgetHit, Kind, Milestone, RulesConfig, Totals, Unit, evaluate};
pub use self::source::{ClickHouseTotals, StoreTotals, TotalsError, TotalsSource};
pub use self::state::{AlertState, Delivery, Recorded, STATE, Status};
use tokentally_common::retry::RetryPolicy;

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
    /// `[[alerts.budgets]]`: spend limits (see [`budgets`]).
    pub budgets: Vec<BudgetConfig>,
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
            budgets: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("{0}")]
    Secret(String),
    /// A `[[alerts.webhooks]]` entry that cannot be used as it is.
    #[error("{0}")]
    Endpoint(String),
    /// A `[[alerts.budgets]]` entry that cannot be used as it is.
    #[error("{0}")]
    Budget(String),
    #[error("alert state in {dir}: {source}")]
    State {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("alert state {0} is in use by another `tokentally alerts run`")]
    Locked(String),
}
