//! The Slack format: an incoming-webhook body,
//! `{"text": sentence, "blocks": [section, context]}`. `text` is what
//! notifications show; the section holds the same sentence, the context
//! block the milestone's [`details`].
//!
//! Slack reads these texts as mrkdwn, where `<...>` is a link or a mention
//! (`<!channel>`) and `&` starts an entity, so `&`, `<` and `>` are written
//! `&amp;`, `&lt;` and `&gt;`, as Slack prescribes: a model name shows as
//! it is and pings nobody. Emphasis marks (`*`, `_`, `~`) have no escape
//! in mrkdwn; in a name they may style the text, nothing more. A text
//! field of a block holds at most 3000 characters: longer texts are cut.

use serde_json::{Value, json};

use super::{details, fit};
use crate::Milestone;
use crate::text::headline;

/// The most a block's text field may hold.
const MAX_TEXT: usize = 3_000;

/// `text` escaped for mrkdwn, cut to `max`.
fn mrkdwn(text: &str, max: usize) -> String {
    fit(text, max, |c| match c {
        '&' => Some("&amp;"),
        '<' => Some("&lt;"),
        '>' => Some("&gt;"),
        _ => None,
    })
}

/// The body announcing `m`.
pub fn body(m: &Milestone) -> Value {
    let sentence = mrkdwn(&headline(m), MAX_TEXT);
    let facts = details(m)
        .into_iter()
        .map(|(label, value)| format!("*{label}:* {value}"))
        .collect::<Vec<_>>()
        .join("  |  ");
    json!({
        "text": sentence,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": sentence}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": mrkdwn(&facts, MAX_TEXT)}]},
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tests::{HOSTILE, milestone};
    use crate::format::units;

    #[test]
    fn texts_are_escaped_mrkdwn_with_the_sentence_and_the_details() {
        let body = body(&milestone(HOSTILE));
        let text = body["text"].as_str().unwrap();
        assert_eq!(
            text,
            "通义/qwen-max-中文 \"x\" &lt;b&gt;&amp;&lt;/b&gt; &lt;script&gt;alert(1)&lt;/script&gt; \
             @everyone &lt;!channel&gt; :tada: set the highest daily total of any model on \
             2026-11-27: 1.5T tokens (was 1.2T, 通义/qwen-max-中文 \"x\" &lt;b&gt;&amp;&lt;/b&gt; \
             &lt;script&gt;alert(1)&lt;/script&gt; @everyone &lt;!channel&gt; :tada:)"
        );
        let blocks = body["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0]["type"], "section");
        assert_eq!(blocks[0]["text"]["type"], "mrkdwn");
        assert_eq!(blocks[0]["text"]["text"], text);
        assert_eq!(blocks[1]["type"], "context");
        let facts = blocks[1]["elements"][0]["text"].as_str().unwrap();
        assert_eq!(blocks[1]["elements"][0]["type"], "mrkdwn");
        assert!(
            facts.starts_with("*type:* record  |  *model:* 通义"),
            "{facts}"
        );
        assert!(
            facts.contains("*value:* 1.5T (1500000000000 tokens)"),
            "{facts}"
        );
        assert!(
            facts.contains("*id:* record:top_model:2026-11-27:通义"),
            "{facts}"
        );
        // Nothing of the name is markup any more: every < > & is an entity.
        for t in [text, facts] {
            let bare = t
                .replace("&amp;", "")
                .replace("&lt;", "")
                .replace("&gt;", "");
            assert!(!bare.contains(['<', '>', '&']), "{t}");
        }
    }

    #[test]
    fn long_names_are_cut_to_the_block_limit_without_breaking_an_entity() {
        let body = body(&milestone(&"<&>".repeat(2_000)));
        for t in [
            &body["text"],
            &body["blocks"][0]["text"]["text"],
            &body["blocks"][1]["elements"][0]["text"],
        ] {
            let t = t.as_str().unwrap();
            assert!(units(t) <= MAX_TEXT, "{}", units(t));
            assert!(t.ends_with('…'));
            let cut = t.trim_end_matches('…');
            assert!(
                cut.ends_with("&lt;") || cut.ends_with("&amp;") || cut.ends_with("&gt;"),
                "{}",
                &cut[cut.len() - 10..]
            );
        }
    }
}
