//! The real services of the integration tests: Kafka and ClickHouse started
//! by `scripts/services up` (unless TOKENTALLY_KAFKA_BROKERS and
//! TOKENTALLY_CLICKHOUSE_URL are set), topics, corpora, SQL over
//! ClickHouse's HTTP interface, and SQL on the modern engine (chdb).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::{bin, root, run_ok};

/// Addresses of the running services.
pub struct Services {
    pub brokers: String,
    pub clickhouse: String,
}

/// Start (or find) the services once per test binary.
pub fn services() -> &'static Services {
    static S: OnceLock<Services> = OnceLock::new();
    S.get_or_init(|| {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let (Some(brokers), Some(clickhouse)) = (
            env("TOKENTALLY_KAFKA_BROKERS"),
            env("TOKENTALLY_CLICKHOUSE_URL"),
        ) {
            return Services {
                brokers,
                clickhouse,
            };
        }
        let exports = services_up(&[]);
        Services {
            brokers: exports("TOKENTALLY_KAFKA_BROKERS"),
            clickhouse: exports("TOKENTALLY_CLICKHOUSE_URL"),
        }
    })
}

/// Run `scripts/services up` with extra environment; returns a lookup of
/// the exported addresses.
pub fn services_up(env: &[(&str, &str)]) -> impl Fn(&str) -> String {
    let out = script()
        .arg("up")
        .envs(env.iter().copied())
        .output()
        .expect("run scripts/services up");
    assert!(
        out.status.success(),
        "scripts/services up failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    move |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .unwrap_or_else(|| panic!("scripts/services prints {name}"))
            .to_string()
    }
}

/// Services of one test's own (other ports, another state directory),
/// stopped when dropped, even when the test fails.
pub struct Private {
    env: Vec<(String, String)>,
}

impl Private {
    /// Start them; `env` picks the state directory and ports, and presets
    /// the addresses of the shared services this test does not replace.
    pub fn up(env: &[(&str, &str)]) -> (Private, impl Fn(&str) -> String) {
        let private = Private {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let exports = services_up(env);
        (private, exports)
    }

    /// `scripts/services ACTION SERVICE` (`stop`/`start` keep the data).
    pub fn run(&self, action: &str, service: &str) {
        let out = script()
            .args([action, service])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        let _ = script()
            .arg("down")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output();
    }
}

/// `scripts/services` (for `stop`/`start` of one service).
pub fn script() -> Command {
    Command::new(root().join("scripts/services"))
}

pub fn brokers() -> String {
    services().brokers.clone()
}

/// A unique name for a topic, group or database.
pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("tt_{tag}_{}_{nanos}", std::process::id())
}

pub struct Topic {
    pub brokers: String,
    pub name: String,
}

impl Topic {
    pub fn dlq(&self) -> String {
        format!("{}-dlq", self.name)
    }

    /// `tokentally aggregate` of this topic (and its dead-letter topic) as
    /// a member of `group`; the caller adds the sink and the rest.
    pub fn aggregate(&self, group: &str) -> Command {
        let mut cmd = bin();
        cmd.args(["aggregate", "--kafka", &self.brokers, "--topic", &self.name])
            .args(["--dlq-topic", &self.dlq(), "--group", group]);
        cmd
    }

    /// [`Topic::aggregate`] into the embedded store `store`, in
    /// micro-batches of 2,000 records, exiting after `idle_secs` without
    /// records, with its JSON summary on stdout.
    pub fn aggregate_into(&self, store: &Path, group: &str, idle_secs: &str) -> Command {
        let mut cmd = self.aggregate(group);
        cmd.args([
            "--batch-records",
            "2000",
            "--exit-on-idle",
            idle_secs,
            "--json",
            "--store",
        ])
        .arg(store);
        cmd
    }
}

/// A fresh events topic (4 partitions) and its dead-letter topic.
pub fn topic_on(brokers: &str, tag: &str) -> Topic {
    topic_with(brokers, tag, 4)
}

