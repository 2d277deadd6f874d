//! The sink itself: [`ClickHouseSink`] commits each micro-batch as one
//! insert into `usage_deltas` (through its writer table, see [`fence`]),
//! after the batch's side rows; recovers from the ledger on startup and
//! when partitions are assigned; and drops dedup ids and dead letters past
//! their retention.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::Rng;
use tokentally_aggregate::core::BatchOutcome;
use tokentally_aggregate::dedup::bucket_of;
use tokentally_aggregate::sink::{Recovered, UsageSink};
use tokentally_aggregate::source::BoxError;

use super::database::{Database, quote};
use super::error::{cannot_reach, timed, with_retries};
use super::fence::{self, Action, Writer, WriterRow};
use super::ledger::Ledger;
use super::rows::{self, BatchRow, HeadRow, IdSetRow, RejectedRow};
use super::schema::{self, ServerInfo, Target};
use super::{ClickHouseConfig, ClickHouseError, SinkMetrics};

/// The ClickHouse implementation of [`UsageSink`].
pub struct ClickHouseSink {
    db: Database,
    config: ClickHouseConfig,
    server: ServerInfo,
    /// Dedup horizon, to load only ids that can still matter.
    horizon: Duration,
    /// What this aggregator knows of the progress ledger.
    ledger: Ledger,
    /// Server time when `recover` loaded ids; rebalances load newer ones.
    loaded_at: Option<u32>,
    /// The server's clock minus this machine's, in seconds.
    clock_offset: i64,
    /// The current dedup floor (hour bucket): older ids no longer matter.
    floor: i64,
    /// Oldest dedup-id partition (day) still kept.
    kept_id_day: Option<i64>,
    /// Newest month of dead letters already dropped (YYYYMM).
    dropped_dead_letter_month: Option<u32>,
    /// This aggregator as a writer of partitions (see [`fence`]).
    writer: Writer,
    /// Its table exists.
    writer_ready: bool,
}

impl ClickHouseSink {
    /// Connect, detect the server, and check the schema is migrated.
    pub async fn connect(
        config: ClickHouseConfig,
        horizon: Duration,
    ) -> Result<Self, ClickHouseError> {
        let client = config.client()?;
        let server = timed(
            config.request_timeout,
            "SELECT version()",
            ServerInfo::detect(&client),
        )
        .await
        .map_err(|e| match e {
            ClickHouseError::Request { error, .. } => {
                ClickHouseError::Config(cannot_reach(&config.url, &error))
            }
            other => other,
        })?;
        let db = &config.database;
        let found = schema::applied_versions(&client, db)
            .await
            .map(|v| v.into_iter().max().unwrap_or(0))
            .unwrap_or(0);
        let needed = schema::latest_version();
        if found < needed {
            return Err(ClickHouseError::Schema {
                database: db.clone(),
                found,
                needed,
            });
        }
        let sink = ClickHouseSink {
            db: Database::new(client, &config),
            config,
            server,
            horizon,
            ledger: Ledger::new(),
            loaded_at: None,
            clock_offset: 0,
            floor: i64::MIN,
            kept_id_day: None,
            dropped_dead_letter_month: None,
            writer: Writer::new(),
            writer_ready: false,
        };
        sink.check_cluster().await?;
        Ok(sink)
    }

    /// Refuse a cluster setting that does not match the schema: aggregators
    /// of a replicated ledger that did not know it would read a replica's
    /// partial ledger and fence nobody on the others.
    async fn check_cluster(&self) -> Result<(), ClickHouseError> {
        let db = self.db.name();
        let engine = self
            .db
            .fetch::<String>(format!(
                "SELECT engine FROM system.tables WHERE database = {} AND name = 'usage_deltas'",
                quote(db)
            ))
            .await?;
        let replicated = engine.first().is_some_and(|e| e.starts_with("Replicated"));
        match (replicated, self.db.cluster()) {
            (false, None) => Ok(()),
            (true, None) => Err(ClickHouseError::Config(format!(
                "database {db} is replicated (`tokentally migrate --cluster`): set the cluster \
                 (--clickhouse-cluster, TOKENTALLY_CLICKHOUSE_CLUSTER or [clickhouse] cluster), \
                 so that aggregators on different replicas fence each other and resume from the \
                 whole ledger"
            ))),
            (false, Some(cluster)) => Err(ClickHouseError::Config(format!(
                "cluster {cluster} is set, but database {db} is not replicated: it was migrated \
                 without --cluster"
            ))),
            (true, Some(cluster)) => {
                let hosts = self
                    .db
                    .fetch::<u64>(format!(
                        "SELECT count() FROM system.clusters WHERE cluster = {}",
                        quote(cluster)
                    ))
                    .await?;
                if hosts.first().copied().unwrap_or(0) == 0 {
                    return Err(ClickHouseError::Config(format!(
                        "this server has no cluster {cluster} in its <remote_servers>"
                    )));
                }
                Ok(())
            }
        }
    }

