//! SQL over the store with DataFusion. Each table's delta files are
//! registered as `<table>_deltas`; the documented tables are views that sum
//! the deltas, so readers always see exact totals whatever has been
//! compacted.

use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::{DataFusionError, Result};
use datafusion::prelude::{SessionConfig, SessionContext};
use tokentally_aggregate::rollup::Rollup;

use super::manifest::Manifest;
use super::{REJECTED, rejected_schema};

/// Errors opening the store for queries.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(
        "no tokentally store at {0} (run `tokentally demo` or `tokentally ingest` first, or pass --store)"
    )]
    NoStore(String),
    #[error("reading the store manifest failed: {0}")]
    Manifest(#[from] std::io::Error),
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
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

fn register_deltas(
    ctx: &SessionContext,
    dir: &Path,
    name: &str,
    schema: SchemaRef,
    files: &[String],
) -> Result<()> {
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
/// `rejected`.
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
    Ok(ctx)
}
