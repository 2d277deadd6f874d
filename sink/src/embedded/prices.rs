//! Price tables in the embedded store: one file per version,
//! `DIR/prices/<valid_from>.json`, replaced atomically when a table with
//! the same `valid_from` is loaded again. Prices are not part of the
//! manifest: loading them needs no writer's lock, so they can be loaded
//! while an aggregator or the demo runs, and a query sees each version
//! whole or not at all.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Array, Decimal128Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use tokentally_common::files::{read_bounded, write_atomic};
use tokentally_schemas::prices::{MAX_PRICE_FILE_BYTES, PRICE_SCALE, Price};

/// The directory of the price files.
fn prices_dir(store: &Path) -> PathBuf {
    store.join("prices")
}

/// One stored version.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceVersion {
    pub valid_from: NaiveDate,
    /// When it was loaded, epoch ms.
    pub loaded_at_ms: i64,
    pub prices: Vec<Price>,
}

/// A version as its file holds it.
#[derive(Serialize, Deserialize)]
struct Stored {
    /// `YYYY-MM-DD`.
    valid_from: String,
    loaded_at_ms: i64,
    prices: Vec<Price>,
}

/// Store `prices` as the version valid from `valid_from`, replacing one
/// loaded before with the same date.
pub fn save(store: &Path, valid_from: NaiveDate, prices: &[Price]) -> io::Result<()> {
    let dir = prices_dir(store);
    fs::create_dir_all(&dir)?;
    let version = Stored {
        valid_from: valid_from.to_string(),
        loaded_at_ms: chrono::Utc::now().timestamp_millis(),
        prices: prices.to_vec(),
    };
    let bytes = serde_json::to_vec(&version).map_err(io::Error::other)?;
    write_atomic(&dir, &format!("{valid_from}.json"), &bytes)
}

/// Every stored version, oldest `valid_from` first.
pub fn load_all(store: &Path) -> io::Result<Vec<PriceVersion>> {
    let dir = prices_dir(store);
    let mut versions = Vec::new();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(versions),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        // A stored version is at most the size of the file it came from,
        // plus the JSON of its scaled integers.
        let bytes = read_bounded(&path, 2 * MAX_PRICE_FILE_BYTES as u64)?;
        let invalid = |e: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("price file {}: {e}", path.display()),
            )
        };
        let stored: Stored = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        versions.push(PriceVersion {
            valid_from: stored
                .valid_from
                .parse()
                .map_err(|e: chrono::ParseError| invalid(e.to_string()))?,
            loaded_at_ms: stored.loaded_at_ms,
            prices: stored.prices,
        });
    }
    versions.sort_by_key(|v| v.valid_from);
    Ok(versions)
}

/// The price columns' type: Decimal128(38, 12).
fn price_type() -> DataType {
    DataType::Decimal128(38, PRICE_SCALE as i8)
}

/// Schema of table `model_prices` (and its view `prices`).
pub fn prices_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("valid_from", DataType::Date32, false),
        Field::new("model", DataType::Utf8, false),
        Field::new("provider", DataType::Utf8, false),
        Field::new("alias_of", DataType::Utf8, false),
        Field::new("input", price_type(), false),
        Field::new("output", price_type(), false),
        Field::new("cache_read", price_type(), false),
        Field::new("reasoning", price_type(), false),
        Field::new("loaded_at", ts, false),
    ]))
}

/// Every version's rows as one batch of [`prices_schema`].
pub fn prices_batch(versions: &[PriceVersion]) -> Result<RecordBatch, ArrowError> {
    let all: Vec<(&PriceVersion, &Price)> = versions
        .iter()
        .flat_map(|v| v.prices.iter().map(move |p| (v, p)))
        .collect();
    let rows = || all.iter().copied();
    let strings = |f: fn(&Price) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows().map(|(_, p)| f(p))))
    };
    let decimals = |f: fn(&Price) -> i128| -> Result<ArrayRef, ArrowError> {
        Ok(Arc::new(
            Decimal128Array::from_iter_values(rows().map(|(_, p)| f(p)))
                .with_precision_and_scale(38, PRICE_SCALE as i8)?,
        ))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Date32Array::from_iter_values(
            rows().map(|(v, _)| v.valid_from.to_epoch_days()),
        )),
        strings(|p| &p.model),
        strings(|p| &p.provider),
        strings(|p| &p.alias_of),
        decimals(|p| p.input)?,
        decimals(|p| p.output)?,
        decimals(|p| p.cache_read)?,
        decimals(|p| p.reasoning)?,
        Arc::new(
            TimestampMillisecondArray::from_iter_values(rows().map(|(v, _)| v.loaded_at_ms))
                .with_timezone("UTC"),
        ),
    ];
    RecordBatch::try_new(prices_schema(), columns)
}
