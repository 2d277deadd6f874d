//! Price tables: LiteLLM's `model_prices_and_context_window.json` format,
//! read into exact decimal prices (USD per token, [`PRICE_SCALE`]
//! fractional digits), with the aliases of the config.
//!
//! What is read of each entry (everything else is ignored):
//!
//! | key | meaning | when absent |
//! |---|---|---|
//! | `input_cost_per_token` | a prompt token | 0, if the output price is there |
//! | `output_cost_per_token` | a completion token | 0, if the input price is there |
//! | `cache_read_input_token_cost` | a prompt token served from cache | the input price |
//! | `output_cost_per_reasoning_token` | a reasoning token | the output price |
//! | `litellm_provider` | shown with the price | empty |
//!
//! An entry with neither an input nor an output price (images, audio,
//! search) is skipped, and so is LiteLLM's `sample_spec`. A price is a JSON
//! number, at least 0; `null` counts as absent. It is read from its literal
//! text, so `1.5e-06` is exactly 0.0000015, and rounded half to even to
//! [`PRICE_SCALE`] digits (LiteLLM's file holds float noise such as
//! `5.0000000000000004e-08`); the prices that rounding changed are counted.
//!
//! An absent cache or reasoning price is stored as the price it falls back
//! to: the cost formula then gives the same result as if those tokens had
//! no price of their own.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use bigdecimal::{BigDecimal, RoundingMode};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::event::MAX_NAME_BYTES;

/// Fractional digits of every price and cost: Decimal128(38, 12) in
/// DataFusion, `Decimal(38, 12)` in ClickHouse.
pub const PRICE_SCALE: u32 = 12;

/// Largest price file read, in bytes (LiteLLM's is about 3.5 MB).
pub const MAX_PRICE_FILE_BYTES: usize = 64 << 20;

/// Most models in one price table (LiteLLM's has about 5,000 entries).
pub const MAX_PRICED_MODELS: usize = 100_000;

/// The largest price: 1,000 USD per token. Anything larger is a mistake
/// (a price per million tokens in the per-token field, say), and keeps
/// every cost far inside Decimal(38, 12).
pub const MAX_PRICE_USD: u32 = 1_000;

/// The one LiteLLM entry that documents the format instead of pricing a
/// model.
const SAMPLE_SPEC: &str = "sample_spec";

/// The price of one model's tokens, each in USD per token scaled by
/// 10^[`PRICE_SCALE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    /// The model id events are matched to (see [`match_key`]).
    pub model: String,
    pub provider: String,
    /// For a row made from a configured alias: the file's model it copies.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub alias_of: String,
    pub input: i128,
    pub output: i128,
    pub cache_read: i128,
    pub reasoning: i128,
}

/// A price table as loaded: every priced model, and what the load did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceTable {
    /// Sorted by model.
    pub prices: Vec<Price>,
    /// Entries without token prices (and `sample_spec`).
    pub skipped: usize,
    /// Prices that had more than [`PRICE_SCALE`] fractional digits.
    pub rounded: usize,
    /// Configured aliases not used, because the alias itself, or the alias
    /// without its `provider/` prefix, has a price in the file: those
    /// matches come first.
    pub shadowed_aliases: Vec<String>,
}

/// Why a price file was refused. Nothing of a refused file is loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PriceError {
    #[error("the price file is {0} bytes, more than the {MAX_PRICE_FILE_BYTES} allowed")]
    TooLarge(usize),
    #[error("the price file is not a JSON object of models: {0}")]
    NotJson(String),
    #[error("model {0:?} appears twice in the price file")]
    Duplicate(String),
    #[error("model {model:?}: `{key}` is {detail}")]
    BadPrice {
        model: String,
        key: &'static str,
        detail: String,
    },
    #[error("model {model:?}: {detail}")]
    BadEntry { model: String, detail: String },
    #[error("the price file has more than {MAX_PRICED_MODELS} models")]
    TooMany,
    #[error("alias {alias:?} names {target:?}, which the price file does not price")]
    UnknownAliasTarget { alias: String, target: String },
}

/// The key a model's id is matched with after the exact id: the id
/// without its `provider/` prefix (everything up to the first `/`), or the
/// id itself when it has none.
pub fn match_key(model: &str) -> &str {
    model.split_once('/').map_or(model, |(_, rest)| rest)
}

