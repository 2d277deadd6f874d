//! How a batch of events is framed in one body (an HTTP request today, the
//! OTLP route later): cutting it into records, without validating them.

use serde_json::value::RawValue;

/// How a body holds its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// One JSON object, or a JSON array of them (`application/json`, the
    /// default).
    Json,
    /// One event per line (`application/x-ndjson`).
    Ndjson,
}

impl BodyFormat {
    /// The format a `Content-Type` value announces. NDJSON for
    /// `application/x-ndjson` (also `application/ndjson`,
    /// `application/jsonl`, `application/x-jsonlines`); JSON otherwise.
    pub fn from_content_type(value: Option<&str>) -> BodyFormat {
        let essence = value
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase());
        match essence.as_deref() {
            Some(
                "application/x-ndjson"
                | "application/ndjson"
                | "application/jsonl"
                | "application/x-jsonlines",
            ) => BodyFormat::Ndjson,
            _ => BodyFormat::Json,
        }
    }
}

/// Deepest nesting a JSON array body may have: the array, then each event
/// at most `Limits::max_depth` (32) below it. serde_json would stop at 128
/// by itself; this bound keeps that true whatever the parser.
pub const MAX_BODY_DEPTH: usize = 33;

/// Most records one body may hold: a 10 MiB body of typical events holds
/// ~35,000; a body of millions of one-byte records is refused whole rather
/// than becoming millions of rejections.
pub const MAX_RECORDS: usize = 100_000;

/// One record of a body: its index, as reported back to the client, and
/// its bytes.
pub type Record<'a> = (usize, &'a [u8]);

/// The records of `body`:
/// - NDJSON: every non-blank line (a trailing `\r` removed), indexed by its
///   0-based line number;
/// - JSON starting with `[`: each element of the array, indexed by its
///   position; the array as a whole must be well-formed JSON;
/// - any other JSON: the whole body is one record, index 0 (so a single
///   malformed event is a rejected record, not a bad request).
///
/// An error (a 400) when the body holds no record, more than
/// [`MAX_RECORDS`], or is a malformed array.
pub fn split(body: &[u8], format: BodyFormat) -> Result<Vec<Record<'_>>, String> {
    let records = match format {
        BodyFormat::Ndjson => body
            .split(|b| *b == b'\n')
            .enumerate()
            .map(|(i, line)| (i, line.strip_suffix(b"\r").unwrap_or(line)))
            .filter(|(_, line)| !line.trim_ascii().is_empty())
            // One past the bound is enough to refuse the body.
            .take(MAX_RECORDS + 1)
            .collect(),
        BodyFormat::Json => {
            let trimmed = body.trim_ascii();
            if trimmed.first() == Some(&b'[') {
                // Elements are cut out by a parser that recurses per level:
                // bound the depth first (the array itself is one level).
                crate::check_depth(trimmed, MAX_BODY_DEPTH).map_err(|_| {
                    format!(
                        "the body nests arrays or objects deeper than {MAX_BODY_DEPTH} levels \
                         (send such events as NDJSON to have them rejected one by one)"
                    )
                })?;
                let elements: Vec<&RawValue> = serde_json::from_slice(trimmed).map_err(|e| {
                    format!(
                        "the body is not a well-formed JSON array: {e} \
                         (send malformed events as NDJSON to have them rejected one by one)"
                    )
                })?;
                elements
                    .into_iter()
                    .enumerate()
                    .map(|(i, raw)| (i, raw.get().as_bytes()))
                    .collect()
            } else if trimmed.is_empty() {
                Vec::new()
            } else {
                vec![(0, trimmed)]
            }
        }
    };
    if records.is_empty() {
        return Err("the body holds no event".into());
    }
    if records.len() > MAX_RECORDS {
        return Err(format!(
            "the body holds more than {MAX_RECORDS} records; split it into smaller requests"
        ));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(records: Vec<Record<'_>>) -> Vec<(usize, &str)> {
        records
            .into_iter()
            .map(|(i, r)| (i, std::str::from_utf8(r).unwrap()))
            .collect()
    }

    #[test]
    fn content_types() {
        use BodyFormat::*;
        assert_eq!(BodyFormat::from_content_type(None), Json);
        assert_eq!(
            BodyFormat::from_content_type(Some("application/json; charset=utf-8")),
            Json
        );
        assert_eq!(
            BodyFormat::from_content_type(Some("Application/X-NDJSON; charset=utf-8")),
            Ndjson
        );
    }

    #[test]
    fn ndjson_lines_keep_their_line_numbers() {
        let body = b"{\"a\":1}\r\n\n  \n{broken\n[1]\n";
        assert_eq!(
            texts(split(body, BodyFormat::Ndjson).unwrap()),
            [(0, "{\"a\":1}"), (3, "{broken"), (4, "[1]")]
        );
        assert!(split(b"\n\r\n", BodyFormat::Ndjson).is_err());
    }

    #[test]
    fn arrays_objects_and_malformed_json() {
        assert_eq!(
            texts(split(b" [ {\"a\": [1,2]} ,\n 7, \"x\", {} ] ", BodyFormat::Json).unwrap()),
            [(0, "{\"a\": [1,2]}"), (1, "7"), (2, "\"x\""), (3, "{}")]
        );
        assert_eq!(
            texts(split(b" {\"a\":1 \n", BodyFormat::Json).unwrap()),
            [(0, "{\"a\":1")]
        );
        assert!(split(b"[{\"a\":1}, {broken}]", BodyFormat::Json).is_err());
        assert!(split(b"[]", BodyFormat::Json).is_err());
        // Deep nesting is refused before any parser recurses into it.
        let deep = format!("[{}{}]", "[".repeat(100_000), "]".repeat(100_000));
        let err = split(deep.as_bytes(), BodyFormat::Json).unwrap_err();
        assert!(err.contains("deeper than 33 levels"), "{err}");
        let nested = format!("[{}{}]", "[".repeat(30), "]".repeat(30));
        assert_eq!(split(nested.as_bytes(), BodyFormat::Json).unwrap().len(), 1);
        assert!(split(b"  ", BodyFormat::Json).is_err());
    }

    #[test]
    fn a_body_of_too_many_records_is_refused_whole() {
        let ndjson = "1\n".repeat(MAX_RECORDS + 1);
        let err = split(ndjson.as_bytes(), BodyFormat::Ndjson).unwrap_err();
        assert!(err.contains("more than 100000"), "{err}");
        let array = format!("[{}1]", "1,".repeat(MAX_RECORDS));
        assert!(split(array.as_bytes(), BodyFormat::Json).is_err());
        let at_limit = "1\n".repeat(MAX_RECORDS);
        assert_eq!(
            split(at_limit.as_bytes(), BodyFormat::Ndjson)
                .unwrap()
                .len(),
            MAX_RECORDS
        );
    }
}
