//! Where the rules get their totals: [`TotalsSource`], with one
//! implementation per sink, and the copy of milestones to ClickHouse.

use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use arrow::datatypes::UInt64Type;
use serde::Deserialize;

use crate::Totals;
use tokentally_sink::clickhouse::ClickHouseError;
use tokentally_sink::embedded::{QueryError, open_query_context};

/// The authoritative daily totals, read afresh on each call.
pub trait TotalsSource {
    /// What is read, for people: `ClickHouse URL` or `store DIR`.
    fn describe(&self) -> String;

    /// The totals of `usage_daily` now.
    fn read(&self) -> impl Future<Output = Result<Totals, TotalsError>> + Send;
}

/// Reading totals failed (server down, store not created yet).
#[derive(Debug, thiserror::Error)]
pub enum TotalsError {
    #[error(transparent)]
    ClickHouse(#[from] ClickHouseError),
    #[error(transparent)]
    Store(#[from] QueryError),
}

/// The totals of an embedded store.
#[derive(Debug, Clone)]
pub struct StoreTotals {
    pub dir: PathBuf,
}

impl TotalsSource for StoreTotals {
    fn describe(&self) -> String {
        format!("store {}", self.dir.display())
    }

    async fn read(&self) -> Result<Totals, TotalsError> {
        Ok(from_store(&self.dir).await?)
    }
}

/// The totals of a ClickHouse database.
#[derive(Clone)]
pub struct ClickHouseTotals {
    pub client: clickhouse::Client,
    pub database: String,
    /// The server, for [`TotalsSource::describe`].
    pub url: String,
}

impl TotalsSource for ClickHouseTotals {
    fn describe(&self) -> String {
        format!("ClickHouse {}", self.url)
    }

    async fn read(&self) -> Result<Totals, TotalsError> {
        Ok(from_clickhouse(&self.client, &self.database).await?)
    }
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct DailyRow {
    day: String,
    model: String,
    provider: String,
    total_tokens: u64,
}

/// `usage_daily` of a ClickHouse database.
async fn from_clickhouse(client: &clickhouse::Client, db: &str) -> Result<Totals, ClickHouseError> {
    let sql =
        format!("SELECT toString(day) AS day, model, provider, total_tokens FROM {db}.usage_daily");
    let rows: Vec<DailyRow> = client
        .query(&sql)
        .fetch_all()
        .await
        .map_err(ClickHouseError::query(&sql))?;
    let mut totals = Totals::default();
    for r in rows {
        totals.add(&r.day, &r.model, &r.provider, r.total_tokens);
    }
    Ok(totals)
}

#[derive(Debug, clickhouse::Row, serde::Serialize)]
struct MilestoneRow<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    scope: &'a str,
    model: &'a str,
    provider: &'a str,
    day: &'a str,
    threshold: u64,
    value: u64,
    previous_record: u64,
    previous_holder: &'a str,
    detected_at: u32,
}

/// Copy milestones to ClickHouse's `milestones` table (for dashboards and
/// analysts). Repeats are harmless: the table keeps one row per id.
pub async fn mirror_to_clickhouse(
    client: &clickhouse::Client,
    db: &str,
    milestones: &[crate::Milestone],
) -> Result<(), ClickHouseError> {
    if milestones.is_empty() {
        return Ok(());
    }
    let table = format!("{db}.milestones_log");
    let client = client.clone().with_database(db);
    let mut insert = client
        .insert::<MilestoneRow<'_>>("milestones_log")
        .await
        .map_err(ClickHouseError::query(&table))?;
    for m in milestones {
        let detected_at = chrono::DateTime::parse_from_rfc3339(&m.detected_at)
            .map(|t| t.timestamp().clamp(0, i64::from(u32::MAX)) as u32)
            .unwrap_or(0);
        let row = MilestoneRow {
            id: &m.id,
            kind: m.kind.as_str(),
            scope: &m.scope,
            model: m.model.as_deref().unwrap_or(""),
            provider: m.provider.as_deref().unwrap_or(""),
            day: m.day.as_deref().unwrap_or(""),
            threshold: m.threshold.unwrap_or(0),
            value: m.value,
            previous_record: m.previous_record.unwrap_or(0),
            previous_holder: m.previous_holder.as_deref().unwrap_or(""),
            detected_at,
        };
        insert
            .write(&row)
            .await
            .map_err(ClickHouseError::query(&table))?;
    }
    insert.end().await.map_err(ClickHouseError::query(&table))
}

/// `usage_daily` of an embedded store.
async fn from_store(dir: &Path) -> Result<Totals, QueryError> {
    let ctx = open_query_context(dir).await?;
    let batches = ctx
        .sql("SELECT CAST(day AS VARCHAR) AS day, model, provider, total_tokens FROM usage_daily")
        .await?
        .collect()
        .await?;
    let mut totals = Totals::default();
    for b in batches {
        let text = |i: usize| {
            arrow::compute::cast(b.column(i), &arrow::datatypes::DataType::Utf8)
                .map_err(datafusion::error::DataFusionError::from)
        };
        let (day, model, provider) = (text(0)?, text(1)?, text(2)?);
        let (day, model, provider) = (
            day.as_string::<i32>(),
            model.as_string::<i32>(),
            provider.as_string::<i32>(),
        );
        let tokens = b.column(3).as_primitive::<UInt64Type>();
        for i in 0..b.num_rows() {
            if tokens.is_valid(i) {
                totals.add(
                    day.value(i),
                    model.value(i),
                    provider.value(i),
                    tokens.value(i),
                );
            }
        }
    }
    Ok(totals)
}
