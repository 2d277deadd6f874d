//! Months of history (issue 18): recovery costs are bounded by the dedup
//! horizon and the number of partitions, not by how long the system ran.
//!
//! A ledger standing for `TOKENTALLY_SOAK_DAYS` days (default 2; `scripts/soak`
//! runs 90) at the default rates, 12 partitions and a batch every 500 ms, is
//! written in bulk: first as schema 4 wrote it (progress rows by source, id
//! sets, dead letters), which `migrate` converts, timed; then what schema 5
//! adds natively (the commit-time rows of every batch, and a horizon of id
//! sets stamped with their commit times). The history ends at offset 0 of
//! each partition of a real topic holding a corpus with retries. An
//! aggregator starts, commits, and is SIGKILLed mid-stream; a second one
//! recovers (startup and partition claims, fencing the first) and catches
//! up. Totals must equal the file path's, each recovery must take under 2 s,
//! and no query the aggregators ran may use 256 MiB of ClickHouse memory or
//! take 2 s (`system.query_log`, through the `logged` user that
//! scripts/clickhouse/config defines). One JSON line reports the run, also
//! appended to `TOKENTALLY_SOAK_REPORT` when set.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::services::{
    Topic, ch_totals, clickhouse_rows, clickhouse_sql, corpus, migrated_database, produce,
    reference_with, services, topic_with,
};
use common::{
    append_report, assert_same_totals, bin, count_from_env, kill_after_commit, logged_seconds,
    run_ok, totals, wait_until,
};

const PARTITIONS: u32 = 12;
/// One batch every 500 ms.
const BATCHES_PER_DAY: u64 = 172_800;
/// At most this many active parts while the history is written: the bulk
/// inserts wait for merges, as steady traffic would.
const MAX_PARTS: u64 = 60;
/// The corpus's first event time: the history's watermark ends there, so
/// that the corpus is inside the dedup horizon.
const CORPUS_START_MS: i64 = 1_795_737_600_000;
const BOUND: Duration = Duration::from_secs(2);
const MEMORY_BOUND: u64 = 256 << 20;
/// The dedup horizon of the aggregators and of the reference: the corpus
/// spans a day and its late events six hours more, so that with 48 h every
/// retry is inside the horizon whatever order the partitions are read in
/// (the floor follows the newest event time of any partition).
const HORIZON: &str = "48h";

/// One batch in this many has an id set in the horizon
/// (`TOKENTALLY_SOAK_ID_EVERY`, default 10; `scripts/soak` gives every batch
/// one, with the release build): what a recovery loads grows with the ids
/// of the horizon, not with history, and the debug build decodes them
/// slowly.
fn id_every() -> u64 {
    count_from_env("TOKENTALLY_SOAK_ID_EVERY", 10)
}

fn days() -> u64 {
    count_from_env("TOKENTALLY_SOAK_DAYS", 2)
}

struct Soak {
    url: String,
    db: String,
    topic: Topic,
    /// Batches in the history.
    batches: u64,
    /// Commit time of the first batch (s).
    t0: i64,
}

impl Soak {
    fn sql(&self, q: &str) -> String {
        clickhouse_sql(&self.url, q).unwrap_or_else(|e| panic!("{e}\n{q}"))
    }

    /// Rows `[from, to)` of batch numbers `n` (each with `PARTITIONS` rows
    /// when `per_source`), as a subquery over `numbers`.
    fn numbers(&self, from: u64, to: u64, per_source: bool) -> String {
        let k = if per_source { u64::from(PARTITIONS) } else { 1 };
        format!(
            "(SELECT {from} + intDiv(number, {k}) AS n, number % {k} AS p FROM numbers({}))",
            (to - from) * k
        )
    }

