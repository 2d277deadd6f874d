//! Freshness: how long from an event being produced to Kafka until it is
//! visible in ClickHouse's `usage_minute`, under steady background load.
//!
//! Needs the real services (`eval "$(scripts/services up)"`). Runs the
//! release `tokentally` binary: `topics create`, `migrate`, one `aggregate
//! --sink clickhouse`, and `simulate --kafka --rate RATE` as background
//! load; meanwhile it produces a probe event every 100 ms (each with its own
//! model name) and polls `usage_minute` every 20 ms for the probes.
//!
//!   cargo bench --bench freshness -- [--rate 50000] [--seconds 60] [--out bench/freshness.json]

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

mod common;
use common::{Kill, arg, env, run, tokentally};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() {
    let rate: u64 = arg("--rate", "50000").parse().expect("--rate N");
    let seconds: u64 = arg("--seconds", "60").parse().expect("--seconds N");
    let out_path = arg("--out", "bench/freshness.json");
    let brokers = env("TOKENTALLY_KAFKA_BROKERS");
    let url = env("TOKENTALLY_CLICKHOUSE_URL");
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let topic = format!("fresh-{}", stamp.as_millis());
    let db = format!("fresh_{}", stamp.as_millis());

    run(tokentally()
        .args(["topics", "create", "--kafka", &brokers, "--topic", &topic])
        .args(["--dlq-topic", &format!("{topic}-dlq"), "--partitions", "12"]));
    run(tokentally().args([
        "migrate",
        "--clickhouse",
        &url,
        "--clickhouse-database",
        &db,
    ]));
    let aggregator = Kill(
        tokentally()
            .args(["aggregate", "--kafka", &brokers, "--topic", &topic])
            .args(["--dlq-topic", &format!("{topic}-dlq"), "--group", &topic])
            .args([
                "--sink",
                "clickhouse",
                "--clickhouse",
                &url,
                "--clickhouse-database",
                &db,
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("start the aggregator"),
    );
    let load = Kill(
        tokentally()
            .args(["simulate", "--kafka", &brokers, "--topic", &topic])
            .args([
                "--rate",
                &rate.to_string(),
                "--events",
                &(rate * (seconds + 5)).to_string(),
            ])
            .args(["--start-ms", &(stamp.as_millis() as u64).to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the load"),
    );
    let load_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await; // group join, warm-up

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "0")
        .create()
        .unwrap();
    let ch = clickhouse::Client::default()
        .with_url(&url)
        .with_validation(false);
    let poll_sql =
        format!("SELECT DISTINCT model FROM {db}.usage_minute WHERE model LIKE 'probe-%'");
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let mut latencies = Vec::new();
    let started = Instant::now();
    let mut next_probe = Instant::now();
    let mut i = 0u64;
    while started.elapsed() < Duration::from_secs(seconds)
        || (!sent.is_empty() && started.elapsed() < Duration::from_secs(seconds + 30))
    {
        if started.elapsed() < Duration::from_secs(seconds) && Instant::now() >= next_probe {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis();
            let model = format!("probe-{i:06}");
            let event = format!(
                r#"{{"event_id":"{topic}-probe-{i}","ts":{now_ms},"model":"{model}","provider":"probe","prompt_tokens":1,"completion_tokens":1}}"#
            );
            let key = format!("{topic}-probe-{i}");
            let t0 = Instant::now();
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&event),
                    Duration::from_secs(5),
                )
                .await
                .expect("probe produced");
            sent.insert(model, t0);
            i += 1;
            next_probe += Duration::from_millis(100);
        }
        let visible: Vec<String> = ch.query(&poll_sql).fetch_all().await.unwrap_or_default();
        let seen_at = Instant::now();
        for m in visible {
            if let Some(t0) = sent.remove(&m) {
                latencies.push((seen_at - t0).as_secs_f64() * 1000.0);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let counted: Vec<u64> = ch
        .query(&format!("SELECT sum(requests) FROM {db}.usage_daily"))
        .fetch_all()
        .await
        .unwrap_or_default();
    let counted = counted.first().copied().unwrap_or(0);
    let load_secs = load_started.elapsed().as_secs_f64();
    drop(load);
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let lost = sent.len();
    let result = serde_json::json!({
        "freshness": {
            "target_events_per_s": rate,
            "events_per_s": (counted as f64 / load_secs).round(),
            "events_counted": counted,
            "probes": latencies.len(),
            "probes_not_seen_within_30s": lost,
            "p50_ms": percentile(&latencies, 0.50),
            "p99_ms": percentile(&latencies, 0.99),
            "max_ms": latencies.last().copied().unwrap_or(f64::NAN),
            "seconds": seconds,
            "partitions": 12,
            "note": "probe produced -> row visible in usage_minute; poll interval 20 ms",
        }
    });
    println!("{}", serde_json::to_string_pretty(&result).unwrap());
    if let Some(dir) = std::path::Path::new(&out_path).parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&out_path, serde_json::to_string_pretty(&result).unwrap()).unwrap();
    // Stop the aggregator first: dropping its tables under it fails its
    // next commit, loudly.
    drop(aggregator);
    let _ = ch.query(&format!("DROP DATABASE {db}")).execute().await;
}
