//! The HTTP gateway against its ceiling (run by `scripts/bench`, which
//! starts the services and merges the result into `bench/results.json`):
//!
//! - `gateway_ceiling`: one rdkafka producer with the gateway's own settings
//!   (`KafkaConfig::producer`: idempotent, `acks=all`, LZ4, `linger.ms` 5)
//!   producing the same records (key = `event_id`, value = the line) as fast
//!   as it can, until every one is acknowledged;
//! - `gateway`: `tokentally gateway` taking the same events as NDJSON bodies
//!   of `--body-events` (1,000) from `--clients` (8) concurrent keep-alive
//!   HTTP clients, each request answered after Kafka acknowledged its
//!   events; the topic must then hold every event;
//! - `gateway_latency`: request latency at a steady `--rate` (50,000
//!   events/s), the clients pacing their requests, for `--seconds` (20).
//!
//! The ceiling and the gateway alternate, `--rounds` (3) times; the
//! medians are reported.
//!
//! ```text
//! gateway [--events 1000000] [--clients 8] [--body-events 1000] [--rate 50000]
//!         [--seconds 20] [--rounds 3] [--out bench/gateway.json]
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use serde_json::{Value, json};
use tokentally_ingest::kafka::KafkaConfig;
use tokentally_ingest::{Fleet, FleetConfig};

mod common;
use common::{Kill, arg, env, run, tokentally};

fn log(msg: &str) {
    eprintln!("[bench gateway] {msg}");
}

/// The events as NDJSON lines, with their ids.
fn corpus(events: u64) -> Vec<(String, Vec<u8>)> {
    let mut fleet = Fleet::new(FleetConfig {
        seed: 24,
        events,
        tokens_per_day: 4_000 * events,
        start_ms: Some(1_795_737_600_000),
        ..FleetConfig::default()
    });
    let mut out = Vec::with_capacity(events as usize);
    let mut line = Vec::with_capacity(512);
    while fleet.next_line(&mut line).is_some() {
        let v: Value = serde_json::from_slice(&line).expect("fleet events are JSON");
        let id = v["event_id"].as_str().expect("an event_id").to_string();
        out.push((id, std::mem::take(&mut line)));
    }
    out
}

fn create_topic(brokers: &str, topic: &str) {
    run(tokentally()
        .args(["topics", "create", "--kafka", brokers, "--topic", topic])
        .args(["--dlq-topic", &format!("{topic}-dlq"), "--partitions", "12"]));
}

/// Messages in `topic` (the sum of its partitions' high watermarks).
fn messages(brokers: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-count"))
        .create()
        .expect("consumer");
    let timeout = Duration::from_secs(30);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .expect("metadata");
    metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| consumer.fetch_watermarks(topic, p.id(), timeout).unwrap().1)
        .sum()
}

/// Produce every record with the gateway's producer settings; events/s
/// until the last acknowledgement.
fn ceiling(brokers: &str, topic: &str, records: &[(String, Vec<u8>)]) -> Value {
    let config = KafkaConfig {
        brokers: brokers.to_string(),
        ..KafkaConfig::default()
    };
    let producer: ThreadedProducer<DefaultProducerContext> = config
        .producer()
        .expect("producer settings")
        .create()
        .expect("producer");
    // Send one record, waiting while the local queue is full.
    let send = |(key, line): &(String, Vec<u8>)| {
        let mut record = BaseRecord::to(topic).key(key.as_str()).payload(&line[..]);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, r)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    std::thread::sleep(Duration::from_millis(1));
                    record = r;
                }
                Err((e, _)) => panic!("produce: {e}"),
            }
        }
    };
    // The first record, acknowledged before the clock starts: connected,
    // with its producer id, as the gateway is before it is timed.
    send(&records[0]);
    producer.flush(Duration::from_secs(60)).expect("flush");
    let started = Instant::now();
    records[1..].iter().for_each(send);
    producer.flush(Duration::from_secs(120)).expect("flush");
    let secs = started.elapsed().as_secs_f64();
    let n = (records.len() - 1) as f64;
    assert_eq!(messages(brokers, topic), records.len() as i64);
    json!({
        "events": records.len() - 1,
        "seconds": secs,
        "events_per_s": (n / secs).round(),
        "note": "one rdkafka ThreadedProducer with KafkaConfig::producer() (the gateway's settings), \
                 key = event_id, connected before the clock starts; until the last acknowledgement",
    })
}

