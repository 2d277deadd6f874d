//! Helpers for tests that run the `tokentally` binary.

#![allow(dead_code)] // each test binary uses a different subset

pub mod compose;
pub mod dashboards;
pub mod faults;
pub mod gateway;
pub mod history;
pub mod http;
pub mod proxy;
pub mod services;
pub mod webhook;
pub mod yaml;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tokentally"))
}

/// The work tree, read when the test runs (a test binary built from another
/// checkout into a shared target directory keeps its compile-time path).
pub fn root() -> PathBuf {
    std::env::var("CARGO_MANIFEST_DIR")
        .expect("cargo sets CARGO_MANIFEST_DIR")
        .into()
}

/// A file of the work tree (`rel` to it), as text.
pub fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// One test at a time, for the tests of a binary that share the broker,
/// the server and two cores (rebalance timing is then not at the mercy of
/// the other tests).
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Poll `done` every `poll_ms` until it holds; fail with `what` after
/// `limit`.
pub fn wait_until(
    limit: std::time::Duration,
    poll_ms: u64,
    mut done: impl FnMut() -> bool,
    what: impl Fn() -> String,
) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{}", what());
        std::thread::sleep(std::time::Duration::from_millis(poll_ms));
    }
}

/// A crash mid-stream: wait (at most 300 s) until `committed` holds while
/// `child` still runs, then SIGKILL it. `log` is its stderr, shown when it
/// exits first or never commits.
pub fn kill_after_commit(
    child: &mut std::process::Child,
    log: &Path,
    mut committed: impl FnMut() -> bool,
) {
    let read = || std::fs::read_to_string(log).unwrap_or_default();
    wait_until(
        std::time::Duration::from_secs(300),
        100,
        || {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the aggregator exited before it was killed:\n{}",
                read()
            );
            committed()
        },
        || format!("no commit within 300 s:\n{}", read()),
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Append `line` to the report file named by environment variable `var`,
/// when it is set: one write per line, so that parallel cases can share a
/// file.
pub fn append_report(var: &str, line: &serde_json::Value) {
    if let Ok(path) = std::env::var(var) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(format!("{line}\n").as_bytes()).unwrap();
    }
}

/// A positive count from environment variable `var`, else `default`.
pub fn count_from_env(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|d| *d > 0)
        .unwrap_or(default)
}

/// The `seconds` field of every JSON log line (`--log-format json`) whose
/// message is `message`.
pub fn logged_seconds(log: &str, message: &str) -> Vec<f64> {
    logged_fields(log, message)
        .filter_map(|f| f["seconds"].as_f64())
        .collect()
}

/// The `fields` of every JSON log line (`--log-format json`) whose message
/// is `message`.
pub fn logged_fields<'a>(
    log: &'a str,
    message: &'a str,
) -> impl Iterator<Item = serde_json::Value> + 'a {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(move |v| v["fields"]["message"] == message)
        .map(|mut v| v["fields"].take())
}

/// Run to completion; panic with its output unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run tokentally");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The JSON summary a command prints with `--json`; panics with its output
/// unless it succeeds.
pub fn summary(cmd: &mut Command) -> serde_json::Value {
    serde_json::from_slice(&run_ok(cmd).stdout).expect("summary JSON")
}

/// `tokentally query --format json` parsed as an array of objects.
pub fn query(store: &Path, sql: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let out = run_ok(
        bin()
            .args(["query", "--format", "json", "--store"])
            .arg(store)
            .arg(sql),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("query prints JSON");
    v.as_array()
        .expect("a JSON array")
        .iter()
        .map(|r| r.as_object().expect("an object per row").clone())
        .collect()
}

pub fn u(row: &serde_json::Map<String, serde_json::Value>, col: &str) -> u64 {
    row[col]
        .as_u64()
        .unwrap_or_else(|| panic!("{col} is not an integer in {row:?}"))
}

pub fn s<'a>(row: &'a serde_json::Map<String, serde_json::Value>, col: &str) -> &'a str {
    row[col]
        .as_str()
        .unwrap_or_else(|| panic!("{col} is not a string in {row:?}"))
}

/// A store's reject counts, by reason.
pub fn rejects(store: &Path) -> BTreeMap<String, u64> {
    query(store, "SELECT reason, count FROM rejected ORDER BY reason")
        .iter()
        .map(|r| (s(r, "reason").to_owned(), u(r, "count")))
        .collect()
}

/// The manifest of `store`, parsed; `None` while it cannot be read.
pub fn manifest(store: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(store.join("MANIFEST.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// A valid event with id `id` (3 prompt and 4 completion tokens, on
/// 2026-11-27).
pub fn event(id: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","ts":1795737600000,"model":"m","provider":"p","app":"a","prompt_tokens":3,"completion_tokens":4}}"#
    )
}

/// Every total a store exposes, in a fixed order: all `usage_daily` rows,
/// per-(app, model) totals, the `usage_minute` sums, and reject counts.
pub fn totals(store: &Path) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let mut rows = query(
        store,
        "SELECT * FROM usage_daily ORDER BY day, model, provider",
    );
    rows.extend(query(
        store,
        "SELECT app, model, CAST(SUM(total_tokens) AS BIGINT UNSIGNED) AS t, CAST(SUM(requests) AS BIGINT UNSIGNED) AS r FROM usage_app_daily GROUP BY app, model ORDER BY app, model",
    ));
    rows.extend(query(
        store,
        "SELECT CAST(SUM(total_tokens) AS BIGINT UNSIGNED) AS t, CAST(SUM(requests) AS BIGINT UNSIGNED) AS r, COUNT(*) AS n FROM usage_minute",
    ));
    rows.extend(query(
        store,
        "SELECT reason, count FROM rejected ORDER BY reason",
    ));
    rows
}

/// `totals` without the reject counts: what counts as usage.
pub fn usage_totals(store: &Path) -> Vec<serde_json::Map<String, serde_json::Value>> {
    totals(store)
        .into_iter()
        .filter(|r| !r.contains_key("reason"))
        .collect()
}

/// Compare two `totals()` listings, reporting only what differs.
#[track_caller]
pub fn assert_same_totals(
    actual: &[serde_json::Map<String, serde_json::Value>],
    expected: &[serde_json::Map<String, serde_json::Value>],
) {
    if actual == expected {
        return;
    }
    let missing: Vec<_> = expected
        .iter()
        .filter(|r| !actual.contains(r))
        .take(5)
        .collect();
    let extra: Vec<_> = actual
        .iter()
        .filter(|r| !expected.contains(r))
        .take(5)
        .collect();
    panic!(
        "totals differ: {} rows, expected {}\nexpected but not found (first 5): {missing:#?}\nfound but not expected (first 5): {extra:#?}",
        actual.len(),
        expected.len()
    );
}

/// GET `http://addr{path}` (HTTP/1.0); the status code and the body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}
