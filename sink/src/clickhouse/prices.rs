//! Price tables in ClickHouse: `tokentally prices load` appends a version to
//! `model_prices` in one insert (one part: whole or not at all), and the
//! view `prices` keeps the last load of each `valid_from`.

use chrono::NaiveDate;
use clickhouse::Client;
use tokentally_schemas::prices::Price;

use super::ClickHouseError;
use super::schema::{applied_versions, latest_version};
use crate::embedded::prices::PriceVersion;

/// One row of `model_prices`.
#[derive(Debug, Clone, clickhouse::Row, serde::Serialize, serde::Deserialize)]
struct PriceRow {
    /// Date: days since 1970-01-01.
    valid_from: u16,
    loaded_ns: u64,
    model: String,
    provider: String,
    alias_of: String,
    input: i128,
    output: i128,
    cache_read: i128,
    reasoning: i128,
    /// DateTime: seconds since the epoch.
    loaded_at: u32,
}

/// The version of the schema that holds prices.
const PRICES_SCHEMA: u32 = 6;

async fn check_schema(client: &Client, db: &str) -> Result<(), ClickHouseError> {
    let found = applied_versions(client, db)
        .await?
        .into_iter()
        .max()
        .unwrap_or(0);
    if found < PRICES_SCHEMA {
        return Err(ClickHouseError::Schema {
            database: db.to_string(),
            found,
            needed: latest_version(),
        });
    }
    Ok(())
}

fn days(date: NaiveDate) -> Result<u16, ClickHouseError> {
    u16::try_from(date.to_epoch_days())
        .map_err(|_| ClickHouseError::Config(format!("{date} is outside ClickHouse's Date range")))
}

/// Store `prices` as the version valid from `valid_from` (a later load
/// with the same date replaces it in the view `prices`).
pub async fn save(
    client: &Client,
    db: &str,
    valid_from: NaiveDate,
    prices: &[Price],
) -> Result<(), ClickHouseError> {
    check_schema(client, db).await?;
    let now = chrono::Utc::now();
    let loaded_ns = now.timestamp_nanos_opt().unwrap_or_default() as u64;
    let day = days(valid_from)?;
    let context = || format!("inserting the price table into {db}.model_prices");
    let mut insert = client
        .clone()
        .with_database(db)
        .insert::<PriceRow>("model_prices")
        .await
        .map_err(ClickHouseError::query(&context()))?
        .with_setting("max_insert_block_size", "100000000");
    for p in prices {
        let row = PriceRow {
            valid_from: day,
            loaded_ns,
            model: p.model.clone(),
            provider: p.provider.clone(),
            alias_of: p.alias_of.clone(),
            input: p.input,
            output: p.output,
            cache_read: p.cache_read,
            reasoning: p.reasoning,
            loaded_at: now.timestamp() as u32,
        };
        insert
            .write(&row)
            .await
            .map_err(ClickHouseError::query(&context()))?;
    }
    insert
        .end()
        .await
        .map_err(ClickHouseError::query(&context()))
}

/// The version in force on `day`: the newest `valid_from` on or before it.
pub async fn in_force(
    client: &Client,
    db: &str,
    day: NaiveDate,
) -> Result<Option<PriceVersion>, ClickHouseError> {
    check_schema(client, db).await?;
    let sql = format!(
        "SELECT valid_from, toUInt64(0) AS loaded_ns, model, provider, alias_of, input, output, cache_read, \
         reasoning, toUInt32(loaded_at) AS loaded_at FROM {db}.prices WHERE valid_from = \
         (SELECT max(valid_from) FROM {db}.prices WHERE valid_from <= toDate(?)) ORDER BY model"
    );
    // With no version on or before `day`, max() is 1970-01-01, which no
    // version has (it would be on or before `day`): no rows.
    let rows: Vec<PriceRow> = client
        .query(&sql)
        .bind(day.to_string())
        .fetch_all()
        .await
        .map_err(ClickHouseError::query(&sql))?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    Ok(Some(PriceVersion {
        valid_from: NaiveDate::from_epoch_days(i32::from(first.valid_from))
            .expect("a ClickHouse Date is a valid date"),
        loaded_at_ms: i64::from(first.loaded_at) * 1000,
        prices: rows
            .into_iter()
            .map(|r| Price {
                model: r.model,
                provider: r.provider,
                alias_of: r.alias_of,
                input: r.input,
                output: r.output,
                cache_read: r.cache_read,
                reasoning: r.reasoning,
            })
            .collect(),
    }))
}
