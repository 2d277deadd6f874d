//! Rows as written to ClickHouse (RowBinary; field order = column order),
//! and a committed batch as rows: its roll-up deltas (from Arrow), ids,
//! dead letters and progress.

use arrow::array::{
    AsArray, Date32Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array,
};
use arrow::datatypes::Schema;
use serde::Serialize;
use tokentally_aggregate::core::{BatchOutcome, DeadLetter};
use tokentally_aggregate::rollup::{Column, Rollup};

use super::ClickHouseError;
use super::schema::Kind;

/// One row of `usage_deltas`.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize)]
pub struct DeltaRow<'a> {
    pub kind: Kind,
    /// Date: days since 1970-01-01.
    pub day: u16,
    /// DateTime: seconds since the epoch.
    pub minute: u32,
    pub model: &'a str,
    pub provider: &'a str,
    pub app: &'a str,
    pub reason: &'a str,
    pub source: &'a str,
    pub next_offset: i64,
    /// Progress rows: where the batch's range of `source` starts (-1 when
    /// the source has no such position).
    pub start_offset: i64,
    pub batch_id: &'a str,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: u64,
    pub error_requests: u64,
    /// Progress rows: 1 (one batch). Roll-up delta rows: their
    /// `reasoning_tokens`. `SummingMergeTree` sums the columns listed when
    /// the table was created, and merges delta rows of one key from
    /// different batches; `reasoning_tokens` came later, so it lives in
    /// this summed column, which delta rows had left at 0 (the views name
    /// it; see schema migration 6).
    pub batches: u64,
    pub watermark_ms: i64,
}

impl<'a> DeltaRow<'a> {
    fn empty(kind: Kind, batch_id: &'a str) -> Self {
        DeltaRow {
            kind,
            day: 0,
            minute: 0,
            model: "",
            provider: "",
            app: "",
            reason: "",
            source: "",
            next_offset: 0,
            start_offset: -1,
            batch_id,
            requests: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            total_tokens: 0,
            cached_tokens: 0,
            error_requests: 0,
            batches: 0,
            watermark_ms: 0,
        }
    }
}

/// A batch's `usage_deltas` rows as the ONE row a writer's table takes
/// (see [`create_writer`](super::fence::create_writer)): column `c` of
/// [`DeltaRow`] becomes array `batch.c` of a `Nested` column, which the
/// table's view unfolds (`ARRAY JOIN`).
#[derive(Debug, Default, Clone, PartialEq, clickhouse::Row, Serialize)]
pub struct BatchRow<'a> {
    #[serde(rename = "batch.kind")]
    pub kind: Vec<Kind>,
    #[serde(rename = "batch.day")]
    pub day: Vec<u16>,
    #[serde(rename = "batch.minute")]
    pub minute: Vec<u32>,
    #[serde(rename = "batch.model")]
    pub model: Vec<&'a str>,
    #[serde(rename = "batch.provider")]
    pub provider: Vec<&'a str>,
    #[serde(rename = "batch.app")]
    pub app: Vec<&'a str>,
    #[serde(rename = "batch.reason")]
    pub reason: Vec<&'a str>,
    #[serde(rename = "batch.source")]
    pub source: Vec<&'a str>,
    #[serde(rename = "batch.next_offset")]
    pub next_offset: Vec<i64>,
    #[serde(rename = "batch.start_offset")]
    pub start_offset: Vec<i64>,
    #[serde(rename = "batch.batch_id")]
    pub batch_id: Vec<&'a str>,
    #[serde(rename = "batch.requests")]
    pub requests: Vec<u64>,
    #[serde(rename = "batch.prompt_tokens")]
    pub prompt_tokens: Vec<u64>,
    #[serde(rename = "batch.completion_tokens")]
    pub completion_tokens: Vec<u64>,
    #[serde(rename = "batch.total_tokens")]
    pub total_tokens: Vec<u64>,
    #[serde(rename = "batch.cached_tokens")]
    pub cached_tokens: Vec<u64>,
    #[serde(rename = "batch.error_requests")]
    pub error_requests: Vec<u64>,
    #[serde(rename = "batch.batches")]
    pub batches: Vec<u64>,
    #[serde(rename = "batch.watermark_ms")]
    pub watermark_ms: Vec<i64>,
}

