//! Hostile records never stop the pipeline: each becomes one dead letter
//! with its reason, and every valid event around it is counted exactly.
//! The same corpus goes through `ingest --file`, through a real Kafka topic
//! into both sinks (the embedded store and a real ClickHouse server), and
//! through the HTTP gateway, which must stay up.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use common::services::{ch_totals, clickhouse_rows, migrated_database, produce, services, topic};
use common::{assert_same_totals, bin, rejects, run_ok, usage_totals};

const VALID: &str = r#"{"event_id":"VALID","ts":1795737600000,"model":"m","provider":"p","prompt_tokens":1,"completion_tokens":1"#;

/// Every hostile record, with the reason it must be refused for.
fn hostile() -> Vec<(Vec<u8>, &'static str)> {
    let deep_array = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object = format!("{}1{}", "{\"a\":".repeat(50_000), "}".repeat(50_000));
    let prompt = "\"prompt_tokens\":1";
    let ts = "1795737600000";
    let mut bad_utf8 = event("h-utf8", &[]);
    bad_utf8.insert(20, 0xff);
    vec![
        // The issue's crashes: nesting 100,000 and 50,000 deep.
        (deep_array.clone().into_bytes(), "too_deep"),
        (
            with_fields("h-deep-field", &format!("\"extra\":{deep_array}")),
            "too_deep",
        ),
        (
            with_fields("h-deep-object", &format!("\"extra\":{deep_object}")),
            "too_deep",
        ),
        // Above max_record_bytes (1 MiB): a 5 MB event_id, 200,000 fields.
        (event(&"x".repeat(5_000_000), &[]), "too_large"),
        (wide(200_000, "h-wider"), "too_large"),
        // Below it: refused for what they hold, or counted.
        (event(&"x".repeat(300_000), &[]), "too_long"),
        (wide(20_000, "h-wide"), "accepted"),
        (
            with_fields("h-dup-key", "\"model\":\"again\""),
            "duplicate_field",
        ),
        (
            event("h-float", &[(prompt, "\"prompt_tokens\":5.0")]),
            "not_an_integer",
        ),
        (
            event("h-exp", &[(prompt, "\"prompt_tokens\":1e3")]),
            "not_an_integer",
        ),
        (event("h-future", &[(ts, "99999999999999")]), "invalid_ts"),
        (event("h-negative", &[(ts, "-5")]), "invalid_ts"),
        (bad_utf8, "invalid_json"),
        (event("h-surrogate\\ud800", &[]), "invalid_json"),
    ]
}

/// The valid event with id `id`, with each `(from, to)` of `swaps` applied.
fn event(id: &str, swaps: &[(&str, &str)]) -> Vec<u8> {
    let mut text = VALID.replace("VALID", id);
    for (from, to) in swaps {
        text = text.replace(from, to);
    }
    text.push('}');
    text.into_bytes()
}

/// The valid event with id `id` and the fields `extra` after its own.
fn with_fields(id: &str, extra: &str) -> Vec<u8> {
    format!("{},{extra}}}", VALID.replace("VALID", id)).into_bytes()
}

/// A valid event with `fields` unknown fields.
fn wide(fields: usize, id: &str) -> Vec<u8> {
    let extra = (0..fields)
        .map(|i| format!("\"u{i}\":1"))
        .collect::<Vec<_>>()
        .join(",");
    with_fields(id, &extra)
}

