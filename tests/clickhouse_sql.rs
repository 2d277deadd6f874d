//! Every query in docs/SQL.md runs, as written (database name aside), on
//! the real ClickHouse server over simulated traffic aggregated from Kafka,
//! and returns rows; the modern DDL and the same queries run on the modern
//! engine (chdb, ClickHouse 26.x) too. The modern cluster DDL (`migrate
//! --cluster`), which an in-process engine cannot run (no ZooKeeper),
//! parses there; tests/cluster.rs runs the compatible one on a real cluster.

mod common;

use common::services::{
    analyst_database, clickhouse_rows, clickhouse_sql, migrated_database, modern_engine, services,
};
use common::{bin, read, root, run_ok};

/// The ```sql blocks of docs/SQL.md.
fn doc_queries() -> Vec<String> {
    let doc = read("docs/SQL.md");
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
    modern_engine(&doc_queries());
}

#[test]
fn modern_cluster_ddl_parses_on_the_modern_engine() {
    let dir = tempfile::tempdir().unwrap();
    let ddl = run_ok(bin().args([
        "migrate",
        "--print-ddl",
        "modern",
        "--cluster",
        "tokentally",
        "--json",
    ]));
    let statements: Vec<String> = serde_json::from_slice(&ddl.stdout).unwrap();
    assert!(
        statements
            .iter()
            .any(|s| s.contains("ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/"))
    );
    // The fence reaches every replica.
    assert!(
        statements
            .iter()
            .any(|s| s.starts_with("DROP TABLE IF EXISTS tokentally.writer_")
                && s.ends_with(" ON CLUSTER tokentally SYNC")),
        "{statements:?}"
    );
    let path = dir.path().join("ddl.json");
    std::fs::write(&path, &ddl.stdout).unwrap();
    let out = std::process::Command::new(root().join("scripts/chdb/run"))
        .arg("--parse-only")
        .arg(&path)
        .output()
        .expect("run scripts/chdb/run");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert_eq!(
        report.matches("ok (parses)").count(),
        statements.len(),
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

/// `migrate --print-ddl` shows a writer's table built from the columns
/// `usage_deltas` has once every migration ran; an aggregator reads them
/// from its server. Both must agree.
#[test]
fn the_printed_writer_table_has_the_columns_of_a_migrated_database() {
    use tokentally_sink::clickhouse::ServerInfo;
    use tokentally_sink::clickhouse::schema::delta_columns;
    let s = services();
    let db = migrated_database(&s.clickhouse, "columns");
    let version = clickhouse_sql(&s.clickhouse, "SELECT version()").unwrap();
    let server = ServerInfo::from_version(version.trim());
    let mut found: Vec<(String, String)> = clickhouse_rows(
        &s.clickhouse,
        &format!(
            "SELECT name, type FROM system.columns WHERE database = '{db}' \
             AND table = 'usage_deltas'"
        ),
    )
    .into_iter()
    .map(|r| {
        let text = |k: &str| r[k].as_str().unwrap().to_string();
        (text("name"), text("type"))
    })
    .collect();
    let mut printed = delta_columns(&server);
    found.sort();
    printed.sort();
    assert_eq!(printed, found);
}