impl<'a> BatchRow<'a> {
    /// The name of the `Nested` column.
    pub const NESTED: &'static str = "batch";

    pub fn of(rows: &[DeltaRow<'a>]) -> Self {
        let mut b = BatchRow::default();
        for r in rows {
            b.kind.push(r.kind);
            b.day.push(r.day);
            b.minute.push(r.minute);
            b.model.push(r.model);
            b.provider.push(r.provider);
            b.app.push(r.app);
            b.reason.push(r.reason);
            b.source.push(r.source);
            b.next_offset.push(r.next_offset);
            b.start_offset.push(r.start_offset);
            b.batch_id.push(r.batch_id);
            b.requests.push(r.requests);
            b.prompt_tokens.push(r.prompt_tokens);
            b.completion_tokens.push(r.completion_tokens);
            b.total_tokens.push(r.total_tokens);
            b.cached_tokens.push(r.cached_tokens);
            b.error_requests.push(r.error_requests);
            b.batches.push(r.batches);
            b.watermark_ms.push(r.watermark_ms);
        }
        b
    }
}

/// One row of `dedup_id_sets`: the ids one batch counted in one dedup
/// bucket (hour), as two parallel arrays (high and low words).
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize)]
pub struct IdSetRow<'a> {
    pub batch_id: &'a str,
    pub bucket: i64,
    pub ids_hi: Vec<u64>,
    pub ids_lo: Vec<u64>,
    /// The batch's commit time, as in its commit-time progress rows.
    pub at: u32,
}

/// One row of `ledger_heads`: a source's committed position (or -1 when
/// it had none yet), at or below the newest in the ledger.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, serde::Deserialize)]
pub struct HeadRow {
    pub source: String,
    pub next_offset: i64,
    pub watermark_ms: i64,
    /// When that position was committed (server time; 0 when unknown).
    pub at: u32,
}

impl HeadRow {
    /// A head for a source with nothing committed yet.
    pub fn none(source: &str) -> Self {
        HeadRow {
            source: source.to_string(),
            next_offset: -1,
            watermark_ms: 0,
            at: 0,
        }
    }
}

/// One row of `rejected_events_log`.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize)]
pub struct RejectedRow<'a> {
    pub received_at: u32,
    pub batch_id: &'a str,
    pub reason: &'a str,
    pub field: &'a str,
    pub detail: &'a str,
    #[serde(with = "serde_bytes")]
    pub raw: &'a [u8],
}

/// A batch's new ids, one row per bucket (a batch spans one or two hours),
/// committed at `at`.
pub fn id_set_rows<'a>(batch_id: &'a str, ids: &[(i64, u128)], at: u32) -> Vec<IdSetRow<'a>> {
    let mut rows: Vec<IdSetRow<'a>> = Vec::new();
    for &(bucket, id) in ids {
        let at = match rows.iter().rposition(|r| r.bucket == bucket) {
            Some(at) => at,
            None => {
                rows.push(IdSetRow {
                    batch_id,
                    bucket,
                    ids_hi: Vec::new(),
                    ids_lo: Vec::new(),
                    at,
                });
                rows.len() - 1
            }
        };
        rows[at].ids_hi.push((id >> 64) as u64);
        rows[at].ids_lo.push(id as u64);
    }
    rows
}

pub fn rejected_rows<'a>(
    batch_id: &'a str,
    received_at: u32,
    dead: &'a [DeadLetter],
) -> Vec<RejectedRow<'a>> {
    dead.iter()
        .map(|d| RejectedRow {
            received_at,
            batch_id,
            reason: d.rejection.reason.as_str(),
            field: d.rejection.field.unwrap_or(""),
            detail: &d.rejection.detail,
            raw: &d.raw,
        })
        .collect()
}

fn day_u16(days: i32) -> Result<u16, ClickHouseError> {
    u16::try_from(days).map_err(|_| {
        ClickHouseError::Config(format!("day {days} is outside ClickHouse's Date range"))
    })
}

