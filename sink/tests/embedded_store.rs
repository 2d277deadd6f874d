//! The embedded store against the real aggregator: commits survive reopen,
//! compaction never changes totals, one writer at a time, and files left by
//! an interrupted commit are ignored and removed.

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::UInt64Type;
use tokentally_aggregate::sink::{Recovered, UsageSink};
use tokentally_aggregate::source::RawBatch;
use tokentally_aggregate::{Aggregator, AggregatorConfig};
use tokentally_sink::embedded::{EmbeddedStore, StoreConfig, StoreError, open_query_context};

fn line(id: u64, ts: i64, model: &str, tokens: u64) -> String {
    format!(
        r#"{{"event_id":"e{id}","ts":{ts},"model":"{model}","provider":"p","app":"a","prompt_tokens":{tokens},"completion_tokens":1}}"#
    )
}

const DAY0: i64 = 1_795_737_600_000;

fn batch(lines: impl IntoIterator<Item = String>) -> RawBatch {
    let mut b = RawBatch::default();
    for l in lines {
        b.push(l.as_bytes());
    }
    b
}

async fn scalar(dir: &std::path::Path, sql: &str) -> u64 {
    let ctx = open_query_context(dir).await.unwrap();
    let batches: Vec<RecordBatch> = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<UInt64Type>().values().to_vec())
        .sum()
}

fn config(dir: &std::path::Path, compact_after: usize) -> StoreConfig {
    StoreConfig {
        dir: dir.to_path_buf(),
        compact_after_files: compact_after,
        garbage_grace_secs: 0,
    }
}

#[tokio::test]
async fn commits_survive_reopen_and_dedup_state_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = EmbeddedStore::open(config(dir.path(), 16)).unwrap();
        let rec = store.recover().await.unwrap();
        assert_eq!(rec, Recovered::default());
        let mut agg = Aggregator::new(AggregatorConfig::default(), &rec);
        let mut raw = batch((0..100).map(|i| line(i, DAY0 + i as i64 * 1000, "m", 10)));
        raw.progress.insert("file".into(), 100);
        raw.push(b"not json");
        let out = agg.process(&raw).await.unwrap();
        store.commit(&out).await.unwrap();
    }
    let mut store = EmbeddedStore::open(config(dir.path(), 16)).unwrap();
    let rec = store.recover().await.unwrap();
    assert_eq!(rec.dedup_ids.len(), 100);
    assert_eq!(rec.watermark_ms, Some(DAY0 + 99_000));
    assert_eq!(rec.progress.get("file"), Some(&100));
    // A restarted aggregator still recognises the ids it had counted.
    let mut agg = Aggregator::new(AggregatorConfig::default(), &rec);
    let out = agg
        .process(&batch((50..150).map(|i| line(i, DAY0, "m", 10))))
        .await
        .unwrap();
    assert_eq!(out.stats.duplicates, 50);
    assert_eq!(out.stats.accepted, 50);
    store.commit(&out).await.unwrap();
    assert_eq!(
        scalar(dir.path(), "SELECT requests FROM usage_daily").await,
        150
    );
    assert_eq!(
        scalar(dir.path(), "SELECT total_tokens FROM usage_daily").await,
        150 * 11
    );
    assert_eq!(scalar(dir.path(), "SELECT count FROM rejected").await, 1);
    let dl = std::fs::read_dir(dir.path().join("dead-letter"))
        .unwrap()
        .count();
    assert_eq!(dl, 1, "one dead-letter file for the one bad line");
}

#[tokio::test]
async fn compaction_keeps_totals_and_bounds_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = EmbeddedStore::open(config(dir.path(), 3)).unwrap();
    let mut agg = Aggregator::new(AggregatorConfig::default(), &Recovered::default());
    let mut expected = 0u64;
    for b in 0..20u64 {
        let lines = (0..10).map(|i| {
            let id = b * 10 + i;
            expected += id + 1;
            // spread over two days and many minutes, late events included
            let ts = DAY0 + ((id * 7_919) % 2_000) as i64 * 60_000;
            line(id, ts, if id % 3 == 0 { "a" } else { "b" }, id)
        });
        let out = agg
            .process(&batch(lines.collect::<Vec<_>>()))
            .await
            .unwrap();
        store.commit(&out).await.unwrap();
        for table in ["usage_daily", "usage_minute", "usage_app_daily"] {
            let n = store.manifest().tables[table].len();
            assert!(n <= 3, "{table} has {n} files after commit {b}");
            let sql = format!("SELECT CAST(SUM(total_tokens) AS BIGINT UNSIGNED) FROM {table}");
            assert_eq!(
                scalar(dir.path(), &sql).await,
                expected,
                "{table} after {b}"
            );
        }
    }
    // Replaced files are garbage-collected (grace period 0 here).
    let files = std::fs::read_dir(dir.path().join("tables/usage_minute"))
        .unwrap()
        .count();
    assert!(files <= 4, "{files} files left in usage_minute");
}

#[tokio::test]
async fn one_writer_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let _first = EmbeddedStore::open(config(dir.path(), 16)).unwrap();
    match EmbeddedStore::open(config(dir.path(), 16)) {
        Err(StoreError::Locked(_)) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a second writer must be refused"),
    }
}

#[tokio::test]
async fn files_of_an_interrupted_commit_are_ignored_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    drop(EmbeddedStore::open(config(dir.path(), 16)).unwrap());
    // As if a commit crashed after writing its files but before the manifest.
    let stray = dir.path().join("tables/usage_daily/0000000001.parquet");
    std::fs::write(&stray, b"partial").unwrap();
    let mut store = EmbeddedStore::open(config(dir.path(), 16)).unwrap();
    assert!(!stray.exists(), "orphan removed on open");
    assert_eq!(store.recover().await.unwrap(), Recovered::default());
    assert_eq!(
        scalar(dir.path(), "SELECT requests FROM usage_daily").await,
        0
    );
}

#[tokio::test]
async fn querying_a_missing_store_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let Err(err) = open_query_context(&dir.path().join("nope")).await else {
        panic!("a missing store must be an error");
    };
    assert!(err.to_string().contains("tokentally demo"), "{err}");
}
