//! History checking: what the ClickHouse ledger says was committed must be
//! one story. Per partition, the committed batches' offset ranges form one
//! gapless, non-overlapping chain from the first offset to the end of the
//! partition; and no event id is counted by two committed batches, while
//! every counted event has its id recorded. Cheap enough to run after every
//! fault test; it names the first inconsistency it finds. The ledger's
//! commits and the writers holding partitions are counted here too, for
//! the tests that wait for them.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokentally_aggregate::source::SourceKey;

use super::services::clickhouse_rows;

/// The first and past-the-end offsets of every partition of `topic`.
pub fn partition_bounds(brokers: &str, topic: &str) -> BTreeMap<i32, (i64, i64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "tokentally-history-check")
        .create()
        .expect("a Kafka client");
    let timeout = Duration::from_secs(30);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .expect("topic metadata");
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    partitions
        .into_iter()
        .map(|p| {
            let bounds = consumer
                .fetch_watermarks(topic, p, timeout)
                .expect("watermarks");
            (p, bounds)
        })
        .collect()
}

/// Batches committed to the ledger in `db` so far.
pub fn commits(url: &str, db: &str) -> u64 {
    let rows = clickhouse_rows(
        url,
        &format!("SELECT uniqExact(batch_id) AS n FROM {db}.usage_deltas WHERE kind = 'progress'"),
    );
    rows[0]["n"].as_u64().unwrap()
}

/// Writers of `db` that hold at least one partition now (their last word
/// on it was a claim).
pub fn holders(url: &str, db: &str) -> u64 {
    let rows = clickhouse_rows(
        url,
        &format!(
            "SELECT uniqExact(writer) AS n FROM (SELECT writer, argMax(action, seq) AS last \
             FROM {db}.writers GROUP BY source, writer) WHERE last = 'claim'"
        ),
    );
    rows[0]["n"].as_u64().unwrap()
}

/// Whether the ledger in `db` has every partition of `topic` committed to
/// its end (`bounds`, see [`partition_bounds`]).
pub fn committed_all(url: &str, db: &str, topic: &str, bounds: &BTreeMap<i32, (i64, i64)>) -> bool {
    let rows = clickhouse_rows(
        url,
        &format!(
            "SELECT source, max(next_offset) AS next FROM {db}.usage_deltas \
             WHERE kind = 'progress' GROUP BY source"
        ),
    );
    let next: BTreeMap<String, i64> = rows
        .iter()
        .map(|r| {
            let source = r["source"].as_str().unwrap().to_string();
            (source, r["next"].as_i64().unwrap())
        })
        .collect();
    bounds.iter().all(|(&partition, &(_, end))| {
        let key = SourceKey::Kafka {
            topic: topic.to_string(),
            partition,
        };
        next.get(&key.to_string()).copied().unwrap_or(0) >= end
    })
}

/// Check the ledger of `topic` in database `db` against the partitions'
/// `bounds` (see [`partition_bounds`]), once everything has been consumed.
pub fn check_history(
    url: &str,
    db: &str,
    topic: &str,
    bounds: &BTreeMap<i32, (i64, i64)>,
) -> Result<HistoryStats, String> {
    let rows = clickhouse_rows(
        url,
        &format!(
            "SELECT source, start_offset, next_offset, batch_id FROM {db}.usage_deltas \
             WHERE kind = 'progress' AND minute = toDateTime(0) AND source LIKE 'kafka:%' \
             ORDER BY source, start_offset, next_offset"
        ),
    );
    let mut chains: BTreeMap<i32, Vec<(i64, i64, String)>> = BTreeMap::new();
    for r in &rows {
        let source = r["source"].as_str().unwrap();
        let p = match source.parse() {
            Ok(SourceKey::Kafka {
                topic: of,
                partition,
            }) if of == topic => partition,
            _ => return Err(format!("a progress row of another topic: {source}")),
        };
        chains.entry(p).or_default().push((
            r["start_offset"].as_i64().unwrap(),
            r["next_offset"].as_i64().unwrap(),
            r["batch_id"].as_str().unwrap().to_string(),
        ));
    }
    let mut stats = HistoryStats::default();
    for (&p, &(first, end)) in bounds {
        let chain = chains.remove(&p).unwrap_or_default();
        let mut at = first;
        for (start, next, batch) in &chain {
            if *start != at {
                let what = if *start < at {
                    "overlaps"
                } else {
                    "leaves a gap before"
                };
                return Err(format!(
                    "partition {p}: batch {batch} covers [{start}, {next}), which {what} \
                     offset {at} where the chain stood"
                ));
            }
            if next <= start {
                return Err(format!(
                    "partition {p}: batch {batch} covers [{start}, {next})"
                ));
            }
            at = *next;
        }
        if at != end {
            return Err(format!(
                "partition {p}: the committed chain ends at {at}, the partition at {end}"
            ));
        }
        stats.batches += chain.len();
    }
    if let Some((p, _)) = chains.into_iter().next() {
        return Err(format!(
            "progress rows for partition {p}, which the topic lacks"
        ));
    }
    let ids = clickhouse_rows(
        url,
        &format!(
            // A side insert retried after ClickHouse died with its answer
            // lost lands twice: the same batch's ids twice, which count
            // once (the set is tagged with its batch). Only ids of two
            // different batches are counted twice.
            "SELECT uniqExact(batch_id, hi, lo) AS n, uniqExact(hi, lo) AS distinct FROM {db}.dedup_id_sets \
             ARRAY JOIN ids_hi AS hi, ids_lo AS lo \
             WHERE batch_id IN (SELECT batch_id FROM {db}.usage_deltas WHERE kind = 'progress')"
        ),
    );
    let counted = clickhouse_rows(
        url,
        &format!("SELECT sum(requests) AS r FROM {db}.usage_daily"),
    );
    let n = ids[0]["n"].as_u64().unwrap();
    let distinct = ids[0]["distinct"].as_u64().unwrap();
    let requests = counted[0]["r"].as_u64().unwrap_or(0);
    if n != distinct {
        return Err(format!(
            "{} event ids were counted by two committed batches ({n} ids, {distinct} distinct)",
            n - distinct
        ));
    }
    if n != requests {
        return Err(format!(
            "committed batches recorded {n} event ids but counted {requests} requests"
        ));
    }
    stats.ids = n;
    Ok(stats)
}

/// What a history check covered.
#[derive(Debug, Default, Clone, Copy)]
pub struct HistoryStats {
    pub batches: usize,
    pub ids: u64,
}
