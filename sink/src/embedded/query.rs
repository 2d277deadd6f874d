//! SQL over the store with DataFusion. Each table's delta files are
//! registered as `<table>_deltas`; the documented tables are views that sum
//! the deltas, so readers always see exact totals whatever has been
//! compacted.

use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::{DataFusionError, Result};
use datafusion::prelude::{SessionConfig, SessionContext};
use tokentally_aggregate::rollup::Rollup;

use super::manifest::Manifest;
use super::{REJECTED, prices, rejected_schema};

/// Errors opening the store for queries.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(
        "no tokentally store at {0} (run `tokentally demo` or `tokentally ingest` first, or pass --store)"
    )]
    NoStore(String),
    #[error("reading the store failed: {0}")]
    Manifest(#[from] std::io::Error),
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    #[error("reading the price tables failed: {0}")]
    Prices(#[from] arrow::error::ArrowError),
}

/// Schema of a store table (`usage_*` or `rejected`).
pub fn table_schema(table: &str) -> SchemaRef {
    Rollup::ALL
        .iter()
        .find(|r| r.table() == table)
        .map(|r| r.schema())
        .unwrap_or_else(rejected_schema)
}

fn merge_sql(table: &str, from: &str) -> String {
    match Rollup::ALL.iter().find(|r| r.table() == table) {
        Some(r) => r.merge_sql(from),
        None => format!(
            "SELECT reason, CAST(SUM(count) AS BIGINT UNSIGNED) AS count FROM {from} GROUP BY reason"
        ),
    }
}

fn session() -> SessionContext {
    let mut config = SessionConfig::new();
    config
        .options_mut()
        .execution
        .parquet
        .schema_force_view_types = false;
    config.options_mut().sql_parser.map_string_types_to_utf8view = false;
    SessionContext::new_with_config(config)
}

/// `schema` with every column nullable: how delta files are read, so that
/// a file written before a measure existed reads it as NULL (the merge
/// counts NULL as 0) instead of failing the query.
fn reading(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    Arc::new(Schema::new(fields))
}

fn register_deltas(
    ctx: &SessionContext,
    dir: &Path,
    name: &str,
    schema: SchemaRef,
    files: &[String],
) -> Result<()> {
    let schema = reading(&schema);
    if files.is_empty() {
        let empty = MemTable::try_new(schema, vec![vec![]])?;
        ctx.register_table(name, Arc::new(empty))?;
        return Ok(());
    }
    let dir = std::path::absolute(dir)?;
    let urls = files
        .iter()
        .map(|f| ListingTableUrl::parse(dir.join(f).to_string_lossy()))
        .collect::<Result<Vec<_>>>()?;
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .with_schema(schema);
    ctx.register_table(name, Arc::new(ListingTable::try_new(config)?))?;
    Ok(())
}

/// Sum the given delta files of `table` into one set of totals.
pub(super) async fn merge_files(
    dir: &Path,
    table: &str,
    files: &[String],
) -> Result<Vec<RecordBatch>> {
    let ctx = session();
    let schema = table_schema(table);
    register_deltas(&ctx, dir, "deltas", schema.clone(), files)?;
    let batches = ctx
        .sql(&merge_sql(table, "deltas"))
        .await?
        .collect()
        .await?;
    batches
        .into_iter()
        .map(|b| Ok(RecordBatch::try_new(schema.clone(), b.columns().to_vec())?))
        .collect()
}

/// A DataFusion context over the committed state of the store at `dir`,
/// with the views `usage_daily`, `usage_minute`, `usage_app_daily` and
/// `rejected`, the price tables (`model_prices`, and `prices`, the same),
/// and the spend views `cost_daily`, `cost_app_daily` and `unpriced`.
pub async fn open_query_context(dir: &Path) -> Result<SessionContext, QueryError> {
    let manifest =
        Manifest::load(dir)?.ok_or_else(|| QueryError::NoStore(dir.display().to_string()))?;
    let ctx = session();
    let tables = Rollup::ALL.iter().map(|r| r.table()).chain([REJECTED]);
    for table in tables {
        let files = manifest.tables.get(table).map(Vec::as_slice).unwrap_or(&[]);
        let deltas = format!("{table}_deltas");
        register_deltas(&ctx, dir, &deltas, table_schema(table), files)?;
        ctx.sql(&format!(
            "CREATE VIEW {table} AS {}",
            merge_sql(table, &deltas)
        ))
        .await?;
    }
    let versions = prices::load_all(dir)?;
    let batch = prices::prices_batch(&versions)?;
    let table = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
    ctx.register_table("model_prices", Arc::new(table))?;
    ctx.sql("CREATE VIEW prices AS SELECT * FROM model_prices")
        .await?;
    for (view, sql) in crate::cost::datafusion_views() {
        ctx.sql(&format!("CREATE VIEW {view} AS {sql}")).await?;
    }
    Ok(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Date32Array, StringArray, UInt64Array};
    use arrow::datatypes::{DataType, UInt64Type};
    use parquet::arrow::ArrowWriter;

    /// A delta file written before `cached_tokens` and `reasoning_tokens`
    /// were measures of `usage_app_daily` still reads, as 0 of each.
    #[tokio::test]
    async fn a_file_without_a_newer_measure_reads_it_as_zero() {
        let dir = tempfile::tempdir().unwrap();
        let old = Arc::new(Schema::new(
            [
                ("day", DataType::Date32),
                ("app", DataType::Utf8),
                ("model", DataType::Utf8),
                ("requests", DataType::UInt64),
                ("prompt_tokens", DataType::UInt64),
                ("completion_tokens", DataType::UInt64),
                ("total_tokens", DataType::UInt64),
            ]
            .map(|(name, t)| Field::new(name, t, false))
            .to_vec(),
        ));
        let u = |v: u64| Arc::new(UInt64Array::from(vec![v])) as arrow::array::ArrayRef;
        let batch = RecordBatch::try_new(
            old.clone(),
            vec![
                Arc::new(Date32Array::from(vec![20_419])),
                Arc::new(StringArray::from(vec!["app"])),
                Arc::new(StringArray::from(vec!["m"])),
                u(2),
                u(10),
                u(5),
                u(15),
            ],
        )
        .unwrap();
        let file = std::fs::File::create(dir.path().join("old.parquet")).unwrap();
        let mut w = ArrowWriter::try_new(file, old, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let table = Rollup::AppDaily.table();
        let merged = merge_files(dir.path(), table, &["old.parquet".to_string()])
            .await
            .unwrap();
        let b = &merged[0];
        let measure = |name: &str| {
            b.column_by_name(name)
                .unwrap()
                .as_primitive::<UInt64Type>()
                .value(0)
        };
        assert_eq!(
            [
                "requests",
                "total_tokens",
                "cached_tokens",
                "reasoning_tokens"
            ]
            .map(measure),
            [2, 15, 0, 0]
        );
    }
}
