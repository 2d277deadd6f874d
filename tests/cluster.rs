//! The local cluster: three Kafka brokers (KRaft), two ClickHouse 18.16
//! servers as the two replicas of one shard, and ZooKeeper, all started by
//! `scripts/services up --cluster`. `scripts/test-cluster` (which
//! `scripts/test` calls) starts it and runs these tests with `--ignored`;
//! the plain `cargo test` run, with one broker and one server, lists them
//! as ignored. Without the cluster's addresses in the environment they
//! fail, they do not skip.
//!
//! Over 600 lines: every case shares one started cluster and one corpus,
//! which `cargo test` can only share within a file.
//!
//! The fault tests run a million events (retries straddling every fault,
//! late and malformed lines) through four aggregators, two connected to
//! each replica, and inject one kind of fault at random moments, printing
//! the seed (`TOKENTALLY_CHAOS_SEED` replays one):
//! - aggregators SIGKILLed and restarted;
//! - partitions handed from aggregators on replica 1 to aggregators on
//!   replica 2 while replica 2 fetches nothing (`SYSTEM STOP FETCHES`);
//! - a ClickHouse replica SIGKILLed and restarted;
//! - a Kafka broker SIGKILLed and restarted while the gateway takes
//!   traffic.
//!
//! After each, the totals read from each replica separately equal the file
//! path's, and each replica's ledger is one gapless story.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use common::faults::{Aggregator, Rng, chaos_seed, ok_or_fenced};
use common::gateway::Gateway;
use common::history::{check_history, commits, committed_all, holders, partition_bounds};
use common::http::http;
use common::services::{
    Topic, ch_totals, clickhouse_rows, clickhouse_sql, corpus, produce, reference, script,
    topic_with, unique,
};
use common::{assert_same_totals, bin, rejects, run_ok, serial, summary, totals, wait_until};

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
        first.contains("applied migrations [1, 2, 3, 4, 5, 6]")
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
        "cost_daily",
        "cost_app_daily",
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
            "model_prices ReplicatedMergeTree",
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
        assert!(again.contains("up to date at schema version 6"), "{again}");
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
            .args(["--clickhouse-cluster", &c.name])
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

