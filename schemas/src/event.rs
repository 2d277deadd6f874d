//! The event contract: one JSON object per inference request.
//!
//! [`decode`] turns one raw JSON document into a validated [`TokenEvent`] or a
//! [`Rejection`] that says, machine-readably, why it was refused. Decoding is
//! the hot path, so strings borrow from the input whenever they contain no
//! escapes, and the first problem found ends the parse.
//!
//! Why one long file: the contract, its streaming decoder and its
//! validation must agree field by field, so they sit together; about 300 of
//! its lines are the tests that hold them to each other.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::reject::{RejectReason, Rejection};

/// Maximum length in bytes of `event_id`.
pub const MAX_EVENT_ID_BYTES: usize = 128;
/// Maximum length in bytes of `model`, `provider`, `app`, `node` and `region`.
pub const MAX_NAME_BYTES: usize = 256;
/// Largest accepted epoch-millisecond timestamp (2105-12-31T23:59:59.999Z):
/// the last day ClickHouse `Date` and `DateTime` columns can hold on every
/// server version.
pub const MAX_TS_MS: i64 = 4_291_747_199_999;
/// Milliseconds in a UTC day.
pub const MS_PER_DAY: i64 = 86_400_000;
/// Milliseconds in a minute.
pub const MS_PER_MINUTE: i64 = 60_000;

/// Bounds applied during validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Upper bound (inclusive) for `prompt_tokens`, `completion_tokens`,
    /// `cached_tokens` and `reasoning_tokens`. Default 100,000,000.
    pub max_tokens: u64,
    /// Deepest nesting of arrays and objects in a record (the event object
    /// itself is depth 1); deeper records are refused as `too_deep` before
    /// any parsing. Default 32: the parser recurses once per level, and a
    /// debug build's frames are large (at 64 levels, a 2 MiB thread stack
    /// overflowed). Values above 128 count as 128.
    pub max_depth: usize,
    /// Largest record in bytes; larger ones are refused as `too_large`
    /// (their dead letter keeps only the first [`DEAD_LETTER_RAW_BYTES`]).
    /// Default 1 MiB (Kafka's default largest message).
    pub max_record_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_tokens: 100_000_000,
            max_depth: 32,
            max_record_bytes: 1 << 20,
        }
    }
}

/// How much of a record refused as `too_large` its dead letter keeps.
pub const DEAD_LETTER_RAW_BYTES: usize = 4096;

/// The deepest nesting of arrays and objects in `text`, counted outside
/// strings, stopping as soon as it exceeds `max`: `Err(depth)` then. It
/// never recurses and reads each byte once, so any input is safe to scan.
/// Malformed JSON is not its concern (the parser refuses it afterwards).
pub fn check_depth(text: &[u8], max: usize) -> Result<(), usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(depth);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Outcome of a request, a dimension of the roll-ups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Ok,
    Error,
}

/// One validated token-usage event. Strings borrow from the decoded input
/// where possible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenEvent<'a> {
    pub event_id: Cow<'a, str>,
    /// Event time in Unix epoch milliseconds (UTC).
    pub ts: i64,
    pub model: Cow<'a, str>,
    pub provider: Cow<'a, str>,
    pub app: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<Cow<'a, str>>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    pub status: Status,
}

