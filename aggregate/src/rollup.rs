//! The roll-up queries, run by DataFusion over each micro-batch of validated
//! events. Results are additive deltas: summing the deltas of any set of
//! batches gives the roll-up of their union, so late events simply add to
//! the day (or minute) they belong to.

use std::fmt;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::datasource::MemTable;
use datafusion::error::Result;
use datafusion::prelude::{SessionConfig, SessionContext};
use tokentally_schemas::arrow::{EventBatch, NAME_COLUMNS, event_schema};

/// A column of the roll-ups' rows. [`Column::name`] is the one place each
/// name is spelled: the schema, the delta and merge SQL and the readers of
/// delta batches all go through it, so they cannot disagree on a name.
/// The key columns and the summed measures are named as in
/// [`event_schema`], which the delta SQL reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Column {
    Day,
    Minute,
    Model,
    Provider,
    App,
    Requests,
    PromptTokens,
    CompletionTokens,
    TotalTokens,
    CachedTokens,
    ReasoningTokens,
    ErrorRequests,
}

impl Column {
    /// The column's name, in record batches, SQL and stores alike.
    pub const fn name(self) -> &'static str {
        match self {
            Column::Day => "day",
            Column::Minute => "minute",
            Column::Model => "model",
            Column::Provider => "provider",
            Column::App => "app",
            Column::Requests => "requests",
            Column::PromptTokens => "prompt_tokens",
            Column::CompletionTokens => "completion_tokens",
            Column::TotalTokens => "total_tokens",
            Column::CachedTokens => "cached_tokens",
            Column::ReasoningTokens => "reasoning_tokens",
            Column::ErrorRequests => "error_requests",
        }
    }

    /// The column's type in a roll-up's rows (names as strings, not ids).
    fn data_type(self) -> DataType {
        match self {
            Column::Day => DataType::Date32,
            Column::Minute => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            Column::Model | Column::Provider | Column::App => DataType::Utf8,
            Column::Requests
            | Column::PromptTokens
            | Column::CompletionTokens
            | Column::TotalTokens
            | Column::CachedTokens
            | Column::ReasoningTokens
            | Column::ErrorRequests => DataType::UInt64,
        }
    }
}

impl fmt::Display for Column {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `columns`' names, comma-separated, for SQL.
fn list(columns: &[Column]) -> String {
    columns
        .iter()
        .map(|c| c.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One of the roll-ups tokentally maintains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rollup {
    /// Per (`day`, `model`, `provider`).
    Daily,
    /// Per (`minute`, `model`).
    Minute,
    /// Per (`day`, `app`, `model`).
    AppDaily,
}

impl Rollup {
    pub const ALL: [Rollup; 3] = [Rollup::Daily, Rollup::Minute, Rollup::AppDaily];

    /// The table name analysts query.
    pub fn table(self) -> &'static str {
        match self {
            Rollup::Daily => "usage_daily",
            Rollup::Minute => "usage_minute",
            Rollup::AppDaily => "usage_app_daily",
        }
    }

    /// The grouping columns, in order.
    pub fn keys(self) -> &'static [Column] {
        match self {
            Rollup::Daily => &[Column::Day, Column::Model, Column::Provider],
            Rollup::Minute => &[Column::Minute, Column::Model],
            Rollup::AppDaily => &[Column::Day, Column::App, Column::Model],
        }
    }

    /// The summed measures, in order.
    pub fn measures(self) -> &'static [Column] {
        match self {
            Rollup::Daily | Rollup::Minute => &[
                Column::Requests,
                Column::PromptTokens,
                Column::CompletionTokens,
                Column::TotalTokens,
                Column::CachedTokens,
                Column::ReasoningTokens,
                Column::ErrorRequests,
            ],
            Rollup::AppDaily => &[
                Column::Requests,
                Column::PromptTokens,
                Column::CompletionTokens,
                Column::TotalTokens,
                Column::CachedTokens,
                Column::ReasoningTokens,
            ],
        }
    }

    /// The keys, then the measures: the columns of this roll-up's rows,
    /// in order.
    pub fn columns(self) -> impl Iterator<Item = Column> {
        self.keys().iter().chain(self.measures()).copied()
    }

    /// The schema of this roll-up's rows (deltas and totals alike).
    pub fn schema(self) -> SchemaRef {
        let fields: Vec<Field> = self
            .columns()
            .map(|c| Field::new(c.name(), c.data_type(), false))
            .collect();
        Arc::new(Schema::new(fields))
    }

