//! The roll-up queries, run by DataFusion over each micro-batch of validated
//! events. Results are additive deltas: summing the deltas of any set of
//! batches gives the roll-up of their union, so late events simply add to
//! the day (or minute) they belong to.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::datasource::MemTable;
use datafusion::error::Result;
use datafusion::prelude::{SessionConfig, SessionContext};
use tokentally_schemas::arrow::{EventBatch, NAME_COLUMNS, event_schema};

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
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            Rollup::Daily => &["day", "model", "provider"],
            Rollup::Minute => &["minute", "model"],
            Rollup::AppDaily => &["day", "app", "model"],
        }
    }

    /// The summed measures, in order.
    pub fn measures(self) -> &'static [&'static str] {
        match self {
            Rollup::Daily | Rollup::Minute => &[
                "requests",
                "prompt_tokens",
                "completion_tokens",
                "total_tokens",
                "cached_tokens",
                "error_requests",
            ],
            Rollup::AppDaily => &[
                "requests",
                "prompt_tokens",
                "completion_tokens",
                "total_tokens",
            ],
        }
    }

    /// The schema of this roll-up's rows (deltas and totals alike).
    pub fn schema(self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .keys()
            .iter()
            .map(|k| {
                let ty = match *k {
                    "day" => DataType::Date32,
                    "minute" => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                    _ => DataType::Utf8,
                };
                Field::new(*k, ty, false)
            })
            .collect();
        fields.extend(
            self.measures()
                .iter()
                .map(|m| Field::new(*m, DataType::UInt64, false)),
        );
        Arc::new(Schema::new(fields))
    }

    /// The SQL that computes this roll-up's delta from table `events`
    /// (schema [`event_schema`]); name columns come out as ids.
    pub fn delta_sql(self) -> String {
        let keys = self.keys().join(", ");
        let measures: Vec<String> = self
            .measures()
            .iter()
            .map(|m| match *m {
                "requests" => "CAST(COUNT(*) AS BIGINT UNSIGNED) AS requests".to_string(),
                "error_requests" => "SUM(is_error) AS error_requests".to_string(),
                m => format!("SUM({m}) AS {m}"),
            })
            .collect();
        format!(
            "SELECT {keys}, {} FROM events GROUP BY {keys}",
            measures.join(", "),
        )
    }

    /// The SQL that folds deltas in table `name` into totals.
    pub fn merge_sql(self, name: &str) -> String {
        let keys = self.keys().join(", ");
        let sums: Vec<String> = self
            .measures()
            .iter()
            .map(|m| format!("CAST(SUM({m}) AS BIGINT UNSIGNED) AS {m}"))
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

    fn col(b: &RecordBatch, name: &str) -> UInt64Array {
        b.column_by_name(name)
            .unwrap()
            .as_primitive::<UInt64Type>()
            .clone()
    }

    #[tokio::test]
    async fn daily_rollup_groups_by_day_model_provider() {
        let engine = RollupEngine::new(1);
        let events = batch(&[
            r#"{"event_id":"1","ts":"2026-11-27T10:00:00Z","model":"a","provider":"x","prompt_tokens":1,"completion_tokens":2,"cached_tokens":1}"#,
            r#"{"event_id":"2","ts":"2026-11-27T23:59:59.999Z","model":"a","provider":"x","prompt_tokens":10,"completion_tokens":20,"status":"error"}"#,
            r#"{"event_id":"3","ts":"2026-11-28T00:00:00Z","model":"a","provider":"x","prompt_tokens":100,"completion_tokens":200}"#,
            r#"{"event_id":"4","ts":"2026-11-27T10:00:00Z","model":"a","provider":"y","prompt_tokens":5,"completion_tokens":5}"#,
        ]);
        let d = engine.deltas(events).await.unwrap();
        let daily = arrow::compute::concat_batches(&Rollup::Daily.schema(), &d.daily).unwrap();
        assert_eq!(daily.num_rows(), 3);
        let sorted =
            arrow::compute::sort_to_indices(&col(&daily, "total_tokens"), None, None).unwrap();
        let daily = arrow::compute::take_record_batch(&daily, &sorted).unwrap();
        assert_eq!(col(&daily, "total_tokens").values(), &[10, 33, 300]);
        assert_eq!(col(&daily, "requests").values(), &[1, 2, 1]);
        assert_eq!(col(&daily, "error_requests").values(), &[0, 1, 0]);
        assert_eq!(col(&daily, "cached_tokens").values(), &[0, 1, 0]);
        let minutes: usize = d.minute.iter().map(|b| b.num_rows()).sum();
        assert_eq!(
            minutes, 3,
            "provider is not a minute key: both 10:00 events share a row"
        );
        let apps: usize = d.app_daily.iter().map(|b| b.num_rows()).sum();
        assert_eq!(apps, 2, "app '' for model a on two days");
    }

    #[tokio::test]
    async fn empty_batch_gives_no_deltas() {
        let engine = RollupEngine::new(1);
        let d = engine.deltas(batch(&[])).await.unwrap();
        assert!(d.is_empty());
    }
}