    /// Column expressions of batch `n`.
    fn batch_id(&self) -> &'static str {
        "lower(hex(MD5(toString(n))))"
    }
    fn next_offset(&self) -> String {
        format!("toInt64(n) - {}", self.batches - 1)
    }
    fn committed_at(&self) -> String {
        format!("toDateTime({} + intDiv(n, 2), 'UTC')", self.t0)
    }
    fn watermark(&self) -> String {
        format!(
            "{CORPUS_START_MS} - ({} - toInt64(n)) * 500",
            self.batches - 1
        )
    }
    fn source(&self) -> String {
        format!("concat('kafka:{}:', toString(p))", self.topic.name)
    }

    /// Every batch's progress rows, by source (`minute` 0) or by commit
    /// time, a day per insert.
    fn write_progress(&self, by_time: bool) {
        // `batches` 1, as the aggregator writes: SummingMergeTree deletes
        // rows whose sums are all zero.
        let minute = if by_time {
            self.committed_at()
        } else {
            "toDateTime(0)".to_string()
        };
        for day in 0..self.batches.div_ceil(BATCHES_PER_DAY) {
            let from = day * BATCHES_PER_DAY;
            let to = (from + BATCHES_PER_DAY).min(self.batches);
            self.bulk(
                "usage_deltas",
                &format!(
                    "INSERT INTO {db}.usage_deltas (kind, minute, source, next_offset, start_offset, \
                     batch_id, batches, watermark_ms, committed_at) SELECT 'progress', {minute}, \
                     {source}, {next}, {next} - 1, {id}, 1, {wm}, {at} FROM {rows}",
                    db = self.db,
                    source = self.source(),
                    next = self.next_offset(),
                    id = self.batch_id(),
                    wm = self.watermark(),
                    at = self.committed_at(),
                    rows = self.numbers(from, to, true),
                ),
            );
        }
    }

    /// The ledger as schema 4 wrote it: progress rows by source for every
    /// batch, a thousand batches' id sets and dead letters.
    fn write_schema_4_history(&self) {
        self.write_progress(false);
        let last = self.numbers(self.batches - 1_000, self.batches, false);
        self.sql(&format!(
            "INSERT INTO {db}.dedup_id_sets (batch_id, bucket, ids_hi, ids_lo) \
             SELECT {id}, intDiv({wm}, 3600000), [cityHash64(n, 3)], [cityHash64(n, 4)] FROM {last}",
            db = self.db,
            id = self.batch_id(),
            wm = self.watermark(),
        ));
        self.sql(&format!(
            "INSERT INTO {db}.rejected_events_log (received_at, batch_id, reason, field, detail, raw) \
             SELECT {at}, {id}, 'invalid_json', '', 'expected value', '{{not json' FROM {last}",
            db = self.db,
            id = self.batch_id(),
            at = self.committed_at(),
        ));
    }

    /// What schema 5 writes besides: every batch's commit-time rows, and a
    /// day (the default horizon) of id sets stamped with commit times.
    fn write_schema_5_history(&self) {
        self.write_progress(true);
        let horizon = self.numbers(
            self.batches - BATCHES_PER_DAY.min(self.batches),
            self.batches,
            false,
        );
        // One id per batch, as random as real id hashes.
        self.sql(&format!(
            "INSERT INTO {db}.dedup_id_sets (batch_id, bucket, ids_hi, ids_lo, at) \
             SELECT {id}, intDiv({wm}, 3600000), [cityHash64(n, 1)], [cityHash64(n, 2)], {at} \
             FROM {horizon} WHERE n % {every} = 0",
            db = self.db,
            id = self.batch_id(),
            wm = self.watermark(),
            at = self.committed_at(),
            every = id_every(),
        ));
    }

    fn count(&self, q: &str) -> u64 {
        self.sql(q).trim().parse().unwrap()
    }

    /// Run a bulk insert, then wait until merges bring the table's parts
    /// down to `MAX_PARTS`.
    fn bulk(&self, table: &str, q: &str) {
        self.sql(q);
        wait_until(
            Duration::from_secs(1_800),
            200,
            || {
                self.count(&format!(
                    "SELECT count() FROM system.parts WHERE database = '{}' AND table = '{table}' \
                     AND active",
                    self.db
                )) <= MAX_PARTS
            },
            || format!("{table} was not merged down to {MAX_PARTS} parts within 30 min"),
        );
    }
}

