use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokentally_ingest::kafka::event_key;

use super::kafka_args::KafkaArgs;
use crate::config::Config;

/// Most sends awaiting the broker's acknowledgement at once.
const IN_FLIGHT: usize = 50_000;

/// Send NDJSON lines to the events topic exactly as they are, without
/// validating them (invalid lines reach the aggregator's dead-letter path).
/// For replays, backfills and tests. Each line's `event_id`, when readable,
/// is its message key. Exits non-zero unless every line was acknowledged.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// NDJSON input file, or - for standard input.
    #[arg(long, value_name = "PATH")]
    pub file: PathBuf,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

async fn settle(
    pending: &mut VecDeque<DeliveryFuture>,
    failed: &mut u64,
    first_error: &mut Option<KafkaError>,
) {
    if let Some(f) = pending.pop_front() {
        match f.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => {
                *failed += 1;
                first_error.get_or_insert(e);
            }
            Err(_) => {
                *failed += 1;
            }
        }
    }
}

pub async fn run(mut config: Config, args: ProduceArgs) -> anyhow::Result<()> {
    args.kafka.apply(&mut config);
    let k = &config.kafka;
    let producer: FutureProducer = k
        .producer()
        .create()
        .context("creating the Kafka producer")?;
    let reader: Box<dyn Read> = if args.file.as_os_str() == "-" {
        Box::new(io::stdin())
    } else {
        Box::new(
            File::open(&args.file)
                .with_context(|| format!("cannot read {}", args.file.display()))?,
        )
    };
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let started = Instant::now();
    let (mut sent, mut failed) = (0u64, 0u64);
    let mut first_error = None;
    let mut pending: VecDeque<DeliveryFuture> = VecDeque::with_capacity(IN_FLIGHT);
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        while let [rest @ .., b'\n' | b'\r'] = line.as_slice() {
            line.truncate(rest.len());
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let key = event_key(&line);
        loop {
            let mut record = FutureRecord::<str, [u8]>::to(&k.topic).payload(&line);
            if let Some(key) = &key {
                record = record.key(key.as_str());
            }
            match producer.send_result(record) {
                Ok(f) => {
                    pending.push_back(f);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    if pending.is_empty() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    } else {
                        settle(&mut pending, &mut failed, &mut first_error).await;
                    }
                }
                Err((e, _)) => return Err(anyhow::anyhow!("producing to {} failed: {e}", k.topic)),
            }
        }
        sent += 1;
        if pending.len() >= IN_FLIGHT {
            settle(&mut pending, &mut failed, &mut first_error).await;
        }
    }
    while !pending.is_empty() {
        settle(&mut pending, &mut failed, &mut first_error).await;
    }
    producer.flush(Duration::from_secs(30))?;
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "produced {} of {sent} lines to {} in {elapsed:.2}s ({:.0} lines/s)",
        sent - failed,
        k.topic,
        sent as f64 / elapsed.max(1e-9)
    );
    if failed > 0 {
        anyhow::bail!(
            "{failed} lines were not acknowledged by Kafka (first error: {})",
            first_error
                .map(|e| e.to_string())
                .unwrap_or_else(|| "delivery future dropped".into())
        );
    }
    Ok(())
}