    /// The SQL that computes this roll-up's delta from table `events`
    /// (schema [`event_schema`]); name columns come out as ids.
    pub fn delta_sql(self) -> String {
        let keys = list(self.keys());
        let measures: Vec<String> = self
            .measures()
            .iter()
            .map(|m| match m {
                Column::Requests => format!("CAST(COUNT(*) AS BIGINT UNSIGNED) AS {m}"),
                Column::ErrorRequests => format!("SUM(is_error) AS {m}"),
                m => format!("SUM({m}) AS {m}"),
            })
            .collect();
        format!(
            "SELECT {keys}, {} FROM events GROUP BY {keys}",
            measures.join(", "),
        )
    }

    /// The SQL that folds deltas in table `name` into totals. A measure a
    /// delta lacks (NULL: a store file written before the measure existed)
    /// adds 0.
    pub fn merge_sql(self, name: &str) -> String {
        let keys = list(self.keys());
        let sums: Vec<String> = self
            .measures()
            .iter()
            .map(|m| format!("CAST(COALESCE(SUM({m}), 0) AS BIGINT UNSIGNED) AS {m}"))
            .collect();
        format!(
            "SELECT {keys}, {} FROM {name} GROUP BY {keys}",
            sums.join(", ")
        )
    }
}

/// The deltas of one micro-batch, one set of batches per roll-up.
#[derive(Debug, Clone, Default)]
pub struct RollupDeltas {
    pub daily: Vec<RecordBatch>,
    pub minute: Vec<RecordBatch>,
    pub app_daily: Vec<RecordBatch>,
}

impl RollupDeltas {
    pub fn get(&self, rollup: Rollup) -> &[RecordBatch] {
        match rollup {
            Rollup::Daily => &self.daily,
            Rollup::Minute => &self.minute,
            Rollup::AppDaily => &self.app_daily,
        }
    }

    fn slot(&mut self, rollup: Rollup) -> &mut Vec<RecordBatch> {
        match rollup {
            Rollup::Daily => &mut self.daily,
            Rollup::Minute => &mut self.minute,
            Rollup::AppDaily => &mut self.app_daily,
        }
    }

    pub fn is_empty(&self) -> bool {
        Rollup::ALL
            .iter()
            .all(|r| self.get(*r).iter().all(|b| b.num_rows() == 0))
    }
}

/// Runs the roll-up SQL with DataFusion. One engine is reused for every
/// micro-batch.
pub struct RollupEngine {
    ctx: SessionContext,
    sql: Vec<(Rollup, String)>,
}

impl RollupEngine {
    /// `partitions`: DataFusion's target partitions. 1 is fastest for
    /// micro-batches; the pipeline parallelises across batches instead.
    pub fn new(partitions: usize) -> Self {
        let config = SessionConfig::new()
            .with_target_partitions(partitions.max(1))
            .with_batch_size(64 * 1024);
        RollupEngine {
            ctx: SessionContext::new_with_config(config),
            sql: Rollup::ALL.iter().map(|r| (*r, r.delta_sql())).collect(),
        }
    }

    /// Compute the deltas of one batch of validated events.
    pub async fn deltas(&self, events: EventBatch) -> Result<RollupDeltas> {
        let mut out = RollupDeltas::default();
        if events.rows.iter().all(|rows| rows.num_rows() == 0) {
            return Ok(out);
        }
        let table = MemTable::try_new(event_schema(), vec![events.rows])?;
        self.ctx.deregister_table("events")?;
        self.ctx.register_table("events", Arc::new(table))?;
        for (rollup, sql) in &self.sql {
            let batches = self.ctx.sql(sql).await?.collect().await?;
            let schema = rollup.schema();
            for b in batches {
                if b.num_rows() > 0 {
                    let columns = with_names(&schema, &b, &events.names)?;
                    out.slot(*rollup)
                        .push(RecordBatch::try_new(schema.clone(), columns)?);
                }
            }
        }
        self.ctx.deregister_table("events")?;
        Ok(out)
    }
}

