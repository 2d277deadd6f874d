//! Kafka → aggregator → ClickHouse against a real Apache Kafka broker and a
//! real ClickHouse server (both started by `scripts/services up` unless
//! TOKENTALLY_KAFKA_BROKERS / TOKENTALLY_CLICKHOUSE_URL are set). Totals in
//! ClickHouse must equal those of the file path over the same corpus,
//! whatever happens: replays, SIGKILLed aggregators, two aggregators in one
//! group, ClickHouse down for 20 s, the broker restarted.
//!
//! Over 600 lines: each case drives aggregators through one scenario (and
//! waits for the commits, assignments and exits it needs), sharing the
//! process helpers below.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::history::{check_history, commits, committed_all, partition_bounds};
use common::proxy::Proxy;
use common::services::{
    Private, Topic, ch_totals, clickhouse_rows, clickhouse_sql, corpus, migrated_database, produce,
    reference, services, topic, topic_on, unique,
};
use common::{assert_same_totals, bin, logged_fields, run_ok, serial, summary, totals, wait_until};

/// The ledger's history is one story: gapless chains, each id once.
fn assert_history(url: &str, db: &str, t: &Topic) {
    let bounds = partition_bounds(&t.brokers, &t.name);
    if let Err(e) = check_history(url, db, &t.name, &bounds) {
        panic!("the ledger's history is inconsistent: {e}");
    }
}
fn aggregate(t: &Topic, url: &str, db: &str, group: &str, idle_secs: &str) -> Command {
    let mut cmd = t.aggregate(group);
    cmd.args(["--sink", "clickhouse", "--clickhouse", url])
        .args(["--clickhouse-database", db, "--batch-records", "5000"])
        .args(["--exit-on-idle", idle_secs, "--json"]);
    cmd
}

fn spawn_quiet(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Produce `file` to the topic in the background (events stream while
/// aggregators come and go).
fn produce_in_background(t: &Topic, file: &Path) -> Child {
    spawn_quiet(
        bin()
            .args([
                "produce", "--kafka", &t.brokers, "--topic", &t.name, "--file",
            ])
            .arg(file),
    )
}

/// Resident memory of a running process, in MiB.
fn rss_mib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024)
}

/// Spawn with stderr going to `log`.
fn spawn_logged(cmd: &mut Command, log: &Path) -> Child {
    cmd.stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Wait for `child` to exit successfully, sampling its memory; returns the
/// peak RSS seen.
fn wait_ok(mut child: Child, log: &Path, limit: Duration) -> u64 {
    let started = Instant::now();
    let mut peak = 0;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "aggregator failed: {status}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            return peak;
        }
        peak = peak.max(rss_mib(child.id()).unwrap_or(0));
        assert!(
            started.elapsed() < limit,
            "aggregator still running after {limit:?}"
        );
        sleep(Duration::from_millis(200));
    }
}

#[test]
fn kafka_to_clickhouse_is_exact_and_replays_change_nothing() {
    let _serial = serial();
    let s = services();
    let dir = tempfile::tempdir().unwrap();
    let t = topic("ch-exact");
    let file = corpus(dir.path(), 30_000, 21);
    produce(&t, &file);
    let reference = reference(dir.path(), &file);
    let db = migrated_database(&s.clickhouse, "exact");
    // A raw dead letter past its retention (90 days): the aggregator drops
    // its month.
    clickhouse_sql(
        &s.clickhouse,
        &format!(
            "INSERT INTO {db}.rejected_events_log (received_at, batch_id, reason, field, detail, raw) \
             VALUES ('2020-01-15 00:00:00', 'old', 'invalid_json', '', '', 'x')"
        ),
    )
    .unwrap();

    let out = run_ok(&mut aggregate(&t, &s.clickhouse, &db, "g1", "3"));
    let first: Value = serde_json::from_slice(&out.stdout).expect("summary JSON");
    assert_eq!(first["records"], 30_000);
    // Reading partitions to their end, as this run does, is not an error.
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        !log.contains("ERROR"),
        "a clean run logged errors:
{log}"
    );
    assert_same_totals(&ch_totals(&s.clickhouse, &db), &totals(&reference));

    // Every dead letter of a committed batch is in rejected_events.
    let raw = clickhouse_rows(
        &s.clickhouse,
        &format!("SELECT count() AS n FROM {db}.rejected_events"),
    );
    assert_eq!(raw[0]["n"], first["rejected_total"]);
    let old = clickhouse_rows(
        &s.clickhouse,
        &format!(
            "SELECT count() AS n FROM {db}.rejected_events_log WHERE received_at < '2021-01-01 00:00:00'"
        ),
    );
    assert_eq!(old[0]["n"], 0, "a dead letter past its retention was kept");

    // Another group starts from offset 0 of every partition: the ledger in
    // ClickHouse, not Kafka's offsets, decides what is new.
    let other = summary(&mut aggregate(&t, &s.clickhouse, &db, "g2", "3"));
    assert_eq!(other["records"], 0);
    assert_same_totals(&ch_totals(&s.clickhouse, &db), &totals(&reference));

    // And the other way round: the first group, whose Kafka offsets are at
    // the end of every partition, counts everything into a new database.
    let fresh = migrated_database(&s.clickhouse, "exact_fresh");
    let again = summary(&mut aggregate(&t, &s.clickhouse, &fresh, "g1", "3"));
    assert_eq!(again["records"], 30_000);
    assert_same_totals(&ch_totals(&s.clickhouse, &fresh), &totals(&reference));

    // A second migrate is a no-op.
    let out = run_ok(bin().args([
        "migrate",
        "--clickhouse",
        &s.clickhouse,
        "--clickhouse-database",
        &db,
    ]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("up to date"));
}