/// The columns of one roll-up delta batch, typed, looked up once per
/// batch. A roll-up has some of them ([`Rollup::schema`]); the
/// `usage_deltas` columns of the others stay empty (names) or 0 (measures).
#[derive(Default)]
struct DeltaColumns<'b> {
    day: Option<&'b Date32Array>,
    minute: Option<&'b TimestampMillisecondArray>,
    model: Option<&'b StringArray>,
    provider: Option<&'b StringArray>,
    app: Option<&'b StringArray>,
    requests: Option<&'b UInt64Array>,
    prompt_tokens: Option<&'b UInt64Array>,
    completion_tokens: Option<&'b UInt64Array>,
    total_tokens: Option<&'b UInt64Array>,
    cached_tokens: Option<&'b UInt64Array>,
    reasoning_tokens: Option<&'b UInt64Array>,
    error_requests: Option<&'b UInt64Array>,
}

impl<'b> DeltaColumns<'b> {
    /// The columns of `batch`, a delta of `rollup`. An error if its schema
    /// is not the roll-up's.
    fn of(rollup: Rollup, batch: &'b RecordBatch) -> Result<Self, ClickHouseError> {
        let schema = rollup.schema();
        if batch.schema_ref() != &schema {
            return Err(ClickHouseError::Config(format!(
                "a {rollup:?} roll-up delta has the columns ({}), not the roll-up's ({})",
                describe(batch.schema_ref()),
                describe(&schema)
            )));
        }
        // The schema matches, so each column has its field's type. The
        // roll-ups name their columns after those of `usage_deltas`, and
        // the match is exhaustive: a new roll-up column does not compile
        // until it has a place here.
        let mut c = DeltaColumns::default();
        for (name, column) in rollup.columns().zip(batch.columns()) {
            let column = column.as_ref();
            match name {
                Column::Day => c.day = Some(column.as_primitive()),
                Column::Minute => c.minute = Some(column.as_primitive()),
                Column::Model => c.model = Some(column.as_string()),
                Column::Provider => c.provider = Some(column.as_string()),
                Column::App => c.app = Some(column.as_string()),
                Column::Requests => c.requests = Some(column.as_primitive()),
                Column::PromptTokens => c.prompt_tokens = Some(column.as_primitive()),
                Column::CompletionTokens => c.completion_tokens = Some(column.as_primitive()),
                Column::TotalTokens => c.total_tokens = Some(column.as_primitive()),
                Column::CachedTokens => c.cached_tokens = Some(column.as_primitive()),
                Column::ReasoningTokens => c.reasoning_tokens = Some(column.as_primitive()),
                Column::ErrorRequests => c.error_requests = Some(column.as_primitive()),
            }
        }
        Ok(c)
    }

    /// Row `i`, a row of kind `kind`.
    fn row(&self, kind: Kind, i: usize) -> Result<DeltaRow<'b>, ClickHouseError> {
        let name = |c: Option<&'b StringArray>| c.map_or("", |c| c.value(i));
        let measure = |c: Option<&UInt64Array>| c.map_or(0, |c| c.value(i));
        let mut r = DeltaRow::empty(kind, "");
        if let Some(day) = self.day {
            r.day = day_u16(day.value(i))?;
        }
        if let Some(minute) = self.minute {
            let ms = minute.value(i);
            r.minute = u32::try_from(ms.div_euclid(1000)).map_err(|_| {
                ClickHouseError::Config(format!(
                    "minute {ms} is outside ClickHouse's DateTime range"
                ))
            })?;
        }
        r.model = name(self.model);
        r.provider = name(self.provider);
        r.app = name(self.app);
        r.requests = measure(self.requests);
        r.prompt_tokens = measure(self.prompt_tokens);
        r.completion_tokens = measure(self.completion_tokens);
        r.total_tokens = measure(self.total_tokens);
        r.cached_tokens = measure(self.cached_tokens);
        r.batches = measure(self.reasoning_tokens);
        r.error_requests = measure(self.error_requests);
        Ok(r)
    }
}

/// `schema`'s columns and their types, for messages.
fn describe(schema: &Schema) -> String {
    let fields: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect();
    fields.join(", ")
}