/// The columns of a delta with name ids replaced by the names.
fn with_names(schema: &Schema, batch: &RecordBatch, names: &StringArray) -> Result<Vec<ArrayRef>> {
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        if NAME_COLUMNS.contains(&field.name().as_str()) {
            columns.push(take(names, column.as_ref(), None)?);
        } else {
            columns.push(column.clone());
        }
    }
    Ok(columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, UInt64Array};
    use arrow::datatypes::UInt64Type;
    use tokentally_schemas::arrow::EventBatchBuilder;
    use tokentally_schemas::{Limits, decode};

    fn batch(lines: &[&str]) -> EventBatch {
        let mut b = EventBatchBuilder::default();
        let mut chunk = b.chunk(lines.len());
        for l in lines {
            chunk.append(&decode(l.as_bytes(), &Limits::default()).unwrap());
        }
        let chunk = chunk.finish();
        b.add(chunk, None).unwrap();
        b.finish()
    }

    fn col(b: &RecordBatch, column: Column) -> UInt64Array {
        b.column_by_name(column.name())
            .unwrap()
            .as_primitive::<UInt64Type>()
            .clone()
    }

    #[tokio::test]
    async fn daily_rollup_groups_by_day_model_provider() {
        let engine = RollupEngine::new(1);
        let events = batch(&[
            r#"{"event_id":"1","ts":"2026-11-27T10:00:00Z","model":"a","provider":"x","prompt_tokens":1,"completion_tokens":2,"cached_tokens":1,"reasoning_tokens":2}"#,
            r#"{"event_id":"2","ts":"2026-11-27T23:59:59.999Z","model":"a","provider":"x","prompt_tokens":10,"completion_tokens":20,"status":"error"}"#,
            r#"{"event_id":"3","ts":"2026-11-28T00:00:00Z","model":"a","provider":"x","prompt_tokens":100,"completion_tokens":200}"#,
            r#"{"event_id":"4","ts":"2026-11-27T10:00:00Z","model":"a","provider":"y","prompt_tokens":5,"completion_tokens":5}"#,
        ]);
        let d = engine.deltas(events).await.unwrap();
        let daily = arrow::compute::concat_batches(&Rollup::Daily.schema(), &d.daily).unwrap();
        assert_eq!(daily.num_rows(), 3);
        let sorted =
            arrow::compute::sort_to_indices(&col(&daily, Column::TotalTokens), None, None).unwrap();
        let daily = arrow::compute::take_record_batch(&daily, &sorted).unwrap();
        assert_eq!(col(&daily, Column::TotalTokens).values(), &[10, 33, 300]);
        assert_eq!(col(&daily, Column::Requests).values(), &[1, 2, 1]);
        assert_eq!(col(&daily, Column::ErrorRequests).values(), &[0, 1, 0]);
        assert_eq!(col(&daily, Column::CachedTokens).values(), &[0, 1, 0]);
        assert_eq!(col(&daily, Column::ReasoningTokens).values(), &[0, 2, 0]);
        let minutes: usize = d.minute.iter().map(|b| b.num_rows()).sum();
        assert_eq!(
            minutes, 3,
            "provider is not a minute key: both 10:00 events share a row"
        );
        let apps: usize = d.app_daily.iter().map(|b| b.num_rows()).sum();
        assert_eq!(apps, 2, "app '' for model a on two days");
    }

    /// The SQL text, spelled out: a change to how columns are named or
    /// listed shows here first.
    #[test]
    fn delta_and_merge_sql() {
        assert_eq!(
            Rollup::Daily.delta_sql(),
            "SELECT day, model, provider, CAST(COUNT(*) AS BIGINT UNSIGNED) AS requests, \
             SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens, \
             SUM(total_tokens) AS total_tokens, SUM(cached_tokens) AS cached_tokens, \
             SUM(reasoning_tokens) AS reasoning_tokens, \
             SUM(is_error) AS error_requests FROM events GROUP BY day, model, provider"
        );
        assert_eq!(
            Rollup::AppDaily.merge_sql("d"),
            "SELECT day, app, model, CAST(COALESCE(SUM(requests), 0) AS BIGINT UNSIGNED) AS requests, \
             CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT UNSIGNED) AS prompt_tokens, \
             CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT UNSIGNED) AS completion_tokens, \
             CAST(COALESCE(SUM(total_tokens), 0) AS BIGINT UNSIGNED) AS total_tokens, \
             CAST(COALESCE(SUM(cached_tokens), 0) AS BIGINT UNSIGNED) AS cached_tokens, \
             CAST(COALESCE(SUM(reasoning_tokens), 0) AS BIGINT UNSIGNED) AS reasoning_tokens \
             FROM d GROUP BY day, app, model"
        );
        let minute = Rollup::Minute.schema();
        assert_eq!(
            minute.field(0).data_type(),
            &DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
        );
        assert_eq!(minute.field(1).name(), "model");
        assert_eq!(minute.field(1).data_type(), &DataType::Utf8);
    }

    #[tokio::test]
    async fn empty_batch_gives_no_deltas() {
        let engine = RollupEngine::new(1);
        let d = engine.deltas(batch(&[])).await.unwrap();
        assert!(d.is_empty());
    }
}