/// One HTTP/1.1 keep-alive connection posting NDJSON bodies.
struct Client {
    stream: BufReader<TcpStream>,
    addr: String,
}

impl Client {
    fn connect(addr: &str) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to the gateway");
        stream.set_nodelay(true).unwrap();
        Client {
            stream: BufReader::new(stream),
            addr: addr.to_string(),
        }
    }

    /// POST `body`; the status once the whole answer is read.
    fn post(&mut self, body: &[u8]) -> u16 {
        let head = format!(
            "POST /v1/events HTTP/1.1\r\nhost: {}\r\ncontent-type: application/x-ndjson\r\n\
             content-length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        let s = self.stream.get_mut();
        s.write_all(head.as_bytes()).expect("send");
        s.write_all(body).expect("send");
        let mut line = String::new();
        self.stream.read_line(&mut line).expect("status line");
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut length = 0usize;
        loop {
            line.clear();
            self.stream.read_line(&mut line).expect("header");
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().expect("content-length");
            }
        }
        let mut answer = vec![0; length];
        self.stream.read_exact(&mut answer).expect("body");
        status
    }
}

/// Every body, as fast as `clients` connections take them; seconds until
/// the last answer.
fn throughput(addr: &str, bodies: &[Vec<u8>], clients: usize) -> f64 {
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..clients {
            scope.spawn(|| {
                let mut client = Client::connect(addr);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else { break };
                    let status = client.post(body);
                    assert_eq!(status, 200, "the gateway refused body {i}");
                }
            });
        }
    });
    started.elapsed().as_secs_f64()
}

/// Request latencies (ms) with `clients` connections sending `rate`
/// events/s in total, in bodies of `body_events`, for `seconds`.
fn paced(
    addr: &str,
    bodies: &[Vec<u8>],
    clients: usize,
    rate: f64,
    body_events: usize,
    seconds: f64,
) -> Vec<f64> {
    let requests_per_s = rate / body_events as f64;
    let interval = Duration::from_secs_f64(clients as f64 / requests_per_s);
    let per_client = (seconds * requests_per_s / clients as f64).ceil() as usize;
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|scope| {
        for c in 0..clients {
            let tx = tx.clone();
            scope.spawn(move || {
                let mut client = Client::connect(addr);
                // Clients start staggered over one interval.
                let start = Instant::now() + interval.mul_f64(c as f64 / clients as f64);
                for k in 0..per_client {
                    let due = start + interval * k as u32;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let body = &bodies[(c * per_client + k) % bodies.len()];
                    let sent = Instant::now();
                    assert_eq!(client.post(body), 200);
                    tx.send(sent.elapsed().as_secs_f64() * 1e3).unwrap();
                }
            });
        }
    });
    drop(tx);
    let mut latencies: Vec<f64> = rx.iter().collect();
    latencies.sort_by(f64::total_cmp);
    latencies
}