#[test]
#[ignore = "needs the local cluster: scripts/test-cluster"]
fn an_aggregator_refuses_a_cluster_setting_that_does_not_match_the_schema() {
    let c = cluster();
    let t = topic_with(&c.brokers, "cluster_mismatch", 1);
    let replicated = unique("cluster_mismatch");
    migrate(&c, &c.replicas[0], &replicated);
    let single = unique("single_mismatch");
    run_ok(
        bin()
            .args(["migrate", "--clickhouse", &c.replicas[0]])
            .args(["--clickhouse-database", &single])
            .env_remove("TOKENTALLY_CLICKHOUSE_CLUSTER"),
    );
    let refused = |db: &str, cluster: Option<&str>| {
        let mut cmd = t.aggregate(&unique("mismatch-group"));
        cmd.args(["--sink", "clickhouse", "--clickhouse", &c.replicas[0]])
            .args(["--clickhouse-database", db, "--exit-on-idle", "1"])
            .env_remove("TOKENTALLY_CLICKHOUSE_CLUSTER");
        if let Some(cluster) = cluster {
            cmd.args(["--clickhouse-cluster", cluster]);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "it started");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    // Without the cluster, an aggregator on a replicated ledger would read
    // one replica's ledger and fence nobody on the other.
    let err = refused(&replicated, None);
    assert!(
        err.contains(&format!("database {replicated} is replicated"))
            && err.contains("--clickhouse-cluster"),
        "{err}"
    );
    let err = refused(&single, Some(&c.name));
    assert!(err.contains("is not replicated"), "{err}");
    let err = refused(&replicated, Some("elsewhere"));
    assert!(err.contains("no cluster elsewhere"), "{err}");
}

// ---------------------------------------------------------------------------
// Faults, with a million events and four aggregators on two replicas.

const EVENTS: u32 = 1_000_000;
/// Two for each aggregator.
const PARTITIONS: u32 = 8;
const LIMIT: Duration = Duration::from_secs(900);

/// `scripts/services ACTION NODE` on the cluster (`kill`, `start`, ...).
fn node(action: &str, name: &str) {
    let out = script().args([action, name]).output().unwrap();
    assert!(
        out.status.success(),
        "scripts/services {action} {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// SQL on one replica, which must succeed.
fn on(url: &str, sql: &str) {
    clickhouse_sql(url, sql).unwrap_or_else(|e| panic!("{e}"));
}

/// The corpus the fault tests share (one per run: a million events take
/// the debug build a while to simulate and to ingest for reference): its
/// file, its reference store from the file path, and the seed of the run.
struct Corpus {
    file: PathBuf,
    reference: PathBuf,
    seed: u64,
}

fn shared_corpus() -> &'static Corpus {
    static CORPUS: std::sync::OnceLock<Corpus> = std::sync::OnceLock::new();
    CORPUS.get_or_init(|| {
        let seed = chaos_seed() | 1;
        eprintln!("seed {seed} (TOKENTALLY_CHAOS_SEED={seed} replays it)");
        // In the target directory, replaced by each run.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cluster-corpus");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = corpus(&dir, EVENTS, (seed % 1_000_000) as u32);
        let reference = reference(&dir, &file);
        Corpus {
            file,
            reference,
            seed,
        }
    })
}

/// A fault test's world: the cluster, an 8-partition topic replicated three
/// ways, the shared corpus, and a database migrated on every replica.
struct World {
    c: Cluster,
    dir: tempfile::TempDir,
    topic: Topic,
    file: &'static Path,
    reference: &'static Path,
    db: String,
    group: String,
}

impl World {
    /// The world, and a generator for the timing of its faults.
    fn new(tag: &str) -> (World, Rng) {
        let c = cluster();
        let corpus = shared_corpus();
        let topic = topic_with(&c.brokers, tag, PARTITIONS);
        let db = unique(tag);
        migrate(&c, &c.replicas[0], &db);
        let rng = Rng(tag
            .bytes()
            .fold(corpus.seed, |h, b| h.rotate_left(7) ^ u64::from(b))
            | 1);
        let w = World {
            group: format!("{}-g", topic.name),
            c,
            dir: tempfile::tempdir().unwrap(),
            topic,
            file: &corpus.file,
            reference: &corpus.reference,
            db,
        };
        (w, rng)
    }

    /// An aggregator of the group, connected to replica `r` (0 or 1).
    fn aggregator(&self, r: usize, log: &str) -> Aggregator {
        let mut cmd = self.topic.aggregate(&self.group);
        cmd.args(["--sink", "clickhouse", "--clickhouse", &self.c.replicas[r]])
            .args(["--clickhouse-database", &self.db])
            .args(["--clickhouse-cluster", &self.c.name])
            .args(["--batch-records", "20000", "--exit-on-idle", "20"]);
        Aggregator::spawn(&mut cmd, self.dir.path().join(log))
    }

    /// Four aggregators: the first two on replica 1, the others on replica 2.
    fn four(&self) -> Vec<Option<Aggregator>> {
        (0..4)
            .map(|i| Some(self.aggregator(i / 2, &format!("a{i}.log"))))
            .collect()
    }

    /// Batches committed, as replica 1 sees them.
    fn commits(&self) -> u64 {
        commits(&self.c.replicas[0], &self.db)
    }

    /// Wait until more than `n` batches are committed, or every record of
    /// the topic is.
    fn wait_commits_above_or_all(&self, n: u64) {
        let bounds = partition_bounds(&self.topic.brokers, &self.topic.name);
        wait_until(
            LIMIT,
            100,
            || {
                self.commits() > n
                    || committed_all(&self.c.replicas[0], &self.db, &self.topic.name, &bounds)
            },
            || format!("no commit past {n} within {LIMIT:?}"),
        );
    }

    /// Wait for every aggregator still running to end, finished or fenced.
    fn wait_all(&self, aggregators: Vec<Option<Aggregator>>) -> Vec<&'static str> {
        aggregators
            .into_iter()
            .flatten()
            .map(|a| ok_or_fenced("an aggregator", &a.wait(LIMIT)))
            .collect()
    }

    /// Catch up with a fresh group through replica 2 (the ledger, not
    /// Kafka's offsets, says where each partition stands); then, on each
    /// replica once it has fetched every part, the totals must equal the
    /// file path's (`expected`), and its ledger must be one story.
    fn settle_and_check(&self, expected: &[serde_json::Map<String, serde_json::Value>]) -> String {
        let out = run_ok(
            self.topic
                .aggregate(&format!("{}-catch-up", self.group))
                .args(["--sink", "clickhouse", "--clickhouse", &self.c.replicas[1]])
                .args(["--clickhouse-database", &self.db])
                .args(["--clickhouse-cluster", &self.c.name])
                .args(["--exit-on-idle", "3", "--json"]),
        );
        let caught_up: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let bounds = partition_bounds(&self.topic.brokers, &self.topic.name);
        let mut seen = Vec::new();
        for url in &self.c.replicas {
            for table in ["usage_deltas", "dedup_id_sets"] {
                on(url, &format!("SYSTEM SYNC REPLICA {}.{table}", self.db));
            }
            assert_same_totals(&ch_totals(url, &self.db), expected);
            let stats = check_history(url, &self.db, &self.topic.name, &bounds)
                .unwrap_or_else(|e| panic!("{url}: the ledger's history is inconsistent: {e}"));
            seen.push(format!(
                "{url}: exact, {} batches in gapless chains, {} ids each counted once",
                stats.batches, stats.ids
            ));
        }
        format!(
            "{}; catch-up read {} records",
            seen.join("; "),
            caught_up["records"]
        )
    }
}

#[test]
#[ignore = "needs the local cluster: scripts/test-cluster"]
fn aggregators_on_two_replicas_killed_at_random_count_nothing_twice() {
    let _serial = serial();
    let (w, mut rng) = World::new("cluster_kills");
    produce(&w.topic, w.file);
    let mut aggregators = w.four();
    let mut killed = Vec::new();
    for round in 0..3 {
        w.wait_commits_above_or_all(w.commits());
        sleep(rng.millis(0, 2_000));
        let i = rng.below(4);
        aggregators[i].take().unwrap().kill();
        killed.push(i);
        sleep(rng.millis(0, 2_000));
        aggregators[i] = Some(w.aggregator(i / 2, &format!("a{i}-{round}.log")));
    }
    let ends = w.wait_all(aggregators);
    let detail = w.settle_and_check(&totals(w.reference));
    eprintln!("killed {killed:?}, then {ends:?}; {detail}");
}

/// Sources whose ledger on `ahead` is past that on `behind`: batches of
/// them `behind` has not fetched.
fn sources_ahead(db: &str, ahead: &str, behind: &str) -> usize {
    let progress = |url: &str| -> BTreeMap<String, i64> {
        clickhouse_rows(
            url,
            &format!(
                "SELECT source, max(next_offset) AS next FROM {db}.usage_deltas \
                 WHERE kind = 'progress' GROUP BY source"
            ),
        )
        .iter()
        .map(|r| {
            (
                r["source"].as_str().unwrap().to_string(),
                r["next"].as_i64().unwrap(),
            )
        })
        .collect()
    };
    let (a, b) = (progress(ahead), progress(behind));
    a.iter()
        .filter(|(k, n)| b.get(*k).is_none_or(|m| m < n))
        .count()
}

#[test]
#[ignore = "needs the local cluster: scripts/test-cluster"]
fn a_handover_to_a_replica_that_has_not_fetched_the_last_batches_waits_for_them() {
    let _serial = serial();
    let (w, mut rng) = World::new("cluster_fetches");
    let (r1, r2) = (&w.c.replicas[0], &w.c.replicas[1]);
    produce(&w.topic, w.file);
    let mut aggregators = w.four();
    wait_until(
        LIMIT,
        100,
        || holders(r1, &w.db) == 4 && w.commits() > 0,
        || "four aggregators never held partitions and committed".into(),
    );
    // Replica 2 stops fetching the ledger: what the aggregators on replica
    // 1 commit from now on is on replica 1 only.
    on(r2, &format!("SYSTEM STOP FETCHES {}.usage_deltas", w.db));
    sleep(rng.millis(0, 2_000));
    wait_until(
        LIMIT,
        100,
        || sources_ahead(&w.db, r1, r2) >= 2,
        || "the aggregators on replica 1 committed nothing".into(),
    );
    // Both aggregators of replica 1 die: their partitions, with batches
    // replica 2 lacks, go to the aggregators on replica 2 (after the
    // session timeout).
    let claims_before = claims(r2, &w.db);
    aggregators[0].take().unwrap().kill();
    aggregators[1].take().unwrap().kill();
    wait_until(
        LIMIT,
        100,
        || claims(r2, &w.db) > claims_before && syncing(r2),
        || "the partitions never moved to replica 2's aggregators".into(),
    );
    // The new owners wait for replica 2 to fetch; they count nothing of
    // the moved partitions meanwhile.
    let stalled = rng.millis(1_000, 5_000);
    sleep(stalled);
    assert!(
        sources_ahead(&w.db, r1, r2) >= 1,
        "replica 2 advanced a partition whose batches it had not fetched"
    );
    on(r2, &format!("SYSTEM START FETCHES {}.usage_deltas", w.db));
    let ends = w.wait_all(aggregators);
    let detail = w.settle_and_check(&totals(w.reference));
    eprintln!(
        "the new owners waited while fetches stayed stopped ({stalled:?} after they began to), then {ends:?}; {detail}"
    );
}

/// Claims recorded in `writers` on `url`.
fn claims(url: &str, db: &str) -> u64 {
    let rows = clickhouse_rows(
        url,
        &format!("SELECT count() AS n FROM {db}.writers WHERE action = 'claim'"),
    );
    rows[0]["n"].as_u64().unwrap()
}

/// Whether a `SYSTEM SYNC REPLICA` is waiting on `url`.
fn syncing(url: &str) -> bool {
    let rows = clickhouse_rows(
        url,
        "SELECT count() AS n FROM system.processes WHERE query LIKE 'SYSTEM SYNC REPLICA%'",
    );
    rows[0]["n"].as_u64().unwrap() > 0
}

#[test]
#[ignore = "needs the local cluster: scripts/test-cluster"]
fn a_replica_killed_mid_stream_and_restarted_counts_nothing_twice() {
    let _serial = serial();
    let (w, mut rng) = World::new("cluster_replica");
    produce(&w.topic, w.file);
    let aggregators = w.four();
    w.wait_commits_above_or_all(0);
    sleep(rng.millis(0, 3_000));
    node("kill", "clickhouse-2");
    sleep(rng.millis(500, 5_000));
    node("start", "clickhouse-2");
    let ends = w.wait_all(aggregators);
    let retried: usize = (0..4)
        .map(|i| {
            std::fs::read_to_string(w.dir.path().join(format!("a{i}.log")))
                .unwrap_or_default()
                .matches("retrying")
                .count()
        })
        .sum();
    assert!(retried > 0, "no aggregator noticed replica 2 down");
    let detail = w.settle_and_check(&totals(w.reference));
    eprintln!("{retried} requests retried, then {ends:?}; {detail}");
}

/// Lines of the corpus.
fn lines(file: &Path) -> Vec<Vec<u8>> {
    std::fs::read(file)
        .unwrap()
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// Post `chunk` (NDJSON) until the gateway answers 200, as an exporter
/// retries; the reasons it gave for the records it refused, and the
/// statuses it answered before the 200.
fn post_until_accepted(gw: &Gateway, chunk: &[Vec<u8>]) -> (Vec<String>, Vec<u16>) {
    let mut body = chunk.join(&b'\n');
    body.push(b'\n');
    let mut refusals = Vec::new();
    loop {
        let r = http(
            &gw.addr,
            "POST",
            "/v1/events",
            &[("Content-Type", "application/x-ndjson")],
            &body,
        );
        if r.status == 200 {
            let v = r.json();
            let reasons = v["rejected"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["reason"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(
                v["accepted"].as_u64().unwrap() as usize + v["rejected"].as_array().unwrap().len(),
                chunk.len(),
                "{v}"
            );
            return (reasons, refusals);
        }
        assert!(
            [429, 503].contains(&r.status),
            "the gateway answered {}: {}",
            r.status,
            r.text()
        );
        refusals.push(r.status);
        sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs the local cluster: scripts/test-cluster"]
fn a_broker_killed_under_gateway_traffic_loses_nothing_it_acknowledged() {
    let _serial = serial();
    let (w, mut rng) = World::new("cluster_broker");
    // A third of the corpus through the gateway, the rest produced from
    // the file beforehand.
    let all = lines(w.file);
    let split = all.len() * 2 / 3;
    let head = w.dir.path().join("head.ndjson");
    let mut text = all[..split].join(&b'\n');
    text.push(b'\n');
    std::fs::write(&head, text).unwrap();
    produce(&w.topic, &head);
    let gw = Gateway::start(&[
        "--kafka",
        &w.c.brokers,
        "--topic",
        &w.topic.name,
        "--no-auth",
    ]);
    let aggregators = w.four();
    let chunks: Vec<&[Vec<u8>]> = all[split..].chunks(1_000).collect();
    let posted = std::sync::atomic::AtomicUsize::new(0);
    let (reasons, refusals) = std::thread::scope(|s| {
        let clients: Vec<_> = (0..2)
            .map(|k| {
                let (gw, chunks, posted) = (&gw, &chunks, &posted);
                s.spawn(move || {
                    let (mut reasons, mut refusals) = (Vec::new(), Vec::new());
                    for chunk in chunks.iter().skip(k).step_by(2) {
                        let (r, f) = post_until_accepted(gw, chunk);
                        reasons.extend(r);
                        refusals.extend(f);
                        posted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    (reasons, refusals)
                })
            })
            .collect();
        // Mid-traffic: one broker of three dies and comes back.
        wait_until(
            LIMIT,
            50,
            || posted.load(std::sync::atomic::Ordering::Relaxed) >= 20,
            || "the gateway accepted nothing".into(),
        );
        sleep(rng.millis(0, 2_000));
        node("kill", "kafka-2");
        let at_kill = posted.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            at_kill < chunks.len(),
            "the traffic ended before the broker died"
        );
        sleep(rng.millis(1_000, 8_000));
        node("start", "kafka-2");
        let at_restart = posted.load(std::sync::atomic::Ordering::Relaxed);
        let mut reasons = Vec::new();
        let mut refusals = Vec::new();
        for c in clients {
            let (r, f) = c.join().unwrap();
            reasons.extend(r);
            refusals.extend(f);
        }
        eprintln!(
            "kafka-2 died after {at_kill} of {} requests were accepted, and was back after {at_restart}",
            chunks.len()
        );
        (reasons, refusals)
    });
    assert!(gw.stop().success());
    let ends = w.wait_all(aggregators);
    // Usage must be exact on each replica: every event answered 200 is
    // counted once. Records the gateway refused never reached Kafka: the
    // refusals counted in ClickHouse plus those at the gateway are the file
    // path's.
    let mut expected = totals(w.reference);
    let mut at_gateway: BTreeMap<String, u64> = BTreeMap::new();
    for r in reasons {
        *at_gateway.entry(r).or_insert(0) += 1;
    }
    let reference_rejects = rejects(w.reference);
    expected.retain(|r| !r.contains_key("reason"));
    for (reason, n) in &reference_rejects {
        let left = n - at_gateway.get(reason).copied().unwrap_or(0);
        if left > 0 {
            let mut row = serde_json::Map::new();
            row.insert("reason".into(), reason.clone().into());
            row.insert("count".into(), left.into());
            expected.push(row);
        }
    }
    let detail = w.settle_and_check(&expected);
    eprintln!(
        "gateway refused {} requests during the outage ({:?}), then {ends:?}; {detail}",
        refusals.len(),
        refusals.iter().collect::<std::collections::BTreeSet<_>>()
    );
}