    pub fn with_metrics(mut self, metrics: SinkMetrics) -> Self {
        self.db.set_metrics(metrics);
        self
    }

    pub fn server(&self) -> &ServerInfo {
        &self.server
    }

    /// Now, in seconds on the server's clock.
    fn stamp(&self) -> u32 {
        (chrono::Utc::now().timestamp() + self.clock_offset).clamp(0, u32::MAX as i64) as u32
    }

    async fn server_now(&self) -> Result<u32, ClickHouseError> {
        let rows = self
            .db
            .fetch::<u32>("SELECT toUInt32(now())".into())
            .await?;
        Ok(rows.first().copied().unwrap_or(0))
    }

    fn floor_for(&self, watermark_ms: Option<i64>) -> i64 {
        let horizon_h = (self.horizon.as_secs() / 3600) as i64 + 1;
        watermark_ms.map_or(i64::MIN, |w| bucket_of(w) - horizon_h)
    }

    /// Create this writer's table, once.
    async fn ensure_writer(&mut self) -> Result<(), ClickHouseError> {
        if self.writer_ready {
            return Ok(());
        }
        let columns: Vec<(String, String)> = self
            .db
            .fetch(format!(
                "SELECT name, type FROM system.columns WHERE database = {} \
                 AND table = 'usage_deltas'",
                quote(self.db.name())
            ))
            .await?;
        let create = self
            .writer
            .create(self.db.name(), &columns)
            .map_err(ClickHouseError::Config)?;
        for sql in create {
            self.db.execute(sql).await?;
        }
        self.writer_ready = true;
        tracing::info!(writer = %self.writer.id, "writing through table {}", self.writer.table());
        Ok(())
    }

    /// Record that this writer claims or releases `keys`.
    async fn record(&self, keys: &[String], action: Action) -> Result<(), ClickHouseError> {
        self.db
            .insert_side_rows::<WriterRow>("writers", &self.writer.rows(keys, action))
            .await
    }

    /// Claim `keys`, then fence every other writer that claimed one of them
    /// and never released it: after this, nobody else can add a batch of
    /// them (see [`fence`]).
    async fn claim(&mut self, keys: &[String]) -> Result<(), ClickHouseError> {
        self.ensure_writer().await?;
        let db = self.db.name().to_string();
        // A writer that was fenced itself must not fence the owner that
        // fenced it: it stops instead.
        let exists = self
            .db
            .fetch::<u8>(format!("EXISTS TABLE {db}.{}", self.writer.table()))
            .await?;
        if exists.first() != Some(&1) {
            return Err(ClickHouseError::FencedOut);
        }
        self.record(keys, Action::Claim).await?;
        // On a cluster, a claim recorded through another replica must be
        // seen here, or its writer would not be fenced.
        self.db.sync_replicas(&["writers"]).await?;
        let holders = self
            .db
            .fetch::<String>(fence::holders_sql(&db, keys, &self.writer.id))
            .await?;
        for holder in holders {
            tracing::warn!(
                writer = %holder,
                partitions = ?keys,
                "fencing out an aggregator that claimed these partitions and never released them"
            );
            let everywhere = Target {
                db: &db,
                server: &self.server,
                cluster: self.db.cluster(),
            };
            for sql in fence::drop_writer(&everywhere, &holder) {
                self.db.execute(sql).await?;
            }
            // On its behalf, so that later owners do not fence it again.
            let rows: Vec<WriterRow> = keys
                .iter()
                .map(|k| WriterRow {
                    source: k,
                    writer: &holder,
                    action: Action::Release,
                    seq: u64::MAX,
                })
                .collect();
            self.db
                .insert_side_rows::<WriterRow>("writers", &rows)
                .await?;
        }
        Ok(())
    }

