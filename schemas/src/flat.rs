//! The fast path of [`decode`](crate::decode): one forward pass over a
//! compact, flat event, as every emitter we ship writes them.
//!
//! It accepts a strict subset of JSON: an object with no whitespace whose
//! keys are known fields given once each, whose strings contain no escapes
//! or control characters, whose numbers are unsigned integers written
//! without sign, fraction or exponent, and whose values pass validation.
//! Anything else — whitespace, an escape, an unknown or repeated key, a
//! float, an RFC 3339 `ts`, a value validation refuses, malformed JSON —
//! returns `None`, and the general decoder (sonic-rs) decides, so rejections
//! keep their exact reasons. A document this path accepts decodes to the
//! same event the general decoder would return; the tests compare the two
//! on generated and mutated documents.
//!
//! Measured on the fleet corpus (`cargo bench --bench core`, group
//! `decode`): about 3× the throughput of the general decoder.

use std::borrow::Cow;

use crate::event::{
    Field, Limits, MAX_EVENT_ID_BYTES, MAX_NAME_BYTES, MAX_TS_MS, Status, TokenEvent,
};

/// Decode `text` if it is a compact flat event that passes validation, or
/// return `None` to leave it to the general decoder.
pub(crate) fn decode<'a>(text: &'a str, limits: &Limits) -> Option<TokenEvent<'a>> {
    let b = text.as_bytes();
    if b.len() < 2 || b[0] != b'{' || b[b.len() - 1] != b'}' {
        return None;
    }
    let max_tokens = limits.max_tokens;
    let mut ev = Partial::default();
    let mut seen = 0u16;
    let mut at = 1;
    // The field emitters write next: `TokenEvent`'s serialization order.
    let mut next = 0;
    loop {
        // A key, compared whole against the predicted one, else scanned.
        let field = match PREDICTED.get(next) {
            Some(&(field, key)) if starts_with_at(b, at, key) => {
                at += key.len();
                field
            }
            _ => {
                if *b.get(at)? != b'"' {
                    return None;
                }
                let key_end = string_end(b, at + 1)?;
                let field = Field::from_key(&text[at + 1..key_end]);
                if matches!(field, Field::Unknown) || *b.get(key_end + 1)? != b':' {
                    return None;
                }
                at = key_end + 2;
                field
            }
        };
        next = field as usize + 1;
        let bit = 1u16 << (field as u16);
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
        // Its value.
        let value = match *b.get(at)? {
            b'"' => {
                let end = string_end(b, at + 1)?;
                let s = &text[at + 1..end];
                at = end + 1;
                Value::Str(s)
            }
            b'0'..=b'9' => {
                let (v, end) = integer(b, at)?;
                at = end;
                Value::Int(v)
            }
            b'n' if b.get(at..at + 4)? == b"null" => {
                at += 4;
                Value::Null
            }
            _ => return None,
        };
        match (field, value) {
            (Field::EventId, Value::Str(s)) if !s.is_empty() && s.len() <= MAX_EVENT_ID_BYTES => {
                ev.event_id = Some(s)
            }
            (Field::Model, Value::Str(s)) if !s.is_empty() && s.len() <= MAX_NAME_BYTES => {
                ev.model = Some(s)
            }
            (Field::Provider, Value::Str(s)) if !s.is_empty() && s.len() <= MAX_NAME_BYTES => {
                ev.provider = Some(s)
            }
            (Field::App | Field::Node | Field::Region | Field::Status, Value::Null) => {}
            (Field::App, Value::Str(s)) if s.len() <= MAX_NAME_BYTES => ev.app = Some(s),
            (Field::Node, Value::Str(s)) if s.len() <= MAX_NAME_BYTES => ev.node = Some(s),
            (Field::Region, Value::Str(s)) if s.len() <= MAX_NAME_BYTES => ev.region = Some(s),
            (Field::Status, Value::Str("ok")) => ev.status = Status::Ok,
            (Field::Status, Value::Str("error")) => ev.status = Status::Error,
            (Field::Ts, Value::Int(v)) if v <= MAX_TS_MS as u64 => ev.ts = Some(v as i64),
            (Field::PromptTokens, Value::Int(v)) if v <= max_tokens => ev.prompt_tokens = Some(v),
            (Field::CompletionTokens, Value::Int(v)) if v <= max_tokens => {
                ev.completion_tokens = Some(v)
            }
            (Field::CachedTokens | Field::ReasoningTokens | Field::LatencyMs, Value::Null) => {}
            (Field::CachedTokens, Value::Int(v)) if v <= max_tokens => ev.cached_tokens = v,
            (Field::ReasoningTokens, Value::Int(v)) if v <= max_tokens => ev.reasoning_tokens = v,
            (Field::LatencyMs, Value::Int(v)) => ev.latency_ms = Some(v),
            _ => return None,
        }
        match *b.get(at)? {
            b',' => at += 1,
            b'}' if at == b.len() - 1 => break,
            _ => return None,
        }
    }
    Some(TokenEvent {
        event_id: Cow::Borrowed(ev.event_id?),
        ts: ev.ts?,
        model: Cow::Borrowed(ev.model?),
        provider: Cow::Borrowed(ev.provider?),
        app: Cow::Borrowed(ev.app.unwrap_or("")),
        node: ev.node.map(Cow::Borrowed),
        region: ev.region.map(Cow::Borrowed),
        prompt_tokens: ev.prompt_tokens?,
        completion_tokens: ev.completion_tokens?,
        cached_tokens: ev.cached_tokens,
        reasoning_tokens: ev.reasoning_tokens,
        latency_ms: ev.latency_ms,
        status: ev.status,
    })
}

