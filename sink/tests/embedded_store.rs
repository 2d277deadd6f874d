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
        ..StoreConfig::default()
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
async fn levelled_compaction_keeps_totals_bounds_files_and_leaves_history_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = EmbeddedStore::open(config(dir.path(), 3)).unwrap();
    let mut agg = Aggregator::new(AggregatorConfig::default(), &Recovered::default());
    let mut expected = 0u64;
    // The first level-3 file of usage_minute: 64 commits merged in three
    // steps. The next level-3 merge needs 4 of them (256 commits), so it
    // must outlive the run: compaction does not rewrite history.
    let mut first_l3: Option<(u64, String)> = None;
    for b in 0..200u64 {
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
            let files = &store.manifest().tables[table];
            // 200 commits < 4^4: levels 0 to 3, at most 3 files each.
            assert!(files.len() <= 12, "{table} has {files:?} after commit {b}");
            if b % 20 == 19 {
                let sql = format!("SELECT CAST(SUM(total_tokens) AS BIGINT UNSIGNED) FROM {table}");
                assert_eq!(
                    scalar(dir.path(), &sql).await,
                    expected,
                    "{table} after {b}"
                );
            }
        }
        let minute = &store.manifest().tables["usage_minute"];
        if first_l3.is_none() {
            first_l3 = minute
                .iter()
                .find(|f| f.ends_with("-l3.parquet"))
                .map(|f| (b, f.clone()));
        }
    }
    let (when, l3) = first_l3.expect("a level-3 file after 64 commits");
    assert_eq!(when, 63, "the 64th commit makes the first level-3 file");
    assert!(
        store.manifest().tables["usage_minute"].contains(&l3),
        "{l3} was rewritten: {:?}",
        store.manifest().tables["usage_minute"]
    );
    // Replaced files are garbage-collected (grace period 0 here).
    let files = std::fs::read_dir(dir.path().join("tables/usage_minute"))
        .unwrap()
        .count();
    assert!(files <= 13, "{files} files left in usage_minute");
}

#[tokio::test]
async fn dead_letters_merge_by_level_and_are_dropped_past_their_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut agg = Aggregator::new(AggregatorConfig::default(), &Recovered::default());
    {
        let mut store = EmbeddedStore::open(config(dir.path(), 2)).unwrap();
        for b in 0..100u64 {
            let mut raw = batch([line(b, DAY0, "m", 1)]);
            raw.push(format!("not json {b}").as_bytes());
            store
                .commit(&agg.process(&raw).await.unwrap())
                .await
                .unwrap();
            // Levels 0 to 3 hold at most 2 files each; level 4 (81
            // commits each here) is the last.
            let files = &store.manifest().dead_letters;
            assert!(files.len() <= 8 + 4, "{files:?} after commit {b}");
        }
        // Every dead letter is kept exactly once.
        let mut seen: Vec<String> = Vec::new();
        for f in &store.manifest().dead_letters {
            let text = std::fs::read_to_string(dir.path().join(f)).unwrap();
            for l in text.lines() {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                seen.push(v["raw"].as_str().unwrap().to_string());
            }
        }
        seen.sort();
        let mut want: Vec<String> = (0..100).map(|b| format!("not json {b}")).collect();
        want.sort();
        assert_eq!(seen, want);
    }
    // With a retention of zero the next commit drops every dead-letter
    // file; the counts stay.
    let mut store = EmbeddedStore::open(StoreConfig {
        dead_letter_retention: std::time::Duration::ZERO,
        ..config(dir.path(), 2)
    })
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let out = agg
        .process(&batch([line(1_000, DAY0, "m", 1)]))
        .await
        .unwrap();
    store.commit(&out).await.unwrap();
    assert_eq!(store.manifest().dead_letters, Vec::<String>::new());
    assert_eq!(scalar(dir.path(), "SELECT count FROM rejected").await, 100);
    assert_eq!(
        scalar(dir.path(), "SELECT requests FROM usage_daily").await,
        101
    );
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
