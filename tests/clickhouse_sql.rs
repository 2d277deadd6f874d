//! Every query in docs/SQL.md runs, as written (database name aside), on
//! the real ClickHouse server over simulated traffic aggregated from Kafka,
//! and returns rows; the modern DDL and the same queries run on the modern
//! engine (chdb, ClickHouse 26.x) too.

mod common;

use std::path::Path;
use std::process::Command;

use common::services::{clickhouse_sql, produce, services, topic, unique};
use common::{bin, run_ok};

/// The ```sql blocks of docs/SQL.md.
fn doc_queries() -> Vec<String> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/SQL.md")).unwrap();
    let mut queries = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match (&mut current, line.trim()) {
            (None, "```sql") => current = Some(String::new()),
            (Some(q), "```") => {
                queries.push(q.trim().to_string());
                current = None;
            }
            (Some(q), _) => {
                q.push_str(line);
                q.push('\n');
            }
            (None, _) => {}
        }
    }
    queries
}

#[test]
fn docs_sql_queries_run_on_the_real_server_and_return_rows() {
    let s = services();
    let dir = tempfile::tempdir().unwrap();
    let queries = doc_queries();
    assert!(queries.len() >= 8, "docs/SQL.md lost its queries");

    // A day of a 20T-token fleet, so the 1T query finds models too.
    let file = dir.path().join("events.ndjson");
    run_ok(
        bin()
            .args(["simulate", "--events", "20000", "--seed", "9"])
            .args([
                "--tokens-per-day",
                "20000000000000",
                "--start-ms",
                "1795737600000",
            ])
            .args(["--late-rate", "0.05", "--malformed-rate", "0.01", "--out"])
            .arg(&file),
    );
    let t = topic("sql");
    produce(&t, &file);
    let db = unique("sql");
    run_ok(bin().args([
        "migrate",
        "--clickhouse",
        &s.clickhouse,
        "--clickhouse-database",
        &db,
    ]));
    run_ok(
        bin()
            .args(["aggregate", "--kafka", &t.brokers, "--topic", &t.name])
            .args([
                "--dlq-topic",
                &t.dlq(),
                "--group",
                "sql",
                "--exit-on-idle",
                "3",
            ])
            .args(["--sink", "clickhouse", "--clickhouse", &s.clickhouse])
            .args(["--clickhouse-database", &db]),
    );
    // A milestone, as `alerts run --from-clickhouse` records it.
    clickhouse_sql(
        &s.clickhouse,
        &format!(
            "INSERT INTO {db}.milestones_log (id, type, scope, model, day, threshold, value, detected_at) \
             VALUES ('first:model:1000000000000', 'first', 'model', 'qwen/qwen3.6-plus', '2026-11-27', 1000000000000, 1000000000001, now())"
        ),
    )
    .unwrap();
    for q in &queries {
        let sql = q.replace("tokentally.", &format!("{db}."));
        let out = clickhouse_sql(&s.clickhouse, &format!("{sql}\nFORMAT TSV"))
            .unwrap_or_else(|e| panic!("docs/SQL.md query failed on the server:\n{e}"));
        assert!(!out.trim().is_empty(), "no rows from:\n{sql}");
    }
}

#[test]
fn modern_ddl_and_docs_sql_run_on_the_modern_engine() {
    let dir = tempfile::tempdir().unwrap();
    let ddl = run_ok(bin().args(["migrate", "--print-ddl", "modern", "--json"]));
    let ddl_path = dir.path().join("ddl.json");
    std::fs::write(&ddl_path, &ddl.stdout).unwrap();
    let queries_path = dir.path().join("queries.json");
    std::fs::write(&queries_path, serde_json::to_vec(&doc_queries()).unwrap()).unwrap();
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/chdb/run"))
        .arg(&ddl_path)
        .arg(&queries_path)
        .output()
        .expect("run scripts/chdb/run");
    assert!(
        out.status.success(),
        "modern engine check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        report.matches("ok (").count(),
        doc_queries().len(),
        "{report}"
    );
}

#[test]
fn compatible_and_modern_ddl_differ_where_the_server_does() {
    let ddl = |kind: &str| {
        String::from_utf8(run_ok(bin().args(["migrate", "--print-ddl", kind])).stdout).unwrap()
    };
    let (old, new) = (ddl("compatible"), ddl("modern"));
    assert!(!old.contains("LowCardinality") && !old.contains("TTL") && !old.contains("CODEC"));
    assert!(
        new.contains("LowCardinality(String)")
            && new.contains("TTL")
            && new.contains("CODEC(ZSTD(1))")
    );
    assert!(new.contains("non_replicated_deduplication_window"));
}