/// A fresh events topic with `partitions` partitions, and its dead-letter
/// topic.
pub fn topic_with(brokers: &str, tag: &str, partitions: u32) -> Topic {
    let name = unique(tag).replace('_', "-");
    run_ok(
        bin()
            .args(["topics", "create", "--kafka", brokers, "--topic", &name])
            .args(["--dlq-topic", &format!("{name}-dlq"), "--partitions"])
            .arg(partitions.to_string()),
    );
    Topic {
        brokers: brokers.to_string(),
        name,
    }
}

pub fn topic(tag: &str) -> Topic {
    topic_on(&brokers(), tag)
}

/// Lines between an event and its retries in test corpora: far more than a
/// micro-batch or the records in flight at a crash, a pause or a
/// rebalance, so that retries straddle every fault a test injects.
pub const RETRY_WINDOW: u32 = 20_000;

/// A simulated corpus with retries (straddling faults, see
/// [`RETRY_WINDOW`]), late events and malformed lines.
pub fn corpus(dir: &Path, events: u32, seed: u32) -> PathBuf {
    let path = dir.join(format!("events-{seed}.ndjson"));
    run_ok(
        bin()
            .args([
                "simulate",
                "--events",
                &events.to_string(),
                "--seed",
                &seed.to_string(),
            ])
            .args(["--start-ms", "1795737600000", "--duplicate-rate", "0.02"])
            .args(["--retry-window", &RETRY_WINDOW.to_string()])
            .args(["--late-rate", "0.02", "--malformed-rate", "0.005", "--out"])
            .arg(&path),
    );
    path
}

/// The corpus ingested from the file into a reference store (the file
/// path is checked against independent ground truth in
/// tests/ingest_ground_truth.rs).
pub fn reference(dir: &Path, file: &Path) -> PathBuf {
    reference_with(dir, file, &[])
}

/// The same, with extra `ingest` flags (a dedup horizon).
pub fn reference_with(dir: &Path, file: &Path, flags: &[&str]) -> PathBuf {
    let reference = dir.join("reference");
    run_ok(
        bin()
            .args(["ingest"])
            .args(flags)
            .arg("--file")
            .arg(file)
            .arg("--store")
            .arg(&reference),
    );
    reference
}

pub fn produce(t: &Topic, file: &Path) {
    run_ok(
        bin()
            .args([
                "produce", "--kafka", &t.brokers, "--topic", &t.name, "--file",
            ])
            .arg(file),
    );
}

/// Run SQL on ClickHouse over HTTP; the answer's body, or the error.
pub fn clickhouse_sql(url: &str, sql: &str) -> Result<String, String> {
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut s = TcpStream::connect(&addr).map_err(|e| format!("connect {addr}: {e}"))?;
    let req = format!(
        "POST /?output_format_json_quote_64bit_integers=0 HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{sql}",
        sql.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") {
        Ok(body.to_string())
    } else {
        Err(format!("{sql}: {head}\n{body}"))
    }
}

/// Rows of `sql` (without a FORMAT clause) as JSON objects.
pub fn clickhouse_rows(url: &str, sql: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let body = clickhouse_sql(url, &format!("{sql} FORMAT JSONEachRow")).unwrap();
    body.lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).expect("JSONEachRow"))
        .collect()
}