/// Read a LiteLLM-format price file, with `aliases` (alias → a model of
/// the file) from the config.
pub fn parse_litellm(
    bytes: &[u8],
    aliases: &BTreeMap<String, String>,
) -> Result<PriceTable, PriceError> {
    if bytes.len() > MAX_PRICE_FILE_BYTES {
        return Err(PriceError::TooLarge(bytes.len()));
    }
    let entries: Entries<'_> =
        serde_json::from_slice(bytes).map_err(|e| PriceError::NotJson(e.to_string()))?;
    if entries.0.len() > MAX_PRICED_MODELS {
        return Err(PriceError::TooMany);
    }
    let mut seen = BTreeSet::new();
    if let Some((model, _)) = entries.0.iter().find(|(m, _)| !seen.insert(m.as_str())) {
        return Err(PriceError::Duplicate(model.clone()));
    }
    let mut table = PriceTable::default();
    let mut prices = BTreeMap::new();
    for (model, raw) in entries.0 {
        if model == SAMPLE_SPEC {
            table.skipped += 1;
            continue;
        }
        match price(&model, raw, &mut table.rounded)? {
            Some(p) => {
                prices.insert(model, p);
            }
            None => table.skipped += 1,
        }
    }
    for (alias, target) in aliases {
        check_name(alias)?;
        if prices.contains_key(alias.as_str()) || prices.contains_key(match_key(alias)) {
            table.shadowed_aliases.push(alias.clone());
            continue;
        }
        let Some(of) = prices.get(target.as_str()) else {
            return Err(PriceError::UnknownAliasTarget {
                alias: alias.clone(),
                target: target.clone(),
            });
        };
        let mut p = of.clone();
        p.model = alias.clone();
        p.alias_of = target.clone();
        prices.insert(alias.clone(), p);
    }
    table.prices = prices.into_values().collect();
    Ok(table)
}

/// The top-level object's entries, in file order (a model named twice
/// appears twice: a map would keep only the last).
struct Entries<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Entries<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object whose keys are model ids")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(model) = map.next_key::<String>()? {
                    out.push((model, map.next_value()?));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The keys read of one entry, as literal JSON.
#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(borrow, default)]
    input_cost_per_token: Option<&'a RawValue>,
    #[serde(borrow, default)]
    output_cost_per_token: Option<&'a RawValue>,
    #[serde(borrow, default)]
    cache_read_input_token_cost: Option<&'a RawValue>,
    #[serde(borrow, default)]
    output_cost_per_reasoning_token: Option<&'a RawValue>,
    #[serde(borrow, default)]
    litellm_provider: Option<&'a RawValue>,
}

fn check_name(model: &str) -> Result<(), PriceError> {
    let bad = |detail: &str| PriceError::BadEntry {
        model: model.to_string(),
        detail: detail.to_string(),
    };
    if model.is_empty() {
        return Err(bad("a model id must not be empty"));
    }
    if model.len() > MAX_NAME_BYTES {
        return Err(bad(&format!(
            "a model id is at most {MAX_NAME_BYTES} bytes, as in events"
        )));
    }
    Ok(())
}

/// One entry's price, or None when it prices no tokens.
fn price(model: &str, raw: &RawValue, rounded: &mut usize) -> Result<Option<Price>, PriceError> {
    check_name(model)?;
    let not_object = |detail: String| PriceError::BadEntry {
        model: model.to_string(),
        detail: format!("not an object of prices{detail}"),
    };
    // A derived struct would also take an array, field by field.
    if !raw.get().starts_with('{') {
        return Err(not_object(String::new()));
    }
    let entry: Entry<'_> =
        serde_json::from_str(raw.get()).map_err(|e| not_object(format!(": {e}")))?;
    let mut read = |key: &'static str, v: Option<&RawValue>| -> Result<Option<i128>, PriceError> {
        let Some(v) = v.map(RawValue::get).filter(|v| *v != "null") else {
            return Ok(None);
        };
        let (value, was_rounded) = decimal(v).map_err(|detail| PriceError::BadPrice {
            model: model.to_string(),
            key,
            detail,
        })?;
        *rounded += usize::from(was_rounded);
        Ok(Some(value))
    };
    let input = read("input_cost_per_token", entry.input_cost_per_token)?;
    let output = read("output_cost_per_token", entry.output_cost_per_token)?;
    let cache_read = read(
        "cache_read_input_token_cost",
        entry.cache_read_input_token_cost,
    )?;
    let reasoning = read(
        "output_cost_per_reasoning_token",
        entry.output_cost_per_reasoning_token,
    )?;
    if input.is_none() && output.is_none() {
        return Ok(None);
    }
    let provider = match entry.litellm_provider.map(RawValue::get) {
        None | Some("null") => String::new(),
        Some(raw) => match serde_json::from_str::<String>(raw) {
            Ok(p) if p.len() <= MAX_NAME_BYTES => p,
            _ => {
                return Err(PriceError::BadEntry {
                    model: model.to_string(),
                    detail: format!(
                        "`litellm_provider` must be a string of at most {MAX_NAME_BYTES} bytes"
                    ),
                });
            }
        },
    };
    let (input, output) = (input.unwrap_or(0), output.unwrap_or(0));
    Ok(Some(Price {
        model: model.to_string(),
        provider,
        alias_of: String::new(),
        input,
        output,
        cache_read: cache_read.unwrap_or(input),
        reasoning: reasoning.unwrap_or(output),
    }))
}

