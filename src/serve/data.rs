//! What the rankings page shows, read from either sink: the SQL of each
//! endpoint, written once for both dialects (like the spend views in
//! `sink/src/cost.rs`), and the shaping of its rows into the JSON the page
//! and scripts read. docs/SERVE.md lists each endpoint with its SQL.
//!
//! Only dates (parsed into [`NaiveDate`]) and counts ever go into SQL;
//! model and app names only come out of it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{Duration, NaiveDate};
use serde::{Deserialize, Serialize};
use tokentally_alerts::text::headline;
use tokentally_alerts::{AlertState, BudgetHit, Kind, Milestone, Unit};
use tokentally_sink::clickhouse::ClickHouseError;
use tokentally_sink::embedded::{QueryError, open_query_context};

/// Where the page's numbers come from.
#[derive(Clone)]
pub enum Backend {
    /// An embedded store, and the alert state of `tokentally demo` or
    /// `tokentally alerts` (a directory, maybe absent).
    Store { dir: PathBuf, alerts: PathBuf },
    /// A ClickHouse database (after `tokentally migrate`).
    ClickHouse {
        client: Box<clickhouse::Client>,
        database: String,
        /// Seconds ClickHouse may spend on one query (`max_execution_time`).
        timeout_secs: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Store(#[from] QueryError),
    #[error(transparent)]
    ClickHouse(#[from] ClickHouseError),
    #[error("reading the store's query result: {0}")]
    Decode(String),
    #[error("reading the alert state: {0}")]
    Alerts(String),
}

impl From<datafusion::error::DataFusionError> for DataError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        DataError::Store(QueryError::from(e))
    }
}

/// The few ways the two dialects differ in the page's SQL.
#[derive(Clone, Copy)]
enum Dialect<'a> {
    DataFusion,
    ClickHouse(&'a str),
}

impl Dialect<'_> {
    fn text(self, column: &str) -> String {
        match self {
            Dialect::DataFusion => format!("CAST({column} AS VARCHAR)"),
            Dialect::ClickHouse(_) => format!("toString({column})"),
        }
    }

    fn table(self, name: &str) -> String {
        match self {
            Dialect::DataFusion => name.to_string(),
            Dialect::ClickHouse(db) => format!("{db}.{name}"),
        }
    }

    fn date(self, day: NaiveDate) -> String {
        match self {
            Dialect::DataFusion => format!("DATE '{day}'"),
            Dialect::ClickHouse(_) => format!("toDate('{day}')"),
        }
    }

    fn days(self, from: NaiveDate, to: NaiveDate) -> String {
        format!("day >= {} AND day <= {}", self.date(from), self.date(to))
    }
}

// Days come out as `date` (text): in ClickHouse an alias named `day`
// would stand for the column in WHERE, and compare text with dates.

/// The newest day with tokens.
fn latest_sql(d: Dialect<'_>) -> String {
    format!(
        "SELECT {} AS date FROM {} ORDER BY day DESC LIMIT 1",
        d.text("day"),
        d.table("usage_daily")
    )
}

/// Tokens per day and model (all providers), over a range of days.
fn series_sql(d: Dialect<'_>, from: NaiveDate, to: NaiveDate) -> String {
    format!(
        "SELECT {} AS date, model, SUM(total_tokens) AS tokens FROM {} WHERE {} \
         GROUP BY day, model",
        d.text("day"),
        d.table("usage_daily"),
        d.days(from, to)
    )
}

/// Each model and provider on a day and the day before, with spend.
fn leaderboard_sql(d: Dialect<'_>, day: NaiveDate) -> String {
    format!(
        "SELECT {} AS date, model, provider, requests, total_tokens, {} AS cost_usd FROM {} \
         WHERE {}",
        d.text("day"),
        d.text("cost_usd"),
        d.table("cost_daily"),
        d.days(day - Duration::days(1), day)
    )
}

/// Each app and model on a day.
fn apps_sql(d: Dialect<'_>, day: NaiveDate) -> String {
    format!(
        "SELECT app, model, requests, total_tokens FROM {} WHERE {}",
        d.table("usage_app_daily"),
        d.days(day, day)
    )
}