/// A batch's insert cut off mid-body, as by a client SIGKILLed while
/// sending it: ClickHouse reads a clean end of stream and, on old servers,
/// would insert the rows it had parsed so far as a finished insert. The
/// aggregator (alive here, behind a proxy that cuts its first commit)
/// retries; the batch must count once. Before a batch became one row of
/// arrays, its roll-up rows before the cut counted twice.
#[test]
fn an_insert_cut_off_mid_body_counts_nothing_of_it() {
    let _serial = serial();
    let s = services();
    let dir = tempfile::tempdir().unwrap();
    let t = topic("ch-cut-insert");
    let file = corpus(dir.path(), 30_000, 23);
    produce(&t, &file);
    let reference = reference(dir.path(), &file);
    let db = migrated_database(&s.clickhouse, "cut_insert");
    let server = s.clickhouse.trim_start_matches("http://");
    // Large batches: bodies of several chunks.
    let proxy = Proxy::cutting_one_body("127.0.0.1:39397", server, b"%60writer_");
    let out = run_ok(
        t.aggregate("g")
            .args([
                "--sink",
                "clickhouse",
                "--clickhouse",
                "http://127.0.0.1:39397",
            ])
            .args(["--clickhouse-database", &db, "--batch-records", "20000"])
            .args(["--exit-on-idle", "3", "--json"]),
    );
    assert_eq!(proxy.bodies_cut(), 1, "no insert was cut off");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("retrying"),
        "the cut insert was not retried:\n{log}"
    );
    assert_same_totals(&ch_totals(&s.clickhouse, &db), &totals(&reference));
    assert_history(&s.clickhouse, &db, &t);
}

#[test]
fn an_unmigrated_database_is_a_clear_error() {
    let _serial = serial();
    let s = services();
    let t = topic("ch-nomigrate");
    let out = aggregate(&t, &s.clickhouse, &unique("absent"), "g", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("run `tokentally migrate`"), "{err}");
}

