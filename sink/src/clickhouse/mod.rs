//! The ClickHouse sink: exact totals for dashboards and analysts.
//!
//! Exactly-once, on any server version: each micro-batch is committed by
//! ONE INSERT into `usage_deltas` holding its roll-up deltas, its reject
//! counts and one progress row per source partition it advanced (tagged
//! with a random batch id). The table has no partition key and the insert
//! is far below `max_insert_block_size`, so it becomes one part: the batch
//! is visible in whole or not at all. On assignment the aggregator resumes
//! from this ledger, not from Kafka's committed offsets.
//!
//! Dedup ids and raw dead letters go to their own tables first, tagged with
//! the batch id; only rows whose batch id is in the ledger count, so a crash
//! between the inserts leaves nothing half-done.
//!
//! A retried insert never doubles a batch: before retrying, the sink looks
//! its batch id up in the ledger (and modern servers also drop the repeat
//! by `insert_deduplication_token`). An aggregator writes through a table
//! of its own, which the next owner of a partition it never released drops
//! before reading the ledger ([`fence`]): a zombie (paused, cut off, or
//! replaced under its instance id) cannot add a batch after a takeover.
//! Before each commit the sink also checks that the ledger still ends where
//! this aggregator left each partition, which stops a zombie early and
//! with a clear message.

pub mod fence;
pub mod rows;
pub mod schema;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::{Duration, Instant};

use clickhouse::Client;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokentally_aggregate::core::BatchOutcome;
use tokentally_aggregate::dedup::bucket_of;
use tokentally_aggregate::sink::{Recovered, UsageSink};
use tokentally_aggregate::source::BoxError;

use self::fence::{CLAIM, RELEASE, Writer, WriterRow};
use self::rows::{DeltaRow, HeadRow, IdSetRow, RejectedRow};
use self::schema::{BY_SOURCE, BY_TIME};
pub use self::schema::{MigrationReport, ServerInfo, migrate};

/// ClickHouse settings (`[clickhouse]` in the config file). The password
/// never comes from the config file or the command line: it is read from
/// `TOKENTALLY_CLICKHOUSE_PASSWORD` or from `password_file`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// HTTP endpoint. Also `--clickhouse` or `TOKENTALLY_CLICKHOUSE_URL`.
    pub url: String,
    /// Database of tokentally's tables. Default `tokentally`.
    pub database: String,
    /// User. Also `TOKENTALLY_CLICKHOUSE_USER`. Default `default`.
    pub user: String,
    /// File holding the password (first line).
    pub password_file: Option<std::path::PathBuf>,
    /// Longest one request may take before it is retried. Default 30s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long a failing commit is retried (exponential backoff and
    /// jitter) before the aggregator gives up and exits non-zero. Meanwhile
    /// it reads nothing new (Kafka buffers, lag grows, memory stays
    /// bounded). Waiting past the consumer's `max.poll.interval.ms` is safe:
    /// if the group moved the partitions meanwhile, fencing refuses the
    /// commit. Default 1 day.
    #[serde(with = "humantime_serde")]
    pub retry_for: Duration,
    /// Raw dead letters (`rejected_events_log`) are kept this long, then
    /// dropped a month at a time by the aggregator (servers of any version;
    /// modern ones also have a 90-day TTL). The counts in `rejected` are
    /// kept for ever. Default 90 days.
    #[serde(with = "humantime_serde")]
    pub dead_letter_retention: Duration,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: "http://127.0.0.1:8123".into(),
            database: "tokentally".into(),
            user: "default".into(),
            password_file: None,
            request_timeout: Duration::from_secs(30),
            retry_for: Duration::from_secs(86_400),
            dead_letter_retention: Duration::from_secs(90 * 86_400),
        }
    }
}

