//! The fault-injection matrix: Kafka → aggregators → ClickHouse against the
//! real services, with a corpus full of retries that straddle the faults
//! (`common::services::RETRY_WINDOW`). Each case injects its fault at a
//! random moment after the first commit, waits for events (a commit, an
//! exit), never for a guessed number of seconds, and then checks that
//! ClickHouse holds exactly the file path's totals and that the ledger's
//! history is one story (`common::history`).
//!
//! - a zombie: an aggregator paused (SIGSTOP) past its session timeout while
//!   another takes its partitions over, then resumed (SIGCONT);
//! - a second aggregator started under the same `--instance-id` while the
//!   first still runs;
//! - a network cut between one aggregator and Kafka (a TCP proxy of the
//!   test's own) while it still reaches ClickHouse;
//! - ClickHouse SIGKILLed mid-stream and restarted, twice, under one
//!   aggregator that keeps running.
//!
//! Every case runs `TOKENTALLY_CHAOS_ROUNDS` rounds (default 1; `scripts/chaos`
//! sets more) with a fresh random seed each, printed, or
//! `TOKENTALLY_CHAOS_SEED` to replay one. Each round appends one JSON line
//! to `TOKENTALLY_CHAOS_REPORT` when it is set.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::faults::{Aggregator, Rng, chaos_seed, ok_or_fenced};
use common::history::{check_history, commits, committed_all, holders, partition_bounds};
use common::proxy::Proxy;
use common::services::{
    Private, Topic, ch_totals, clickhouse_rows, corpus, migrated_database, produce, reference,
    services, topic_with,
};
use common::{append_report, assert_same_totals, run_ok, serial, totals, wait_until};

/// One case at a time under `cargo test` ([`serial`]). `scripts/chaos`
/// sets `TOKENTALLY_CHAOS_PARALLEL` to run them side by side (each has its
/// own topic and database, and the two that stop a service stop a private
/// one), which also loads the machine.
fn serial_unless_parallel() -> Option<std::sync::MutexGuard<'static, ()>> {
    if std::env::var_os("TOKENTALLY_CHAOS_PARALLEL").is_some() {
        return None;
    }
    Some(serial())
}

/// Events per round: a backlog that takes the debug build tens of seconds,
/// so that faults land mid-stream.
const EVENTS: u32 = 150_000;
const PARTITIONS: u32 = 6;

