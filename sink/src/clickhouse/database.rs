//! Requests to tokentally's database: queries, statements and inserts, each
//! under the request timeout and retried on retriable errors, and the
//! quoting of the values they embed.

use std::time::Duration;

use clickhouse::Client;

use super::error::{timed, with_retries};
use super::{ClickHouseConfig, ClickHouseError, SinkMetrics};

/// Tokentally's database on one server, as the sink and its ledger reach it.
pub(super) struct Database {
    client: Client,
    /// The same, with tokentally's database as the default (inserts name
    /// bare tables).
    insert_client: Client,
    name: String,
    /// The cluster whose replicas hold the database, if it is replicated.
    cluster: Option<String>,
    request_timeout: Duration,
    retry_for: Duration,
    metrics: Option<SinkMetrics>,
}

impl Database {
    /// Database `config.database` through `client`, with `config`'s request
    /// timeout and retry budget.
    pub(super) fn new(client: Client, config: &ClickHouseConfig) -> Self {
        Database {
            insert_client: client.clone().with_database(&config.database),
            client,
            name: config.database.clone(),
            cluster: config.cluster.clone(),
            request_timeout: config.request_timeout,
            retry_for: config.retry_for,
            metrics: None,
        }
    }

    /// Count rows, errors and retries in `metrics`.
    pub(super) fn set_metrics(&mut self, metrics: SinkMetrics) {
        self.metrics = Some(metrics);
    }

    pub(super) fn metrics(&self) -> Option<&SinkMetrics> {
        self.metrics.as_ref()
    }

    /// The database's name, for qualified table names.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// The cluster whose replicas hold the database, if it is replicated.
    pub(super) fn cluster(&self) -> Option<&str> {
        self.cluster.as_deref()
    }

    /// On a cluster, wait until this replica holds every part of `tables`
    /// that was inserted anywhere before the call (`SYSTEM SYNC REPLICA`:
    /// the replica pulls the replication log, then fetches): a read after
    /// it sees every insert that had returned, whichever replica took it.
    /// While the replica that alone holds a part is down, it waits (the
    /// request times out and is retried), since reading without that part
    /// would count its batch again. Nothing on one server.
    pub(super) async fn sync_replicas(&self, tables: &[&str]) -> Result<(), ClickHouseError> {
        if self.cluster.is_none() {
            return Ok(());
        }
        for table in tables {
            self.execute(format!("SYSTEM SYNC REPLICA {}.{table}", self.name))
                .await?;
        }
        Ok(())
    }

    pub(super) async fn fetch<T>(&self, sql: String) -> Result<Vec<T>, ClickHouseError>
    where
        T: clickhouse::RowOwned + clickhouse::RowRead,
    {
        with_retries(&sql, self.retry_for, self.metrics(), |_| {
            timed(self.request_timeout, &sql, async {
                self.client
                    .query(&sql)
                    .fetch_all::<T>()
                    .await
                    .map_err(ClickHouseError::query(&sql))
            })
        })
        .await
    }

    pub(super) async fn execute(&self, sql: String) -> Result<(), ClickHouseError> {
        with_retries(&sql, self.retry_for, self.metrics(), |_| {
            timed(self.request_timeout, &sql, async {
                self.client
                    .query(&sql)
                    .execute()
                    .await
                    .map_err(ClickHouseError::query(&sql))
            })
        })
        .await
    }

    /// Insert rows of one table in one request, retried as a whole.
    pub(super) async fn insert_rows<R>(
        &self,
        table: &str,
        rows: &[R::Value<'_>],
        dedup_token: Option<&str>,
    ) -> Result<(), ClickHouseError>
    where
        R: clickhouse::Row + clickhouse::RowWrite,
    {
        let full = format!("{}.{table}", self.name);
        let mut insert = self
            .insert_client
            .insert::<R>(table)
            .await
            .map_err(ClickHouseError::query(&full))?
            .with_setting("max_insert_block_size", "100000000")
            // A writer's view unfolds a batch's row (see `fence`) in one
            // block, so the batch lands as one part.
            .with_setting("max_block_size", "100000000");
        if let Some(token) = dedup_token {
            // Inserts go through a writer's view (see `fence`): the repeat
            // is dropped in `usage_deltas`, the view's target.
            insert = insert
                .with_setting("insert_deduplication_token", token)
                .with_setting("deduplicate_blocks_in_dependent_materialized_views", "1");
        }
        for row in rows {
            insert
                .write(row)
                .await
                .map_err(ClickHouseError::query(&full))?;
        }
        insert.end().await.map_err(ClickHouseError::query(&full))?;
        if let Some(m) = &self.metrics {
            m.rows.with_label_values(&[table]).inc_by(rows.len() as u64);
        }
        Ok(())
    }

    /// Insert a batch's rows of a side table (tagged with its batch id, so
    /// a repeat is harmless), retried as a whole; nothing when empty.
    pub(super) async fn insert_side_rows<R>(
        &self,
        table: &str,
        rows: &[R::Value<'_>],
    ) -> Result<(), ClickHouseError>
    where
        R: clickhouse::Row + clickhouse::RowWrite,
    {
        if rows.is_empty() {
            return Ok(());
        }
        let what = format!("insert {table}");
        with_retries(&what, self.retry_for, self.metrics(), |_| {
            timed(
                self.request_timeout,
                &what,
                self.insert_rows::<R>(table, rows, None),
            )
        })
        .await
    }
}

/// `s` as a quoted SQL string literal.
pub(crate) fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `keys` as a quoted SQL list, for `IN (...)`.
pub(crate) fn quote_all(keys: &[String]) -> String {
    keys.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ")
}