/// The newest milestones recorded in ClickHouse (`tokentally alerts`
/// with `--clickhouse` copies them there).
fn milestones_sql(db: &str, limit: usize) -> String {
    format!(
        "SELECT id, type AS kind, scope, model, provider, day, threshold, value, \
         previous_record, previous_holder, toUnixTimestamp(detected_at) AS detected_at, unit, \
         app, budget, budget_period, budget_limit, budget_percent FROM {db}.milestones \
         ORDER BY detected_at DESC, id LIMIT {limit}"
    )
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct DayRow {
    date: String,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct SeriesRow {
    date: String,
    model: String,
    tokens: u64,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct LeaderRow {
    date: String,
    model: String,
    provider: String,
    requests: u64,
    total_tokens: u64,
    #[serde(default)]
    cost_usd: Option<String>,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct AppRow {
    app: String,
    model: String,
    requests: u64,
    total_tokens: u64,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct MilestoneRow {
    id: String,
    kind: String,
    scope: String,
    model: String,
    provider: String,
    day: String,
    threshold: u64,
    value: u64,
    previous_record: u64,
    previous_holder: String,
    detected_at: u32,
    unit: String,
    app: String,
    budget: String,
    budget_period: String,
    budget_limit: u64,
    budget_percent: u32,
}

impl Backend {
    fn dialect(&self) -> Dialect<'_> {
        match self {
            Backend::Store { .. } => Dialect::DataFusion,
            Backend::ClickHouse { database, .. } => Dialect::ClickHouse(database),
        }
    }

    /// The rows of `sql`: ClickHouse's RowBinary, or DataFusion's batches
    /// as JSON (small results: a page's worth of rows).
    async fn rows<T: Rows>(&self, sql: &str) -> Result<Vec<T>, DataError> {
        match self {
            Backend::Store { dir, .. } => {
                let json = store_json(dir, sql).await?;
                if json.is_empty() {
                    return Ok(Vec::new());
                }
                T::from_json(&json).map_err(|e| DataError::Decode(e.to_string()))
            }
            Backend::ClickHouse {
                client,
                timeout_secs,
                ..
            } => {
                let query = client
                    .query(sql)
                    .with_setting("max_execution_time", timeout_secs.to_string());
                T::fetch(query)
                    .await
                    .map_err(|e| ClickHouseError::query(sql)(e).into())
            }
        }
    }

    /// The newest day with tokens, if any.
    pub async fn latest_day(&self) -> Result<Option<NaiveDate>, DataError> {
        let rows: Vec<DayRow> = self.rows(&latest_sql(self.dialect())).await?;
        Ok(rows.first().and_then(|r| r.date.parse().ok()))
    }

    /// Tokens per day of the top `top` models over `from..=to`.
    pub async fn series(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        top: usize,
    ) -> Result<Series, DataError> {
        let rows: Vec<SeriesRow> = self.rows(&series_sql(self.dialect(), from, to)).await?;
        Ok(Series::shape(from, to, top, rows))
    }

    /// The ranked models and providers of `day`.
    pub async fn leaderboard(&self, day: NaiveDate) -> Result<Leaderboard, DataError> {
        let rows: Vec<LeaderRow> = self.rows(&leaderboard_sql(self.dialect(), day)).await?;
        Ok(Leaderboard::shape(day, rows))
    }

    /// The ranked apps of `day`.
    pub async fn apps(&self, day: NaiveDate) -> Result<Apps, DataError> {
        let rows: Vec<AppRow> = self.rows(&apps_sql(self.dialect(), day)).await?;
        Ok(Apps::shape(day, rows))
    }

    /// The newest `limit` milestones, newest first.
    pub async fn milestones(&self, limit: usize) -> Result<Vec<FeedItem>, DataError> {
        let mut all: Vec<Milestone> = match self {
            Backend::Store { alerts, .. } => {
                let state =
                    AlertState::load(alerts).map_err(|e| DataError::Alerts(e.to_string()))?;
                state
                    .map(|s| s.milestones.into_values().map(|r| r.milestone).collect())
                    .unwrap_or_default()
            }
            Backend::ClickHouse { database, .. } => {
                let rows: Vec<MilestoneRow> = self.rows(&milestones_sql(database, limit)).await?;
                rows.into_iter()
                    .filter_map(MilestoneRow::milestone)
                    .collect()
            }
        };
        all.retain(|m| m.kind != Kind::Test);
        all.sort_by(|a, b| (&b.detected_at, &a.id).cmp(&(&a.detected_at, &b.id)));
        all.truncate(limit);
        Ok(all.iter().map(FeedItem::from).collect())
    }
}

/// A query's result as a JSON array (empty: no rows).
async fn store_json(dir: &Path, sql: &str) -> Result<Vec<u8>, DataError> {
    let ctx = open_query_context(dir).await?;
    let batches = ctx.sql(sql).await?.collect().await?;
    let mut w = arrow::json::ArrayWriter::new(Vec::new());
    let refs: Vec<_> = batches.iter().collect();
    w.write_batches(&refs)
        .and_then(|()| w.finish())
        .map_err(|e| DataError::Decode(e.to_string()))?;
    Ok(w.into_inner())
}

/// A row type read from either sink. (A generic bound of both serde's
/// `DeserializeOwned` and clickhouse's `RowRead` is ambiguous to the
/// compiler, so each row type states both readers here.)
trait Rows: Sized {
    fn from_json(json: &[u8]) -> serde_json::Result<Vec<Self>>;
    fn fetch(
        query: clickhouse::query::Query,
    ) -> impl Future<Output = clickhouse::error::Result<Vec<Self>>> + Send;
}

macro_rules! rows {
    ($($row:ty),*) => {$(
        impl Rows for $row {
            fn from_json(json: &[u8]) -> serde_json::Result<Vec<Self>> {
                serde_json::from_slice(json)
            }
            fn fetch(query: clickhouse::query::Query) -> impl Future<Output = clickhouse::error::Result<Vec<Self>>> + Send {
                query.fetch_all::<$row>()
            }
        }
    )*};
}

rows!(DayRow, SeriesRow, LeaderRow, AppRow, MilestoneRow);

impl MilestoneRow {
    fn milestone(self) -> Option<Milestone> {
        let kind = match self.kind.as_str() {
            "threshold" => Kind::Threshold,
            "all_time" => Kind::AllTime,
            "first" => Kind::First,
            "record" => Kind::Record,
            "budget" => Kind::Budget,
            _ => return None,
        };
        let some = |s: String| (!s.is_empty()).then_some(s);
        let detected_at = chrono::DateTime::from_timestamp(i64::from(self.detected_at), 0)?
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let budget = some(self.budget).map(|name| BudgetHit {
            name,
            period: self.budget_period,
            limit: self.budget_limit,
            percent: self.budget_percent,
        });
        Some(Milestone {
            id: self.id,
            kind,
            scope: self.scope,
            model: some(self.model),
            provider: some(self.provider),
            day: some(self.day),
            threshold: (self.threshold > 0).then_some(self.threshold),
            value: self.value,
            previous_record: (kind == Kind::Record).then_some(self.previous_record),
            previous_holder: some(self.previous_holder),
            detected_at,
            unit: if self.unit == "usd_micros" {
                Unit::UsdMicros
            } else {
                Unit::Tokens
            },
            app: some(self.app),
            budget,
        })
    }
}

/// `/api/series`: one value per day for each of the top models, and the
/// rest summed as `others`.
#[derive(Debug, Serialize, PartialEq)]
pub struct Series {
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Every day of the range, oldest first; each `tokens` array has one
    /// value per day.
    pub days: Vec<NaiveDate>,
    /// The top models by tokens over the range, largest first.
    pub models: Vec<ModelSeries>,
    /// Every other model, summed.
    pub others: Vec<u64>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ModelSeries {
    pub model: String,
    pub total: u64,
    pub tokens: Vec<u64>,
}

impl Series {
    fn shape(from: NaiveDate, to: NaiveDate, top: usize, rows: Vec<SeriesRow>) -> Series {
        let days: Vec<NaiveDate> = from.iter_days().take_while(|d| *d <= to).collect();
        let index = |day: &str| {
            let day: NaiveDate = day.parse().ok()?;
            usize::try_from((day - from).num_days())
                .ok()
                .filter(|i| *i < days.len())
        };
        let mut by_model: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for r in rows {
            let Some(i) = index(&r.date) else { continue };
            by_model
                .entry(r.model)
                .or_insert_with(|| vec![0; days.len()])[i] += r.tokens;
        }
        let mut models: Vec<ModelSeries> = by_model
            .into_iter()
            .map(|(model, tokens)| ModelSeries {
                model,
                total: tokens.iter().sum(),
                tokens,
            })
            .collect();
        models.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.model.cmp(&b.model)));
        let mut others = vec![0; days.len()];
        for m in models.drain(top.min(models.len())..) {
            for (o, t) in others.iter_mut().zip(m.tokens) {
                *o += t;
            }
        }
        Series {
            from,
            to,
            days,
            models,
            others,
        }
    }
}

/// `/api/leaderboard`: a day's models and providers, most tokens first.
#[derive(Debug, Serialize, PartialEq)]
pub struct Leaderboard {
    pub day: NaiveDate,
    pub total_tokens: u64,
    pub total_requests: u64,
    pub rows: Vec<Ranked>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Ranked {
    pub rank: usize,
    pub model: String,
    pub provider: String,
    pub tokens: u64,
    pub requests: u64,
    /// Of the day's tokens, 0–1.
    pub share: f64,
    /// The same model and provider the day before (null: none).
    pub previous_tokens: Option<u64>,
    /// `tokens / previous_tokens - 1` (null: no tokens the day before).
    pub change: Option<f64>,
    /// Exact, as `cost_daily` has it (null: no price).
    pub cost_usd: Option<String>,
}

impl Leaderboard {
    fn shape(day: NaiveDate, rows: Vec<LeaderRow>) -> Leaderboard {
        let day_text = day.to_string();
        let mut previous: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut today = Vec::new();
        for r in rows {
            if r.date == day_text {
                today.push(r);
            } else {
                *previous.entry((r.model, r.provider)).or_default() += r.total_tokens;
            }
        }
        today.sort_by(|a, b| {
            b.total_tokens
                .cmp(&a.total_tokens)
                .then_with(|| (&a.model, &a.provider).cmp(&(&b.model, &b.provider)))
        });
        let total_tokens: u64 = today.iter().map(|r| r.total_tokens).sum();
        let total_requests = today.iter().map(|r| r.requests).sum();
        let rows = today
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let previous_tokens = previous
                    .get(&(r.model.clone(), r.provider.clone()))
                    .copied();
                Ranked {
                    rank: i + 1,
                    share: ratio(r.total_tokens, total_tokens),
                    change: previous_tokens
                        .filter(|p| *p > 0)
                        .map(|p| r.total_tokens as f64 / p as f64 - 1.0),
                    previous_tokens,
                    tokens: r.total_tokens,
                    requests: r.requests,
                    cost_usd: r.cost_usd,
                    model: r.model,
                    provider: r.provider,
                }
            })
            .collect();
        Leaderboard {
            day,
            total_tokens,
            total_requests,
            rows,
        }
    }
}

/// `/api/apps`: a day's apps, most tokens first.
#[derive(Debug, Serialize, PartialEq)]
pub struct Apps {
    pub day: NaiveDate,
    pub rows: Vec<RankedApp>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct RankedApp {
    pub rank: usize,
    pub app: String,
    pub tokens: u64,
    pub requests: u64,
    pub share: f64,
    /// The app's models that day.
    pub models: usize,
    /// The model with the most of the app's tokens.
    pub top_model: String,
}

impl Apps {
    fn shape(day: NaiveDate, rows: Vec<AppRow>) -> Apps {
        let mut by_app: BTreeMap<String, Vec<AppRow>> = BTreeMap::new();
        for r in rows {
            by_app.entry(r.app.clone()).or_default().push(r);
        }
        let total: u64 = by_app.values().flatten().map(|r| r.total_tokens).sum();
        let mut apps: Vec<RankedApp> = by_app
            .into_iter()
            .map(|(app, mut rows)| {
                rows.sort_by(|a, b| {
                    b.total_tokens
                        .cmp(&a.total_tokens)
                        .then_with(|| a.model.cmp(&b.model))
                });
                let tokens = rows.iter().map(|r| r.total_tokens).sum();
                RankedApp {
                    rank: 0,
                    share: ratio(tokens, total),
                    tokens,
                    requests: rows.iter().map(|r| r.requests).sum(),
                    models: rows.len(),
                    top_model: rows.swap_remove(0).model,
                    app,
                }
            })
            .collect();
        apps.sort_by(|a, b| b.tokens.cmp(&a.tokens).then_with(|| a.app.cmp(&b.app)));
        for (i, a) in apps.iter_mut().enumerate() {
            a.rank = i + 1;
        }
        Apps { day, rows: apps }
    }
}

/// `/api/milestones`: one line of the feed.
#[derive(Debug, Serialize, PartialEq)]
pub struct FeedItem {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub day: Option<String>,
    pub model: Option<String>,
    pub app: Option<String>,
    pub detected_at: String,
    /// What happened, in a sentence ([`headline`]).
    pub headline: String,
}

impl From<&Milestone> for FeedItem {
    fn from(m: &Milestone) -> Self {
        FeedItem {
            id: m.id.clone(),
            kind: m.kind.as_str(),
            day: m.day.clone(),
            model: m.model.clone(),
            app: m.app.clone(),
            detected_at: m.detected_at.clone(),
            headline: headline(m),
        }
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn series_row(d: &str, model: &str, tokens: u64) -> SeriesRow {
        SeriesRow {
            date: d.into(),
            model: model.into(),
            tokens,
        }
    }

    #[test]
    fn a_series_has_every_day_and_sums_the_rest_as_others() {
        let rows = vec![
            series_row("2026-11-01", "a", 10),
            series_row("2026-11-03", "a", 30),
            series_row("2026-11-02", "b", 50),
            series_row("2026-11-01", "c", 1),
            series_row("2026-11-03", "d", 2),
        ];
        let s = Series::shape(day("2026-11-01"), day("2026-11-03"), 2, rows);
        assert_eq!(s.days.len(), 3);
        let names: Vec<&str> = s.models.iter().map(|m| m.model.as_str()).collect();
        assert_eq!(names, ["b", "a"]);
        assert_eq!(s.models[1].tokens, [10, 0, 30]);
        assert_eq!(s.models[0].tokens, [0, 50, 0]);
        assert_eq!(s.others, [1, 0, 2]);
    }

    #[test]
    fn a_leaderboard_ranks_by_tokens_with_share_and_change() {
        let row = |d: &str, model: &str, tokens: u64, cost: Option<&str>| LeaderRow {
            date: d.into(),
            model: model.into(),
            provider: "p".into(),
            requests: tokens / 10,
            total_tokens: tokens,
            cost_usd: cost.map(str::to_string),
        };
        let rows = vec![
            row("2026-11-02", "a", 300, Some("0.000300000000")),
            row("2026-11-02", "b", 100, None),
            row("2026-11-01", "a", 200, None),
        ];
        let l = Leaderboard::shape(day("2026-11-02"), rows);
        assert_eq!((l.total_tokens, l.total_requests), (400, 40));
        assert_eq!(l.rows[0].model, "a");
        assert_eq!(l.rows[0].share, 0.75);
        assert_eq!(l.rows[0].change, Some(0.5));
        assert_eq!(l.rows[0].cost_usd.as_deref(), Some("0.000300000000"));
        assert_eq!((l.rows[1].rank, l.rows[1].change), (2, None));
    }

    #[test]
    fn apps_rank_by_tokens_and_name_their_top_model() {
        let row = |app: &str, model: &str, tokens: u64| AppRow {
            app: app.into(),
            model: model.into(),
            requests: 1,
            total_tokens: tokens,
        };
        let a = Apps::shape(
            day("2026-11-02"),
            vec![row("x", "m1", 5), row("y", "m1", 1), row("x", "m2", 9)],
        );
        assert_eq!(a.rows[0].app, "x");
        assert_eq!((a.rows[0].tokens, a.rows[0].models), (14, 2));
        assert_eq!(a.rows[0].top_model, "m2");
        assert_eq!((a.rows[1].rank, a.rows[1].requests), (2, 1));
    }

    #[test]
    fn only_dates_reach_the_sql() {
        let sql = leaderboard_sql(Dialect::ClickHouse("db"), day("2026-03-01"));
        assert!(sql.contains("day >= toDate('2026-02-28') AND day <= toDate('2026-03-01')"));
        assert!(sql.contains("FROM db.cost_daily"));
        let sql = series_sql(Dialect::DataFusion, day("2026-01-01"), day("2026-01-30"));
        assert!(sql.contains("day >= DATE '2026-01-01' AND day <= DATE '2026-01-30'"));
    }
}