/// An aggregator of the soak topic into the soak database, as the user
/// whose queries ClickHouse logs.
/// Logs are JSON lines, read by [`logged_seconds`].
fn aggregator(s: &Soak, log: &std::path::Path, idle: &str) -> Child {
    s.topic
        .aggregate(&format!("{}-g", s.topic.name))
        .args(["--sink", "clickhouse", "--clickhouse", &s.url])
        .args(["--clickhouse-database", &s.db, "--batch-records", "5000"])
        .args(["--exit-on-idle", idle, "--dedup-horizon", HORIZON])
        .args(["--log-format", "json"])
        .env("TOKENTALLY_CLICKHOUSE_USER", "logged")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

#[test]
fn months_of_ledger_history_keep_recovery_bounded_and_totals_exact() {
    let services = services();
    let days = days();
    let dir = tempfile::tempdir().unwrap();
    let now = chrono::Utc::now().timestamp();
    let batches = days * BATCHES_PER_DAY;
    let s = Soak {
        url: services.clickhouse.clone(),
        db: migrated_database(&services.clickhouse, "soak"),
        topic: topic_with(&services.brokers, "soak", PARTITIONS),
        batches,
        // The history ends an hour ago.
        t0: now - 3_600 - (batches / 2) as i64,
    };

    // Back to schema 4, then its history, then the conversion.
    s.sql(&format!("DROP TABLE {}.ledger_heads", s.db));
    s.sql(&format!(
        "ALTER TABLE {}.dedup_id_sets DROP COLUMN at",
        s.db
    ));
    s.sql(&format!(
        "ALTER TABLE {}.schema_migrations DELETE WHERE version = 5",
        s.db
    ));
    wait_until(
        Duration::from_secs(60),
        200,
        || {
            s.count(&format!(
                "SELECT count() FROM {}.schema_migrations WHERE version = 5",
                s.db
            )) == 0
        },
        || "the mutation did not finish within 60 s".into(),
    );
    let writing = Instant::now();
    s.write_schema_4_history();
    let progress_rows = s.count(&format!(
        "SELECT count() FROM {}.usage_deltas WHERE kind = 'progress'",
        s.db
    ));
    assert_eq!(progress_rows, batches * u64::from(PARTITIONS));
    let converting = Instant::now();
    let out = run_ok(bin().args([
        "migrate",
        "--clickhouse",
        &s.url,
        "--clickhouse-database",
        &s.db,
    ]));
    let migrate_s = converting.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("applied migrations [5]"), "{text}");
    // Every partition has a head at its end, and the kept batches have
    // their commit-time rows.
    let heads = clickhouse_rows(
        &s.url,
        &format!(
            "SELECT source, max(next_offset) AS head FROM {}.ledger_heads GROUP BY source",
            s.db
        ),
    );
    assert_eq!(heads.len(), PARTITIONS as usize);
    assert!(heads.iter().all(|h| h["head"] == 0), "{heads:?}");
    assert_eq!(
        s.count(&format!(
            "SELECT uniqExact(batch_id) FROM {}.usage_deltas WHERE kind = 'progress' \
             AND minute > toDateTime(0)",
            s.db
        )),
        1_000
    );
    assert_eq!(
        s.count(&format!("SELECT count() FROM {}.rejected_events", s.db)),
        1_000
    );
    s.write_schema_5_history();
    // Merged down to one part, every progress row is still there: none of
    // them has sums that are all zero, which SummingMergeTree would delete.
    s.sql(&format!("OPTIMIZE TABLE {}.usage_deltas FINAL", s.db));
    assert_eq!(
        s.count(&format!(
            "SELECT count() FROM {}.usage_deltas WHERE kind = 'progress' AND minute > toDateTime(0)",
            s.db
        )),
        (batches + 1_000) * u64::from(PARTITIONS)
    );
    let write_s = writing.elapsed().as_secs_f64() - migrate_s;
    let ledger_rows = s.count(&format!(
        "SELECT count() FROM {}.usage_deltas WHERE kind = 'progress'",
        s.db
    ));

    // The corpus, an aggregator SIGKILLed mid-stream, and a second one.
    let file = corpus(dir.path(), 60_000, 18);
    produce(&s.topic, &file);
    let reference = reference_with(dir.path(), &file, &["--dedup-horizon", HORIZON]);
    let since = s.sql("SELECT toUInt32(now())").trim().to_string();
    let x_log = dir.path().join("x.log");
    let mut x = aggregator(&s, &x_log, "20");
    kill_after_commit(&mut x, &x_log, || {
        s.count(&format!(
            "SELECT count() FROM {}.usage_deltas WHERE kind = 'progress' \
             AND minute = toDateTime(0) AND next_offset > 0",
            s.db
        )) > 0
    });
    let y_log = dir.path().join("y.log");
    let y = aggregator(&s, &y_log, "5").wait_with_output().unwrap();
    let y_text = std::fs::read_to_string(&y_log).unwrap();
    assert!(
        y.status.success(),
        "the second aggregator failed:\n{y_text}"
    );
    let x_text = std::fs::read_to_string(&x_log).unwrap();
    let (counted, expected) = (ch_totals(&s.url, &s.db), totals(&reference));
    if counted != expected {
        // What each aggregator recovered, claimed and committed, for
        // whoever reads a failure: the logs go with the temporary directory.
        for (name, text) in [("killed", &x_text), ("second", &y_text)] {
            eprintln!("--- the {name} aggregator's recoveries, rebalances and warnings:");
            let marks = [
                "recovered",
                "resumed",
                "assigned",
                "revoked",
                "fenc",
                "WARN",
                "ERROR",
            ];
            text.lines()
                .filter(|l| marks.iter().any(|m| l.contains(m)))
                .take(200)
                .for_each(|l| eprintln!("{l}"));
        }
    }
    assert_same_totals(&counted, &expected);

    let startup: Vec<f64> = [&x_text, &y_text]
        .iter()
        .flat_map(|t| logged_seconds(t, "recovered from ClickHouse"))
        .collect();
    let claims: Vec<f64> = [&x_text, &y_text]
        .iter()
        .flat_map(|t| logged_seconds(t, "resumed partitions from ClickHouse"))
        .collect();
    assert_eq!(startup.len(), 2, "{x_text}\n{y_text}");
    assert!(!claims.is_empty(), "{y_text}");

    // Every query the aggregators ran, from the query log, flushed once the
    // last ones show up: the second aggregator drops the first one's writer
    // table and view when it fences it, and its own when it stops.
    wait_until(
        Duration::from_secs(60),
        200,
        || {
            s.count(&format!(
                "SELECT count() FROM system.query_log WHERE type = 2 AND user = 'logged' \
                 AND query LIKE 'DROP TABLE IF EXISTS {}.writer_%'",
                s.db
            )) >= 4
        },
        || "the query log did not flush within 60 s".into(),
    );
    let worst = clickhouse_rows(
        &s.url,
        &format!(
            "SELECT count() AS queries, max(query_duration_ms) AS ms, max(memory_usage) AS memory, \
             max(read_rows) AS read_rows, argMax(substring(query, 1, 160), memory_usage) AS heaviest, \
             argMax(substring(query, 1, 160), query_duration_ms) AS slowest \
             FROM system.query_log WHERE type = 2 AND user = 'logged' \
             AND event_time >= toDateTime({since}) AND query LIKE '%{}.%' \
             AND query NOT LIKE 'INSERT%'",
            s.db
        ),
    );
    let w = &worst[0];
    let num = |k: &str| w[k].as_u64().unwrap_or(0);
    let line = serde_json::json!({
        "days": days,
        "id_sets_every": id_every(),
        "batches": batches,
        "progress_rows": ledger_rows,
        "schema_4_progress_rows": progress_rows,
        "write_s": write_s,
        "migrate_s": migrate_s,
        "startup_recovery_s": startup,
        "partition_recovery_s": claims,
        "queries": num("queries"),
        "max_query_ms": num("ms"),
        "max_query_memory": num("memory"),
        "max_read_rows": num("read_rows"),
        "heaviest": w["heaviest"],
        "slowest": w["slowest"],
    });
    eprintln!("soak: {line}");
    append_report("TOKENTALLY_SOAK_REPORT", &line);
    for secs in startup.iter().chain(&claims) {
        assert!(
            *secs < BOUND.as_secs_f64(),
            "a recovery took {secs} s: {line}"
        );
    }
    assert!(num("memory") < MEMORY_BOUND, "{line}");
    assert!(num("ms") < BOUND.as_millis() as u64, "{line}");
}
