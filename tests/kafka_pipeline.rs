//! The Kafka path against a real Apache Kafka broker (started by
//! `scripts/services up` when TOKENTALLY_KAFKA_BROKERS is not set): events
//! produced to a topic and aggregated into the embedded store give exactly
//! the totals of the file path; replays and SIGKILLed aggregators change
//! nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::services::{Topic, corpus, produce, read_topic, reference, topic};
use common::{bin, manifest, run_ok, serial, summary, totals, usage_totals, wait_until};

/// A fresh topic holding a simulated corpus, and the same corpus ingested
/// from the file into a reference store.
fn topic_with_reference(
    dir: &Path,
    tag: &str,
    events: u32,
    seed: u32,
) -> (Topic, PathBuf, PathBuf) {
    let t = topic(tag);
    let file = corpus(dir, events, seed);
    produce(&t, &file);
    let reference = reference(dir, &file);
    (t, file, reference)
}

/// The Kafka offsets committed to `store`, summed over its partitions.
fn committed(store: &Path) -> i64 {
    manifest(store)
        .and_then(|m| {
            m["progress"].as_object().map(|p| {
                p.iter()
                    .filter(|(k, _)| k.starts_with("kafka:"))
                    .filter_map(|(_, v)| v.as_i64())
                    .sum()
            })
        })
        .unwrap_or(0)
}

#[test]
fn kafka_to_embedded_store_is_exact_and_replays_change_nothing() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (t, file, reference) = topic_with_reference(dir.path(), "exact", 40_000, 11);

    let store = dir.path().join("kafka");
    let first = summary(&mut t.aggregate_into(&store, "g1", "3"));
    assert_eq!(first["records"], 40_000);
    assert_eq!(totals(&store), totals(&reference));

    // The same group again: nothing new to read.
    let again = summary(&mut t.aggregate_into(&store, "g1", "3"));
    assert_eq!(again["records"], 0);
    // A whole replay of the same events (a botched backfill): they are new
    // records at new offsets, so they are read, but every valid event is a
    // duplicate; only the malformed lines count again, as rejects.
    produce(&t, &file);
    let replay = summary(&mut t.aggregate_into(&store, "g1", "3"));
    assert_eq!(replay["accepted"], 0);
    assert_eq!(usage_totals(&store), usage_totals(&reference));
}

#[test]
fn simulate_to_kafka_matches_the_same_traffic_from_a_file() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let t = topic("simulate");
    run_ok(
        bin()
            .args([
                "simulate", "--kafka", &t.brokers, "--topic", &t.name, "--rate", "40000",
            ])
            .args([
                "--events",
                "20000",
                "--seed",
                "5",
                "--start-ms",
                "1795737600000",
            ])
            .args(["--duplicate-rate", "0.01", "--malformed-rate", "0.01"]),
    );
    let file = dir.path().join("same.ndjson");
    run_ok(
        bin()
            .args([
                "simulate",
                "--events",
                "20000",
                "--seed",
                "5",
                "--start-ms",
                "1795737600000",
            ])
            .args([
                "--duplicate-rate",
                "0.01",
                "--malformed-rate",
                "0.01",
                "--out",
            ])
            .arg(&file),
    );
    let reference = dir.path().join("reference");
    run_ok(
        bin()
            .args(["ingest", "--file"])
            .arg(&file)
            .arg("--store")
            .arg(&reference),
    );
    let store = dir.path().join("kafka");
    let s = summary(&mut t.aggregate_into(&store, "sim", "3"));
    assert_eq!(s["records"], 20_000);
    assert_eq!(totals(&store), totals(&reference));
}