impl TokenEvent<'_> {
    /// `prompt_tokens + completion_tokens`.
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    /// The UTC day of `ts`, as days since 1970-01-01.
    pub fn day(&self) -> i32 {
        day_of(self.ts)
    }

    /// The start of the UTC minute of `ts`, in epoch milliseconds.
    pub fn minute_ms(&self) -> i64 {
        self.ts - self.ts.rem_euclid(MS_PER_MINUTE)
    }

    /// The contract's rules for an event built in code rather than decoded
    /// (the OTLP mapping), with the reasons [`decode`] gives: its fields'
    /// lengths and bounds. The size of its record is [`check_size`]'s,
    /// once it is written.
    pub fn check(&self, limits: &Limits) -> Result<(), Rejection> {
        name_rule("event_id", &self.event_id, MAX_EVENT_ID_BYTES, false)?;
        name_rule("model", &self.model, MAX_NAME_BYTES, false)?;
        name_rule("provider", &self.provider, MAX_NAME_BYTES, false)?;
        name_rule("app", &self.app, MAX_NAME_BYTES, true)?;
        for (name, v) in [("node", &self.node), ("region", &self.region)] {
            if let Some(v) = v {
                name_rule(name, v, MAX_NAME_BYTES, true)?;
            }
        }
        if !(0..=MAX_TS_MS).contains(&self.ts) {
            return Err(Rejection::new(
                RejectReason::InvalidTs,
                Some("ts"),
                format!("`ts` {} is outside 1970-01-01..=2105-12-31", self.ts),
            ));
        }
        for (name, v) in [
            ("prompt_tokens", self.prompt_tokens),
            ("completion_tokens", self.completion_tokens),
            ("cached_tokens", self.cached_tokens),
            ("reasoning_tokens", self.reasoning_tokens),
        ] {
            count_rule(name, v, limits.max_tokens)?;
        }
        Ok(())
    }
}

/// A record of `len` bytes is within `limits.max_record_bytes`.
pub fn check_size(len: usize, limits: &Limits) -> Result<(), Rejection> {
    if len > limits.max_record_bytes {
        return Err(Rejection::new(
            RejectReason::TooLarge,
            None,
            format!(
                "the record is {len} bytes, above the limit of {} (aggregate.limits.max_record_bytes)",
                limits.max_record_bytes
            ),
        ));
    }
    Ok(())
}

/// A name field: at most `max` bytes, and not empty unless `empty_ok`.
fn name_rule(name: &'static str, v: &str, max: usize, empty_ok: bool) -> Result<(), Rejection> {
    if v.is_empty() && !empty_ok {
        return Err(Rejection::new(
            RejectReason::EmptyValue,
            Some(name),
            format!("`{name}` must not be empty"),
        ));
    }
    if v.len() > max {
        return Err(Rejection::new(
            RejectReason::TooLong,
            Some(name),
            format!("`{name}` is {} bytes, more than {max}", v.len()),
        ));
    }
    Ok(())
}

/// A count: at most `max`.
fn count_rule(name: &'static str, v: u64, max: u64) -> Result<u64, Rejection> {
    if v > max {
        return Err(Rejection::new(
            RejectReason::OutOfRange,
            Some(name),
            format!("`{name}` is {v}, above the maximum {max}"),
        ));
    }
    Ok(v)
}

/// The UTC day of an epoch-millisecond timestamp, as days since 1970-01-01.
pub fn day_of(ts_ms: i64) -> i32 {
    ts_ms.div_euclid(MS_PER_DAY) as i32
}

/// Decode and validate one JSON document against the contract.
///
/// The document is checked to be UTF-8 once. A compact flat event that
/// passes validation — what emitters write — is then decoded in one forward
/// pass (see `flat.rs`); anything else is parsed with sonic-rs (SIMD) through
/// a hand-written visitor, which accepts any valid JSON layout and names the
/// reason for a rejection. See `cargo bench --bench core`.
pub fn decode<'a>(input: &'a [u8], limits: &Limits) -> Result<TokenEvent<'a>, Rejection> {
    check_size(input.len(), limits)?;
    let text = std::str::from_utf8(input).map_err(|e| {
        Rejection::new(
            RejectReason::InvalidJson,
            None,
            format!("not valid UTF-8: {e}"),
        )
    })?;
    match crate::flat::decode(text, limits) {
        Some(ev) => Ok(ev),
        None => {
            // The parser recurses per level: bound the depth before it runs.
            let max_depth = limits.max_depth.min(128);
            check_depth(input, max_depth).map_err(|_| {
                Rejection::new(
                    RejectReason::TooDeep,
                    None,
                    format!(
                        "arrays or objects nested deeper than {max_depth} levels (aggregate.limits.max_depth)"
                    ),
                )
            })?;
            decode_general(text, limits)
        }
    }
}