#[test]
fn migration_3_moves_the_dedup_ids_of_schema_2_into_arrays() {
    let _serial = serial();
    let url = services().clickhouse.clone();
    let db = migrated_database(&url, "v3");
    let sql = |q: &str| clickhouse_sql(&url, q).unwrap();
    // Put the database back at schema 2, with ids in the old one-row-per-id
    // table (the DDL of migration 1).
    sql(&format!(
        "CREATE TABLE {db}.dedup_ids (batch_id String, bucket Int64, id_hi UInt64, id_lo UInt64) \
         ENGINE = MergeTree PARTITION BY intDiv(bucket, 24) ORDER BY (bucket, id_hi)"
    ));
    sql(&format!(
        "INSERT INTO {db}.dedup_ids VALUES ('b1', 10, 1, 2), ('b1', 10, 3, 4), ('b2', 11, 5, 6), ('b1', 12, 7, 8)"
    ));
    sql(&format!(
        "ALTER TABLE {db}.schema_migrations DELETE WHERE version = 3"
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while sql(&format!(
        "SELECT count() FROM {db}.schema_migrations WHERE version = 3"
    ))
    .trim()
        != "0"
    {
        assert!(Instant::now() < deadline, "the mutation did not finish");
        sleep(Duration::from_millis(100));
    }

    let migrate = || {
        let out = run_ok(bin().args([
            "migrate",
            "--clickhouse",
            &url,
            "--clickhouse-database",
            &db,
        ]));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let first = migrate();
    assert!(first.contains("applied migrations [3]"), "{first}");
    assert_eq!(sql(&format!("EXISTS TABLE {db}.dedup_ids")).trim(), "0");
    let sets = clickhouse_rows(
        &url,
        &format!(
            "SELECT batch_id, bucket, arraySort(arrayMap((h, l) -> (h, l), ids_hi, ids_lo)) AS ids \
             FROM {db}.dedup_id_sets ORDER BY batch_id, bucket"
        ),
    );
    let got: Vec<String> = sets
        .iter()
        .map(|r| format!("{} {} {}", r["batch_id"], r["bucket"], r["ids"]))
        .collect();
    assert_eq!(
        got,
        vec![
            r#""b1" 10 [[1,2],[3,4]]"#,
            r#""b1" 12 [[7,8]]"#,
            r#""b2" 11 [[5,6]]"#
        ]
    );
    assert!(migrate().contains("up to date"));
}

#[test]
fn ten_sigkills_while_a_million_events_stream_lose_and_double_nothing() {
    let _serial = serial();
    let s = services();
    let dir = tempfile::tempdir().unwrap();
    let t = topic("ch-crash");
    let file = corpus(dir.path(), 1_000_000, 31);
    let db = migrated_database(&s.clickhouse, "crash");
    let mut producer = produce_in_background(&t, &file);
    let reference = reference(dir.path(), &file);

    // Static membership: each restart takes the partitions back at once.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(std::process::id());
    let mut kills = 0;
    while kills < 10 {
        let before = commits(&s.clickhouse, &db);
        let mut child = spawn_quiet(
            aggregate(&t, &s.clickhouse, &db, "crash", "30").args(["--instance-id", "crash-1"]),
        );
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // A random moment after a batch was committed since it started.
        wait_until(
            Duration::from_secs(300),
            50,
            || {
                assert!(
                    child.try_wait().unwrap().is_none(),
                    "aggregator exited early"
                );
                commits(&s.clickhouse, &db) > before
            },
            || "no commit within 300 s".to_string(),
        );
        sleep(Duration::from_millis(seed % 1_500));
        assert!(
            child.try_wait().unwrap().is_none(),
            "aggregator exited early"
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    assert!(producer.wait().unwrap().success());
    let last =
        summary(aggregate(&t, &s.clickhouse, &db, "crash", "5").args(["--instance-id", "crash-1"]));
    assert!(
        last["records"].as_u64().unwrap() > 0,
        "the kills left work for the last run"
    );
    assert_same_totals(&ch_totals(&s.clickhouse, &db), &totals(&reference));
    assert_history(&s.clickhouse, &db, &t);
}

#[test]
fn two_aggregators_in_one_group_one_killed_midstream_stay_exact() {
    let _serial = serial();
    let s = services();
    let dir = tempfile::tempdir().unwrap();
    let t = topic("ch-two");
    let file = corpus(dir.path(), 300_000, 41);
    let db = migrated_database(&s.clickhouse, "two");
    let reference = reference(dir.path(), &file);
    // The first half before the aggregators start, the second once the
    // victim is dead: the survivor must count it, whatever the split of
    // the first half was. Nothing waits on a clock: each step waits for
    // what the previous one must have caused.
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (first, second) = lines.split_at(lines.len() / 2);
    let halves = [(0, first), (1, second)].map(|(n, half)| {
        let path = dir.path().join(format!("half-{n}.ndjson"));
        std::fs::write(&path, half.join("\n") + "\n").unwrap();
        path
    });
    produce(&t, &halves[0]);

    let logged = |name: &str| {
        let log = dir.path().join(format!("{name}.log"));
        let mut cmd = aggregate(&t, &s.clickhouse, &db, "two", "600");
        cmd.args(["--log-format", "json"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        (cmd.spawn().unwrap(), log)
    };
    let (survivor, survivor_log) = logged("survivor");
    let (mut victim, victim_log) = logged("victim");
    let read = |log: &Path| std::fs::read_to_string(log).unwrap_or_default();
    // Both hold partitions, and the victim has read its ledger. Rebalances
    // are cooperative: the log has what each one added and took away.
    let holds = |log: &Path| {
        let mut held = std::collections::BTreeSet::new();
        for v in read(log)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        {
            let parts: Vec<String> = v["fields"]["partitions"]
                .as_str()
                .unwrap_or_default()
                .trim_matches(|c| c == '[' || c == ']')
                .split(", ")
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect();
            match v["fields"]["message"].as_str() {
                Some("partitions assigned") => held.extend(parts),
                Some("partitions revoked") => parts.iter().for_each(|p| {
                    held.remove(p);
                }),
                _ => {}
            }
        }
        !held.is_empty()
    };
    wait_until(
        Duration::from_secs(180),
        100,
        || {
            holds(&survivor_log)
                && holds(&victim_log)
                && read(&victim_log).contains("resumed partitions from ClickHouse")
        },
        || {
            format!(
                "the two never both held partitions:\nsurvivor:\n{}\nvictim:\n{}",
                read(&survivor_log),
                read(&victim_log)
            )
        },
    );
    assert!(victim.try_wait().unwrap().is_none(), "victim exited early");
    victim.kill().unwrap();
    victim.wait().unwrap();
    produce(&t, &halves[1]);
    // The survivor takes the victim's partitions over when its session
    // expires, and commits every partition to its end.
    let bounds = partition_bounds(&t.brokers, &t.name);
    wait_until(
        Duration::from_secs(300),
        200,
        || committed_all(&s.clickhouse, &db, &t.name, &bounds),
        || format!("not everything committed:\n{}", read(&survivor_log)),
    );
    run_ok(Command::new("kill").args(["-TERM", &survivor.id().to_string()]));
    let out = survivor.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", read(&survivor_log));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(summary["records"].as_u64().unwrap() > 0, "{summary}");
    assert_same_totals(&ch_totals(&s.clickhouse, &db), &totals(&reference));
    assert_history(&s.clickhouse, &db, &t);
}

#[test]
fn aggregators_joining_and_leaving_on_sigterm_midstream_stay_exact() {
    let _serial = serial();
    let s = services();
    let dir = tempfile::tempdir().unwrap();
    let t = topic("ch-join");
    let file = corpus(dir.path(), 300_000, 43);
    let db = migrated_database(&s.clickhouse, "join");
    let mut producer = produce_in_background(&t, &file);
    let reference = reference(dir.path(), &file);

    // Each join and each SIGTERM moves partitions while the other
    // aggregator has a batch being committed (commits overlap reading):
    // a leaver joins once a batch was committed since the last one left,
    // and leaves once it holds partitions and a batch was committed since.
    let bounds = partition_bounds(&t.brokers, &t.name);
    let commit_after = |n: u64, what: &str| {
        wait_until(
            Duration::from_secs(120),
            50,
            || {
                commits(&s.clickhouse, &db) > n
                    || committed_all(&s.clickhouse, &db, &t.name, &bounds)
            },
            || format!("no commit {what} within 120 s"),
        )
    };
    let stayer_log = dir.path().join("stayer.log");
    let stayer = spawn_logged(
        aggregate(&t, &s.clickhouse, &db, "join", "15").env("RUST_LOG", "info"),
        &stayer_log,
    );
    for round in 0..2 {
        commit_after(commits(&s.clickhouse, &db), "before the join");
        let log = dir.path().join(format!("leaver-{round}.log"));
        let leaver = spawn_logged(
            aggregate(&t, &s.clickhouse, &db, "join", "60")
                .args(["--log-format", "json"])
                .env("RUST_LOG", "info"),
            &log,
        );
        let read = || std::fs::read_to_string(&log).unwrap_or_default();
        wait_until(
            Duration::from_secs(120),
            50,
            || logged_fields(&read(), "partitions assigned").any(|f| f["partitions"] != "[]"),
            || format!("the leaver held no partition within 120 s:\n{}", read()),
        );
        commit_after(commits(&s.clickhouse, &db), "after the join");
        let pid = leaver.id().to_string();
        run_ok(Command::new("kill").args(["-TERM", &pid]));
        wait_ok(leaver, &log, Duration::from_secs(60));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("shutting down"), "{text}");
    }
    assert!(producer.wait().unwrap().success());
    wait_ok(stayer, &stayer_log, Duration::from_secs(240));
    let waits = std::fs::read_to_string(&stayer_log)
        .unwrap()
        .matches("waited for the batches handed out")
        .count();
    eprintln!("the stayer held {waits} revocations until its commit landed");
    assert_same_totals(&ch_totals(&s.clickhouse, &db), &totals(&reference));
    assert_history(&s.clickhouse, &db, &t);
}

/// The shared service a test replaces with a private instance of its own,
/// so that stopping it disturbs nobody.
#[derive(Clone, Copy)]
enum Outage {
    ClickHouse,
    Kafka,
}

/// 300,000 events stream while a private `service` is stopped once the
/// first batch is committed and started again after `down`: nothing is
/// lost or counted twice, and the aggregator's memory stays bounded
/// meanwhile.
fn an_outage_midstream_loses_nothing(service: Outage, down: Duration, seed: u32, idle: &str) {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("services");
    let state = state.to_str().unwrap();
    let shared = services();
    let (name, env) = match service {
        Outage::ClickHouse => (
            "clickhouse",
            [
                ("TOKENTALLY_SERVICES_DIR", state),
                ("TOKENTALLY_KAFKA_BROKERS", shared.brokers.as_str()),
                ("TOKENTALLY_CLICKHOUSE_URL", ""),
                ("TOKENTALLY_CLICKHOUSE_HTTP_PORT", "38223"),
                ("TOKENTALLY_CLICKHOUSE_TCP_PORT", "39223"),
            ],
        ),
        Outage::Kafka => (
            "kafka",
            [
                ("TOKENTALLY_SERVICES_DIR", state),
                ("TOKENTALLY_CLICKHOUSE_URL", shared.clickhouse.as_str()),
                ("TOKENTALLY_KAFKA_BROKERS", ""),
                ("TOKENTALLY_KAFKA_PORT", "39292"),
                ("TOKENTALLY_KAFKA_CONTROLLER_PORT", "39293"),
            ],
        ),
    };
    let (private, exports) = Private::up(&env);
    let (brokers, url) = match service {
        Outage::ClickHouse => (shared.brokers.clone(), exports("TOKENTALLY_CLICKHOUSE_URL")),
        Outage::Kafka => (
            exports("TOKENTALLY_KAFKA_BROKERS"),
            shared.clickhouse.clone(),
        ),
    };
    let t = topic_on(&brokers, &format!("ch-{name}-down"));
    let file = corpus(dir.path(), 300_000, seed);
    let db = migrated_database(&url, name);
    let mut producer = produce_in_background(&t, &file);
    let reference = reference(dir.path(), &file);

    let log = dir.path().join("aggregate.log");
    let child = spawn_logged(&mut aggregate(&t, &url, &db, name, idle), &log);
    wait_until(
        Duration::from_secs(120),
        50,
        || commits(&url, &db) > 0,
        || {
            format!(
                "no commit within 120 s:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        },
    );
    private.run("stop", name);
    sleep(down);
    private.run("start", name);
    assert!(
        producer.wait().unwrap().success(),
        "the producer rode out the outage"
    );
    let peak = wait_ok(child, &log, Duration::from_secs(240));
    assert!(peak < 1024, "aggregator RSS peaked at {peak} MiB");
    assert_same_totals(&ch_totals(&url, &db), &totals(&reference));
    assert_history(&url, &db, &t);
    let _ = clickhouse_sql(&url, &format!("DROP DATABASE {db}"));
}

#[test]
fn clickhouse_down_for_20s_midstream_loses_nothing() {
    an_outage_midstream_loses_nothing(Outage::ClickHouse, Duration::from_secs(20), 51, "10");
}

#[test]
fn kafka_broker_restart_midstream_loses_nothing() {
    an_outage_midstream_loses_nothing(Outage::Kafka, Duration::from_secs(5), 61, "15");
}

/// A batch as the aggregator would hand it over: one event, and progress.
async fn outcome(id: &str, progress: &[(&str, i64)]) -> tokentally_aggregate::core::BatchOutcome {
    use tokentally_aggregate::core::{Aggregator, AggregatorConfig};
    use tokentally_aggregate::sink::Recovered;
    let mut raw = tokentally_aggregate::source::RawBatch::default();
    raw.push(
        format!(
            r#"{{"event_id":"{id}","ts":1795737600000,"model":"m","provider":"p","prompt_tokens":1,"completion_tokens":2}}"#
        )
        .as_bytes(),
    );
    for (k, v) in progress {
        raw.progress.insert(k.to_string(), *v);
    }
    Aggregator::new(AggregatorConfig::default(), &Recovered::default())
        .process(&raw)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aggregator_that_lost_its_partition_is_fenced() {
    use tokentally_aggregate::sink::UsageSink;
    use tokentally_sink::clickhouse::{ClickHouseConfig, ClickHouseError, ClickHouseSink};
    let url = services().clickhouse.clone();
    let db = migrated_database(&url, "fence");
    let config = ClickHouseConfig {
        url: url.clone(),
        database: db.clone(),
        ..ClickHouseConfig::default()
    };
    let horizon = Duration::from_secs(86_400);
    let key = "kafka:t:0".to_string();
    let other = "kafka:t:1".to_string();
    let mut zombie = ClickHouseSink::connect(config.clone(), horizon)
        .await
        .unwrap();
    zombie.recover().await.unwrap();
    zombie
        .recover_partitions(&[key.clone(), other.clone()])
        .await
        .unwrap();
    zombie
        .commit(&outcome("a", &[("kafka:t:0", 10)]).await)
        .await
        .unwrap();
    // A clean handoff: the zombie gives kafka:t:1 up, whose next owner
    // then fences nobody.
    zombie.release(std::slice::from_ref(&other)).await.unwrap();
    let mut polite = ClickHouseSink::connect(config.clone(), horizon)
        .await
        .unwrap();
    polite.recover().await.unwrap();
    polite
        .recover_partitions(std::slice::from_ref(&other))
        .await
        .unwrap();

    // kafka:t:0 moves to another aggregator without the zombie releasing
    // it (its session expired while it was paused). The new owner fences
    // it before it reads the ledger.
    let mut owner = ClickHouseSink::connect(config, horizon).await.unwrap();
    owner.recover().await.unwrap();
    let resumed = owner
        .recover_partitions(std::slice::from_ref(&key))
        .await
        .unwrap();
    assert_eq!(resumed.progress.get(&key), Some(&10));
    assert_eq!(
        resumed.dedup_ids.len(),
        1,
        "the ids of the batches that advanced it"
    );

    // The zombie wakes up with a batch it read before losing the partition.
    // The ledger still ends where it left it, so the check before the
    // insert passes (the race that "check, then insert" cannot close): the
    // insert itself is refused, and nothing of the batch counts.
    let err = zombie
        .commit(&outcome("c", &[("kafka:t:0", 15)]).await)
        .await
        .unwrap_err();
    let err = err.downcast::<ClickHouseError>().unwrap();
    assert!(matches!(*err, ClickHouseError::FencedOut), "{err}");
    // Fenced, it cannot fence the owner back by claiming partitions anew.
    let err = zombie
        .recover_partitions(std::slice::from_ref(&key))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("fenced"), "{err}");

    owner
        .commit(&outcome("b", &[("kafka:t:0", 20)]).await)
        .await
        .unwrap();
    polite
        .commit(&outcome("d", &[("kafka:t:1", 5)]).await)
        .await
        .unwrap();
    let rows = clickhouse_rows(
        &url,
        &format!("SELECT sum(requests) AS r FROM {db}.usage_daily"),
    );
    assert_eq!(rows[0]["r"], 3, "a, b and d; never c");
    let ledger = clickhouse_rows(
        &url,
        &format!("SELECT source, next_offset FROM {db}.ingest_progress ORDER BY source"),
    );
    assert_eq!(ledger[0]["next_offset"], 20);
    assert_eq!(ledger[1]["next_offset"], 5);

    // An aggregator that ends cleanly drops its way in.
    owner.close().await.unwrap();
    let writers = clickhouse_rows(
        &url,
        &format!(
            "SELECT count() AS n FROM system.tables WHERE database = '{db}' AND startsWith(name, 'writer_')"
        ),
    );
    assert_eq!(
        writers[0]["n"], 2,
        "the polite writer's table and view remain"
    );
}
