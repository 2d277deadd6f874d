//! Every query in docs/SQL.md runs, as written (database name aside), on
//! the real ClickHouse server over simulated traffic aggregated from Kafka,
//! and returns rows; the modern DDL and the same queries run on the modern
//! engine (chdb, ClickHouse 26.x) too.

mod common;

use std::path::Path;
use std::process::Command;

use common::services::{analyst_database, clickhouse_sql, services};
use common::{bin, run_ok};

/// The ```sql blocks of docs/SQL.md.
fn doc_queries() -> Vec<String> {
    let doc = std::fs::read_to_string(
        Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("docs/SQL.md"),
    )
    .unwrap();
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

    let db = analyst_database(dir.path(), "sql");
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
    let out = Command::new(
        Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("scripts/chdb/run"),
    )
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