/// A JSON literal as a price: scaled by 10^[`PRICE_SCALE`], rounded half
/// to even, and whether rounding changed it.
fn decimal(literal: &str) -> Result<(i128, bool), String> {
    let numeric = literal
        .bytes()
        .next()
        .is_some_and(|b| b == b'-' || b.is_ascii_digit());
    if !numeric || literal.len() > 64 {
        return Err(format!("{}, not a number", short(literal)));
    }
    let value = BigDecimal::from_str(literal).map_err(|e| format!("{literal}: {e}"))?;
    if value < 0 {
        return Err(format!("{literal}, a negative price"));
    }
    if value > MAX_PRICE_USD {
        return Err(format!(
            "{literal} USD per token, more than {MAX_PRICE_USD} (a price per million tokens?)"
        ));
    }
    let scaled = value.with_scale_round(i64::from(PRICE_SCALE), RoundingMode::HalfEven);
    let was_rounded = scaled != value;
    let (digits, scale) = scaled.into_bigint_and_exponent();
    debug_assert_eq!(scale, i64::from(PRICE_SCALE));
    let units = i128::try_from(digits).map_err(|_| format!("{literal} is out of range"))?;
    Ok((units, was_rounded))
}

fn short(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// A scaled price or cost as exact decimal text, `0.000001500000`.
pub fn format_decimal(units: i128) -> String {
    let scale = PRICE_SCALE as usize;
    let sign = if units < 0 { "-" } else { "" };
    let digits = format!("{:0>width$}", units.unsigned_abs(), width = scale + 1);
    let (int, frac) = digits.split_at(digits.len() - scale);
    format!("{sign}{int}.{frac}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<PriceTable, PriceError> {
        parse_litellm(json.as_bytes(), &BTreeMap::new())
    }

    #[test]
    fn reads_the_litellm_keys_exactly_and_ignores_the_rest() {
        let t = parse(
            r#"{
            "sample_spec": {"input_cost_per_token": 0.0, "litellm_provider": "one of ..."},
            "openai/gpt-5": {"input_cost_per_token": 1.25e-06, "output_cost_per_token": 0.00001,
                "cache_read_input_token_cost": 1.25e-07, "output_cost_per_reasoning_token": 0.00001,
                "litellm_provider": "openai", "max_tokens": 128000, "supports_vision": true,
                "search_context_cost_per_query": {"low": 0.01}},
            "qwen3.6-plus": {"input_cost_per_token": 4e-7, "output_cost_per_token": 1.2e-6},
            "text-embedding-3": {"input_cost_per_token": 2e-8, "cache_read_input_token_cost": null},
            "dall-e-3": {"input_cost_per_pixel": 0.04, "litellm_provider": "openai"},
            "noise": {"input_cost_per_token": 5.0000000000000004e-08, "output_cost_per_token": 3.59375e-08}
        }"#,
        )
        .unwrap();
        let models: Vec<&str> = t.prices.iter().map(|p| p.model.as_str()).collect();
        assert_eq!(
            models,
            ["noise", "openai/gpt-5", "qwen3.6-plus", "text-embedding-3"]
        );
        assert_eq!((t.skipped, t.rounded), (2, 2));
        let gpt = &t.prices[1];
        assert_eq!(
            (gpt.input, gpt.output, gpt.cache_read, gpt.reasoning),
            (1_250_000, 10_000_000, 125_000, 10_000_000)
        );
        assert_eq!(gpt.provider, "openai");
        let qwen = &t.prices[2];
        assert_eq!((qwen.cache_read, qwen.reasoning), (400_000, 1_200_000));
        let emb = &t.prices[3];
        assert_eq!((emb.input, emb.output, emb.cache_read), (20_000, 0, 20_000));
        // Half to even at the 12th digit: ...359375 -> ...35938 (5 rounds up
        // to even 8), and the float noise goes.
        assert_eq!((t.prices[0].input, t.prices[0].output), (50_000, 35_938));
        assert_eq!(format_decimal(t.prices[0].output), "0.000000035938");
        assert_eq!(format_decimal(1_250_000), "0.000001250000");
        assert_eq!(format_decimal(-5), "-0.000000000005");
        assert_eq!(format_decimal(12_000_000_000_000), "12.000000000000");
    }

    #[test]
    fn bad_files_name_the_model_or_key_and_load_nothing() {
        let err = |json: &str| parse(json).unwrap_err().to_string();
        assert!(err("not json").contains("not a JSON object of models"));
        assert!(err("[1, 2]").contains("not a JSON object of models"));
        let e = err(r#"{"m": {"input_cost_per_token": -1e-6}}"#);
        assert!(
            e.contains("\"m\"") && e.contains("input_cost_per_token") && e.contains("negative"),
            "{e}"
        );
        let e = err(r#"{"m": {"output_cost_per_token": "0.001"}}"#);
        assert!(
            e.contains("output_cost_per_token") && e.contains("not a number"),
            "{e}"
        );
        let e = err(r#"{"m": {"output_cost_per_token": true}}"#);
        assert!(e.contains("not a number"), "{e}");
        let e =
            err(r#"{"m": {"input_cost_per_token": 1e-6}, "m": {"input_cost_per_token": 2e-6}}"#);
        assert_eq!(e, "model \"m\" appears twice in the price file");
        let e = err(r#"{"m": {"input_cost_per_token": 3}, "n": {"input_cost_per_token": 5000}}"#);
        assert!(e.contains("\"n\"") && e.contains("per million"), "{e}");
        let e = err(r#"{"m": [1]}"#);
        assert!(e.contains("\"m\"") && e.contains("not an object"), "{e}");
        let e = err(r#"{"": {"input_cost_per_token": 1}}"#);
        assert!(e.contains("must not be empty"), "{e}");
        let e = err(r#"{"m": {"input_cost_per_token": 1, "litellm_provider": 7}}"#);
        assert!(e.contains("litellm_provider"), "{e}");
        // An unknown key's value is skipped however deep it nests.
        let deep = format!("{}{}", "[".repeat(1 << 20), "]".repeat(1 << 20));
        let t = parse(&format!(r#"{{"m": {{"x": {deep}}}}}"#)).unwrap();
        assert_eq!((t.prices.len(), t.skipped), (0, 1));
    }

    #[test]
    fn aliases_come_after_exact_and_prefixless_matches() {
        let file = r#"{"gpt-5": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6},
                       "qwen/qwen3.6-plus": {"input_cost_per_token": 4e-7, "output_cost_per_token": 1e-6}}"#;
        let aliases: BTreeMap<String, String> = [
            ("my-gpt", "gpt-5"),
            ("qwen/qwen3.6-plus", "gpt-5"),
            ("openai/gpt-5", "gpt-5"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let t = parse_litellm(file.as_bytes(), &aliases).unwrap();
        let models: Vec<(&str, &str)> = t
            .prices
            .iter()
            .map(|p| (p.model.as_str(), p.alias_of.as_str()))
            .collect();
        assert_eq!(
            models,
            [
                ("gpt-5", ""),
                ("my-gpt", "gpt-5"),
                ("qwen/qwen3.6-plus", "")
            ]
        );
        assert_eq!(t.shadowed_aliases, ["openai/gpt-5", "qwen/qwen3.6-plus"]);
        let missing: BTreeMap<String, String> = [("x".to_string(), "nope".to_string())].into();
        assert_eq!(
            parse_litellm(file.as_bytes(), &missing)
                .unwrap_err()
                .to_string(),
            "alias \"x\" names \"nope\", which the price file does not price"
        );
        assert_eq!(match_key("qwen/qwen3.6-plus"), "qwen3.6-plus");
        assert_eq!(match_key("a/b/c"), "b/c");
        assert_eq!(match_key("plain"), "plain");
    }
}