    /// Drop dedup-id partitions (days) entirely below the floor.
    async fn forget_ids(&mut self, floor: i64) -> Result<(), ClickHouseError> {
        let day = floor.div_euclid(24) - 1;
        if self.kept_id_day.is_some_and(|k| k >= day) {
            return Ok(());
        }
        self.drop_partitions_below("dedup_id_sets", day).await?;
        self.kept_id_day = Some(day);
        Ok(())
    }

    /// Drop months of raw dead letters entirely older than the retention.
    async fn forget_dead_letters(&mut self) -> Result<(), ClickHouseError> {
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(self.config.dead_letter_retention)
                .unwrap_or(chrono::Duration::MAX);
        // A month is entirely older than the cutoff when it is before the
        // cutoff's month.
        use chrono::Datelike;
        let keep_from = cutoff.year() as u32 * 100 + cutoff.month();
        if self.dropped_dead_letter_month >= Some(keep_from) {
            return Ok(());
        }
        self.drop_partitions_below("rejected_events_log", i64::from(keep_from))
            .await?;
        self.dropped_dead_letter_month = Some(keep_from);
        Ok(())
    }

    /// Drop the partitions of `table` (an integer key: a day, a month)
    /// below `bound`.
    async fn drop_partitions_below(&self, table: &str, bound: i64) -> Result<(), ClickHouseError> {
        let db = self.db.name().to_string();
        let sql = format!(
            "SELECT DISTINCT toInt64(partition) FROM system.parts WHERE database = {} \
             AND table = {} AND active",
            quote(&db),
            quote(table)
        );
        for p in self.db.fetch::<i64>(sql).await? {
            if p < bound {
                tracing::info!(
                    table,
                    partition = p,
                    "dropping a partition past its retention"
                );
                self.db
                    .execute(format!("ALTER TABLE {db}.{table} DROP PARTITION {p}"))
                    .await?;
            }
        }
        Ok(())
    }
}

impl UsageSink for ClickHouseSink {
    async fn recover(&mut self) -> Result<Recovered, BoxError> {
        let started = Instant::now();
        let loaded_at = self.server_now().await?;
        self.clock_offset = i64::from(loaded_at) - chrono::Utc::now().timestamp();
        let found = self.ledger.progress(&self.db, None).await?;
        let watermark_ms = found
            .values()
            .map(|p| p.watermark_ms)
            .max()
            .filter(|w| *w > 0);
        self.floor = self.floor_for(watermark_ms);
        let dedup_ids = self.ledger.load_ids(&self.db, self.floor, 0, None).await?;
        let progress: BTreeMap<String, i64> =
            found.into_iter().map(|(k, p)| (k, p.next_offset)).collect();
        tracing::info!(
            sources = progress.len(),
            ids = dedup_ids.len(),
            ?watermark_ms,
            seconds = started.elapsed().as_secs_f64(),
            "recovered from ClickHouse"
        );
        self.ledger.resume(&progress);
        self.loaded_at = Some(loaded_at);
        if let Some(m) = self.db.metrics() {
            m.recovery_seconds
                .with_label_values(&["startup"])
                .set(started.elapsed().as_secs_f64());
            let sql = format!(
                "SELECT sum(rows) FROM system.parts WHERE database = {} \
                 AND table = 'usage_deltas' AND active",
                quote(self.db.name())
            );
            let rows = self.db.fetch::<u64>(sql).await?;
            m.ledger_rows
                .set(rows.first().copied().unwrap_or(0).min(i64::MAX as u64) as i64);
        }
        Ok(Recovered {
            watermark_ms,
            dedup_ids,
            progress,
        })
    }

    async fn recover_partitions(&mut self, keys: &[String]) -> Result<Recovered, BoxError> {
        let started = Instant::now();
        // Fence first: the ledger read after it is final for these keys.
        self.claim(keys).await?;
        let progress: BTreeMap<String, i64> = self
            .ledger
            .progress(&self.db, Some(keys))
            .await?
            .into_iter()
            .map(|(k, p)| (k, p.next_offset))
            .collect();
        // Ids of batches committed since `recover` loaded them, minus a
        // margin for inserts that were in flight then.
        let since = self.loaded_at.unwrap_or(0).saturating_sub(300);
        let dedup_ids = self
            .ledger
            .load_ids(&self.db, self.floor, since, Some(keys))
            .await?;
        self.ledger.resume_partitions(keys, &progress);
        tracing::info!(
            ?progress,
            ids = dedup_ids.len(),
            seconds = started.elapsed().as_secs_f64(),
            "resumed partitions from ClickHouse"
        );
        if let Some(m) = self.db.metrics() {
            m.recovery_seconds
                .with_label_values(&["partitions"])
                .set(started.elapsed().as_secs_f64());
        }
        Ok(Recovered {
            watermark_ms: None,
            dedup_ids,
            progress,
        })
    }

