//! Where the rules get their totals: [`TotalsSource`], with one
//! implementation per sink, and the copy of milestones to ClickHouse.

use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Decimal128Type, UInt64Type};
use serde::Deserialize;

use crate::Totals;
use tokentally_sink::clickhouse::ClickHouseError;
use tokentally_sink::embedded::{QueryError, open_query_context};

/// The authoritative daily totals, read afresh on each call.
pub trait TotalsSource {
    /// What is read, for people: `ClickHouse URL` or `store DIR`.
    fn describe(&self) -> String;

    /// The totals of `usage_daily`, and the spend of `cost_daily` and
    /// `cost_app_daily`, now.
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

#[derive(Debug, clickhouse::Row, Deserialize)]
struct SpendRow {
    day: String,
    model: String,
    provider: String,
    cost: i128,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct AppSpendRow {
    day: String,
    app: String,
    cost: i128,
}

/// `usage_daily`, `cost_daily` and `cost_app_daily` of a ClickHouse
/// database.
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
    let sql = format!(
        "SELECT toString(day) AS day, model, provider, assumeNotNull(cost_usd) AS cost \
         FROM {db}.cost_daily WHERE cost_usd IS NOT NULL"
    );
    let rows: Vec<SpendRow> = client
        .query(&sql)
        .fetch_all()
        .await
        .map_err(ClickHouseError::query(&sql))?;
    for r in rows {
        totals.add_spend(&r.day, &r.model, &r.provider, r.cost);
    }
    let sql = format!(
        "SELECT toString(day) AS day, app, sum(assumeNotNull(cost_usd)) AS cost \
         FROM {db}.cost_app_daily WHERE cost_usd IS NOT NULL GROUP BY day, app"
    );
    let rows: Vec<AppSpendRow> = client
        .query(&sql)
        .fetch_all()
        .await
        .map_err(ClickHouseError::query(&sql))?;
    for r in rows {
        totals.add_app_spend(&r.day, &r.app, r.cost);
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
    unit: &'a str,
    app: &'a str,
    budget: &'a str,
    budget_period: &'a str,
    budget_limit: u64,
    budget_percent: u32,
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
            unit: match m.unit {
                crate::Unit::Tokens => "tokens",
                crate::Unit::UsdMicros => "usd_micros",
            },
            app: m.app.as_deref().unwrap_or(""),
            budget: m.budget.as_ref().map_or("", |b| b.name.as_str()),
            budget_period: m.budget.as_ref().map_or("", |b| b.period.as_str()),
            budget_limit: m.budget.as_ref().map_or(0, |b| b.limit),
            budget_percent: m.budget.as_ref().map_or(0, |b| b.percent),
        };
        insert
            .write(&row)
            .await
            .map_err(ClickHouseError::query(&table))?;
    }
    insert.end().await.map_err(ClickHouseError::query(&table))
}

/// `usage_daily`, `cost_daily` and `cost_app_daily` of an embedded store.
async fn from_store(dir: &Path) -> Result<Totals, QueryError> {
    let ctx = open_query_context(dir).await?;
    let mut totals = Totals::default();
    let text = |b: &arrow::array::RecordBatch, i: usize| {
        arrow::compute::cast(b.column(i), &arrow::datatypes::DataType::Utf8)
            .map_err(datafusion::error::DataFusionError::from)
    };
    let spend = ctx
        .sql(
            "SELECT CAST(day AS VARCHAR) AS day, model, provider, cost_usd FROM cost_daily \
             WHERE cost_usd IS NOT NULL",
        )
        .await?
        .collect()
        .await?;
    for b in &spend {
        let (day, model, provider) = (text(b, 0)?, text(b, 1)?, text(b, 2)?);
        let cost = b.column(3).as_primitive::<Decimal128Type>();
        for i in 0..b.num_rows() {
            totals.add_spend(
                day.as_string::<i32>().value(i),
                model.as_string::<i32>().value(i),
                provider.as_string::<i32>().value(i),
                cost.value(i),
            );
        }
    }
    let apps = ctx
        .sql(
            "SELECT CAST(day AS VARCHAR) AS day, app, SUM(cost_usd) AS cost FROM cost_app_daily \
             WHERE cost_usd IS NOT NULL GROUP BY day, app",
        )
        .await?
        .collect()
        .await?;
    for b in &apps {
        let (day, app) = (text(b, 0)?, text(b, 1)?);
        let cost = b.column(2).as_primitive::<Decimal128Type>();
        for i in 0..b.num_rows() {
            totals.add_app_spend(
                day.as_string::<i32>().value(i),
                app.as_string::<i32>().value(i),
                cost.value(i),
            );
        }
    }
    let batches = ctx
        .sql("SELECT CAST(day AS VARCHAR) AS day, model, provider, total_tokens FROM usage_daily")
        .await?
        .collect()
        .await?;
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