/// Every row of one batch's single `usage_deltas` insert: deltas, reject
/// counts (on the UTC day they were refused), and progress, committed at
/// `now_s`. Progress goes in twice: by source (`minute` 0, the offset
/// chain) and by commit time (`minute` = `now_s`, `requests` = the batch's
/// raw dead letters), one of each per source the batch advanced, or one
/// commit-time row with an empty source when it advanced none.
pub fn delta_rows<'a>(
    batch_id: &'a str,
    outcome: &'a BatchOutcome,
    now_s: u32,
) -> Result<Vec<DeltaRow<'a>>, ClickHouseError> {
    let mut rows = Vec::new();
    for rollup in Rollup::ALL {
        let kind = Kind::of(rollup);
        for b in outcome.deltas.get(rollup) {
            let columns = DeltaColumns::of(rollup, b)?;
            for i in 0..b.num_rows() {
                rows.push(columns.row(kind, i)?);
            }
        }
    }
    let today = day_u16((now_s / 86_400) as i32)?;
    for (reason, n) in &outcome.stats.rejected {
        let mut r = DeltaRow::empty(Kind::Rejected, "");
        r.day = today;
        r.reason = reason.as_str();
        r.requests = *n;
        rows.push(r);
    }
    let watermark_ms = outcome.watermark_ms.unwrap_or(0);
    let dead_letters = outcome.dead_letters.len() as u64;
    let by_time = |source: &'a str, next_offset: i64, start_offset: i64| {
        let mut r = DeltaRow::empty(Kind::Progress, batch_id);
        r.minute = now_s;
        r.source = source;
        r.next_offset = next_offset;
        r.start_offset = start_offset;
        r.requests = dead_letters;
        // Not 0: SummingMergeTree deletes rows whose sums are all zero.
        r.batches = 1;
        r.watermark_ms = watermark_ms;
        r
    };
    if outcome.progress.is_empty() {
        // Every batch leaves a ledger row: its id commits its ids and
        // dead letters.
        rows.push(by_time("", 0, -1));
    }
    for (source, next) in &outcome.progress {
        let start = outcome.starts.get(source).copied().unwrap_or(-1);
        let mut r = DeltaRow::empty(Kind::Progress, batch_id);
        r.source = source;
        r.next_offset = *next;
        r.start_offset = start;
        r.batches = 1;
        r.watermark_ms = watermark_ms;
        rows.push(r);
        rows.push(by_time(source, *next, start));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokentally_aggregate::core::{Aggregator, AggregatorConfig};
    use tokentally_aggregate::sink::Recovered;
    use tokentally_aggregate::source::RawBatch;

    #[tokio::test]
    async fn one_insert_holds_deltas_rejects_and_progress() {
        let mut raw = RawBatch::default();
        // 2026-11-27T00:00:30Z and 2026-11-27T00:01:00Z, same model.
        for (id, ts) in [("a", 1_795_737_630_000i64), ("b", 1_795_737_660_000)] {
            raw.push(
                format!(
                    r#"{{"event_id":"{id}","ts":{ts},"model":"m","provider":"p","app":"x","prompt_tokens":3,"completion_tokens":4}}"#
                )
                .as_bytes(),
            );
        }
        raw.push(b"{not json");
        raw.progress.insert("kafka:t:0".into(), 42);
        raw.progress.insert("kafka:t:1".into(), 7);
        let mut agg = Aggregator::new(AggregatorConfig::default(), &Recovered::default());
        let outcome = agg.process(&raw).await.unwrap();
        let rows = delta_rows("b1", &outcome, 1_795_800_000).unwrap();
        let of = |k: Kind| rows.iter().filter(|r| r.kind == k).collect::<Vec<_>>();

        let daily = of(Kind::Daily);
        assert_eq!(daily.len(), 1);
        assert_eq!(daily[0].day, 20_784); // 2026-11-27
        assert_eq!((daily[0].requests, daily[0].total_tokens), (2, 14));
        assert_eq!((daily[0].model, daily[0].provider), ("m", "p"));
        let minutes: Vec<u32> = of(Kind::Minute).iter().map(|r| r.minute).collect();
        assert_eq!(minutes, vec![1_795_737_600, 1_795_737_660]);
        assert_eq!(of(Kind::AppDaily)[0].app, "x");
        let rejected = of(Kind::Rejected);
        assert_eq!(
            (rejected[0].reason, rejected[0].requests),
            ("invalid_json", 1)
        );
        let progress = of(Kind::Progress);
        assert!(progress.iter().all(|r| r.batch_id == "b1"));
        // By source (minute 0) and by commit time, per source; the
        // commit-time rows carry the batch's dead letters.
        let view: Vec<(u32, &str, i64, u64, u64)> = progress
            .iter()
            .map(|r| (r.minute, r.source, r.next_offset, r.batches, r.requests))
            .collect();
        assert_eq!(
            view,
            vec![
                (0, "kafka:t:0", 42, 1, 0),
                (1_795_800_000, "kafka:t:0", 42, 1, 1),
                (0, "kafka:t:1", 7, 1, 0),
                (1_795_800_000, "kafka:t:1", 7, 1, 1),
            ]
        );
        // Data rows carry no batch id, so merges fold them across batches.
        assert!(
            rows.iter()
                .filter(|r| r.kind != Kind::Progress)
                .all(|r| r.batch_id.is_empty())
        );

        let sets = id_set_rows("b1", &outcome.new_ids, 1_795_800_000);
        let back: Vec<(i64, u128)> = sets
            .iter()
            .flat_map(|r| {
                assert_eq!((r.batch_id, r.at), ("b1", 1_795_800_000));
                r.ids_hi
                    .iter()
                    .zip(&r.ids_lo)
                    .map(|(hi, lo)| (r.bucket, (u128::from(*hi) << 64) | u128::from(*lo)))
            })
            .collect();
        assert_eq!(back, outcome.new_ids);
    }

    #[test]
    fn ids_are_grouped_by_bucket_in_arrival_order() {
        let ids = [(7, 1u128 << 64 | 2), (8, 3), (7, 4), (8, u128::MAX)];
        let sets = id_set_rows("b", &ids, 0);
        let view: Vec<(i64, &[u64], &[u64])> = sets
            .iter()
            .map(|r| (r.bucket, r.ids_hi.as_slice(), r.ids_lo.as_slice()))
            .collect();
        assert_eq!(
            view,
            vec![
                (7, &[1u64, 0][..], &[2u64, 4][..]),
                (8, &[0, u64::MAX][..], &[3, u64::MAX][..]),
            ]
        );
    }

    #[test]
    fn every_roll_up_column_has_a_place_and_a_wrong_schema_is_refused() {
        for rollup in Rollup::ALL {
            let empty = RecordBatch::new_empty(rollup.schema());
            assert!(DeltaColumns::of(rollup, &empty).is_ok(), "{rollup:?}");
        }
        let minute = RecordBatch::new_empty(Rollup::Minute.schema());
        let error = DeltaColumns::of(Rollup::Daily, &minute).err().unwrap();
        let message = error.to_string();
        assert!(
            message.starts_with("a Daily roll-up delta has the columns (minute ")
                && message.contains("not the roll-up's (day Date32, model Utf8, provider Utf8, "),
            "{message}"
        );
    }

    #[test]
    fn a_batch_row_has_an_array_for_every_column_of_a_delta_row() {
        use clickhouse::Row;
        let nested: Vec<String> = DeltaRow::COLUMN_NAMES
            .iter()
            .map(|c| format!("{}.{c}", BatchRow::NESTED))
            .collect();
        assert_eq!(BatchRow::COLUMN_NAMES, nested);
        let row = |model, requests| DeltaRow {
            model,
            requests,
            ..DeltaRow::empty(Kind::Daily, "b")
        };
        let b = BatchRow::of(&[row("m", 1), row("n", 2)]);
        assert_eq!((b.model, b.requests), (vec!["m", "n"], vec![1, 2]));
        assert_eq!(b.kind, vec![Kind::Daily; 2]);
    }

    #[test]
    fn a_batch_without_progress_still_leaves_a_ledger_row() {
        let outcome = BatchOutcome {
            deltas: Default::default(),
            dead_letters: vec![],
            new_ids: vec![],
            dedup_floor: 0,
            stats: Default::default(),
            watermark_ms: Some(5),
            progress: Default::default(),
            starts: Default::default(),
        };
        let rows = delta_rows("b2", &outcome, 9).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (
                rows[0].kind,
                rows[0].batch_id,
                rows[0].minute,
                rows[0].source,
                rows[0].watermark_ms
            ),
            (Kind::Progress, "b2", 9, "", 5)
        );
    }
}