#[derive(Default)]
struct Partial<'a> {
    event_id: Option<&'a str>,
    ts: Option<i64>,
    model: Option<&'a str>,
    provider: Option<&'a str>,
    app: Option<&'a str>,
    node: Option<&'a str>,
    region: Option<&'a str>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    cached_tokens: u64,
    reasoning_tokens: u64,
    latency_ms: Option<u64>,
    status: Status,
}

enum Value<'a> {
    Str(&'a str),
    Int(u64),
    Null,
}

/// Each field with its key as written (quotes and colon included), in the
/// order `TokenEvent` serializes them, which is `Field`'s order.
const PREDICTED: [(Field, &[u8]); 13] = [
    (Field::EventId, b"\"event_id\":"),
    (Field::Ts, b"\"ts\":"),
    (Field::Model, b"\"model\":"),
    (Field::Provider, b"\"provider\":"),
    (Field::App, b"\"app\":"),
    (Field::Node, b"\"node\":"),
    (Field::Region, b"\"region\":"),
    (Field::PromptTokens, b"\"prompt_tokens\":"),
    (Field::CompletionTokens, b"\"completion_tokens\":"),
    (Field::CachedTokens, b"\"cached_tokens\":"),
    (Field::ReasoningTokens, b"\"reasoning_tokens\":"),
    (Field::LatencyMs, b"\"latency_ms\":"),
    (Field::Status, b"\"status\":"),
];

