//! What a milestone looks like on the wire, one file per format:
//!
//! - [`standard`]: the milestone as JSON, signed (Standard Webhooks); the
//!   default, for receivers of our own.
//! - [`slack`]: a Slack incoming webhook (`text` and Block Kit `blocks`).
//! - [`discord`]: a Discord webhook (`content` and one embed).
//! - [`pagerduty`]: a PagerDuty Events API v2 `trigger`.
//!
//! Every format goes through the same delivery: the same retries, durable
//! state and one delivery per milestone and endpoint. Only the standard
//! format signs: Slack and Discord authenticate the sender by the secret
//! URL, PagerDuty by the routing key in the body. The chat and paging
//! formats share the sentence of [`crate::text::headline`] and the
//! [`details`] below; model names are hostile input there, so each format
//! escapes and cuts them to its receiver's documented limits.

pub mod discord;
pub mod pagerduty;
pub mod slack;
pub mod standard;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use self::pagerduty::{RoutingKey, Severity};
use crate::Milestone;
use crate::text::human_tokens;
use crate::webhook::{Message, Secret};

/// `format` of a `[[alerts.webhooks]]` endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The milestone as JSON with Standard Webhooks signature headers.
    #[default]
    Standard,
    /// A Slack incoming webhook.
    Slack,
    /// A Discord webhook.
    Discord,
    /// PagerDuty Events API v2.
    PagerDuty,
}

impl Format {
    pub const ALL: [Format; 4] = [
        Format::Standard,
        Format::Slack,
        Format::Discord,
        Format::PagerDuty,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Standard => "standard",
            Format::Slack => "slack",
            Format::Discord => "discord",
            Format::PagerDuty => "pagerduty",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// For flags (`--webhook-format`): the names of the config file.
impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Format, String> {
        Format::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                format!("unknown webhook format {s:?}: standard, slack, discord or pagerduty")
            })
    }
}

/// A format with the keys it needs for one endpoint, resolved once when
/// the alerter starts (see [`crate::WebhookConfig::resolve`]).
#[derive(Debug, Clone)]
pub enum Formatter {
    Standard {
        secrets: Vec<Secret>,
    },
    Slack,
    Discord,
    PagerDuty {
        routing_key: RoutingKey,
        severity: Severity,
    },
}

impl Formatter {
    /// The request announcing `m`, for an attempt at Unix second
    /// `timestamp` (a retry is signed anew, with the same `webhook-id`).
    pub fn message(&self, m: &Milestone, timestamp: i64) -> Message {
        match self {
            Formatter::Standard { secrets } => standard::message(m, secrets, timestamp),
            Formatter::Slack => Message::json(&slack::body(m)),
            Formatter::Discord => Message::json(&discord::body(m)),
            Formatter::PagerDuty {
                routing_key,
                severity,
            } => Message::json(&pagerduty::body(m, routing_key, *severity)),
        }
    }
}

/// The facts of a milestone as (label, value), in reading order, for the
/// chat formats' details; absent facts are left out.
pub fn details(m: &Milestone) -> Vec<(&'static str, String)> {
    let tokens = |n: u64| match m.unit {
        crate::Unit::Tokens => format!("{} ({n} tokens)", human_tokens(n)),
        crate::Unit::UsdMicros => format!("{} ({n} micro-USD)", crate::text::human_usd(n)),
    };
    let mut out = vec![("type", m.kind.as_str().to_string())];
    if let Some(app) = &m.app {
        out.push(("app", app.clone()));
    }
    if let Some(b) = &m.budget {
        let period = if b.period == "month" {
            "monthly"
        } else {
            "daily"
        };
        out.push(("budget", format!("{} ({period}, {}%)", b.name, b.percent)));
        out.push(("limit", tokens(b.limit)));
    }
    if let Some(model) = &m.model {
        out.push(("model", model.clone()));
    }
    if let Some(provider) = &m.provider {
        out.push(("provider", provider.clone()));
    }
    out.push(("scope", m.scope.clone()));
    if let Some(day) = &m.day {
        out.push(("day", day.clone()));
    }
    if let Some(t) = m.threshold {
        out.push(("threshold", tokens(t)));
    }
    out.push(("value", tokens(m.value)));
    if let Some(r) = m.previous_record {
        out.push(("previous record", tokens(r)));
    }
    if let Some(h) = &m.previous_holder {
        out.push(("previous holder", h.clone()));
    }
    out.push(("id", m.id.clone()));
    out
}

