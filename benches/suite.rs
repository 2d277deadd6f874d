//! The benchmark suite's driver (run by `scripts/bench`, which starts the
//! services, builds, runs the `core` and `freshness` benches first and
//! passes their results in). Measures, on one pre-filled topic:
//!
//! - `ceiling`: an rdkafka consumer reading the topic and doing nothing else;
//! - `end_to_end`: `tokentally aggregate --sink clickhouse` from the topic to
//!   exact totals in ClickHouse (checked against ground truth computed here,
//!   independently, with serde_json), with its peak RSS;
//! - both in alternating rounds (`--rounds`, default 3), reporting the
//!   medians: the shared VM's speed drifts by tens of percent within
//!   minutes, and a ratio of two single runs minutes apart drifts with it;
//! - `kafka_engine`: ClickHouse's own Kafka table engine + a materialized view
//!   (`benches/kafka_engine.sql`) reading the same topic, totals checked too;
//! - `memory`: RSS over a long `ingest` run with a large dedup horizon, and
//!   end_to_end's peak RSS and rate per batch size (`--batch-curve`);
//! - `trillion_day`: a projection from `end_to_end`;
//!
//! - CPU seconds per million events (`/proc/PID/stat`): the aggregator plus
//!   the ClickHouse server during `end_to_end`, the server during
//!   `kafka_engine`, the broker apart (the pids from `scripts/services`'
//!   pid files);
//!
//! then merges `core` (criterion's estimate), `freshness` and `gateway`
//! (the HTTP gateway against its producer ceiling, `benches/gateway.rs`),
//! computes the ratios, prints a table and writes `bench/results.json`.
//!
//!   suite [--events 5000000] [--partitions 12] [--rounds 3] [--memory-events 20000000]
//!         [--memory-max-ids 5000000] [--core PATH] [--freshness PATH]
//!         [--gateway PATH] [--batch-curve 65536,131072,262144] [--out bench/results.json]
//!
//! Why one long file: every measure shares the pre-filled topic, the
//! services and the one report, and reads as a step of one run; a measure
//! that needs none of that gets a bench file of its own.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use serde_json::{Value, json};
use tokentally_ingest::{Fleet, FleetConfig};

mod common;
use common::{Kill, arg, env, run, tokentally};

/// Mean tokens per request assumed for the trillion-token day: the brief's
/// "a 1T-token day is ~250M requests". The generated topic uses the same mean.
const MEAN_TOKENS: u64 = 4_000;

fn log(msg: &str) {
    eprintln!("[suite] {msg}");
}

/// `VmRSS` and `VmHWM` (peak) of a process, in MiB.
fn rss_mb(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU seconds (user + system, all threads) `pid` has used so far, from
/// `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may
    // hold spaces: utime and stime are the 14th and 15th of the line.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / per_second)
}