/// `b[at..]` starts with `key`, a key of [`PREDICTED`] (4 to 24 bytes):
/// two or three overlapping word compares instead of a `memcmp` call.
#[inline(always)]
fn starts_with_at(b: &[u8], at: usize, key: &[u8]) -> bool {
    let n = key.len();
    debug_assert!((4..=24).contains(&n));
    let Some(s) = b.get(at..at + n) else {
        return false;
    };
    let word = |x: &[u8], i: usize| u64::from_le_bytes(x[i..i + 8].try_into().expect("8 bytes"));
    let half = |x: &[u8], i: usize| u32::from_le_bytes(x[i..i + 4].try_into().expect("4 bytes"));
    if n >= 8 {
        word(s, 0) == word(key, 0)
            && word(s, n - 8) == word(key, n - 8)
            && (n <= 16 || word(s, 8) == word(key, 8))
    } else {
        half(s, 0) == half(key, 0) && half(s, n - 4) == half(key, n - 4)
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The index of the quote closing a string whose contents start at `from`,
/// or `None` if the string has an escape or a control character (or does
/// not end). The input is valid UTF-8, and a quote byte is never part of a
/// multi-byte character, so the contents are a valid `str`.
///
/// Eight bytes at a time: each mask flags the bytes equal to `"` or `\`,
/// or below 0x20. A mask may also flag bytes *after* a true hit (borrows
/// carry upwards), never before one, so its lowest flag is a true hit.
fn string_end(b: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(chunk) = b.get(at..at + 8) {
        let v = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let quote = v ^ (ONES * u64::from(b'"'));
        let backslash = v ^ (ONES * u64::from(b'\\'));
        let hits = (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (v.wrapping_sub(ONES * 0x20) & !v);
        let hits = hits & HIGHS;
        if hits != 0 {
            let end = at + (hits.trailing_zeros() / 8) as usize;
            return (b[end] == b'"').then_some(end);
        }
        at += 8;
    }
    for (i, &c) in b.get(at..)?.iter().enumerate() {
        if c == b'"' {
            return Some(at + i);
        }
        if c == b'\\' || c < 0x20 {
            return None;
        }
    }
    None
}

/// An unsigned JSON integer starting at `from` (a digit) and the index after
/// it, which must hold a `,` or `}`. `None` for a leading zero, a fraction or
/// exponent, or a value above `u64::MAX` (the general decoder handles those).
fn integer(b: &[u8], from: usize) -> Option<(u64, usize)> {
    let mut v = 0u64;
    let mut at = from;
    while let Some(&c) = b.get(at) {
        if !c.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        at += 1;
    }
    if b[from] == b'0' && at - from > 1 {
        return None;
    }
    match b.get(at) {
        Some(b',' | b'}') => Some((v, at)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode_general;
    use proptest::prelude::*;

    fn both<'a>(
        json: &'a str,
        limits: &Limits,
    ) -> (Option<TokenEvent<'a>>, Option<TokenEvent<'a>>) {
        (decode(json, limits), decode_general(json, limits).ok())
    }

    /// The fast path either declines or agrees with the general decoder.
    fn agrees(json: &str, limits: &Limits) -> Result<bool, TestCaseError> {
        let (fast, general) = both(json, limits);
        match fast {
            None => Ok(false),
            Some(ev) => {
                prop_assert_eq!(Some(ev), general, "fast path accepted {:?}", json);
                Ok(true)
            }
        }
    }

    #[test]
    fn what_emitters_write_takes_the_fast_path() {
        let limits = Limits::default();
        for json in [
            r#"{"event_id":"e1","ts":1764251101123,"model":"m","provider":"p","prompt_tokens":10,"completion_tokens":5}"#,
            r#"{"event_id":"3f2a-01","ts":0,"model":"qwen/qwen3.6-plus","provider":"Alibaba","app":"","node":"node-07","region":"eu-west","prompt_tokens":0,"completion_tokens":100000000,"cached_tokens":3,"reasoning_tokens":0,"latency_ms":18446744073709551615,"status":"error"}"#,
            r#"{"model":"通义千问","app":null,"status":null,"latency_ms":null,"provider":"p","completion_tokens":1,"prompt_tokens":2,"ts":4291747199999,"event_id":"é"}"#,
        ] {
            let (fast, general) = both(json, &limits);
            assert!(fast.is_some(), "{json}");
            assert_eq!(fast, general, "{json}");
        }
    }

    #[test]
    fn anything_else_is_left_to_the_general_decoder() {
        let limits = Limits::default();
        let base = r#""event_id":"e","ts":1,"model":"m","provider":"p","prompt_tokens":1,"completion_tokens":1"#;
        for json in [
            format!("{{{base}}} "),
            format!(" {{{base}}}"),
            format!("{{{base},\"app\" :\"a\"}}"),
            format!("{{{base},\"app\":\"a\\\"b\"}}"),
            format!("{{{base},\"app\":\"a\tb\"}}"),
            format!("{{{base},\"extra\":1}}"),
            format!("{{{base},\"model\":\"m\"}}"),
            format!("{{{base},\"cached_tokens\":1.0}}"),
            format!("{{{base},\"cached_tokens\":1e2}}"),
            format!("{{{base},\"cached_tokens\":01}}"),
            format!("{{{base},\"cached_tokens\":-1}}"),
            format!("{{{base},\"cached_tokens\":100000001}}"),
            format!("{{{base},\"latency_ms\":18446744073709551616}}"),
            format!("{{{base},\"status\":\"maybe\"}}"),
            format!("{{{base},\"model_x\":null}}"),
            format!("{{{base},}}"),
            format!("{{{base},\"app\":nul}}"),
            format!("{{{base},\"app\":true}}"),
            base.replace("\"ts\":1", "\"ts\":\"2026-11-27T13:45:01Z\""),
            base.replace("\"ts\":1", "\"ts\":4291747200000"),
            base.replace("\"model\":\"m\"", "\"model\":\"\""),
            base.replace("\"model\":\"m\"", "\"model\":null"),
            base.replace(",\"completion_tokens\":1", ""),
            "{}".into(),
            "{\"event_id\":\"e\"".into(),
        ] {
            let json = if json.starts_with('{') {
                json
            } else {
                format!("{{{json}}}")
            };
            assert!(decode(&json, &limits).is_none(), "{json}");
        }
    }

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            20 => "[a-z0-9./-]{1,24}",
            1 => "[ -~]{0,12}",
            1 => ".{0,6}",
            1 => Just(String::new()),
            1 => Just("x".repeat(257)),
        ]
        .prop_map(|s| serde_json::to_string(&s).unwrap())
    }

    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            20 => (0u64..1_000_000).prop_map(|v| v.to_string()),
            1 => any::<u64>().prop_map(|v| v.to_string()),
            1 => (0u64..200_000_000).prop_map(|v| v.to_string()),
            1 => Just("0".into()),
            1 => Just("-0".into()),
            1 => Just("00".into()),
            1 => Just("1.5".into()),
            1 => Just("2e3".into()),
            1 => Just("18446744073709551616".into()),
        ]
    }

    /// Mostly a value of the key's type, sometimes any other kind.
    fn value(key: &str) -> BoxedStrategy<String> {
        let other = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("[1]".to_string()),
            Just("{}".to_string()),
        ];
        match key {
            "status" => prop_oneof![
                4 => Just("\"ok\"".to_string()),
                4 => Just("\"error\"".to_string()),
                1 => Just("\"maybe\"".to_string()),
                1 => number(),
                1 => other,
            ]
            .boxed(),
            "ts" | "prompt_tokens" | "completion_tokens" | "cached_tokens" | "reasoning_tokens"
            | "latency_ms" => prop_oneof![20 => number(), 1 => name(), 1 => other].boxed(),
            "other" => prop_oneof![number(), name(), other].boxed(),
            _ => prop_oneof![20 => name(), 1 => number(), 1 => other].boxed(),
        }
    }

    /// The name of field `k` (serialization order), or an unknown key for
    /// `k == 13`.
    fn key_name(k: usize) -> &'static str {
        PREDICTED.get(k).map_or("other", |(field, _)| field.name())
    }

    #[test]
    fn predicted_keys_are_the_fields_in_serialization_order() {
        for (i, (field, key)) in PREDICTED.iter().enumerate() {
            assert_eq!(*field as usize, i);
            assert_eq!(*key, format!("\"{}\":", field.name()).as_bytes());
        }
        // What `TokenEvent` writes, with every optional field present.
        let ev = decode_general(
            r#"{"event_id":"e","ts":1,"model":"m","provider":"p","node":"n","region":"r","prompt_tokens":1,"completion_tokens":1,"latency_ms":3}"#,
            &Limits::default(),
        )
        .unwrap();
        let written = serde_json::to_string(&ev).unwrap();
        let order: Vec<usize> = PREDICTED
            .iter()
            .map(|(_, k)| written.find(std::str::from_utf8(k).unwrap()).unwrap())
            .collect();
        assert!(order.is_sorted(), "{written}");
    }

    /// A flat object: mostly the required fields, in any order, sometimes
    /// repeated or missing, with values mostly of the right kind.
    fn document() -> impl Strategy<Value = String> {
        let required = Just(vec![0usize, 1, 2, 3, 7, 8]).prop_shuffle();
        let key = prop_oneof![
            9 => prop::sample::select(vec![4usize, 5, 6, 9, 10, 11, 12]),
            1 => 0usize..=PREDICTED.len(),
        ];
        let extra = proptest::collection::vec(key, 0..4);
        (required, extra, 0usize..12)
            .prop_flat_map(|(req, extra, drop)| {
                let mut keys: Vec<usize> = req.into_iter().chain(extra).collect();
                if drop < keys.len() && drop % 3 == 0 {
                    keys.remove(drop);
                }
                let values: Vec<_> = keys.iter().map(|&k| value(key_name(k))).collect();
                (Just(keys), values)
            })
            .prop_map(|(keys, values)| {
                let fields: Vec<String> = keys
                    .iter()
                    .zip(values)
                    .map(|(&k, v)| format!("\"{}\":{v}", key_name(k)))
                    .collect();
                format!("{{{}}}", fields.join(","))
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn the_fast_path_never_disagrees(doc in document(), max in prop_oneof![Just(100_000_000u64), 0u64..1000]) {
            agrees(&doc, &Limits { max_tokens: max, ..Limits::default() })?;
        }

        /// Single-byte edits of an accepted event: whatever the fast path
        /// still accepts, the general decoder decodes the same way.
        #[test]
        fn mutations_never_disagree(at in any::<prop::sample::Index>(), byte in prop_oneof![
            Just(b' '), Just(b'"'), Just(b'\\'), Just(b','), Just(b':'), Just(b'}'), Just(b'{'),
            Just(b'0'), Just(b'9'), Just(b'-'), Just(b'.'), Just(b'e'), Just(b'n'), Just(b'\t'), any::<u8>()
        ], delete in any::<bool>()) {
            let base = r#"{"event_id":"0000002a-0000000001","ts":1795737600123,"model":"qwen/qwen3.6-plus","provider":"Alibaba","app":"chat","node":"node-07","region":"eu-west","prompt_tokens":1200,"completion_tokens":450,"cached_tokens":0,"reasoning_tokens":0,"latency_ms":209,"status":"ok"}"#;
            let mut bytes = base.as_bytes().to_vec();
            let i = at.index(bytes.len());
            if delete { bytes.remove(i); } else { bytes[i] = byte; }
            if let Ok(json) = std::str::from_utf8(&bytes) {
                agrees(json, &Limits::default())?;
            }
        }
    }

    proptest! {
        /// The eight-bytes-at-a-time scan finds what a byte loop finds.
        #[test]
        fn string_end_matches_a_byte_loop(
            bytes in proptest::collection::vec(prop_oneof![
                6 => 0x21u8..0x7f, 1 => Just(b'"'), 1 => Just(b'\\'), 1 => 0u8..0x20, 1 => 0x80u8..=0xff,
            ], 0..40),
            from in 0usize..10,
        ) {
            let expected = bytes.get(from..).and_then(|rest| {
                let i = rest.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
                (rest[i] == b'"').then_some(from + i)
            });
            prop_assert_eq!(string_end(&bytes, from), expected);
        }
    }

    #[test]
    fn generated_documents_do_reach_the_fast_path() {
        // Guard against a generator that only ever exercises the fallback.
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let strategy = document();
        let accepted = (0..2000)
            .filter(|_| {
                let doc = strategy.new_tree(&mut runner).unwrap().current();
                decode(&doc, &Limits::default()).is_some()
            })
            .count();
        assert!(
            (100..1900).contains(&accepted),
            "{accepted} of 2000 took the fast path"
        );
    }
}