#[test]
fn produce_sends_lines_as_they_are_and_refused_ones_are_mirrored_to_the_dead_letter_topic() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let t = topic("dlq");
    let lines = [
        r#"{"event_id":"ok-1","ts":1795737600000,"model":"m","provider":"p","prompt_tokens":1,"completion_tokens":2}"#,
        r#"{"event_id":"bad-2","ts":1795737600000,"provider":"p","prompt_tokens":1,"completion_tokens":2}"#,
        r#"{"event_id":"bad-3","ts":1795737600000,"model":"m","provider":"p","prompt_tokens":-1,"completion_tokens":2}"#,
        "this is not json",
        "[1,2]",
    ];
    let file = dir.path().join("mixed.ndjson");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    produce(&t, &file);

    // Each line as it was, keyed by its event_id when one can be read.
    let events = read_topic(&t.brokers, &t.name, lines.len());
    let key = |line: &str| {
        serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v["event_id"].as_str().map(str::to_owned))
    };
    let mut expected: Vec<_> = lines
        .iter()
        .map(|l| (key(l), vec![], l.to_string()))
        .collect();
    expected.sort();
    assert_eq!(events, expected);

    // The aggregator keeps the refused lines in the store and mirrors each
    // to the dead-letter topic: the line as read, no key, and the reason,
    // field (null when none) and detail in headers.
    let store = dir.path().join("store");
    let summary = summary(&mut t.aggregate_into(&store, "dlq", "3"));
    assert_eq!(
        (summary["accepted"].as_u64(), summary["records"].as_u64()),
        (Some(1), Some(5))
    );
    let mut kept = Vec::new();
    for f in std::fs::read_dir(store.join("dead-letter")).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        kept.extend(
            text.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()),
        );
    }
    let field = |d: &serde_json::Value, name: &str| d[name].as_str().map(str::to_owned);
    // Header values are ASCII: line breaks and tabs in a parser's detail
    // (and any non-ASCII character) arrive as `\u{…}` escapes.
    let ascii = |v: Option<String>| {
        v.map(|v| {
            v.chars()
                .map(|c| match c {
                    ' '..='~' => c.to_string(),
                    _ => format!("\\u{{{:x}}}", c as u32),
                })
                .collect::<String>()
        })
    };
    let mut expected: Vec<_> = kept
        .iter()
        .map(|d| {
            let headers = vec![
                ("reason".to_owned(), field(d, "reason")),
                ("field".to_owned(), field(d, "field")),
                ("detail".to_owned(), ascii(field(d, "detail"))),
            ];
            (None, headers, field(d, "raw").unwrap())
        })
        .collect();
    expected.sort();
    assert_eq!(expected.len(), 4);
    assert!(expected.iter().any(|(_, h, _)| h[1].1.is_none()));
    assert!(expected.iter().any(|(_, h, _)| h[1].1.is_some()));
    assert_eq!(read_topic(&t.brokers, &t.dlq(), 4), expected);
}

#[test]
fn a_missing_topic_is_a_clear_error() {
    let _serial = serial();
    let t = topic("missing");
    let out = bin()
        .args(["aggregate", "--kafka", &t.brokers, "--topic", &t.name])
        .args([
            "--dlq-topic",
            "no-such-topic-anywhere",
            "--exit-on-idle",
            "1",
            "--store",
        ])
        .arg(tempfile::tempdir().unwrap().path().join("s"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("topic no-such-topic-anywhere does not exist"),
        "{err}"
    );
}

#[test]
fn sigkilled_aggregator_resumes_from_the_store_offsets() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (t, _, reference) = topic_with_reference(dir.path(), "crash", 60_000, 12);

    let store = dir.path().join("kafka");
    let mut kills = 0;
    for _ in 0..5 {
        let before = committed(&store);
        let mut child = t
            .aggregate_into(&store, "crash", "3")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill it mid-stream, once it has committed a batch of its own
        // (unless it found nothing to read, or no partition, and exited).
        wait_until(
            Duration::from_secs(60),
            20,
            || committed(&store) > before || child.try_wait().unwrap().is_some(),
            || "the aggregator neither committed nor exited within 60 s".to_string(),
        );
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(kills >= 1, "no aggregator was killed mid-stream");
    // A SIGKILLed member keeps its partitions until its 10s session times
    // out: the final run's idle exit must outlast that (see README).
    run_ok(&mut t.aggregate_into(&store, "crash", "20"));
    assert_eq!(totals(&store), totals(&reference));
}