/// The pid of a service `scripts/services` started (its pid file).
fn service_pid(name: &str) -> Option<u32> {
    let dir = std::env::var("TOKENTALLY_SERVICES_DIR")
        .unwrap_or_else(|_| "/tmp/tokentally-services".to_string());
    std::fs::read_to_string(format!("{dir}/{name}/pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// CPU seconds the Kafka broker and the ClickHouse server use from now to
/// [`ServiceCpu::since`].
struct ServiceCpu {
    start: [Option<f64>; 2],
}

impl ServiceCpu {
    const NAMES: [&str; 2] = ["kafka", "clickhouse"];

    fn start() -> ServiceCpu {
        ServiceCpu {
            start: Self::NAMES.map(|n| service_pid(n).and_then(cpu_seconds)),
        }
    }

    /// (broker, ClickHouse) CPU seconds since `start`.
    fn since(&self) -> [Option<f64>; 2] {
        let now = Self::NAMES.map(|n| service_pid(n).and_then(cpu_seconds));
        [0, 1].map(|i| Some(now[i]? - self.start[i]?))
    }
}

/// CPU seconds per million of `events`, when known.
fn per_million(cpu: Option<f64>, events: u64) -> Value {
    cpu.map_or(Value::Null, |c| json!(c / events as f64 * 1e6))
}

/// POST one statement to ClickHouse's HTTP interface.
fn clickhouse(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--data-binary", "@-", url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(sql.as_bytes())?;
            c.wait_with_output()
        })
        .map_err(|e| format!("curl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{sql}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn clickhouse_u64(url: &str, sql: &str) -> u64 {
    clickhouse(url, sql)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Poll `{db}.usage_daily` every 100 ms (calling `each_poll` first) until it
/// counts `events` requests: the seconds since `started`, and the count.
/// Panics after 30 minutes.
fn wait_counted(
    url: &str,
    db: &str,
    events: u64,
    started: Instant,
    what: &str,
    mut each_poll: impl FnMut(),
) -> (f64, u64) {
    let query = format!("SELECT sum(requests) FROM {db}.usage_daily");
    loop {
        each_poll();
        let counted = clickhouse_u64(url, &query);
        if counted >= events {
            return (started.elapsed().as_secs_f64(), counted);
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "{what}: {counted} of {events} after 30 minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Daily totals: (day, model, provider) → [requests, prompt, completion,
/// total, cached, errors].
type Totals = BTreeMap<(String, String, String), [u64; 6]>;

/// The fields the ground truth reads, decoded by serde_json (not by
/// tokentally's own decoder).
#[derive(Deserialize)]
struct TruthEvent {
    ts: i64,
    model: String,
    provider: String,
    prompt_tokens: u64,
    completion_tokens: u64,
    #[serde(default)]
    cached_tokens: u64,
    #[serde(default)]
    status: Option<String>,
}

fn day_string(ts_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ts_ms)
        .expect("valid ts")
        .format("%Y-%m-%d")
        .to_string()
}

/// Daily totals of a ClickHouse table with the `usage_daily` columns.
fn clickhouse_totals(url: &str, table: &str) -> Totals {
    let sql = format!(
        "SELECT toString(day), model, provider, sum(requests), sum(prompt_tokens), \
         sum(completion_tokens), sum(total_tokens), sum(cached_tokens), sum(error_requests) \
         FROM {table} GROUP BY day, model, provider FORMAT TSV"
    );
    let body = clickhouse(url, &sql).expect("totals query");
    let mut totals = Totals::new();
    for line in body.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let n = |i: usize| f[i].parse::<u64>().expect("a count");
        totals.insert(
            (f[0].to_string(), f[1].to_string(), f[2].to_string()),
            [n(3), n(4), n(5), n(6), n(7), n(8)],
        );
    }
    totals
}

/// Generate `events` fleet events into `topic`, returning their ground truth.
fn fill_topic(brokers: &str, topic: &str, events: u64) -> (Totals, f64) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("compression.type", "lz4")
        .set("linger.ms", "50")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()
        .expect("producer");
    let mut fleet = Fleet::new(FleetConfig {
        seed: 2026,
        events,
        tokens_per_day: MEAN_TOKENS * events,
        start_ms: Some(1_795_737_600_000),
        ..FleetConfig::default()
    });
    let mut truth = Totals::new();
    let mut line = Vec::with_capacity(512);
    let mut bytes = 0u64;
    loop {
        line.clear();
        if fleet.next_line(&mut line).is_none() {
            break;
        }
        bytes += line.len() as u64;
        let ev: TruthEvent = serde_json::from_slice(&line).expect("fleet events are valid");
        let t = truth
            .entry((day_string(ev.ts), ev.model, ev.provider))
            .or_default();
        t[0] += 1;
        t[1] += ev.prompt_tokens;
        t[2] += ev.completion_tokens;
        t[3] += ev.prompt_tokens + ev.completion_tokens;
        t[4] += ev.cached_tokens;
        t[5] += u64::from(ev.status.as_deref() == Some("error"));
        let mut record = BaseRecord::<(), [u8]>::to(topic).payload(&line[..]);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, r)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    std::thread::sleep(Duration::from_millis(5));
                    record = r;
                }
                Err((e, _)) => panic!("produce: {e}"),
            }
        }
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
    (truth, bytes as f64 / events as f64)
}

/// Read the whole topic with rdkafka and nothing else.
fn ceiling(brokers: &str, topic: &str, partitions: i32, events: u64) -> Value {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-ceiling"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        // The same fetch settings as tokentally's Kafka source.
        .set("queued.min.messages", "1000000")
        .set("queued.max.messages.kbytes", "16384")
        .set("fetch.queue.backoff.ms", "10")
        .set("max.partition.fetch.bytes", "4194304")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    let started = Instant::now();
    consumer.assign(&tpl).expect("assign");
    let (mut n, mut bytes) = (0u64, 0u64);
    while n < events {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => {
                n += 1;
                bytes += m.payload_len() as u64;
            }
            Some(Err(e)) => panic!("ceiling consumer: {e}"),
            None => panic!("ceiling consumer: no message for 10 s after {n}"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    json!({
        "events": n,
        "seconds": secs,
        "events_per_s": (n as f64 / secs).round(),
        "mb_per_s": bytes as f64 / secs / 1e6,
        "note": "one rdkafka BaseConsumer, assign() from the beginning, poll() and count",
    })
}

/// `tokentally aggregate --sink clickhouse` from the topic to exact totals.
fn end_to_end(
    brokers: &str,
    url: &str,
    topic: &str,
    db: &str,
    truth: &Totals,
    events: u64,
    extra: &[&str],
) -> Value {
    run(tokentally().args(["migrate", "--clickhouse", url, "--clickhouse-database", db]));
    let services = ServiceCpu::start();
    let started = Instant::now();
    let mut child = Kill(
        tokentally()
            .args(["aggregate", "--kafka", brokers, "--topic", topic])
            .args([
                "--dlq-topic",
                &format!("{topic}-dlq"),
                "--group",
                db, // a group per run: a killed member would hold the next run up
            ])
            .args(["--sink", "clickhouse", "--clickhouse", url])
            .args(["--clickhouse-database", db])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("start the aggregator"),
    );
    let pid = child.0.id();
    let mut peak = 0.0f64;
    let (secs, _) = wait_counted(url, db, events, started, "end to end", || {
        if let Some((_, hwm)) = rss_mb(pid) {
            peak = peak.max(hwm);
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("the aggregator exited early: {status}");
        }
    });
    if let Some((_, hwm)) = rss_mb(pid) {
        peak = peak.max(hwm);
    }
    let aggregator_cpu = cpu_seconds(pid);
    let [broker_cpu, clickhouse_cpu] = services.since();
    drop(child);
    let got = clickhouse_totals(url, &format!("{db}.usage_daily"));
    let exact = &got == truth;
    let _ = clickhouse(url, &format!("DROP DATABASE {db}"));
    json!({
        "events": events,
        "seconds": secs,
        "events_per_s": (events as f64 / secs).round(),
        "exact": exact,
        "daily_rows": truth.len(),
        "peak_rss_mb": peak.round(),
        "cpu_seconds": {
            "aggregator": aggregator_cpu,
            "clickhouse": clickhouse_cpu,
            "broker": broker_cpu,
        },
        "cpu_per_million_events": per_million(
            aggregator_cpu.zip(clickhouse_cpu).map(|(a, c)| a + c),
            events,
        ),
        "broker_cpu_per_million_events": per_million(broker_cpu, events),
        "note": "process start (incl. consumer group join) until usage_daily counts every event; \
                 CPU: the aggregator plus the ClickHouse server over that time (/proc/PID/stat), \
                 the broker apart",
    })
}

/// ClickHouse's Kafka engine + materialized view over the same topic.
fn kafka_engine(
    brokers: &str,
    url: &str,
    topic: &str,
    db: &str,
    truth: &Totals,
    events: u64,
) -> Value {
    let sql = include_str!("kafka_engine.sql")
        .replace("{db}", db)
        .replace("{brokers}", brokers)
        .replace("{topic}", topic)
        .replace("{group}", &format!("{topic}-peer"))
        .replace("{consumers}", "1");
    let mut statements = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        if line.trim_start().starts_with("--") {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if line.trim_end().ends_with(';') {
            statements.push(current.trim().trim_end_matches(';').to_string());
            current.clear();
        }
    }
    let (view, setup) = statements.split_last().expect("statements");
    for s in setup {
        clickhouse(url, s).expect("peer setup");
    }
    let services = ServiceCpu::start();
    let started = Instant::now();
    clickhouse(url, view).expect("peer view");
    let (secs, counted) = wait_counted(url, db, events, started, "kafka engine", || {});
    let [broker_cpu, clickhouse_cpu] = services.since();
    let got = clickhouse_totals(url, &format!("{db}.usage_daily"));
    // Detach the consumer before dropping the rest (see the SQL file).
    let _ = clickhouse(url, &format!("DROP TABLE {db}.usage_daily_mv"));
    std::thread::sleep(Duration::from_secs(5));
    let _ = clickhouse(url, &format!("DROP DATABASE {db}"));
    json!({
        "events": events,
        "events_counted": counted,
        "seconds": secs,
        "events_per_s": (events as f64 / secs).round(),
        "exact": got == *truth,
        "consumers": 1,
        "cpu_seconds": { "clickhouse": clickhouse_cpu, "broker": broker_cpu },
        "cpu_per_million_events": per_million(clickhouse_cpu, events),
        "broker_cpu_per_million_events": per_million(broker_cpu, events),
        "note": "Kafka table engine (JSONEachRow, kafka_max_block_size 65536) + materialized view \
                 into a SummingMergeTree daily roll-up; one roll-up, no validation, no dedup; \
                 at-least-once (offsets are committed before the insert, so an insert error \
                 can also lose a block)",
    })
}

/// RSS of `ingest` over a long stream with a large dedup horizon.
fn memory(events: u64, max_ids: u64) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sim = Kill(
        tokentally()
            .args(["simulate", "--events", &events.to_string(), "--seed", "3"])
            .args(["--tokens-per-day", &(MEAN_TOKENS * events).to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("simulate"),
    );
    let stdout = sim.0.stdout.take().unwrap();
    let mut ingest = Kill(
        tokentally()
            .args(["ingest", "--file", "-", "--json", "--store"])
            .arg(dir.path())
            .args(["--dedup-horizon", "30d"])
            .args(["--dedup-max-ids", &max_ids.to_string()])
            .stdin(stdout)
            .stdout(Stdio::piped())
            .spawn()
            .expect("ingest"),
    );
    let pid = ingest.0.id();
    let started = Instant::now();
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let mut peak = 0.0f64;
    while ingest.0.try_wait().expect("wait").is_none() {
        if let Some((rss, hwm)) = rss_mb(pid) {
            samples.push((started.elapsed().as_secs_f64(), rss));
            peak = peak.max(hwm);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let secs = started.elapsed().as_secs_f64();
    let mut summary = String::new();
    BufReader::new(ingest.0.stdout.take().unwrap())
        .lines()
        .for_each(|l| summary.push_str(&l.unwrap_or_default()));
    let summary: Value = serde_json::from_str(&summary).unwrap_or(Value::Null);
    let at = |frac: f64| -> f64 {
        let t = secs * frac;
        samples
            .iter()
            .take_while(|(s, _)| *s <= t)
            .map(|(_, r)| *r)
            .fold(0.0, f64::max)
            .round()
    };
    json!({
        "events": events,
        "dedup_horizon": "30d",
        "dedup_max_ids": max_ids,
        "seconds": secs,
        "events_per_s": (events as f64 / secs).round(),
        "peak_rss_mb": peak.round(),
        "max_rss_mb_by_quarter": [at(0.25), at(0.5), at(0.75), at(1.0)],
        "ingest_summary": summary,
        "note": "simulate | ingest into the embedded store; max RSS up to each quarter of the run",
    })
}

fn read_json(path: &str) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Events/s per core from criterion's estimate for the `core` bench
/// (65,536 events per iteration).
fn core(path: &str) -> Value {
    let Some(est) = read_json(path) else {
        return json!({ "error": format!("no criterion estimate at {path}") });
    };
    let ns = est["mean"]["point_estimate"].as_f64().unwrap_or(f64::NAN);
    let lo = est["mean"]["confidence_interval"]["lower_bound"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let hi = est["mean"]["confidence_interval"]["upper_bound"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let eps = |ns: f64| (65_536.0 / (ns / 1e9)).round();
    json!({
        "events_per_s": eps(ns),
        "events_per_s_ci95": [eps(hi), eps(lo)],
        "events_per_iteration": 65_536,
        "cores": 1,
        "note": "criterion: decode + validate + dedup + roll-up of 65,536 fleet events on one core",
    })
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let mem_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| (kb / 1024.0 / 1024.0).round());
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory_gib": mem_gb,
        "note": "Kafka broker, ClickHouse and the benchmarked process share these cores",
    })
}

/// The run with the median rate (the faster of the middle two for an even
/// count), with every run's rate and seconds under `runs`; for end to end,
/// `exact` only if every run was exact, and the highest peak RSS.
fn median_run(runs: Vec<Value>) -> Value {
    let eps = |v: &Value| v["events_per_s"].as_f64().unwrap_or(f64::NAN);
    let mut sorted = runs.clone();
    sorted.sort_by(|a, b| eps(a).total_cmp(&eps(b)));
    let mut median = sorted[sorted.len() / 2].clone();
    let summary: Vec<Value> = runs
        .iter()
        .map(|r| json!({ "events_per_s": r["events_per_s"], "seconds": r["seconds"] }))
        .collect();
    median["runs"] = Value::Array(summary);
    if median.get("exact").is_some() {
        median["exact"] = json!(runs.iter().all(|r| r["exact"] == json!(true)));
        let peak = runs.iter().filter_map(|r| r["peak_rss_mb"].as_f64());
        median["peak_rss_mb"] = json!(peak.fold(0.0, f64::max));
    }
    median
}

fn main() {
    let events: u64 = arg("--events", "5000000").parse().expect("--events N");
    let partitions: i32 = arg("--partitions", "12").parse().expect("--partitions N");
    let rounds: usize = arg("--rounds", "3").parse().expect("--rounds N");
    let memory_events: u64 = arg("--memory-events", "20000000").parse().expect("N");
    let memory_max_ids: u64 = arg("--memory-max-ids", "5000000").parse().expect("N");
    let out_path = arg("--out", "bench/results.json");
    let batch_sizes = arg("--batch-curve", "65536,131072,262144");
    let brokers = env("TOKENTALLY_KAFKA_BROKERS");
    let url = env("TOKENTALLY_CLICKHOUSE_URL");
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let topic = format!("bench-{stamp}");

    log(&format!(
        "filling {topic}: {events} events on {partitions} partitions"
    ));
    run(tokentally()
        .args(["topics", "create", "--kafka", &brokers, "--topic", &topic])
        .args(["--dlq-topic", &format!("{topic}-dlq")])
        .args(["--partitions", &partitions.to_string()]));
    let (truth, bytes_per_event) = fill_topic(&brokers, &topic, events);

    let (mut ceilings, mut e2es) = (Vec::new(), Vec::new());
    for round in 1..=rounds.max(1) {
        log(&format!(
            "round {round}: ceiling (rdkafka consuming, nothing else)"
        ));
        ceilings.push(ceiling(&brokers, &topic, partitions, events));
        log(&format!("ceiling: {}", ceilings[round - 1]));
        log(&format!(
            "round {round}: end to end (tokentally aggregate into ClickHouse)"
        ));
        e2es.push(end_to_end(
            &brokers,
            &url,
            &topic,
            &format!("bench_e2e_{stamp}_{round}"),
            &truth,
            events,
            &[],
        ));
        log(&format!("end to end: {}", e2es[round - 1]));
    }
    let eps = |v: &Value| v["events_per_s"].as_f64().unwrap_or(f64::NAN);
    let by_round: Vec<f64> = e2es
        .iter()
        .zip(&ceilings)
        .map(|(e, c)| eps(e) / eps(c))
        .collect();
    let ceiling = median_run(ceilings);
    let e2e = median_run(e2es);
    log("peer: ClickHouse Kafka engine + materialized view");
    let peer = kafka_engine(
        &brokers,
        &url,
        &topic,
        &format!("bench_peer_{stamp}"),
        &truth,
        events,
    );
    log(&format!("peer: {peer}"));
    // Memory against speed: end_to_end once per batch size.
    let mut batch_curve = Vec::new();
    for size in batch_sizes.split(',').filter(|s| !s.is_empty()) {
        log(&format!("end to end with --batch-records {size}"));
        let run = end_to_end(
            &brokers,
            &url,
            &topic,
            &format!("bench_batch_{stamp}_{size}"),
            &truth,
            events,
            &["--batch-records", size],
        );
        log(&format!("batch {size}: {run}"));
        batch_curve.push(json!({
            "batch_records": size.parse::<u64>().expect("--batch-curve N,N,..."),
            "events_per_s": run["events_per_s"],
            "peak_rss_mb": run["peak_rss_mb"],
            "cpu_per_million_events": run["cpu_per_million_events"],
            "exact": run["exact"],
        }));
    }
    log(&format!("memory: {memory_events} events through ingest"));
    let long_run = memory(memory_events, memory_max_ids);
    log(&format!("memory: {long_run}"));

    let core = core(&arg(
        "--core",
        "target/criterion/core/decode_validate_dedup_rollup/new/estimates.json",
    ));
    let freshness = read_json(&arg("--freshness", "bench/freshness.json"))
        .map(|v| v["freshness"].clone())
        .unwrap_or_else(|| json!({ "error": "no freshness result" }));
    let gateway = read_json(&arg("--gateway", "bench/gateway.json"))
        .unwrap_or_else(|| json!({ "error": "no gateway result" }));

    let e2e_eps = eps(&e2e);
    let requests_per_day = 1e12 / MEAN_TOKENS as f64;
    let trillion_day = json!({
        "tokens": 1_000_000_000_000u64,
        "mean_tokens_per_request": MEAN_TOKENS,
        "requests": requests_per_day,
        "events_per_s": e2e_eps,
        "hours": requests_per_day / e2e_eps / 3600.0,
        "average_events_per_s_needed": (requests_per_day / 86_400.0).round(),
        "note": "wall time for one aggregator at the end_to_end rate to process a day of 1T-token traffic",
    });
    let cpu = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let cpu_per_million_events = json!({
        "tokentally": e2e["cpu_per_million_events"],
        "kafka_engine": peer["cpu_per_million_events"],
        "broker_tokentally": e2e["broker_cpu_per_million_events"],
        "broker_kafka_engine": peer["broker_cpu_per_million_events"],
        "note": "CPU seconds per million events: tokentally = the aggregator + the ClickHouse server \
                 during end_to_end (its median run); kafka_engine = the ClickHouse server during its \
                 run; the broker serves both and is reported apart",
    });
    let ratios = json!({
        "end_to_end_over_ceiling": e2e_eps / eps(&ceiling),
        "end_to_end_over_ceiling_by_round": by_round,
        "end_to_end_over_kafka_engine": e2e_eps / eps(&peer),
        "kafka_engine_cpu_over_tokentally_cpu": cpu(&peer, "cpu_per_million_events")
            / cpu(&e2e, "cpu_per_million_events"),
        "gateway_over_ceiling": eps(&gateway["gateway"]) / eps(&gateway["gateway_ceiling"]),
        "core_events_per_s_over_2m": eps(&core) / 2e6,
        "targets": "end_to_end >= 0.8 x ceiling; kafka_engine CPU per event >= 3 x tokentally's; \
                    gateway >= 0.6 x its producer ceiling; core >= 2M events/s/core",
    });
    let results = json!({
        "date": chrono::Utc::now().to_rfc3339(),
        "machine": machine(),
        "topic": { "events": events, "partitions": partitions, "bytes_per_event": bytes_per_event.round() },
        "rounds": rounds.max(1),
        "core": core,
        "ceiling": ceiling,
        "end_to_end": e2e,
        "kafka_engine": peer,
        "freshness": freshness,
        "memory": {
            "end_to_end_peak_rss_mb": e2e["peak_rss_mb"],
            "long_run": long_run,
            "batch_curve": batch_curve,
            "peak_rss_mb": long_run["peak_rss_mb"].as_f64().unwrap_or(0.0).max(e2e["peak_rss_mb"].as_f64().unwrap_or(0.0)),
        },
        "trillion_day": trillion_day,
        "cpu_per_million_events": cpu_per_million_events,
        "gateway": gateway["gateway"],
        "gateway_ceiling": gateway["gateway_ceiling"],
        "gateway_latency": gateway["gateway_latency"],
        "ratios": ratios,
    });
    if let Some(dir) = Path::new(&out_path).parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&out_path, serde_json::to_string_pretty(&results).unwrap()).unwrap();
    print_table(&results);
    println!("wrote {out_path}");
}

fn print_table(r: &Value) {
    let num = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.0}"));
    let rate = |v: &Value| {
        v.as_f64()
            .map_or("-".to_string(), |x| format!("{:.3} M", x / 1e6))
    };
    println!();
    println!("| measurement | events/s | p50 / p99 ms | peak RSS MB | check |");
    println!("|---|---|---|---|---|");
    let exact = |v: &Value| match v["exact"].as_bool() {
        Some(true) => "totals exact".to_string(),
        Some(false) => "TOTALS WRONG".to_string(),
        None => String::new(),
    };
    println!(
        "| core (1 core) | {} | | | |",
        rate(&r["core"]["events_per_s"])
    );
    let runs = |v: &Value| {
        let rates: Vec<String> = v["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|run| rate(&run["events_per_s"]))
            .collect();
        format!("median of {}", rates.join(", "))
    };
    println!(
        "| ceiling | {} | | | {} |",
        rate(&r["ceiling"]["events_per_s"]),
        runs(&r["ceiling"])
    );
    println!(
        "| end_to_end | {} | | {} | {}; {} |",
        rate(&r["end_to_end"]["events_per_s"]),
        num(&r["end_to_end"]["peak_rss_mb"]),
        exact(&r["end_to_end"]),
        runs(&r["end_to_end"])
    );
    println!(
        "| kafka_engine | {} | | | {} |",
        rate(&r["kafka_engine"]["events_per_s"]),
        exact(&r["kafka_engine"])
    );
    println!(
        "| freshness | {} achieved | {} / {} | | |",
        rate(&r["freshness"]["events_per_s"]),
        num(&r["freshness"]["p50_ms"]),
        num(&r["freshness"]["p99_ms"])
    );
    println!(
        "| memory (long run) | {} | | {} | {} |",
        rate(&r["memory"]["long_run"]["events_per_s"]),
        num(&r["memory"]["long_run"]["peak_rss_mb"]),
        r["memory"]["long_run"]["max_rss_mb_by_quarter"]
    );
    for point in r["memory"]["batch_curve"].as_array().into_iter().flatten() {
        println!(
            "| end_to_end, --batch-records {} | {} | | {} | {} |",
            num(&point["batch_records"]),
            rate(&point["events_per_s"]),
            num(&point["peak_rss_mb"]),
            exact(point)
        );
    }
    println!(
        "| trillion_day | {:.1} h per 1T-token day | | | |",
        r["trillion_day"]["hours"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "| gateway_ceiling | {} | | | rdkafka producer, the gateway's settings |",
        rate(&r["gateway_ceiling"]["events_per_s"])
    );
    println!(
        "| gateway | {} | {} / {} at {} | | {} clients, bodies of {} |",
        rate(&r["gateway"]["events_per_s"]),
        num(&r["gateway_latency"]["p50_ms"]),
        num(&r["gateway_latency"]["p99_ms"]),
        rate(&r["gateway_latency"]["events_per_s"]),
        num(&r["gateway"]["clients"]),
        num(&r["gateway"]["body_events"])
    );
    let cpu = |k: &str| {
        r["cpu_per_million_events"][k]
            .as_f64()
            .map_or("-".to_string(), |x| format!("{x:.2}"))
    };
    println!();
    println!(
        "CPU s per million events: tokentally (aggregator + ClickHouse) {}, kafka_engine (ClickHouse) {}; \
         broker {} / {}",
        cpu("tokentally"),
        cpu("kafka_engine"),
        cpu("broker_tokentally"),
        cpu("broker_kafka_engine")
    );
    let ratio = |k: &str| r["ratios"][k].as_f64().unwrap_or(f64::NAN);
    println!(
        "end_to_end / ceiling = {:.2} (target >= 0.80); kafka_engine CPU / tokentally CPU = {:.2} \
         (target >= 3); end_to_end / kafka_engine = {:.2}; gateway / ceiling = {:.2} (target >= 0.60); \
         core / 2M = {:.2} (target >= 1)",
        ratio("end_to_end_over_ceiling"),
        ratio("kafka_engine_cpu_over_tokentally_cpu"),
        ratio("end_to_end_over_kafka_engine"),
        ratio("gateway_over_ceiling"),
        ratio("core_events_per_s_over_2m")
    );
}
