//! The properties the fuzz targets check (`fuzz/`, run by `scripts/fuzz`),
//! written once here so that the committed corpus and every crash found
//! replay as ordinary tests on stable (`schemas/tests/fuzz_corpus.rs`).
//! Each function panics when its property does not hold.

use crate::body::{BodyFormat, split};
use crate::event::decode_general;
use crate::{Limits, check_depth, decode, flat};

/// Replay every file of a fuzz corpus directory through `property`; panics
/// naming the first file that fails it, or when the directory holds none.
/// The corpus tests of this crate and of the binary (its config target)
/// share it.
pub fn replay_corpus(dir: &std::path::Path, property: fn(&[u8])) {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let run = std::panic::catch_unwind(|| property(&data));
        assert!(run.is_ok(), "{} fails its property", path.display());
        n += 1;
    }
    assert!(n > 0, "no corpus in {}", dir.display());
}

/// The limits every input is decoded under: the defaults, and tight ones
/// so that each bound is reached often.
fn limits() -> [Limits; 2] {
    [
        Limits::default(),
        Limits {
            max_tokens: 1_000,
            max_depth: 3,
            max_record_bytes: 512,
        },
    ]
}

/// Any bytes decode to an event or a rejection, without panicking or
/// recursing past the depth bound; where the fast path accepts a record,
/// the general decoder gives the same event; an accepted event, written
/// back as JSON, decodes to itself.
pub fn decode_agrees(data: &[u8]) {
    for limits in limits() {
        let decoded = decode(data, &limits);
        if let Ok(text) = std::str::from_utf8(data)
            && let Some(fast) = flat::decode(text, &limits)
        {
            // The fast path accepts only flat objects: depth 1.
            assert!(
                check_depth(data, 1).is_ok(),
                "fast path took a nested record"
            );
            let general = decode_general(text, &limits);
            assert_eq!(general.as_ref().ok(), Some(&fast), "the decoders disagree");
        }
        if let Ok(event) = decoded {
            let again = sonic_rs::to_string(&event).expect("an event serializes");
            // Escapes may make the text longer than the record was.
            let roomy = Limits {
                max_record_bytes: usize::MAX,
                ..Limits::default()
            };
            let back = decode(again.as_bytes(), &roomy)
                .unwrap_or_else(|r| panic!("{again} does not decode back: {r:?}"));
            assert_eq!(back, event, "{again} decodes to another event");
        }
    }
}

/// Any body is cut into records or refused with a reason, never a panic:
/// each record is a piece of the body, in order; an NDJSON record is one
/// non-blank line; an element of a JSON array body is itself well-formed
/// JSON; and every record then decodes (see [`decode_agrees`]).
pub fn split_is_sound(data: &[u8]) {
    for format in [BodyFormat::Json, BodyFormat::Ndjson] {
        let Ok(records) = split(data, format) else {
            continue;
        };
        assert!(!records.is_empty(), "split gave no record and no error");
        let body = data.as_ptr_range();
        let mut previous = None;
        for (index, record) in records {
            let inside = record.as_ptr_range();
            assert!(
                body.start <= inside.start && inside.end <= body.end,
                "a record outside the body"
            );
            assert!(previous < Some(index), "record indexes out of order");
            previous = Some(index);
            match format {
                BodyFormat::Ndjson => {
                    assert!(!record.contains(&b'\n') && !record.trim_ascii().is_empty());
                }
                BodyFormat::Json if data.trim_ascii().starts_with(b"[") => {
                    assert!(
                        serde_json::from_slice::<serde::de::IgnoredAny>(record).is_ok(),
                        "an array element that is not JSON"
                    );
                }
                BodyFormat::Json => {}
            }
            decode_agrees(record);
        }
    }
}

/// Any bytes are a price table or a clear refusal, never a panic: a loaded
/// table's models are unique and sorted, every price is within the bounds
/// (0 to [`MAX_PRICE_USD`](crate::prices::MAX_PRICE_USD) USD), and each
/// price, written back as the decimal text `prices list` shows, reads back
/// as itself.
pub fn prices_are_sound(data: &[u8]) {
    use crate::prices::{MAX_PRICE_USD, PRICE_SCALE, format_decimal, parse_litellm};
    let aliases = [("alias/x".to_string(), "gpt-5".to_string())].into();
    let Ok(table) = parse_litellm(data, &aliases) else {
        return;
    };
    let max = i128::from(MAX_PRICE_USD) * 10i128.pow(PRICE_SCALE);
    for pair in table.prices.windows(2) {
        assert!(pair[0].model < pair[1].model, "models sorted and unique");
    }
    for p in &table.prices {
        for units in [p.input, p.output, p.cache_read, p.reasoning] {
            assert!(
                (0..=max).contains(&units),
                "{} out of bounds: {units}",
                p.model
            );
            let again = format!(
                r#"{{"m": {{"input_cost_per_token": {}}}}}"#,
                format_decimal(units)
            );
            let back = parse_litellm(again.as_bytes(), &Default::default()).unwrap();
            assert_eq!(back.prices[0].input, units);
            assert_eq!(back.rounded, 0);
        }
    }
}
