//! The in-memory hot path, one core: decode + validate + dedup + roll-up.
//!
//! `cargo bench --bench core` (criterion). Throughput is reported in
//! events/s ("elem/s"). The `decode` group measures our validating decoder
//! on the records as emitters write them (its one-pass fast path) and with a
//! space after the opening brace (which sends every record to the general
//! decoder: sonic-rs through a hand-written visitor), next to serde_json and
//! sonic-rs decoding the same fields into a derived struct *without* our
//! validation.

use std::borrow::Cow;
use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use serde::Deserialize;
use tokentally_aggregate::sink::Recovered;
use tokentally_aggregate::source::RawBatch;
use tokentally_aggregate::{Aggregator, AggregatorConfig};
use tokentally_ingest::{Fleet, FleetConfig};
use tokentally_schemas::{Limits, decode};

const EVENTS: usize = 65_536;

fn corpus() -> RawBatch {
    let mut fleet = Fleet::new(FleetConfig {
        events: EVENTS as u64,
        start_ms: Some(1_795_737_600_000),
        ..FleetConfig::default()
    });
    let mut raw = RawBatch::with_capacity(EVENTS, EVENTS * 300);
    while raw.push_with(|buf| fleet.next_line(buf).ok_or(())).is_ok() {}
    raw
}

/// The fields we read, decoded with no validation beyond types.
#[derive(Deserialize)]
#[allow(dead_code)] // fields are read by the decoder only
struct Plain<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    ts: i64,
    #[serde(borrow)]
    model: Cow<'a, str>,
    #[serde(borrow)]
    provider: Cow<'a, str>,
    #[serde(borrow, default)]
    app: Cow<'a, str>,
    prompt_tokens: u64,
    completion_tokens: u64,
    #[serde(default)]
    cached_tokens: u64,
}

fn bench(c: &mut Criterion) {
    let raw = corpus();
    let bytes = raw.bytes() / raw.len();
    println!(
        "corpus: {} events, {bytes} bytes/event on average",
        raw.len()
    );

    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(raw.len() as u64));
    g.bench_function("tokentally_validating", |b| {
        let limits = Limits::default();
        b.iter(|| {
            for rec in raw.iter() {
                black_box(decode(rec, &limits).is_ok());
            }
        })
    });
    // The same events, but not compact: the fast path declines each at its
    // second byte and the general decoder parses it.
    let mut spaced = RawBatch::with_capacity(raw.len(), raw.bytes() + raw.len());
    for rec in raw.iter() {
        spaced.push(&[b"{ ", &rec[1..]].concat());
    }
    g.bench_function("tokentally_validating_general", |b| {
        let limits = Limits::default();
        b.iter(|| {
            for rec in spaced.iter() {
                black_box(decode(rec, &limits).is_ok());
            }
        })
    });
    g.bench_function("sonic_rs_unvalidated", |b| {
        b.iter(|| {
            for rec in raw.iter() {
                black_box(sonic_rs::from_slice::<Plain>(rec).is_ok());
            }
        })
    });
    g.bench_function("serde_json_unvalidated", |b| {
        b.iter(|| {
            for rec in raw.iter() {
                black_box(serde_json::from_slice::<Plain>(rec).is_ok());
            }
        })
    });
    g.finish();

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(raw.len() as u64));
    g.sample_size(20);
    g.bench_function("decode_validate_dedup_rollup", |b| {
        b.iter_batched(
            || {
                // One core: decode on the benchmark's thread only.
                let config = AggregatorConfig {
                    decode_threads: 1,
                    ..AggregatorConfig::default()
                };
                Aggregator::new(config, &Recovered::default())
            },
            |mut agg| {
                let out = rt.block_on(agg.process(&raw)).unwrap();
                assert_eq!(out.stats.accepted as usize, EVENTS);
                black_box(out)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