/// The run with the median rate, with every run's rate under `runs`.
fn median(runs: Vec<Value>) -> Value {
    let eps = |v: &Value| v["events_per_s"].as_f64().unwrap_or(f64::NAN);
    let mut sorted = runs.clone();
    sorted.sort_by(|a, b| eps(a).total_cmp(&eps(b)));
    let mut median = sorted[sorted.len() / 2].clone();
    median["runs"] = runs.iter().map(|r| r["events_per_s"].clone()).collect();
    median
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let events: u64 = arg("--events", "1000000").parse().expect("--events N");
    let clients: usize = arg("--clients", "8").parse().expect("--clients N");
    let body_events: usize = arg("--body-events", "1000").parse().expect("N");
    let rate: f64 = arg("--rate", "50000").parse().expect("--rate N");
    let seconds: f64 = arg("--seconds", "20").parse().expect("--seconds N");
    let rounds: usize = arg("--rounds", "3").parse().expect("--rounds N");
    let out_path = arg("--out", "bench/gateway.json");
    let brokers = env("TOKENTALLY_KAFKA_BROKERS");
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();

    log(&format!("generating {events} events"));
    let records = corpus(events);
    let bodies: Vec<Vec<u8>> = records
        .chunks(body_events)
        .map(|chunk| {
            let mut body = Vec::new();
            for (_, line) in chunk {
                body.extend_from_slice(line);
                body.push(b'\n');
            }
            body
        })
        .collect();

    let topic = format!("bench-gw-{stamp}");
    create_topic(&brokers, &topic);
    let mut gateway = Kill(
        tokentally()
            .args(["gateway", "--listen", "127.0.0.1:0", "--kafka", &brokers])
            .args([
                "--topic",
                &topic,
                "--dlq-topic",
                &format!("{topic}-dlq"),
                "--no-auth",
            ])
            .env_remove("TOKENTALLY_GATEWAY_TOKENS")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the gateway"),
    );
    let stderr = gateway.0.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut said = String::new();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            said.push_str(&l);
            said.push('\n');
            l.strip_prefix("listening on http://").map(str::to_string)
        })
        .unwrap_or_else(|| panic!("the gateway did not start:\n{said}"));
    std::thread::spawn(move || lines.for_each(drop));
    // The first body, answered before the clock starts: the gateway is
    // connected (and has its producer id) before it is timed.
    assert_eq!(Client::connect(&addr).post(&bodies[0]), 200);
    let warmup = body_events.min(records.len());
    let timed = records.len() - warmup;
    let mut posted = warmup;

    // Alternating rounds, medians: the shared VM's speed drifts.
    let (mut ceilings, mut gateways) = (Vec::new(), Vec::new());
    for round in 1..=rounds.max(1) {
        let ceiling_topic = format!("bench-gw-ceiling-{stamp}-{round}");
        create_topic(&brokers, &ceiling_topic);
        log(&format!(
            "round {round}: an rdkafka producer with the gateway's settings"
        ));
        ceilings.push(ceiling(&brokers, &ceiling_topic, &records));
        log(&format!("ceiling: {}", ceilings[round - 1]));
        log(&format!(
            "round {round}: the gateway, {} bodies of {body_events} events from {clients} clients",
            bodies.len() - 1
        ));
        let secs = throughput(&addr, &bodies[1..], clients);
        posted += timed;
        assert_eq!(
            messages(&brokers, &topic),
            posted as i64,
            "every acknowledged event must be in the topic"
        );
        gateways.push(json!({
            "events": timed,
            "seconds": secs,
            "events_per_s": (timed as f64 / secs).round(),
            "clients": clients,
            "body_events": body_events,
            "note": "NDJSON bodies over HTTP/1.1 keep-alive, each answered 200 after acks=all, \
                     the gateway connected before the clock starts; the topic then holds every event",
        }));
        log(&format!("gateway: {}", gateways[round - 1]));
    }
    let gateway_result = median(gateways);
    let ceiling = median(ceilings);

    log(&format!("latency at {rate} events/s for {seconds} s"));
    let latencies = paced(&addr, &bodies, clients, rate, body_events, seconds);
    let latency = json!({
        "events_per_s": rate,
        "requests": latencies.len(),
        "p50_ms": percentile(&latencies, 0.5),
        "p99_ms": percentile(&latencies, 0.99),
        "max_ms": percentile(&latencies, 1.0),
        "note": "request sent -> answer read, clients pacing bodies to the rate",
    });
    log(&format!("latency: {latency}"));
    drop(gateway);

    let result = json!({
        "gateway": gateway_result,
        "gateway_ceiling": ceiling,
        "gateway_latency": latency,
    });
    if let Some(dir) = std::path::Path::new(&out_path).parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&out_path, serde_json::to_string_pretty(&result).unwrap()).unwrap();
    println!("{}", serde_json::to_string_pretty(&result).unwrap());
}