    async fn commit(&mut self, outcome: &BatchOutcome) -> Result<(), BoxError> {
        self.ensure_writer().await?;
        let batch_id = format!("{:032x}", rand::rng().random::<u128>());
        let budget = self.config.retry_for;
        let timeout = self.config.request_timeout;

        let received_at = self.stamp();
        let ids = rows::id_set_rows(&batch_id, &outcome.new_ids, received_at);
        let rejected = rows::rejected_rows(&batch_id, received_at, &outcome.dead_letters);
        // A source's first batch gives it a head (-1: nothing committed
        // yet), so that every source in the ledger has one.
        let new_heads = self.ledger.new_heads(outcome);
        // The fence check and the side rows are independent round trips:
        // run them together. All must be done before the usage_deltas
        // insert, which commits the batch; side rows of a batch that is
        // fenced (or fails) are orphans that every reader filters out.
        tokio::try_join!(
            self.ledger.check_fence(&self.db, outcome),
            self.db.insert_side_rows::<IdSetRow>("dedup_id_sets", &ids),
            self.db
                .insert_side_rows::<RejectedRow>("rejected_events_log", &rejected),
            self.db
                .insert_side_rows::<HeadRow>("ledger_heads", &new_heads),
        )?;
        self.ledger.headed(new_heads);
        let deltas = rows::delta_rows(&batch_id, outcome, received_at)?;
        let batch = BatchRow::of(&deltas);
        let token = self.server.modern.then_some(batch_id.as_str());
        let table = self.writer.table();
        let table = table.as_str();
        let this = &*self;
        with_retries(
            "insert usage_deltas",
            budget,
            this.db.metrics(),
            |attempt| {
                let batch = &batch;
                let batch_id = &batch_id;
                async move {
                    if attempt > 0 {
                        // A previous attempt may have landed with its answer
                        // lost; and while this one was failing, the group may
                        // have given the partitions to another aggregator.
                        if this
                            .ledger
                            .batch_committed(&this.db, batch_id, received_at)
                            .await?
                        {
                            return Ok(());
                        }
                        this.ledger.check_fence(&this.db, outcome).await?;
                    }
                    timed(
                        timeout,
                        "insert usage_deltas",
                        this.db
                            .insert_rows::<BatchRow>(table, std::slice::from_ref(batch), token),
                    )
                    .await
                }
            },
        )
        .await
        .map_err(|e| {
            if fence::is_fenced_out(&e.to_string()) {
                ClickHouseError::FencedOut
            } else {
                e
            }
        })?;
        self.ledger.committed(outcome, received_at);
        tracing::debug!(
            batch_id,
            progress = ?outcome.progress,
            delta_rows = deltas.len(),
            ids = outcome.new_ids.len(),
            dead_letters = rejected.len(),
            "batch committed to ClickHouse"
        );
        self.ledger.write_heads_if_due(&self.db).await?;
        self.floor = outcome.dedup_floor;
        self.forget_ids(outcome.dedup_floor).await?;
        self.forget_dead_letters().await?;
        Ok(())
    }

    async fn release(&mut self, keys: &[String]) -> Result<(), BoxError> {
        self.ledger.write_heads(&self.db).await?;
        self.record(keys, Action::Release).await?;
        tracing::info!(partitions = ?keys, "released partitions");
        Ok(())
    }

    async fn close(&mut self) -> Result<(), BoxError> {
        self.ledger.write_heads(&self.db).await?;
        if self.writer_ready {
            let db = self.db.name().to_string();
            // Its own table is on this server only.
            let here = Target {
                db: &db,
                server: &self.server,
                cluster: None,
            };
            for sql in fence::drop_writer(&here, &self.writer.id) {
                self.db.execute(sql).await?;
            }
            self.writer_ready = false;
        }
        Ok(())
    }
}