fn rounds() -> u32 {
    std::env::var("TOKENTALLY_CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

fn seed_for(round: u32) -> u64 {
    let base = chaos_seed();
    (base ^ (u64::from(round) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1
}

/// Run `case` for every round, each with a fresh seed and timing generator;
/// a round returns what it saw, reported once it has passed (a failing
/// round panics).
fn each_round(case: &str, mut round: impl FnMut(u64, &mut Rng) -> String) {
    for r in 0..rounds() {
        let seed = seed_for(r);
        let started = Instant::now();
        let detail = round(seed, &mut Rng(seed));
        report(case, seed, started, "exact", &detail);
    }
}

/// What one round of one case did, for the chaos report.
fn report(case: &str, seed: u64, started: Instant, outcome: &str, detail: &str) {
    let line = serde_json::json!({
        "case": case,
        "seed": seed,
        "seconds": started.elapsed().as_secs_f64(),
        "outcome": outcome,
        "detail": detail,
    });
    eprintln!("chaos round: {line}");
    append_report("TOKENTALLY_CHAOS_REPORT", &line);
}

/// A round's world: a 6-partition topic holding the corpus, its reference
/// totals from the file path, and a migrated database.
struct World {
    dir: tempfile::TempDir,
    topic: Topic,
    reference: PathBuf,
    url: String,
    db: String,
    group: String,
}

impl World {
    fn new(brokers: &str, url: &str, tag: &str, seed: u64) -> World {
        let dir = tempfile::tempdir().unwrap();
        let topic = topic_with(brokers, tag, PARTITIONS);
        let file = corpus(dir.path(), EVENTS, (seed % 1_000_000) as u32);
        produce(&topic, &file);
        let reference = reference(dir.path(), &file);
        let db = migrated_database(url, tag);
        World {
            group: format!("{}-g", topic.name),
            dir,
            topic,
            reference,
            url: url.to_string(),
            db,
        }
    }

    /// An aggregator of the group into the database, logging to `log`.
    fn aggregator(&self, brokers: &str, log: &str, extra: &[&str]) -> Aggregator {
        let mut cmd = common::bin();
        cmd.args(["aggregate", "--kafka", brokers, "--topic", &self.topic.name])
            .args(["--dlq-topic", &self.topic.dlq(), "--group", &self.group])
            .args(["--sink", "clickhouse", "--clickhouse", &self.url])
            .args(["--clickhouse-database", &self.db, "--batch-records", "5000"])
            .args(["--exit-on-idle", "20"])
            .args(extra);
        Aggregator::spawn(&mut cmd, self.dir.path().join(log))
    }

    /// Claims of partitions recorded so far (each assignment claims).
    fn claims(&self) -> u64 {
        let rows = clickhouse_rows(
            &self.url,
            &format!(
                "SELECT count() AS n FROM {}.writers WHERE action = 'claim'",
                self.db
            ),
        );
        rows[0]["n"].as_u64().unwrap()
    }

    /// Wait (at most `limit`) until `n` writers hold partitions at once.
    fn wait_holders(&self, n: u64, limit: Duration) {
        wait_until(
            limit,
            100,
            || holders(&self.url, &self.db) >= n,
            || format!("{n} aggregators never held partitions at once within {limit:?}"),
        );
    }

    /// Wait (at most `limit`) until more than `n` partitions were claimed:
    /// a takeover happened.
    fn wait_claims_above(&self, n: u64, limit: Duration) {
        wait_until(
            limit,
            100,
            || self.claims() > n,
            || format!("no partition changed hands within {limit:?}"),
        );
    }

    /// Wait (at most `limit`) until more than `n` batches are committed.
    fn wait_commits_above(&self, n: u64, limit: Duration) {
        wait_until(
            limit,
            50,
            || commits(&self.url, &self.db) > n,
            || format!("no commit past {n} within {limit:?}"),
        );
    }

    /// Wait (at most `limit`) until more than `n` batches are committed, or
    /// every record of the topic is.
    fn wait_commits_above_or_all(&self, n: u64, limit: Duration) {
        let bounds = partition_bounds(&self.topic.brokers, &self.topic.name);
        wait_until(
            limit,
            50,
            || {
                commits(&self.url, &self.db) > n
                    || committed_all(&self.url, &self.db, &self.topic.name, &bounds)
            },
            || format!("no commit past {n} within {limit:?}"),
        );
    }

    /// Catch up with a fresh group (the ledger, not Kafka's offsets, says
    /// where each partition stands), then compare with the file path and
    /// check the ledger's history.
    fn settle_and_check(&self) -> String {
        let out = run_ok(
            common::bin()
                .args(["aggregate", "--kafka", &self.topic.brokers])
                .args([
                    "--topic",
                    &self.topic.name,
                    "--dlq-topic",
                    &self.topic.dlq(),
                ])
                .args(["--group", &format!("{}-catch-up", self.group)])
                .args(["--sink", "clickhouse", "--clickhouse", &self.url])
                .args(["--clickhouse-database", &self.db, "--exit-on-idle", "3"]),
        );
        let caught_up = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_same_totals(&ch_totals(&self.url, &self.db), &totals(&self.reference));
        let bounds = partition_bounds(&self.topic.brokers, &self.topic.name);
        let stats = check_history(&self.url, &self.db, &self.topic.name, &bounds)
            .unwrap_or_else(|e| panic!("the ledger's history is inconsistent: {e}"));
        format!(
            "exact; {} batches in gapless chains, {} ids each counted once; catch-up: {caught_up}",
            stats.batches, stats.ids
        )
    }
}

const LIMIT: Duration = Duration::from_secs(300);

#[test]
fn a_paused_zombie_that_wakes_after_a_takeover_counts_nothing_twice() {
    let _serial = serial_unless_parallel();
    let s = services();
    each_round("zombie", |seed, rng| {
        let w = World::new(&s.brokers, &s.clickhouse, "zombie", seed);
        let x = w.aggregator(&s.brokers, "x.log", &[]);
        w.wait_commits_above(0, LIMIT);
        sleep(rng.millis(0, 1_500));
        x.signal("-STOP");
        let paused_at = commits(&w.url, &w.db);
        let claims = w.claims();
        // Y takes the partitions over once X's session has expired, and
        // commits; only then does X wake up, with its batches in flight.
        let y = w.aggregator(&s.brokers, "y.log", &[]);
        w.wait_claims_above(claims, LIMIT);
        w.wait_commits_above(paused_at + 2, LIMIT);
        sleep(rng.millis(0, 1_000));
        x.signal("-CONT");
        let x = ok_or_fenced("the zombie", &x.wait(LIMIT));
        let y = ok_or_fenced("the new owner", &y.wait(LIMIT));
        let detail = w.settle_and_check();
        format!("x {x}, y {y}; {detail}")
    });
}

#[test]
fn a_second_aggregator_under_the_same_instance_id_counts_nothing_twice() {
    let _serial = serial_unless_parallel();
    let s = services();
    each_round("same_instance_id", |seed, rng| {
        let w = World::new(&s.brokers, &s.clickhouse, "same_id", seed);
        let id = format!("{}-pod", w.topic.name);
        let x = w.aggregator(&s.brokers, "x.log", &["--instance-id", &id]);
        w.wait_commits_above(0, LIMIT);
        sleep(rng.millis(0, 1_500));
        let y = w.aggregator(&s.brokers, "y.log", &["--instance-id", &id]);
        let x = ok_or_fenced("the first", &x.wait(LIMIT));
        let (status, log) = y.wait(LIMIT);
        // Static membership fences the first at Kafka; the second may then
        // find that the first committed past what it had read, and stop.
        let y = if status.success() || log.contains("fenced") || log.contains("FencedInstanceId") {
            "stopped"
        } else {
            panic!("the second failed ({status}):\n{log}")
        };
        let detail = w.settle_and_check();
        format!("x {x}, y {y}; {detail}")
    });
}

#[test]
fn a_network_cut_between_one_aggregator_and_kafka_counts_nothing_twice() {
    let _serial = serial_unless_parallel();
    let shared = services();
    // A private broker: the victim reaches it only through a proxy this
    // test cuts (its second listener advertises the proxy's port).
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("services");
    let env = [
        ("TOKENTALLY_SERVICES_DIR", state.to_str().unwrap()),
        ("TOKENTALLY_CLICKHOUSE_URL", shared.clickhouse.as_str()),
        ("TOKENTALLY_KAFKA_BROKERS", ""),
        ("TOKENTALLY_KAFKA_PORT", "39392"),
        ("TOKENTALLY_KAFKA_CONTROLLER_PORT", "39393"),
    ];
    let (_private, exports) = Private::up(&env);
    let brokers = exports("TOKENTALLY_KAFKA_BROKERS");
    each_round("network_cut", |seed, rng| {
        let w = World::new(&brokers, &shared.clickhouse, "cut", seed);
        let proxy = Proxy::start("127.0.0.1:39395", "127.0.0.1:39394");
        let x = w.aggregator("127.0.0.1:39395", "x.log", &[]);
        let y = w.aggregator(&brokers, "y.log", &[]);
        // The cut must take partitions from X: both hold some first (the
        // first commit may come from Y alone, before X joined).
        w.wait_commits_above(0, LIMIT);
        w.wait_holders(2, LIMIT);
        sleep(rng.millis(0, 2_000));
        let claims = w.claims();
        proxy.cut();
        let cut_at = commits(&w.url, &w.db);
        // Y takes X's partitions once X's session expires, and commits on
        // (unless the backlog is already all committed).
        w.wait_claims_above(claims, LIMIT);
        w.wait_commits_above_or_all(cut_at + 3, LIMIT);
        sleep(rng.millis(0, 1_000));
        proxy.heal();
        let x = ok_or_fenced("the cut-off aggregator", &x.wait(LIMIT));
        let y = ok_or_fenced("the other", &y.wait(LIMIT));
        drop(proxy);
        let detail = w.settle_and_check();
        format!("x {x}, y {y}; {detail}")
    });
}

#[test]
fn clickhouse_killed_mid_insert_twice_counts_nothing_twice() {
    let _serial = serial_unless_parallel();
    let shared = services();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("services");
    let env = [
        ("TOKENTALLY_SERVICES_DIR", state.to_str().unwrap()),
        ("TOKENTALLY_KAFKA_BROKERS", shared.brokers.as_str()),
        ("TOKENTALLY_CLICKHOUSE_URL", ""),
        ("TOKENTALLY_CLICKHOUSE_HTTP_PORT", "38323"),
        ("TOKENTALLY_CLICKHOUSE_TCP_PORT", "39323"),
    ];
    let (private, exports) = Private::up(&env);
    let url = exports("TOKENTALLY_CLICKHOUSE_URL");
    let pid_file = state.join("clickhouse/pid");
    each_round("clickhouse_sigkill", |seed, rng| {
        let w = World::new(&shared.brokers, &url, "ch_kill", seed);
        let x = w.aggregator(&shared.brokers, "x.log", &[]);
        let mut seen = 0;
        for _ in 0..2 {
            w.wait_commits_above(seen, LIMIT);
            sleep(rng.millis(0, 1_500));
            let pid = std::fs::read_to_string(&pid_file).unwrap();
            run_ok(Command::new("kill").args(["-9", pid.trim()]));
            sleep(rng.millis(500, 3_000));
            private.run("start", "clickhouse");
            seen = commits(&w.url, &w.db);
        }
        let (status, log) = x.wait(LIMIT);
        assert!(status.success(), "the aggregator failed ({status}):\n{log}");
        let retries = log.matches("retrying").count();
        let detail = w.settle_and_check();
        format!("{retries} requests retried; {detail}")
    });
}