impl ClickHouseConfig {
    /// A client for this server: RowBinary without schema validation (old
    /// servers lack what validation needs), LZ4, and the credentials.
    pub fn client(&self) -> Result<Client, ClickHouseError> {
        let mut client = Client::default()
            .with_url(&self.url)
            .with_user(&self.user)
            .with_validation(false)
            .with_compression(clickhouse::Compression::Lz4);
        if let Some(password) = self.password()? {
            client = client.with_password(password);
        }
        Ok(client)
    }

    fn password(&self) -> Result<Option<String>, ClickHouseError> {
        if let Ok(p) = std::env::var("TOKENTALLY_CLICKHOUSE_PASSWORD") {
            return Ok(Some(p));
        }
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        // The error names the file, never its content.
        let bytes = crate::files::read_bounded(path, tokentally_common::secret::SECRET_FILE_BYTES)
            .map_err(|e| {
                ClickHouseError::Config(format!(
                    "reading the password file {}: {e}",
                    path.display()
                ))
            })?;
        let text = String::from_utf8_lossy(&bytes);
        Ok(Some(text.lines().next().unwrap_or_default().to_string()))
    }
}

/// Errors of the ClickHouse sink.
#[derive(Debug, thiserror::Error)]
pub enum ClickHouseError {
    // The client error is part of the message, not a `source`, so that
    // error chains do not print it twice.
    #[error("ClickHouse: {context}: {error}")]
    Request {
        context: String,
        error: clickhouse::error::Error,
    },
    #[error("ClickHouse did not answer within {0:?}: {1}")]
    Timeout(Duration, String),
    #[error("{0}")]
    Config(String),
    #[error(
        "the schema in database {database} is at version {found}, this build needs {needed}: run `tokentally migrate`"
    )]
    Schema {
        database: String,
        found: u32,
        needed: u32,
    },
    #[error(
        "fenced: {source_key} was committed up to {found:?} by another aggregator (this one expected {expected:?}); \
         it lost the partition in a rebalance, so it stops without writing (a restart resumes from ClickHouse)"
    )]
    Fenced {
        source_key: String,
        expected: Option<i64>,
        found: Option<i64>,
    },
    #[error(
        "fenced: another aggregator took over partitions this one had not released \
         (it was paused past its session timeout, cut off from Kafka, or replaced under the same \
         --instance-id) and dropped this one's writer table; it stops without writing more \
         (a restart resumes from ClickHouse)"
    )]
    FencedOut,
    #[error("gave up after retrying for {0:?}: {1}")]
    GaveUp(Duration, Box<ClickHouseError>),
}

impl ClickHouseError {
    /// Wrap a client error with the statement it came from.
    pub fn query(sql: &str) -> impl FnOnce(clickhouse::error::Error) -> ClickHouseError + '_ {
        move |error| ClickHouseError::Request {
            context: sql.chars().take(200).collect(),
            error,
        }
    }

    /// Worth retrying: network trouble, timeouts, an overloaded or
    /// restarting server. Not: bad SQL, a missing table, fencing.
    pub fn is_retriable(&self) -> bool {
        use clickhouse::error::Error as E;
        match self {
            ClickHouseError::Timeout(..) => true,
            ClickHouseError::Request { error, .. } => match error {
                E::Network(_) | E::TimedOut => true,
                E::BadResponse(msg) => RETRIABLE_CODES.iter().any(|c| has_code(msg, *c)),
                _ => false,
            },
            _ => false,
        }
    }
}

/// Whether a server error message carries error code `code`: "Code: 60."
/// on modern servers, "Code: 60, e.displayText() = ..." on old ones.
pub(crate) fn has_code(message: &str, code: u32) -> bool {
    [format!("Code: {code}."), format!("Code: {code},")]
        .iter()
        .any(|p| message.contains(p.as_str()))
}

/// Server error codes that say "try again": timeouts, too many queries or
/// parts, memory limits, read-only replicas, network and Keeper trouble.
const RETRIABLE_CODES: &[u32] = &[
    3, 159, 164, 202, 203, 209, 210, 236, 241, 242, 252, 285, 319, 394, 425, 999,
];