/// The length receivers limit: UTF-16 code units, what JavaScript's
/// `length` counts. It is never less than the count of characters, so a
/// text within a limit by this count is within it however the receiver
/// counts.
pub(crate) fn units(text: &str) -> usize {
    text.chars().map(char::len_utf16).sum()
}

/// `text` with each character replaced by `escape`'s pieces, cut to at
/// most `max` [`units`] on a character boundary, ending with `…` when cut.
/// An escape is kept whole or left out, never cut in half.
pub(crate) fn fit(text: &str, max: usize, escape: impl Fn(char) -> Option<&'static str>) -> String {
    let mut out = String::new();
    let mut used = 0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let mut buf = [0; 4];
        let piece = escape(c).unwrap_or_else(|| c.encode_utf8(&mut buf));
        let len = units(piece);
        // Room for this piece, and for the ellipsis unless it is the last.
        let reserve = usize::from(chars.peek().is_some());
        if used + len + reserve > max {
            // Every piece kept left a unit for this, unless `max` is 0.
            if max > used {
                out.push('…');
            }
            return out;
        }
        out.push_str(piece);
        used += len;
    }
    out
}

/// `text` cut to at most `max` [`units`], ending with `…` when cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    fit(text, max, |_| None)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::Kind;

    /// A model name that is markup, mentions and non-ASCII at once.
    pub const HOSTILE: &str =
        "通义/qwen-max-中文 \"x\" <b>&</b> <script>alert(1)</script> @everyone <!channel> :tada:";

    /// A milestone with every field set, about `model` (also the previous
    /// holder, so that a long name is long in every field).
    pub fn milestone(model: &str) -> Milestone {
        Milestone {
            id: format!("record:top_model:2026-11-27:{model}"),
            kind: Kind::Record,
            scope: "top_model".into(),
            model: Some(model.into()),
            provider: Some(model.into()),
            day: Some("2026-11-27".into()),
            threshold: Some(1_000_000_000_000),
            value: 1_500_000_000_000,
            previous_record: Some(1_200_000_000_000),
            previous_holder: Some(model.into()),
            detected_at: "2026-11-27T13:45:01.123Z".into(),
            unit: crate::Unit::Tokens,
            app: None,
            budget: None,
        }
    }

    #[test]
    fn truncation_keeps_characters_and_escapes_whole() {
        assert_eq!(truncate("short", 5), "short");
        assert_eq!(truncate("longer", 5), "long…");
        assert_eq!(truncate("中文中文中文", 4), "中文中…");
        // An emoji is two UTF-16 units.
        assert_eq!(truncate("ab😀cd", 4), "ab…");
        assert_eq!(units(&truncate(&"😀".repeat(100), 9)), 9);
        assert_eq!(truncate("", 0), "");
        assert_eq!(truncate("x", 0), "");
        let amp = |c| (c == '&').then_some("&amp;");
        assert_eq!(fit("a&b", 100, amp), "a&amp;b");
        assert_eq!(fit("a&b", 6, amp), "a…");
        assert_eq!(fit("a&b", 7, amp), "a&amp;b");
        assert_eq!(fit("a&bc", 7, amp), "a&amp;…");
        assert_eq!(fit("a&", 6, amp), "a&amp;");
    }

    #[test]
    fn formats_are_named_as_in_the_config_file() {
        for f in Format::ALL {
            assert_eq!(f.as_str().parse::<Format>(), Ok(f));
            let json = format!("\"{f}\"");
            assert_eq!(serde_json::from_str::<Format>(&json).unwrap(), f);
        }
        assert!("Slack".parse::<Format>().unwrap_err().contains("pagerduty"));
    }
}
