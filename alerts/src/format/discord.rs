//! The Discord format: a webhook body with the sentence as `content` and
//! one embed (`title`, `description`, `fields` of the milestone's
//! [`details`], `timestamp`), within Discord's documented
//! limits, cut on character boundaries with `…`: content 2000 characters,
//! title 256, description 4096, 25 fields of at most 256 (name) and 1024
//! (value), 6000 for the whole embed. Discord rejects a body past any of
//! them, and a rejection is final, so a long model name must not cost the
//! milestone.
//!
//! `allowed_mentions` is empty: a model named `@everyone` or `<@id>` is
//! shown, and pings nobody.

use serde_json::{Value, json};

use super::{details, truncate, units};
use crate::{Kind, Milestone, Unit};

const MAX_CONTENT: usize = 2_000;
const MAX_TITLE: usize = 256;
const MAX_DESCRIPTION: usize = 4_096;
const MAX_FIELD_NAME: usize = 256;
const MAX_FIELD_VALUE: usize = 1_024;
const MAX_EMBED: usize = 6_000;

/// The embed's title: what kind of milestone, without the model (which is
/// in the description and the fields).
fn title(m: &Milestone) -> String {
    let threshold = crate::text::amount(m, m.threshold.unwrap_or(0));
    if m.unit == Unit::UsdMicros {
        return match (m.kind, m.scope.as_str(), &m.budget) {
            (Kind::Budget, _, Some(b)) => format!("{}% of budget {}", b.percent, b.name),
            (Kind::First, _, _) => format!("First model to spend {threshold} in a day"),
            (Kind::Record, "top_model", _) => "Highest daily spend of any model".into(),
            _ => "Daily spend record".into(),
        };
    }
    match (m.kind, m.scope.as_str()) {
        (Kind::Threshold, _) => format!("{threshold} tokens in a day"),
        (Kind::AllTime, _) => format!("{threshold} tokens in all"),
        (Kind::First, _) => format!("First model to {threshold} tokens in a day"),
        (Kind::Record, "top_model") => "Highest daily total of any model".into(),
        (Kind::Record, _) => "Daily record".into(),
        (Kind::Test, _) => "Test from tokentally".into(),
        (Kind::Budget, _) => "Budget".into(),
    }
}

/// The body announcing `m`.
pub fn body(m: &Milestone) -> Value {
    let sentence = crate::text::headline(m);
    let title = truncate(&title(m), MAX_TITLE);
    let fields: Vec<(String, String)> = details(m)
        .into_iter()
        .map(|(label, value)| {
            let mut name = label.to_string();
            name[..1].make_ascii_uppercase();
            // Discord refuses an empty field value.
            let value = if value.trim().is_empty() {
                "(empty)".to_string()
            } else {
                value
            };
            (
                truncate(&name, MAX_FIELD_NAME),
                truncate(&value, MAX_FIELD_VALUE),
            )
        })
        .collect();
    let used = units(&title)
        + fields
            .iter()
            .map(|(n, v)| units(n) + units(v))
            .sum::<usize>();
    let description = truncate(
        &sentence,
        MAX_EMBED.saturating_sub(used).min(MAX_DESCRIPTION),
    );
    let fields: Vec<Value> = fields
        .into_iter()
        .map(|(name, value)| {
            let inline = units(&value) <= 40;
            json!({"name": name, "value": value, "inline": inline})
        })
        .collect();
    json!({
        "content": truncate(&sentence, MAX_CONTENT),
        "allowed_mentions": {"parse": []},
        "embeds": [{
            "title": title,
            "description": description,
            "fields": fields,
            "timestamp": m.detected_at,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tests::{HOSTILE, milestone};

    fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
        v.pointer(pointer).and_then(Value::as_str).unwrap()
    }

    #[test]
    fn the_sentence_the_embed_and_no_mentions() {
        let body = body(&milestone(HOSTILE));
        assert_eq!(body["allowed_mentions"], json!({"parse": []}));
        let content = text(&body, "/content");
        assert!(content.starts_with(HOSTILE), "shown as it is: {content}");
        assert!(content.contains(" set the highest daily total of any model on 2026-11-27"));
        let embed = &body["embeds"][0];
        assert_eq!(embed["title"], "Highest daily total of any model");
        assert_eq!(embed["description"], content);
        assert_eq!(embed["timestamp"], "2026-11-27T13:45:01.123Z");
        let fields = embed["fields"].as_array().unwrap();
        let names: Vec<&str> = fields.iter().map(|f| f["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "Type",
                "Model",
                "Provider",
                "Scope",
                "Day",
                "Threshold",
                "Value",
                "Previous record",
                "Previous holder",
                "Id"
            ]
        );
        assert_eq!(fields[1]["value"], HOSTILE);
        assert_eq!(fields[0]["value"], "record");
        assert_eq!(fields[0]["inline"], true);
    }

    #[test]
    fn a_5000_character_name_stays_within_every_limit() {
        let long = format!("@everyone {}", "名".repeat(5_000));
        let body = body(&milestone(&long));
        let content = text(&body, "/content");
        assert_eq!(units(content), MAX_CONTENT);
        assert!(content.ends_with('…'));
        let embed = &body["embeds"][0];
        let title = text(embed, "/title");
        let description = text(embed, "/description");
        assert!(units(title) <= MAX_TITLE);
        assert!(units(description) <= MAX_DESCRIPTION);
        assert!(description.ends_with('…'), "cut, not dropped");
        let fields = embed["fields"].as_array().unwrap();
        assert!(fields.len() <= 25);
        let mut total = units(title) + units(description);
        for f in fields {
            let (name, value) = (text(f, "/name"), text(f, "/value"));
            assert!(units(name) <= MAX_FIELD_NAME);
            assert!(!value.is_empty() && units(value) <= MAX_FIELD_VALUE);
            total += units(name) + units(value);
        }
        assert!(total <= MAX_EMBED, "{total}");
        assert_eq!(text(&fields[1], "/value").chars().count(), MAX_FIELD_VALUE);
    }
}