/// Prometheus metrics of the ClickHouse sink.
#[derive(Clone)]
pub struct SinkMetrics {
    pub rows: prometheus::IntCounterVec,
    pub errors: prometheus::IntCounter,
    pub retries: prometheus::IntCounter,
    pub recovery_seconds: prometheus::GaugeVec,
    pub ledger_rows: prometheus::IntGauge,
}

impl SinkMetrics {
    pub fn register(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let m = SinkMetrics {
            rows: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "tokentally_sink_rows_total",
                    "Rows inserted into ClickHouse, by table.",
                ),
                &["table"],
            )?,
            errors: prometheus::IntCounter::new(
                "tokentally_sink_errors_total",
                "ClickHouse requests that failed (retried or not).",
            )?,
            retries: prometheus::IntCounter::new(
                "tokentally_sink_retries_total",
                "ClickHouse requests retried after a retriable error.",
            )?,
            recovery_seconds: prometheus::GaugeVec::new(
                prometheus::Opts::new(
                    "tokentally_sink_recovery_seconds",
                    "How long the last recovery from the ClickHouse ledger took, by kind \
                     (startup, or partitions assigned by a rebalance).",
                ),
                &["kind"],
            )?,
            ledger_rows: prometheus::IntGauge::new(
                "tokentally_sink_ledger_rows",
                "Rows in usage_deltas (deltas and ledger) when this aggregator started.",
            )?,
        };
        registry.register(Box::new(m.rows.clone()))?;
        registry.register(Box::new(m.errors.clone()))?;
        registry.register(Box::new(m.retries.clone()))?;
        registry.register(Box::new(m.recovery_seconds.clone()))?;
        registry.register(Box::new(m.ledger_rows.clone()))?;
        Ok(m)
    }
}