/// The corpus: valid simulated events with every hostile record of at
/// most `max_bytes` spread among them; a file of the valid ones alone; and
/// the dead letters expected, by reason.
fn corpora(
    dir: &Path,
    tag: &str,
    max_bytes: usize,
) -> (PathBuf, PathBuf, BTreeMap<&'static str, u64>) {
    let valid = dir.join(format!("{tag}-valid.ndjson"));
    run_ok(
        bin()
            .args(["simulate", "--events", "3000", "--seed", "17"])
            .args(["--start-ms", "1795737600000", "--out"])
            .arg(&valid),
    );
    let text = std::fs::read(&valid).unwrap();
    let lines: Vec<&[u8]> = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let hostile: Vec<_> = hostile()
        .into_iter()
        .filter(|(record, _)| record.len() <= max_bytes)
        .collect();
    let mixed = dir.join(format!("{tag}-mixed.ndjson"));
    let mut out = std::fs::File::create(&mixed).unwrap();
    let mut expected = BTreeMap::new();
    let every = lines.len() / (hostile.len() + 1);
    let mut bad = hostile.iter();
    for (i, line) in lines.iter().enumerate() {
        out.write_all(line).unwrap();
        out.write_all(b"\n").unwrap();
        if i % every == every - 1
            && let Some((record, reason)) = bad.next()
        {
            out.write_all(record).unwrap();
            out.write_all(b"\n").unwrap();
            *expected.entry(*reason).or_default() += 1;
        }
    }
    assert!(
        bad.next().is_none(),
        "every hostile record is in the corpus"
    );
    // The one hostile record that is valid (many unknown fields) counts.
    expected.remove("accepted");
    let mut valid_file = std::fs::OpenOptions::new()
        .append(true)
        .open(&valid)
        .unwrap();
    for (record, reason) in &hostile {
        if *reason == "accepted" {
            valid_file.write_all(record).unwrap();
            valid_file.write_all(b"\n").unwrap();
        }
    }
    (mixed, valid, expected)
}

/// `tokentally ingest --file FILE --store STORE`.
fn ingest(file: &Path, store: &Path) {
    run_ok(
        bin()
            .args(["ingest", "--file"])
            .arg(file)
            .arg("--store")
            .arg(store),
    );
}

fn as_owned(expected: &BTreeMap<&'static str, u64>) -> BTreeMap<String, u64> {
    expected.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn hostile_records_become_dead_letters_and_everything_else_counts_on_every_path() {
    let s = services();
    let dir = tempfile::tempdir().unwrap();
    let (mixed, valid, expected) = corpora(dir.path(), "file", usize::MAX);
    let reference = dir.path().join("reference");
    ingest(&valid, &reference);
    let truth = usage_totals(&reference);

    // The file path, with every record (a 5 MB event_id, 200,000 fields).
    let from_file = dir.path().join("from-file");
    ingest(&mixed, &from_file);
    assert_same_totals(&usage_totals(&from_file), &truth);
    assert_eq!(rejects(&from_file), as_owned(&expected));

    // Kafka into the embedded store and into ClickHouse: the records a
    // broker takes with its default limit (1 MB).
    let (mixed, valid, expected) = corpora(dir.path(), "kafka", 512 << 10);
    let reference = dir.path().join("reference-kafka");
    ingest(&valid, &reference);
    let truth = usage_totals(&reference);
    let t = topic("hostile");
    produce(&t, &mixed);
    let embedded = dir.path().join("from-kafka");
    run_ok(
        t.aggregate("hostile-embedded")
            .args(["--exit-on-idle", "3", "--store"])
            .arg(&embedded),
    );
    assert_same_totals(&usage_totals(&embedded), &truth);
    assert_eq!(rejects(&embedded), as_owned(&expected));

    let db = migrated_database(&s.clickhouse, "hostile");
    run_ok(
        t.aggregate("hostile-clickhouse")
            .args(["--exit-on-idle", "3", "--sink", "clickhouse"])
            .args(["--clickhouse", &s.clickhouse, "--clickhouse-database", &db]),
    );
    let ch: Vec<_> = ch_totals(&s.clickhouse, &db)
        .into_iter()
        .filter(|r| !r.contains_key("reason"))
        .collect();
    assert_same_totals(&ch, &truth);
    let rejects: BTreeMap<String, u64> = clickhouse_rows(
        &s.clickhouse,
        &format!("SELECT reason, count FROM {db}.rejected ORDER BY reason"),
    )
    .iter()
    .map(|r| {
        (
            r["reason"].as_str().unwrap().to_string(),
            r["count"].as_u64().unwrap(),
        )
    })
    .collect();
    assert_eq!(rejects, as_owned(&expected));
    let raw = clickhouse_rows(
        &s.clickhouse,
        &format!("SELECT count() AS n, max(length(raw)) AS longest FROM {db}.rejected_events"),
    );
    assert_eq!(
        raw[0]["n"].as_u64().unwrap(),
        expected.values().sum::<u64>()
    );
}