/// A fresh database named after `tag`, migrated to the current schema.
pub fn migrated_database(url: &str, tag: &str) -> String {
    let db = unique(tag);
    let out = run_ok(bin().args(["migrate", "--clickhouse", url, "--clickhouse-database", &db]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("applied migrations [1, 2, 3, 4, 5, 6]"),
        "{text}"
    );
    db
}

/// Run `queries` on the modern engine (chdb, ClickHouse 26.x) over the
/// modern DDL (`scripts/chdb/run`); panics unless every one runs.
pub fn modern_engine(queries: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let ddl = run_ok(bin().args(["migrate", "--print-ddl", "modern", "--json"]));
    let ddl_path = dir.path().join("ddl.json");
    std::fs::write(&ddl_path, &ddl.stdout).unwrap();
    let queries_path = dir.path().join("queries.json");
    std::fs::write(&queries_path, serde_json::to_vec(queries).unwrap()).unwrap();
    let out = Command::new(root().join("scripts/chdb/run"))
        .arg(&ddl_path)
        .arg(&queries_path)
        .output()
        .expect("run scripts/chdb/run");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "queries fail on the modern engine:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report.matches("ok (").count(), queries.len(), "{report}");
}

/// The events of `file` produced to a new topic and aggregated from it
/// into a new migrated database (both named after `tag`): the database.
pub fn aggregated_database(file: &Path, tag: &str) -> String {
    let s = services();
    let t = topic(tag);
    produce(&t, file);
    let db = migrated_database(&s.clickhouse, tag);
    run_ok(
        t.aggregate(tag)
            .args(["--exit-on-idle", "3"])
            .args(["--sink", "clickhouse", "--clickhouse", &s.clickhouse])
            .args(["--clickhouse-database", &db]),
    );
    db
}

/// A migrated ClickHouse database holding a simulated day (2026-11-27) of a
/// 20T-token fleet, with duplicates, late and malformed events, produced to
/// Kafka and aggregated into it, plus one milestone as `alerts run
/// --from-clickhouse` records it: data for every documented view.
pub fn analyst_database(dir: &Path, tag: &str) -> String {
    let s = services();
    let file = dir.join("events.ndjson");
    run_ok(
        bin()
            .args(["simulate", "--events", "20000", "--seed", "11"])
            .args(["--tokens-per-day", "20000000000000"])
            .args(["--start-ms", "1795737600000", "--duplicate-rate", "0.01"])
            .args(["--late-rate", "0.05", "--malformed-rate", "0.01", "--out"])
            .arg(&file),
    );
    let db = aggregated_database(&file, tag);
    run_ok(
        bin()
            .args(["prices", "load"])
            .arg(root().join("deploy/prices/example.json"))
            .args(["--valid-from", "2026-11-01", "--clickhouse", &s.clickhouse])
            .args(["--clickhouse-database", &db]),
    );
    clickhouse_sql(
        &s.clickhouse,
        &format!(
            "INSERT INTO {db}.milestones_log (id, type, scope, model, day, threshold, value, detected_at) \
             VALUES ('first:model:1000000000000', 'first', 'model', 'qwen/qwen3.6-plus', '2026-11-27', \
             1000000000000, 1000000000001, now())"
        ),
    )
    .unwrap();
    db
}

/// Every total ClickHouse exposes, in the order and shape of
/// `common::totals` over a store: `usage_daily` rows, per-(app, model)
/// totals, the `usage_minute` sums and reject counts.
pub fn ch_totals(url: &str, db: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let mut rows = clickhouse_rows(
        url,
        &format!(
            "SELECT toString(day) AS day, model, provider, requests, prompt_tokens, completion_tokens, \
             total_tokens, cached_tokens, reasoning_tokens, error_requests FROM {db}.usage_daily \
             ORDER BY day, model, provider"
        ),
    );
    rows.extend(clickhouse_rows(
        url,
        &format!(
            "SELECT app, model, sum(total_tokens) AS t, sum(requests) AS r FROM {db}.usage_app_daily \
             GROUP BY app, model ORDER BY app, model"
        ),
    ));
    rows.extend(clickhouse_rows(
        url,
        &format!(
            "SELECT sum(total_tokens) AS t, sum(requests) AS r, count() AS n FROM {db}.usage_minute"
        ),
    ));
    rows.extend(clickhouse_rows(
        url,
        &format!("SELECT reason, count FROM {db}.rejected ORDER BY reason"),
    ));
    rows
}

/// A Kafka message as tests compare it: key, headers in order, payload.
pub type Message = (Option<String>, Vec<(String, Option<String>)>, String);

/// The `expected` messages of `topic` (waiting up to 60 s for them, and
/// asserting that no more follow), sorted.
pub fn read_topic(brokers: &str, topic: &str, expected: usize) -> Vec<Message> {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while out.len() < expected && std::time::Instant::now() < deadline {
        let Some(m) = consumer.poll(std::time::Duration::from_millis(500)) else {
            continue;
        };
        let m = m.unwrap();
        let headers = m.headers().map_or_else(Vec::new, |h| {
            h.iter()
                .map(|h| (h.key.to_owned(), h.value.map(text)))
                .collect()
        });
        out.push((m.key().map(text), headers, text(m.payload().unwrap())));
    }
    // Nothing more than expected.
    assert!(consumer.poll(std::time::Duration::from_secs(2)).is_none());
    out.sort();
    out
}
