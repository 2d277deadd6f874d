//! The PagerDuty format: an Events API v2 `trigger`
//! (<https://developer.pagerduty.com/docs/events-api-v2/trigger-events/>):
//!
//! ```json
//! {"routing_key": "…", "event_action": "trigger", "dedup_key": "<milestone id>",
//!  "payload": {"summary": "<sentence>", "source": "tokentally", "severity": "info",
//!              "timestamp": "<detected_at>", "class": "<type>", "custom_details": <milestone>}}
//! ```
//!
//! The `dedup_key` is the milestone id, so a redelivery adds nothing to
//! the incident; PagerDuty takes at most 255 characters, and a longer id
//! is replaced by its [`webhook_id`]. The summary (at most 1024
//! characters) is the sentence of [`headline`]. The routing key is a
//! secret: it is read through [`tokentally_common::secret::SecretSource`]
//! and goes nowhere but into this body.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{truncate, units};
use crate::Milestone;
use crate::text::headline;
use crate::webhook::webhook_id;

const MAX_DEDUP_KEY: usize = 255;
const MAX_SUMMARY: usize = 1_024;

/// `severity` of a PagerDuty endpoint: how urgent PagerDuty treats the
/// event. Default `info`: a milestone is news, not an outage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    Error,
    Warning,
    #[default]
    Info,
}

impl Severity {
    pub const ALL: [Severity; 4] = [
        Severity::Critical,
        Severity::Error,
        Severity::Warning,
        Severity::Info,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

impl std::str::FromStr for Severity {
    type Err = String;

    fn from_str(s: &str) -> Result<Severity, String> {
        Severity::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown severity {s:?}: critical, error, warning or info"))
    }
}

/// A PagerDuty integration's routing key. Never printed: `Debug` shows
/// `RoutingKey(..)`.
#[derive(Clone, PartialEq, Eq)]
pub struct RoutingKey(String);

impl fmt::Debug for RoutingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RoutingKey(..)")
    }
}

impl RoutingKey {
    /// The first line of a secret, trimmed; it must be printable ASCII
    /// without spaces, as PagerDuty's keys are. The error never shows it.
    pub fn parse(text: &str) -> Result<RoutingKey, &'static str> {
        let key = text.trim();
        if key.is_empty() {
            return Err("the PagerDuty routing key is empty");
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the PagerDuty routing key has characters other than printable ASCII");
        }
        Ok(RoutingKey(key.to_string()))
    }
}

/// The milestone id, or its ASCII digest when PagerDuty would refuse it as
/// too long.
fn dedup_key(m: &Milestone) -> String {
    if units(&m.id) <= MAX_DEDUP_KEY {
        m.id.clone()
    } else {
        webhook_id(&m.id)
    }
}

/// The body announcing `m`.
pub fn body(m: &Milestone, routing_key: &RoutingKey, severity: Severity) -> Value {
    json!({
        "routing_key": routing_key.0,
        "event_action": "trigger",
        "dedup_key": dedup_key(m),
        "client": "tokentally",
        "payload": {
            "summary": truncate(&headline(m), MAX_SUMMARY),
            "source": "tokentally",
            "severity": severity.as_str(),
            "timestamp": m.detected_at,
            "class": m.kind.as_str(),
            "custom_details": m,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tests::{HOSTILE, milestone};

    #[test]
    fn a_trigger_with_the_milestone_id_as_dedup_key() {
        let m = milestone(HOSTILE);
        let key = RoutingKey::parse("R0UT1NGKEY0123456789abcdefABCDEF\n").unwrap();
        let body = body(&m, &key, Severity::Warning);
        assert_eq!(body["routing_key"], "R0UT1NGKEY0123456789abcdefABCDEF");
        assert_eq!(body["event_action"], "trigger");
        assert_eq!(body["dedup_key"], m.id.as_str());
        let p = &body["payload"];
        assert_eq!(p["summary"], headline(&m));
        assert_eq!(p["source"], "tokentally");
        assert_eq!(p["severity"], "warning");
        assert_eq!(p["timestamp"], "2026-11-27T13:45:01.123Z");
        assert_eq!(p["class"], "record");
        assert_eq!(p["custom_details"], serde_json::to_value(&m).unwrap());
        assert!(!format!("{key:?}").contains("R0UT"));
    }

    #[test]
    fn long_ids_and_summaries_fit() {
        let m = milestone(&"中".repeat(600));
        let key = RoutingKey::parse("k").unwrap();
        let body = body(&m, &key, Severity::default());
        assert_eq!(body["dedup_key"], webhook_id(&m.id));
        assert_eq!(body["payload"]["severity"], "info");
        let summary = body["payload"]["summary"].as_str().unwrap();
        assert_eq!(units(summary), MAX_SUMMARY);
        assert!(summary.ends_with('…'));
        // At the limit the id itself is kept.
        let at_limit = Milestone {
            id: "é".repeat(MAX_DEDUP_KEY),
            ..m
        };
        assert_eq!(
            super::body(&at_limit, &key, Severity::Info)["dedup_key"],
            at_limit.id.as_str()
        );
    }

    #[test]
    fn routing_keys_are_checked_without_being_shown() {
        for bad in ["", " \n", "with space", "tab\there", "clé"] {
            let err = RoutingKey::parse(bad).unwrap_err();
            assert!(bad.trim().is_empty() || !err.contains(bad.trim()), "{err}");
        }
        assert_eq!("error".parse::<Severity>(), Ok(Severity::Error));
        assert!("urgent".parse::<Severity>().is_err());
    }
}