/// The general decoder: any JSON layout, every rejection with its reason.
pub(crate) fn decode_general<'a>(
    text: &'a str,
    limits: &Limits,
) -> Result<TokenEvent<'a>, Rejection> {
    let state = ParseState {
        limits,
        field: Cell::new(None),
        rejection: Cell::new(None),
    };
    let mut de = sonic_rs::Deserializer::from_str(text);
    let parsed = EventSeed { state: &state }.deserialize(&mut de);
    let parsed = parsed.and_then(|ev| de.end().map(|()| ev));
    match parsed {
        Ok(ev) => Ok(ev),
        Err(err) => Err(classify(err, &state)),
    }
}

fn classify(err: sonic_rs::Error, state: &ParseState<'_>) -> Rejection {
    if let Some(rejection) = state.rejection.take() {
        return rejection;
    }
    use sonic_rs::error::Category;
    match (err.classify(), state.field.get()) {
        (Category::TypeUnmatched, Some(field)) => Rejection::new(
            RejectReason::WrongType,
            Some(field),
            format!("`{field}` has the wrong type: {err}"),
        ),
        (Category::TypeUnmatched, None) => Rejection::new(
            RejectReason::NotAnObject,
            None,
            format!("the event must be a JSON object: {err}"),
        ),
        _ => Rejection::new(RejectReason::InvalidJson, None, err.to_string()),
    }
}

struct ParseState<'l> {
    limits: &'l Limits,
    /// The field whose value is being parsed, for error attribution.
    field: Cell<Option<&'static str>>,
    /// A validation failure found by the visitor (takes precedence).
    rejection: Cell<Option<Rejection>>,
}

impl ParseState<'_> {
    fn reject<E: de::Error>(&self, reason: RejectReason, field: &'static str, detail: String) -> E {
        self.fail(Rejection::new(reason, Some(field), detail))
    }

    fn fail<E: de::Error>(&self, rejection: Rejection) -> E {
        self.rejection.set(Some(rejection));
        E::custom("rejected")
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Field {
    EventId,
    Ts,
    Model,
    Provider,
    App,
    Node,
    Region,
    PromptTokens,
    CompletionTokens,
    CachedTokens,
    ReasoningTokens,
    LatencyMs,
    Status,
    Unknown,
}

impl Field {
    /// Matching string literals lets the compiler dispatch on length and
    /// compare inline (no `memcmp` call): this runs for every key.
    pub(crate) fn from_key(key: &str) -> Field {
        match key {
            "ts" => Field::Ts,
            "app" => Field::App,
            "node" => Field::Node,
            "model" => Field::Model,
            "region" => Field::Region,
            "status" => Field::Status,
            "event_id" => Field::EventId,
            "provider" => Field::Provider,
            "latency_ms" => Field::LatencyMs,
            "prompt_tokens" => Field::PromptTokens,
            "cached_tokens" => Field::CachedTokens,
            "reasoning_tokens" => Field::ReasoningTokens,
            "completion_tokens" => Field::CompletionTokens,
            _ => Field::Unknown,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Field::EventId => "event_id",
            Field::Ts => "ts",
            Field::Model => "model",
            Field::Provider => "provider",
            Field::App => "app",
            Field::Node => "node",
            Field::Region => "region",
            Field::PromptTokens => "prompt_tokens",
            Field::CompletionTokens => "completion_tokens",
            Field::CachedTokens => "cached_tokens",
            Field::ReasoningTokens => "reasoning_tokens",
            Field::LatencyMs => "latency_ms",
            Field::Status => "status",
            Field::Unknown => "",
        }
    }
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
                Ok(Field::from_key(v))
            }
        }
        d.deserialize_identifier(FieldVisitor)
    }
}

/// A string value that borrows from the input when it has no escapes.
struct Str<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(StrVisitor)
    }
}

