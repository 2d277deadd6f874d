//! The local cluster: three Kafka brokers (KRaft), two ClickHouse 18.16
//! servers as the two replicas of one shard, and ZooKeeper, all started by
//! `scripts/services up --cluster`. `scripts/test-cluster` (which
//! `scripts/test` calls) starts it and runs these tests with `--ignored`;
//! the plain `cargo test` run, with one broker and one server, lists them
//! as ignored. Without the cluster's addresses in the environment they
//! fail, they do not skip.

mod common;

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use common::services::{
    Topic, ch_totals, clickhouse_rows, clickhouse_sql, corpus, produce, reference, unique,
};
use common::{assert_same_totals, bin, run_ok, summary, totals, wait_until};

/// The cluster's addresses, as `scripts/services up --cluster` exports them.
struct Cluster {
    brokers: String,
    replicas: Vec<String>,
    name: String,
}

fn cluster() -> Cluster {
    let env = |k: &str| {
        std::env::var(k)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| {
                panic!("{k} is not set: run these tests through scripts/test-cluster")
            })
    };
    let cluster = Cluster {
        brokers: env("TOKENTALLY_KAFKA_BROKERS"),
        replicas: env("TOKENTALLY_CLICKHOUSE_URLS")
            .split(',')
            .map(str::to_string)
            .collect(),
        name: env("TOKENTALLY_CLICKHOUSE_CLUSTER"),
    };
    assert_eq!(cluster.brokers.split(',').count(), 3, "three brokers");
    assert_eq!(cluster.replicas.len(), 2, "two replicas");
    cluster
}

/// `migrate --cluster` through `url`; its output.
fn migrate(c: &Cluster, url: &str, db: &str) -> String {
    let out = run_ok(bin().args([
        "migrate",
        "--clickhouse",
        url,
        "--clickhouse-database",
        db,
        "--cluster",
        &c.name,
    ]));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `name engine` of every table and view of `db` on one server.
fn tables(url: &str, db: &str) -> Vec<String> {
    clickhouse_rows(
        url,
        &format!("SELECT name, engine FROM system.tables WHERE database = '{db}' ORDER BY name"),
    )
    .iter()
    .map(|r| {
        format!(
            "{} {}",
            r["name"].as_str().unwrap(),
            r["engine"].as_str().unwrap()
        )
    })
    .collect()
}

#[test]
#[ignore = "needs the local cluster: scripts/test-cluster"]
fn migrate_on_a_cluster_creates_the_same_replicated_schema_on_every_replica() {
    let c = cluster();
    let db = unique("cluster_schema");
    let first = migrate(&c, &c.replicas[0], &db);
    assert!(
        first.contains("applied migrations [1, 2, 3, 4, 5]")
            && first.contains(&format!("ON CLUSTER {}", c.name)),
        "{first}"
    );
    let on_first = tables(&c.replicas[0], &db);
    assert_eq!(on_first, tables(&c.replicas[1], &db));
    for view in [
        "usage_daily",
        "usage_minute",
        "usage_app_daily",
        "milestones",
    ] {
        assert!(on_first.contains(&format!("{view} View")), "{on_first:?}");
    }
    let stored: Vec<&String> = on_first.iter().filter(|t| !t.ends_with(" View")).collect();
    assert_eq!(
        stored,
        [
            "dedup_id_sets ReplicatedMergeTree",
            "ledger_heads ReplicatedReplacingMergeTree",
            "milestones_log ReplicatedReplacingMergeTree",
            "rejected_events_log ReplicatedMergeTree",
            "schema_migrations ReplicatedMergeTree",
            "usage_deltas ReplicatedSummingMergeTree",
            "writers ReplicatedMergeTree",
        ]
    );
    // The record of applied migrations replicates too: through either
    // replica, the schema is up to date.
    for url in &c.replicas {
        let again = migrate(&c, url, &db);
        assert!(again.contains("up to date at schema version 5"), "{again}");
    }
}

#[test]
#[ignore = "needs the local cluster: scripts/test-cluster"]
fn topics_on_three_brokers_are_replicated_three_ways_with_two_in_sync() {
    let c = cluster();
    let name = unique("cluster_topics");
    let out = run_ok(bin().args([
        "topics",
        "create",
        "--kafka",
        &c.brokers,
        "--topic",
        &name,
        "--dlq-topic",
        &format!("{name}-dlq"),
        "--partitions",
        "6",
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches("(replication 3, min.insync.replicas 2)")
            .count(),
        2,
        "{text}"
    );
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &c.brokers)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(&name), Duration::from_secs(30))
        .unwrap();
    let partitions = metadata.topics()[0].partitions();
    assert_eq!(partitions.len(), 6);
    for p in partitions {
        assert_eq!(p.replicas().len(), 3, "partition {}", p.id());
    }
}

#[test]
#[ignore = "needs the local cluster: scripts/test-cluster"]
fn totals_through_three_brokers_are_exact_on_every_replica() {
    let c = cluster();
    let dir = tempfile::tempdir().unwrap();
    let db = unique("cluster_totals");
    migrate(&c, &c.replicas[0], &db);
    let t = Topic {
        brokers: c.brokers.clone(),
        name: unique("cluster-totals"),
    };
    run_ok(bin().args([
        "topics",
        "create",
        "--kafka",
        &t.brokers,
        "--topic",
        &t.name,
        "--dlq-topic",
        &t.dlq(),
        "--partitions",
        "6",
    ]));
    // Retries, late events and malformed lines; produced with acks=all to
    // three replicas, two of them in sync at least.
    let file = corpus(dir.path(), 200_000, 22);
    let expected = totals(&reference(dir.path(), &file));
    produce(&t, &file);
    let s = summary(
        t.aggregate(&unique("cluster-group"))
            .args(["--sink", "clickhouse", "--clickhouse", &c.replicas[0]])
            .args(["--clickhouse-database", &db, "--batch-records", "20000"])
            .args(["--exit-on-idle", "3", "--json"]),
    );
    assert!(s["accepted"].as_u64().unwrap() > 0, "{s}");
    // Written through replica 1; replica 2 fetches the parts.
    for url in &c.replicas {
        wait_until(
            Duration::from_secs(120),
            200,
            || ch_totals(url, &db) == expected,
            || {
                format!(
                    "{url} does not hold the expected totals: {:?}",
                    clickhouse_sql(url, &format!("SELECT count() FROM {db}.usage_deltas"))
                )
            },
        );
        assert_same_totals(&ch_totals(url, &db), &expected);
    }
}