/// Retry `op` on retriable errors with exponential backoff (100ms doubling
/// to 5s) and full jitter, for at most `budget`.
pub async fn with_retries<T, F, Fut>(
    what: &str,
    budget: Duration,
    metrics: Option<&SinkMetrics>,
    mut op: F,
) -> Result<T, ClickHouseError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, ClickHouseError>>,
{
    let started = Instant::now();
    let mut backoff = Duration::from_millis(100);
    let mut attempt = 0;
    loop {
        let result = op(attempt).await;
        if let (Err(_), Some(m)) = (&result, metrics) {
            m.errors.inc();
        }
        match result {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retriable() && started.elapsed() < budget => {
                if let Some(m) = metrics {
                    m.retries.inc();
                }
                let sleep = rand::rng().random_range(Duration::ZERO..=backoff);
                tracing::warn!(what, attempt, error = %e, retry_in = ?sleep, "ClickHouse request failed, retrying");
                tokio::time::sleep(sleep).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
            Err(e) if e.is_retriable() => {
                return Err(ClickHouseError::GaveUp(budget, Box::new(e)));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Run `fut` with the request timeout.
async fn timed<T>(
    timeout: Duration,
    what: &str,
    fut: impl Future<Output = Result<T, ClickHouseError>>,
) -> Result<T, ClickHouseError> {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| Err(ClickHouseError::Timeout(timeout, what.to_string())))
}

pub(crate) fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `keys` as a quoted SQL list, for `IN (...)`.
pub(crate) fn quote_all(keys: &[String]) -> String {
    keys.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ")
}

/// A source's newest progress row.
#[derive(Debug, clickhouse::Row, Deserialize)]
struct ProgressRow {
    source: String,
    next_offset: i64,
    watermark_ms: i64,
    committed_at: u32,
}

/// How far apart clocks may be (the aggregators' and ClickHouse's) for
/// bounds that compare a stamp taken by an aggregator with one taken by the
/// server. Stamps are taken on the server's clock (see
/// [`ClickHouseSink::stamp`]), so this only covers drift and round trips.
const CLOCK_MARGIN_S: u32 = 3_600;

/// How often committed positions are written to `ledger_heads` (also on
/// release and on stop).
const HEADS_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, clickhouse::Row, Deserialize)]
struct LoadedIdSet {
    bucket: i64,
    ids_hi: Vec<u64>,
    ids_lo: Vec<u64>,
}

/// The ClickHouse implementation of [`UsageSink`].
pub struct ClickHouseSink {
    client: Client,
    /// The same, with tokentally's database as the default (inserts name
    /// bare tables).
    insert_client: Client,
    config: ClickHouseConfig,
    server: ServerInfo,
    /// Dedup horizon, to load only ids that can still matter.
    horizon: Duration,
    /// Where this aggregator last saw each source partition in the ledger.
    /// `None`: resumed with no ledger entry yet.
    known: HashMap<String, Option<i64>>,
    /// Server time when `recover` loaded ids; rebalances load newer ones.
    loaded_at: Option<u32>,
    /// The server's clock minus this machine's, in seconds.
    clock_offset: i64,
    /// The current dedup floor (hour bucket): older ids no longer matter.
    floor: i64,
    /// Sources known to have a row in `ledger_heads`.
    headed: std::collections::HashSet<String>,
    /// Committed positions not yet written to `ledger_heads`.
    pending_heads: BTreeMap<String, HeadRow>,
    /// When `ledger_heads` was last written.
    heads_written: Instant,
    /// Oldest dedup-id partition (day) still kept.
    kept_id_day: Option<i64>,
    /// Newest month of dead letters already dropped (YYYYMM).
    dropped_dead_letter_month: Option<u32>,
    metrics: Option<SinkMetrics>,
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
            ClickHouseError::Request { error, .. } => ClickHouseError::Config(format!(
                "cannot reach ClickHouse at {}: {error}",
                config.url
            )),
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
        Ok(ClickHouseSink {
            insert_client: client.clone().with_database(db),
            client,
            config,
            server,
            horizon,
            known: HashMap::new(),
            loaded_at: None,
            clock_offset: 0,
            floor: i64::MIN,
            headed: Default::default(),
            pending_heads: BTreeMap::new(),
            heads_written: Instant::now(),
            kept_id_day: None,
            dropped_dead_letter_month: None,
            metrics: None,
            writer: Writer::new(),
            writer_ready: false,
        })
    }

    pub fn with_metrics(mut self, metrics: SinkMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn server(&self) -> &ServerInfo {
        &self.server
    }

    fn db(&self) -> &str {
        &self.config.database
    }

    async fn fetch<T>(&self, sql: String) -> Result<Vec<T>, ClickHouseError>
    where
        T: clickhouse::RowOwned + clickhouse::RowRead,
    {
        with_retries(&sql, self.config.retry_for, self.metrics.as_ref(), |_| {
            timed(self.config.request_timeout, &sql, async {
                self.client
                    .query(&sql)
                    .fetch_all::<T>()
                    .await
                    .map_err(ClickHouseError::query(&sql))
            })
        })
        .await
    }

    async fn execute(&self, sql: String) -> Result<(), ClickHouseError> {
        with_retries(&sql, self.config.retry_for, self.metrics.as_ref(), |_| {
            timed(self.config.request_timeout, &sql, async {
                self.client
                    .query(&sql)
                    .execute()
                    .await
                    .map_err(ClickHouseError::query(&sql))
            })
        })
        .await
    }

    /// The newest progress row of each source in `from`, reading each
    /// source's chain from its bound on (`None`: all of it). Bounds come
    /// from `ledger_heads` or from what this aggregator committed, and are
    /// offsets at or below the newest: the read costs the rows since the
    /// bound, not the ledger's history.
    async fn ledger(
        &self,
        from: &BTreeMap<String, Option<i64>>,
    ) -> Result<BTreeMap<String, ProgressRow>, ClickHouseError> {
        if from.is_empty() {
            return Ok(BTreeMap::new());
        }
        let sources = from
            .iter()
            .map(|(k, bound)| match bound {
                Some(b) => format!("(source = {} AND next_offset >= {b})", quote(k)),
                None => format!("source = {}", quote(k)),
            })
            .collect::<Vec<_>>()
            .join(" OR ");
        let sql = format!(
            "SELECT source, max(next_offset) AS top, argMax(watermark_ms, next_offset) AS wm, \
             toUInt32(argMax(committed_at, next_offset)) AS at \
             FROM {}.usage_deltas WHERE {BY_SOURCE} AND ({sources}) GROUP BY source",
            self.db()
        );
        Ok(self
            .fetch::<ProgressRow>(sql)
            .await?
            .into_iter()
            .map(|r| (r.source.clone(), r))
            .collect())
    }

    /// The heads of the given sources, or of all.
    async fn heads(
        &self,
        keys: Option<&[String]>,
    ) -> Result<BTreeMap<String, HeadRow>, ClickHouseError> {
        let filter = match keys {
            Some([]) => return Ok(BTreeMap::new()),
            Some(keys) => format!(" WHERE source IN ({})", quote_all(keys)),
            None => String::new(),
        };
        let sql = format!(
            "SELECT source, max(next_offset) AS top, max(watermark_ms) AS wm, \
             toUInt32(max(at)) AS last FROM {}.ledger_heads{filter} GROUP BY source",
            self.db()
        );
        Ok(self
            .fetch::<HeadRow>(sql)
            .await?
            .into_iter()
            .map(|r| (r.source.clone(), r))
            .collect())
    }

    /// Committed progress of `keys` (all sources with a head when `None`),
    /// read from their heads on. Heads that lag what was found are brought
    /// up to date, and every source read gets a head (-1 for one with no
    /// progress yet), so that the next read starts there.
    async fn progress(
        &mut self,
        keys: Option<&[String]>,
    ) -> Result<BTreeMap<String, ProgressRow>, ClickHouseError> {
        let heads = self.heads(keys).await?;
        let mut from: BTreeMap<String, Option<i64>> = heads
            .iter()
            .map(|(k, h)| (k.clone(), Some(h.next_offset)))
            .collect();
        for k in keys.unwrap_or_default() {
            from.entry(k.clone()).or_insert(None);
        }
        let found = self.ledger(&from).await?;
        for (k, h) in &heads {
            if h.next_offset >= 0 && !found.contains_key(k) {
                return Err(ClickHouseError::Config(format!(
                    "ledger_heads says {k} was committed up to offset {}, but usage_deltas has no \
                     such progress row: the ledger was changed outside tokentally",
                    h.next_offset
                )));
            }
        }
        let mut update = Vec::new();
        for k in from.keys() {
            let head = heads.get(k).map(|h| h.next_offset);
            match found.get(k) {
                Some(p) if head.is_none_or(|h| p.next_offset > h) => update.push(HeadRow {
                    source: k.clone(),
                    next_offset: p.next_offset,
                    watermark_ms: p.watermark_ms,
                    at: p.committed_at,
                }),
                None if head.is_none() => update.push(HeadRow::none(k)),
                _ => {}
            }
        }
        self.insert_side_rows::<HeadRow>("ledger_heads", &update)
            .await?;
        self.headed.extend(from.into_keys());
        Ok(found)
    }

    /// Ids (bucket at or above `floor`) of the batches committed since
    /// `since` (server time), only of those that advanced `keys` when
    /// given. The commit-time rows read go back no further than the oldest
    /// id set still above the floor: bounded by the dedup horizon.
    async fn load_ids(
        &self,
        floor: i64,
        since: u32,
        keys: Option<&[String]>,
    ) -> Result<Vec<(i64, u128)>, ClickHouseError> {
        let db = self.db();
        let oldest = self
            .fetch::<(u32, u64)>(format!(
                "SELECT toUInt32(min(at)), count() FROM {db}.dedup_id_sets WHERE bucket >= {floor}"
            ))
            .await?;
        let Some(&(oldest, sets)) = oldest.first() else {
            return Ok(Vec::new());
        };
        if sets == 0 {
            return Ok(Vec::new());
        }
        let from = oldest.saturating_sub(CLOCK_MARGIN_S).max(since).max(1);
        let filter = match keys {
            Some(keys) => format!(" AND source IN ({})", quote_all(keys)),
            None => String::new(),
        };
        let sql = format!(
            "SELECT bucket, ids_hi, ids_lo FROM {db}.dedup_id_sets WHERE bucket >= {floor} \
             AND batch_id IN (SELECT batch_id FROM {db}.usage_deltas WHERE {BY_TIME} \
             AND minute >= toDateTime({from}, 'UTC'){filter})"
        );
        let mut ids = Vec::new();
        for set in self.fetch::<LoadedIdSet>(sql).await? {
            let words = set.ids_hi.iter().zip(&set.ids_lo);
            ids.extend(
                words.map(|(hi, lo)| (set.bucket, (u128::from(*hi) << 64) | u128::from(*lo))),
            );
        }
        Ok(ids)
    }

    /// Now, in seconds on the server's clock.
    fn stamp(&self) -> u32 {
        (chrono::Utc::now().timestamp() + self.clock_offset).clamp(0, u32::MAX as i64) as u32
    }

    /// Write the committed positions not yet in `ledger_heads`.
    async fn write_heads(&mut self) -> Result<(), ClickHouseError> {
        let rows: Vec<HeadRow> = std::mem::take(&mut self.pending_heads)
            .into_values()
            .collect();
        self.insert_side_rows::<HeadRow>("ledger_heads", &rows)
            .await?;
        self.heads_written = Instant::now();
        Ok(())
    }

    async fn server_now(&self) -> Result<u32, ClickHouseError> {
        let rows = self.fetch::<u32>("SELECT toUInt32(now())".into()).await?;
        Ok(rows.first().copied().unwrap_or(0))
    }

    fn floor_for(&self, watermark_ms: Option<i64>) -> i64 {
        let horizon_h = (self.horizon.as_secs() / 3600) as i64 + 1;
        watermark_ms.map_or(i64::MIN, |w| bucket_of(w) - horizon_h)
    }

    /// Stop if another aggregator advanced a partition this batch covers.
    async fn check_fence(&self, outcome: &BatchOutcome) -> Result<(), ClickHouseError> {
        // Read each chain from where this aggregator left it.
        let from: BTreeMap<String, Option<i64>> = outcome
            .progress
            .keys()
            .filter_map(|k| Some((k.clone(), *self.known.get(k)?)))
            .collect();
        let ledger = self.ledger(&from).await?;
        for key in from.into_keys() {
            let expected = self.known.get(&key).copied().flatten();
            let found = ledger.get(&key).map(|p| p.next_offset);
            if found != expected {
                return Err(ClickHouseError::Fenced {
                    source_key: key,
                    expected,
                    found,
                });
            }
        }
        Ok(())
    }

    /// Whether batch `batch_id`, cut at `stamp`, is in the ledger: a read
    /// of the commit-time rows since then.
    async fn batch_committed(&self, batch_id: &str, stamp: u32) -> Result<bool, ClickHouseError> {
        let from = stamp.saturating_sub(CLOCK_MARGIN_S);
        let sql = format!(
            "SELECT count() FROM {}.usage_deltas WHERE {BY_TIME} \
             AND minute >= toDateTime({from}, 'UTC') AND batch_id = {}",
            self.db(),
            quote(batch_id)
        );
        Ok(self.fetch::<u64>(sql).await?.first().copied().unwrap_or(0) > 0)
    }

    /// Insert rows of one table in one request, retried as a whole.
    async fn insert_rows<R>(
        &self,
        table: &str,
        rows: &[R::Value<'_>],
        dedup_token: Option<&str>,
    ) -> Result<(), ClickHouseError>
    where
        R: clickhouse::Row + clickhouse::RowWrite,
    {
        let full = format!("{}.{table}", self.db());
        let mut insert = self
            .insert_client
            .insert::<R>(table)
            .await
            .map_err(ClickHouseError::query(&full))?
            .with_setting("max_insert_block_size", "100000000");
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
    async fn insert_side_rows<R>(
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
        with_retries(&what, self.config.retry_for, self.metrics.as_ref(), |_| {
            timed(
                self.config.request_timeout,
                &what,
                self.insert_rows::<R>(table, rows, None),
            )
        })
        .await
    }

    /// Create this writer's table, once.
    async fn ensure_writer(&mut self) -> Result<(), ClickHouseError> {
        if self.writer_ready {
            return Ok(());
        }
        for sql in self.writer.create(self.db()) {
            self.execute(sql).await?;
        }
        self.writer_ready = true;
        tracing::info!(writer = %self.writer.id, "writing through table {}", self.writer.table());
        Ok(())
    }

    /// Record that this writer claims or releases `keys`.
    async fn record(&self, keys: &[String], action: i8) -> Result<(), ClickHouseError> {
        self.insert_side_rows::<WriterRow>("writers", &self.writer.rows(keys, action))
            .await
    }

    /// Claim `keys`, then fence every other writer that claimed one of them
    /// and never released it: after this, nobody else can add a batch of
    /// them (see [`fence`]).
    async fn claim(&mut self, keys: &[String]) -> Result<(), ClickHouseError> {
        self.ensure_writer().await?;
        let db = self.db().to_string();
        // A writer that was fenced itself must not fence the owner that
        // fenced it: it stops instead.
        let exists = self
            .fetch::<u8>(format!("EXISTS TABLE {db}.{}", self.writer.table()))
            .await?;
        if exists.first() != Some(&1) {
            return Err(ClickHouseError::FencedOut);
        }
        self.record(keys, CLAIM).await?;
        let holders = self
            .fetch::<String>(fence::holders_sql(&db, keys, &self.writer.id))
            .await?;
        for holder in holders {
            tracing::warn!(
                writer = %holder,
                partitions = ?keys,
                "fencing out an aggregator that claimed these partitions and never released them"
            );
            for sql in fence::drop_writer(&db, &holder, &self.server) {
                self.execute(sql).await?;
            }
            // On its behalf, so that later owners do not fence it again.
            let rows: Vec<WriterRow> = keys
                .iter()
                .map(|k| WriterRow {
                    source: k,
                    writer: &holder,
                    action: RELEASE,
                    seq: u64::MAX,
                })
                .collect();
            self.insert_side_rows::<WriterRow>("writers", &rows).await?;
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
        let db = self.db().to_string();
        let sql = format!(
            "SELECT DISTINCT toInt64(partition) FROM system.parts WHERE database = {} \
             AND table = {} AND active",
            quote(&db),
            quote(table)
        );
        for p in self.fetch::<i64>(sql).await? {
            if p < bound {
                tracing::info!(
                    table,
                    partition = p,
                    "dropping a partition past its retention"
                );
                self.execute(format!("ALTER TABLE {db}.{table} DROP PARTITION {p}"))
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
        let found = self.progress(None).await?;
        let watermark_ms = found
            .values()
            .map(|p| p.watermark_ms)
            .max()
            .filter(|w| *w > 0);
        self.floor = self.floor_for(watermark_ms);
        let dedup_ids = self.load_ids(self.floor, 0, None).await?;
        let progress: BTreeMap<String, i64> =
            found.into_iter().map(|(k, p)| (k, p.next_offset)).collect();
        tracing::info!(
            sources = progress.len(),
            ids = dedup_ids.len(),
            ?watermark_ms,
            seconds = started.elapsed().as_secs_f64(),
            "recovered from ClickHouse"
        );
        self.known = progress
            .iter()
            .map(|(k, v)| (k.clone(), Some(*v)))
            .collect();
        self.loaded_at = Some(loaded_at);
        if let Some(m) = &self.metrics {
            m.recovery_seconds
                .with_label_values(&["startup"])
                .set(started.elapsed().as_secs_f64());
            let sql = format!(
                "SELECT sum(rows) FROM system.parts WHERE database = {} \
                 AND table = 'usage_deltas' AND active",
                quote(self.db())
            );
            let rows = self.fetch::<u64>(sql).await?;
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
            .progress(Some(keys))
            .await?
            .into_iter()
            .map(|(k, p)| (k, p.next_offset))
            .collect();
        // Ids of batches committed since `recover` loaded them, minus a
        // margin for inserts that were in flight then.
        let since = self.loaded_at.unwrap_or(0).saturating_sub(300);
        let dedup_ids = self.load_ids(self.floor, since, Some(keys)).await?;
        for key in keys {
            self.known.insert(key.clone(), progress.get(key).copied());
        }
        tracing::info!(
            ?progress,
            ids = dedup_ids.len(),
            seconds = started.elapsed().as_secs_f64(),
            "resumed partitions from ClickHouse"
        );
        if let Some(m) = &self.metrics {
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
        let new_heads: Vec<HeadRow> = outcome
            .progress
            .keys()
            .filter(|k| !self.headed.contains(*k))
            .map(|k| HeadRow::none(k))
            .collect();
        // The fence check and the side rows are independent round trips:
        // run them together. All must be done before the usage_deltas
        // insert, which commits the batch; side rows of a batch that is
        // fenced (or fails) are orphans that every reader filters out.
        tokio::try_join!(
            self.check_fence(outcome),
            self.insert_side_rows::<IdSetRow>("dedup_id_sets", &ids),
            self.insert_side_rows::<RejectedRow>("rejected_events_log", &rejected),
            self.insert_side_rows::<HeadRow>("ledger_heads", &new_heads),
        )?;
        self.headed.extend(new_heads.into_iter().map(|h| h.source));
        let deltas = rows::delta_rows(&batch_id, outcome, received_at)?;
        let token = self.server.modern.then_some(batch_id.as_str());
        let table = self.writer.table();
        let table = table.as_str();
        let this = &*self;
        with_retries(
            "insert usage_deltas",
            budget,
            this.metrics.as_ref(),
            |attempt| {
                let deltas = &deltas;
                let batch_id = &batch_id;
                async move {
                    if attempt > 0 {
                        // A previous attempt may have landed with its answer
                        // lost; and while this one was failing, the group may
                        // have given the partitions to another aggregator.
                        if this.batch_committed(batch_id, received_at).await? {
                            return Ok(());
                        }
                        this.check_fence(outcome).await?;
                    }
                    timed(
                        timeout,
                        "insert usage_deltas",
                        this.insert_rows::<DeltaRow>(table, deltas, token),
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
        for (k, v) in &outcome.progress {
            self.known.insert(k.clone(), Some(*v));
            self.pending_heads.insert(
                k.clone(),
                HeadRow {
                    source: k.clone(),
                    next_offset: *v,
                    watermark_ms: outcome.watermark_ms.unwrap_or(0),
                    at: received_at,
                },
            );
        }
        tracing::debug!(
            batch_id,
            progress = ?outcome.progress,
            delta_rows = deltas.len(),
            ids = outcome.new_ids.len(),
            dead_letters = rejected.len(),
            "batch committed to ClickHouse"
        );
        if self.heads_written.elapsed() >= HEADS_EVERY {
            self.write_heads().await?;
        }
        self.floor = outcome.dedup_floor;
        self.forget_ids(outcome.dedup_floor).await?;
        self.forget_dead_letters().await?;
        Ok(())
    }

    async fn release(&mut self, keys: &[String]) -> Result<(), BoxError> {
        self.write_heads().await?;
        self.record(keys, RELEASE).await?;
        tracing::info!(partitions = ?keys, "released partitions");
        Ok(())
    }

    async fn close(&mut self) -> Result<(), BoxError> {
        self.write_heads().await?;
        if self.writer_ready {
            let db = self.db().to_string();
            for sql in fence::drop_writer(&db, &self.writer.id, &self.server) {
                self.execute(sql).await?;
            }
            self.writer_ready = false;
        }
        Ok(())
    }
}