/// A JSON number as written: an integer (possibly negative) or not.
enum Num {
    Unsigned(u64),
    Negative,
    Float(f64),
}

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NumVisitor;
        impl Visitor<'_> for NumVisitor {
            type Value = Num;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Num, E> {
                Ok(Num::Unsigned(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Num, E> {
                Ok(if v < 0 {
                    Num::Negative
                } else {
                    Num::Unsigned(v as u64)
                })
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Num, E> {
                Ok(Num::Float(v))
            }
        }
        d.deserialize_any(NumVisitor)
    }
}

/// `ts` as written: epoch milliseconds or an RFC 3339 string.
enum Ts<'de> {
    Num(Num),
    Text(Str<'de>),
}

impl<'de> Deserialize<'de> for Ts<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TsVisitor;
        impl<'de> Visitor<'de> for TsVisitor {
            type Value = Ts<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("epoch milliseconds or an RFC 3339 string")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Ts<'de>, E> {
                Ok(Ts::Num(Num::Unsigned(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Ts<'de>, E> {
                Ok(Ts::Num(if v < 0 {
                    Num::Negative
                } else {
                    Num::Unsigned(v as u64)
                }))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Ts<'de>, E> {
                Ok(Ts::Num(Num::Float(v)))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Ts<'de>, E> {
                Ok(Ts::Text(Str(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Ts<'de>, E> {
                Ok(Ts::Text(Str(Cow::Owned(v.to_owned()))))
            }
        }
        d.deserialize_any(TsVisitor)
    }
}

struct EventSeed<'s, 'l> {
    state: &'s ParseState<'l>,
}

impl<'de> DeserializeSeed<'de> for EventSeed<'_, '_> {
    type Value = TokenEvent<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

#[derive(Default)]
struct Partial<'de> {
    event_id: Option<Cow<'de, str>>,
    ts: Option<i64>,
    model: Option<Cow<'de, str>>,
    provider: Option<Cow<'de, str>>,
    app: Option<Cow<'de, str>>,
    node: Option<Cow<'de, str>>,
    region: Option<Cow<'de, str>>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    cached_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
    latency_ms: Option<u64>,
    status: Option<Status>,
    /// Bit per known field, to refuse a field given twice.
    seen: u16,
}

impl<'de> Visitor<'de> for EventSeed<'_, '_> {
    type Value = TokenEvent<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let st = self.state;
        let max_tokens = st.limits.max_tokens;
        let mut p = Partial::default();
        while let Some(field) = map.next_key::<Field>()? {
            if let Field::Unknown = field {
                st.field.set(None);
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let name = field.name();
            let bit = 1u16 << (field as u16);
            if p.seen & bit != 0 {
                return Err(st.reject(
                    RejectReason::DuplicateField,
                    name,
                    format!("`{name}` appears more than once"),
                ));
            }
            p.seen |= bit;
            st.field.set(Some(name));
            match field {
                Field::EventId => {
                    let v = map.next_value::<Str>()?.0;
                    check_name(st, name, &v, MAX_EVENT_ID_BYTES, false)?;
                    p.event_id = Some(v);
                }
                Field::Model | Field::Provider => {
                    let v = map.next_value::<Str>()?.0;
                    check_name(st, name, &v, MAX_NAME_BYTES, false)?;
                    if let Field::Model = field {
                        p.model = Some(v);
                    } else {
                        p.provider = Some(v);
                    }
                }
                Field::App | Field::Node | Field::Region => {
                    let Some(v) = map.next_value::<Option<Str>>()? else {
                        continue;
                    };
                    check_name(st, name, &v.0, MAX_NAME_BYTES, true)?;
                    match field {
                        Field::App => p.app = Some(v.0),
                        Field::Node => p.node = Some(v.0),
                        _ => p.region = Some(v.0),
                    }
                }
                Field::Ts => {
                    let ts = map.next_value::<Ts>()?;
                    p.ts = Some(check_ts(st, ts)?);
                }
                Field::PromptTokens | Field::CompletionTokens => {
                    let v = check_int(st, name, map.next_value::<Num>()?, max_tokens)?;
                    if let Field::PromptTokens = field {
                        p.prompt_tokens = Some(v);
                    } else {
                        p.completion_tokens = Some(v);
                    }
                }
                Field::CachedTokens | Field::ReasoningTokens | Field::LatencyMs => {
                    let Some(num) = map.next_value::<Option<Num>>()? else {
                        continue;
                    };
                    let bound = if let Field::LatencyMs = field {
                        u64::MAX
                    } else {
                        max_tokens
                    };
                    let v = check_int(st, name, num, bound)?;
                    match field {
                        Field::CachedTokens => p.cached_tokens = Some(v),
                        Field::ReasoningTokens => p.reasoning_tokens = Some(v),
                        _ => p.latency_ms = Some(v),
                    }
                }
                Field::Status => {
                    let Some(v) = map.next_value::<Option<Str>>()? else {
                        continue;
                    };
                    p.status = Some(match v.0.as_ref() {
                        "ok" => Status::Ok,
                        "error" => Status::Error,
                        other => {
                            return Err(st.reject(
                                RejectReason::InvalidValue,
                                name,
                                format!("`status` must be \"ok\" or \"error\", got {other:?}"),
                            ));
                        }
                    });
                }
                Field::Unknown => unreachable!("handled above"),
            }
        }
        st.field.set(None);
        fn required<T, E: de::Error>(
            st: &ParseState<'_>,
            v: Option<T>,
            name: &'static str,
        ) -> Result<T, E> {
            v.ok_or_else(|| {
                st.reject(
                    RejectReason::MissingField,
                    name,
                    format!("required field `{name}` is missing"),
                )
            })
        }
        Ok(TokenEvent {
            event_id: required(st, p.event_id, "event_id")?,
            ts: required(st, p.ts, "ts")?,
            model: required(st, p.model, "model")?,
            provider: required(st, p.provider, "provider")?,
            prompt_tokens: required(st, p.prompt_tokens, "prompt_tokens")?,
            completion_tokens: required(st, p.completion_tokens, "completion_tokens")?,
            app: p.app.unwrap_or(Cow::Borrowed("")),
            node: p.node,
            region: p.region,
            cached_tokens: p.cached_tokens.unwrap_or(0),
            reasoning_tokens: p.reasoning_tokens.unwrap_or(0),
            latency_ms: p.latency_ms,
            status: p.status.unwrap_or_default(),
        })
    }
}

fn check_name<E: de::Error>(
    st: &ParseState<'_>,
    name: &'static str,
    v: &str,
    max: usize,
    empty_ok: bool,
) -> Result<(), E> {
    name_rule(name, v, max, empty_ok).map_err(|r| st.fail(r))
}

fn check_int<E: de::Error>(
    st: &ParseState<'_>,
    name: &'static str,
    num: Num,
    max: u64,
) -> Result<u64, E> {
    match num {
        Num::Unsigned(v) => count_rule(name, v, max).map_err(|r| st.fail(r)),
        Num::Negative => Err(st.reject(
            RejectReason::OutOfRange,
            name,
            format!("`{name}` must not be negative"),
        )),
        Num::Float(v) if v.fract() == 0.0 && v.abs() >= 1.8e19 => Err(st.reject(
            RejectReason::OutOfRange,
            name,
            format!("`{name}` is {v}, above the maximum {max}"),
        )),
        Num::Float(v) => Err(st.reject(
            RejectReason::NotAnInteger,
            name,
            format!("`{name}` must be written as an integer, got {v}"),
        )),
    }
}

fn check_ts<E: de::Error>(st: &ParseState<'_>, ts: Ts<'_>) -> Result<i64, E> {
    let bad = |detail: String| st.reject(RejectReason::InvalidTs, "ts", detail);
    match ts {
        Ts::Num(Num::Unsigned(v)) if v <= MAX_TS_MS as u64 => Ok(v as i64),
        Ts::Num(Num::Unsigned(v)) => Err(bad(format!(
            "`ts` {v} is after 2105-12-31 (it must be epoch milliseconds)"
        ))),
        Ts::Num(Num::Negative) => Err(bad("`ts` must not be before 1970".into())),
        Ts::Num(Num::Float(v)) => Err(bad(format!(
            "`ts` must be integer epoch milliseconds or an RFC 3339 string, got {v}"
        ))),
        Ts::Text(s) => match chrono::DateTime::parse_from_rfc3339(&s.0) {
            Ok(t) => {
                let ms = t.timestamp_millis();
                if (0..=MAX_TS_MS).contains(&ms) {
                    Ok(ms)
                } else {
                    Err(bad(format!(
                        "`ts` {:?} is outside 1970-01-01..=2105-12-31",
                        s.0
                    )))
                }
            }
            Err(e) => Err(bad(format!(
                "`ts` {:?} is not an RFC 3339 time with offset: {e}",
                s.0
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_refuses_what_decode_refuses_with_the_same_reason() {
        let limits = Limits {
            max_tokens: 1_000,
            ..Limits::default()
        };
        let valid = ok(
            r#"{"event_id":"e","ts":1795737600000,"model":"m","provider":"p","node":"n","prompt_tokens":1,"completion_tokens":2}"#,
        );
        assert_eq!(valid.check(&limits), Ok(()));
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        type Change<'a> = Box<dyn Fn(&mut TokenEvent<'_>) + 'a>;
        let cases: Vec<(&str, Change<'_>)> = vec![
            ("empty event_id", Box::new(|e| e.event_id = "".into())),
            (
                "long event_id",
                Box::new(|e| e.event_id = "e".repeat(129).into()),
            ),
            ("empty model", Box::new(|e| e.model = "".into())),
            (
                "long provider",
                Box::new(|e| e.provider = long.clone().into()),
            ),
            ("long app", Box::new(|e| e.app = long.clone().into())),
            (
                "long node",
                Box::new(|e| e.node = Some(long.clone().into())),
            ),
            ("ts before 1970", Box::new(|e| e.ts = -1)),
            ("ts after 2105", Box::new(|e| e.ts = MAX_TS_MS + 1)),
            ("prompt_tokens", Box::new(|e| e.prompt_tokens = 1_001)),
            ("reasoning_tokens", Box::new(|e| e.reasoning_tokens = 1_001)),
        ];
        for (case, change) in cases {
            let mut event = valid.clone();
            change(&mut event);
            let checked = event.check(&limits).expect_err(case);
            let json = serde_json::to_vec(&event).unwrap();
            let decoded = decode(&json, &limits).expect_err(case);
            assert_eq!(
                (checked.reason, checked.field),
                (decoded.reason, decoded.field),
                "{case}"
            );
        }
        assert_eq!(check_size(1 << 20, &Limits::default()), Ok(()));
        assert_eq!(
            check_size((1 << 20) + 1, &Limits::default())
                .unwrap_err()
                .reason,
            RejectReason::TooLarge
        );
    }

    fn ok(json: &str) -> TokenEvent<'_> {
        decode(json.as_bytes(), &Limits::default()).expect("valid event")
    }

    fn reason(json: &str) -> (RejectReason, Option<&'static str>) {
        let r = decode(json.as_bytes(), &Limits::default()).expect_err("invalid event");
        (r.reason, r.field)
    }

    const BASE: &str = r#""event_id":"e1","ts":1764251101123,"model":"m","provider":"p","prompt_tokens":10,"completion_tokens":5"#;

    fn with(extra: &str) -> String {
        format!("{{{BASE}{extra}}}")
    }

    #[test]
    fn minimal_event_gets_defaults() {
        let json = with("");
        let ev = ok(&json);
        assert_eq!(ev.event_id, "e1");
        assert_eq!(ev.total_tokens(), 15);
        assert_eq!(ev.app, "");
        assert_eq!(ev.status, Status::Ok);
        assert_eq!(ev.cached_tokens, 0);
        assert!(
            matches!(ev.model, Cow::Borrowed(_)),
            "no copy without escapes"
        );
    }

    #[test]
    fn rfc3339_and_epoch_ms_agree() {
        let a = ok(
            r#"{"event_id":"e","ts":"2026-11-27T13:45:01.123Z","model":"m","provider":"p","prompt_tokens":1,"completion_tokens":1}"#,
        );
        let b = ok(
            r#"{"event_id":"e","ts":"2026-11-27T14:45:01.123+01:00","model":"m","provider":"p","prompt_tokens":1,"completion_tokens":1}"#,
        );
        assert_eq!(a.ts, 1_795_787_101_123);
        assert_eq!(a.ts, b.ts);
        assert_eq!(a.day(), 20_784);
        assert_eq!(a.minute_ms(), 1_795_787_100_000);
    }

    #[test]
    fn unknown_fields_nulls_and_escapes_are_fine() {
        let json = with(
            r#","extra":{"nested":[1,2,{"x":null}]},"app":null,"model_note":"x","status":"error","cached_tokens":3"#,
        );
        let ev = ok(&json);
        assert_eq!(ev.status, Status::Error);
        assert_eq!(ev.cached_tokens, 3);
        let esc = ok(
            r#"{"event_id":"e\u00e9","ts":0,"model":"通义\"千问\"","provider":"p","prompt_tokens":0,"completion_tokens":0}"#,
        );
        assert_eq!(esc.model, "通义\"千问\"");
        assert_eq!(esc.event_id, "eé");
    }

    #[test]
    fn each_violation_has_its_reason() {
        use RejectReason::*;
        assert_eq!(reason("not json"), (InvalidJson, None));
        assert_eq!(reason(with("").trim_end_matches('}')), (InvalidJson, None));
        assert_eq!(reason(&format!("{} x", with(""))), (InvalidJson, None));
        assert_eq!(reason("[1,2]"), (NotAnObject, None));
        assert_eq!(reason("42"), (NotAnObject, None));
        assert_eq!(
            reason(
                r#"{"ts":1,"model":"m","provider":"p","prompt_tokens":1,"completion_tokens":1}"#
            ),
            (MissingField, Some("event_id"))
        );
        assert_eq!(
            reason(r#"{"event_id":"e","ts":1,"model":"m","provider":"p","prompt_tokens":1}"#),
            (MissingField, Some("completion_tokens"))
        );
        let r = |field: &str, value: &str| {
            let json = with("").replace(
                &format!("\"{field}\":"),
                &format!("\"{field}\":{value},\"_{field}\":"),
            );
            reason(&json)
        };
        assert_eq!(
            r("prompt_tokens", "\"10\""),
            (WrongType, Some("prompt_tokens"))
        );
        assert_eq!(
            r("prompt_tokens", "-1"),
            (OutOfRange, Some("prompt_tokens"))
        );
        assert_eq!(
            r("prompt_tokens", "1.5"),
            (NotAnInteger, Some("prompt_tokens"))
        );
        assert_eq!(
            r("prompt_tokens", "1e3"),
            (NotAnInteger, Some("prompt_tokens"))
        );
        assert_eq!(
            r("completion_tokens", "100000001"),
            (OutOfRange, Some("completion_tokens"))
        );
        let at_bound =
            with("").replace("\"completion_tokens\":5", "\"completion_tokens\":100000000");
        assert_eq!(
            ok(&at_bound).completion_tokens,
            100_000_000,
            "the bound is inclusive"
        );
        assert_eq!(r("model", "\"\""), (EmptyValue, Some("model")));
        assert_eq!(r("model", "42"), (WrongType, Some("model")));
        assert_eq!(r("model", "null"), (WrongType, Some("model")));
        assert_eq!(
            r("event_id", &format!("\"{}\"", "x".repeat(129))),
            (TooLong, Some("event_id"))
        );
        assert_eq!(r("ts", "\"yesterday\""), (InvalidTs, Some("ts")));
        assert_eq!(r("ts", "\"2026-11-27T13:45:01\""), (InvalidTs, Some("ts")));
        assert_eq!(r("ts", "-5"), (InvalidTs, Some("ts")));
        assert_eq!(r("ts", "true"), (WrongType, Some("ts")));
        assert_eq!(
            reason(&with(r#","status":"maybe""#)),
            (InvalidValue, Some("status"))
        );
        assert_eq!(
            reason(&with(r#","latency_ms":-1"#)),
            (OutOfRange, Some("latency_ms"))
        );
        assert_eq!(
            reason(&with(r#","model":"again""#)),
            (DuplicateField, Some("model"))
        );
    }

    #[test]
    fn every_known_key_is_recognised_and_near_misses_are_not() {
        let known = [
            "event_id",
            "ts",
            "model",
            "provider",
            "app",
            "node",
            "region",
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "reasoning_tokens",
            "latency_ms",
            "status",
        ];
        for k in known {
            assert_eq!(Field::from_key(k).name(), k);
        }
        for k in [
            "",
            "t",
            "tS",
            "modeL",
            "providers",
            "event-id",
            "statuz",
            "regiox",
            "x".repeat(13).as_str(),
        ] {
            assert!(matches!(Field::from_key(k), Field::Unknown), "{k}");
        }
    }

    #[test]
    fn token_bound_is_configurable() {
        let json = with("");
        let tight = Limits {
            max_tokens: 9,
            ..Limits::default()
        };
        let r = decode(json.as_bytes(), &tight).expect_err("10 > 9");
        assert_eq!(r.reason, RejectReason::OutOfRange);
        assert_eq!(r.field, Some("prompt_tokens"));
    }

    #[test]
    fn json_schema_file_matches_the_decoder() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../event.schema.json")).unwrap();
        let required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            required,
            [
                "event_id",
                "ts",
                "model",
                "provider",
                "prompt_tokens",
                "completion_tokens"
            ]
        );
        let props = schema["properties"].as_object().unwrap();
        let known = [
            Field::EventId,
            Field::Ts,
            Field::Model,
            Field::Provider,
            Field::App,
            Field::Node,
            Field::Region,
            Field::PromptTokens,
            Field::CompletionTokens,
            Field::CachedTokens,
            Field::ReasoningTokens,
            Field::LatencyMs,
            Field::Status,
        ];
        assert_eq!(props.len(), known.len());
        for f in known {
            assert!(
                props.contains_key(f.name()),
                "{} missing from the schema",
                f.name()
            );
        }
        assert_eq!(props["event_id"]["maxLength"], MAX_EVENT_ID_BYTES);
        assert_eq!(props["model"]["maxLength"], MAX_NAME_BYTES);
        assert_eq!(
            props["prompt_tokens"]["maximum"],
            Limits::default().max_tokens
        );
        assert_eq!(props["ts"]["oneOf"][0]["maximum"], MAX_TS_MS);
    }

    #[test]
    fn serialized_event_decodes_to_itself() {
        let json =
            with(r#","app":"a","node":"n1","region":"eu","latency_ms":7,"reasoning_tokens":2"#);
        let ev = ok(&json);
        let again = serde_json::to_string(&ev).unwrap();
        assert_eq!(ok(&again), ev);
    }

    #[test]
    fn hostile_nesting_is_refused_without_recursing() {
        let limits = Limits::default();
        let base = r#"{"event_id":"x","ts":1764201600000,"model":"m","provider":"p","prompt_tokens":1,"completion_tokens":1"#;
        let deep_array = format!(
            "{base},\"extra\":{}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let deep_object = format!(
            "{base},\"extra\":{}1{}}}",
            "{\"a\":".repeat(50_000),
            "}".repeat(50_000)
        );
        for doc in [&deep_array, &deep_object] {
            let r = decode(doc.as_bytes(), &limits).unwrap_err();
            assert_eq!(r.reason, RejectReason::TooDeep, "{r}");
        }
        // A whole body of brackets, and brackets inside strings (not nesting).
        let brackets = "[".repeat(100_000) + &"]".repeat(100_000);
        assert_eq!(
            decode(brackets.as_bytes(), &limits).unwrap_err().reason,
            RejectReason::TooDeep
        );
        let in_string = format!("{base},\"note\":\"{}\\\"[\"}}", "[{".repeat(1000));
        assert!(decode(in_string.as_bytes(), &limits).is_ok());
        // Nesting within the limit is an ordinary unknown field.
        let nested = format!("{base},\"extra\":{}{}}}", "[".repeat(31), "]".repeat(31));
        assert!(decode(nested.as_bytes(), &limits).is_ok());
        let too = format!("{base},\"extra\":{}{}}}", "[".repeat(32), "]".repeat(32));
        assert_eq!(
            decode(too.as_bytes(), &limits).unwrap_err().reason,
            RejectReason::TooDeep
        );
    }

    #[test]
    fn a_record_above_max_record_bytes_is_too_large() {
        let limits = Limits {
            max_record_bytes: 200,
            ..Limits::default()
        };
        let doc = with(&format!(r#","note":"{}""#, "z".repeat(300)));
        let r = decode(doc.as_bytes(), &limits).unwrap_err();
        assert_eq!(r.reason, RejectReason::TooLarge, "{r}");
        assert!(decode(with("").as_bytes(), &limits).is_ok());
    }
}
