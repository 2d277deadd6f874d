//! The ClickHouse schema: versioned, idempotent migrations, with modern DDL
//! where the server supports it and a compatible form on old servers
//! (Debian's 18.16).
//!
//! Layout (database `tokentally` by default):
//! - `usage_deltas`: every committed micro-batch's roll-up deltas, reject
//!   counts and source progress, written by one single-part INSERT per
//!   batch (no partition key), so a batch is in whole or not at all.
//! - `usage_daily`, `usage_minute`, `usage_app_daily`, `rejected`: views
//!   summing the deltas; exact whatever the state of background merges.
//! - `ingest_progress`: view of the progress ledger per source partition.
//! - `dedup_id_sets` (a batch's ids per hour, as arrays),
//!   `rejected_events_log`: written before the deltas, tagged with the
//!   batch id; only rows of committed batches count.
//! - `rejected_events`: the raw dead letters of committed batches.
//! - `schema_migrations`: the migrations applied.
//!
//! Over 600 lines: the migrations are read in order, v1 to the newest,
//! with the DDL each writes for an old and a modern server; splitting
//! them would scatter one history.

use clickhouse::Client;
use tokentally_aggregate::rollup::{Column, Rollup};
use tokentally_common::retry::{RetryPolicy, Retryable, Verdict};
use tokentally_schemas::prices::PRICE_SCALE;

use std::time::Duration;

use super::ClickHouseError;
use super::error::has_code;
use super::fence::Action;

/// What the server supports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    pub version: String,
    /// `LowCardinality`, codecs, `TTL`, and insert deduplication tokens on
    /// non-replicated MergeTree (ClickHouse 22.8 and later).
    pub modern: bool,
}

impl ServerInfo {
    pub fn from_version(version: &str) -> Self {
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        ServerInfo {
            version: version.to_string(),
            modern: (major, minor) >= (22, 8),
        }
    }

    /// The column type of names (models, providers, reasons).
    pub fn name_type(&self) -> &'static str {
        if self.modern {
            "LowCardinality(String)"
        } else {
            "String"
        }
    }

    pub async fn detect(client: &Client) -> Result<Self, ClickHouseError> {
        let version: String = client
            .query("SELECT version()")
            .fetch_one()
            .await
            .map_err(ClickHouseError::query("SELECT version()"))?;
        Ok(Self::from_version(&version))
    }
}

/// What a row of `usage_deltas` holds: its `kind` column, an `Enum8`.
///
/// The codes are stored: never renumber one. A new kind needs a migration
/// that modifies the column (migration 1 created it with these five). Views
/// and ledger reads compare with the names (`kind = 'progress'`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A delta of `usage_daily`.
    Daily = 1,
    /// A delta of `usage_minute`.
    Minute = 2,
    /// A delta of `usage_app_daily`.
    AppDaily = 3,
    /// A count of refused events, by reason.
    Rejected = 4,
    /// A progress row of the ledger.
    Progress = 5,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Daily,
        Kind::Minute,
        Kind::AppDaily,
        Kind::Rejected,
        Kind::Progress,
    ];

    /// The kind of `rollup`'s deltas.
    pub fn of(rollup: Rollup) -> Kind {
        match rollup {
            Rollup::Daily => Kind::Daily,
            Rollup::Minute => Kind::Minute,
            Rollup::AppDaily => Kind::AppDaily,
        }
    }

    /// The name SQL sees.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Daily => "daily",
            Kind::Minute => "minute",
            Kind::AppDaily => "app_daily",
            Kind::Rejected => "rejected",
            Kind::Progress => "progress",
        }
    }

    /// The stored code.
    pub fn code(self) -> i8 {
        self as i8
    }

    /// The column's type: `Enum8('daily' = 1, ...)`.
    pub fn column_type() -> String {
        enum8(Kind::ALL.map(|k| (k.name(), k.code())))
    }
}

/// An `Enum8` column type of these names and codes, in order: the DDL of
/// an enum column is built from the Rust enum whose codes are stored, so
/// that the two cannot drift apart.
pub(super) fn enum8(values: impl IntoIterator<Item = (&'static str, i8)>) -> String {
    let values: Vec<String> = values
        .into_iter()
        .map(|(name, code)| format!("'{name}' = {code}"))
        .collect();
    format!("Enum8({})", values.join(", "))
}

/// Written as its code (RowBinary `Enum8`).
impl serde::Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i8(self.code())
    }
}

/// Where the schema is created: one server, or every replica of a cluster
/// (`migrate --cluster`).
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub db: &'a str,
    pub server: &'a ServerInfo,
    /// The cluster, as named in the servers' `<remote_servers>`: DDL runs
    /// `ON CLUSTER` it, and every table is `Replicated*MergeTree`, with its
    /// parts under `/clickhouse/tables/{shard}/DB/TABLE` in ZooKeeper and
    /// one replica per server (the `{shard}` and `{replica}` macros).
    pub cluster: Option<&'a str>,
}

impl Target<'_> {
    /// ` ON CLUSTER name` on a cluster, else nothing: what follows the
    /// object of a DDL statement.
    fn on_cluster(&self) -> String {
        self.cluster
            .map(|cluster| format!(" ON CLUSTER {cluster}"))
            .unwrap_or_default()
    }

    /// The object of a DDL statement: `db.name`, `ON CLUSTER` on a cluster.
    pub(crate) fn object(&self, name: &str) -> String {
        format!("{}.{name}{}", self.db, self.on_cluster())
    }

    /// The engine of `table`: `family(args)`, or on a cluster its
    /// replicated form (the ZooKeeper path and replica name come first).
    fn engine(&self, family: &str, table: &str, args: &str) -> String {
        match (self.cluster, args) {
            (None, "") => family.to_string(),
            (None, args) => format!("{family}({args})"),
            (Some(_), args) => {
                let args = if args.is_empty() {
                    String::new()
                } else {
                    format!(", {args}")
                };
                format!(
                    "Replicated{family}('/clickhouse/tables/{{shard}}/{}/{table}', '{{replica}}'{args})",
                    self.db
                )
            }
        }
    }
}

/// Whether `name` can name a cluster in DDL: letters, digits and `_`, not
/// starting with a digit (an identifier that needs no quoting).
pub fn valid_cluster_name(name: &str) -> bool {
    name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One schema change.
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub statements: fn(&Target<'_>) -> Vec<String>,
}

/// Every migration, in order. Append only: never edit a released one.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "usage deltas, progress ledger, dedup ids, dead letters and the analyst views",
        statements: v1,
    },
    Migration {
        version: 2,
        name: "milestones recorded by tokentally alerts",
        statements: v2,
    },
    Migration {
        version: 3,
        name: "dedup ids as one row of arrays per batch and hour",
        statements: v3,
    },
    Migration {
        version: 4,
        name: "batch ranges in the ledger, and the writers table that fences zombies",
        statements: v4,
    },
    Migration {
        version: 5,
        name: "recovery bounded by the dedup horizon: ledger heads, commit-time rows, id set times",
        statements: v5,
    },
    Migration {
        version: 6,
        name: "spend: reasoning and cached tokens in the roll-ups, versioned model prices, cost views",
        statements: v6,
    },
];

/// Create the database and the migrations table.
pub fn bootstrap(t: &Target<'_>) -> Vec<String> {
    vec![
        format!("CREATE DATABASE IF NOT EXISTS {}{}", t.db, t.on_cluster()),
        format!(
            "CREATE TABLE IF NOT EXISTS {} \
             (version UInt32, name String, applied_at DateTime('UTC')) \
             ENGINE = {} ORDER BY version",
            t.object("schema_migrations"),
            t.engine("MergeTree", "schema_migrations", "")
        ),
    ]
}

/// The view columns summing `measures` over `usage_deltas` rows. Delta
/// rows keep `reasoning_tokens` in `batches` (see [`v6`]).
fn sums(measures: &[Column]) -> String {
    measures
        .iter()
        .map(|m| match m {
            Column::ReasoningTokens => format!("sum(batches) AS {m}"),
            m => format!("sum({m}) AS {m}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The measures of `usage_daily` and `usage_minute` as migration 1 created
/// them (a released migration never changes: the roll-ups' measures have
/// grown since).
const V1_DAILY: [Column; 6] = [
    Column::Requests,
    Column::PromptTokens,
    Column::CompletionTokens,
    Column::TotalTokens,
    Column::CachedTokens,
    Column::ErrorRequests,
];

/// The measures of `usage_app_daily` as migration 1 created it.
const V1_APP_DAILY: [Column; 4] = [
    Column::Requests,
    Column::PromptTokens,
    Column::CompletionTokens,
    Column::TotalTokens,
];

/// The columns of `usage_deltas` once every migration has run, as
/// `system.columns` lists them on `server` (name, type): what
/// `migrate --print-ddl` shows a writer's table from. An aggregator reads
/// them from its server instead.
pub fn delta_columns(server: &ServerInfo) -> Vec<(String, String)> {
    let name = server.name_type();
    let datetime = "DateTime('UTC')".to_string();
    let mut columns = vec![
        ("kind", Kind::column_type()),
        ("day", "Date".into()),
        ("minute", datetime.clone()),
    ];
    for c in ["model", "provider", "app", "reason", "source"] {
        columns.push((c, name.to_string()));
    }
    columns.extend([
        ("next_offset", "Int64".into()),
        ("start_offset", "Int64".into()),
        ("batch_id", "String".into()),
    ]);
    for c in [
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cached_tokens",
        "error_requests",
        "batches",
    ] {
        columns.push((c, "UInt64".into()));
    }
    columns.extend([("watermark_ms", "Int64".into()), ("committed_at", datetime)]);
    columns
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .collect()
}

fn v1(t: &Target<'_>) -> Vec<String> {
    let (db, server) = (t.db, t.server);
    let name = server.name_type();
    // Replicated tables deduplicate retried inserts by themselves
    // (`replicated_deduplication_window`).
    let dedup_window = if server.modern && t.cluster.is_none() {
        " SETTINGS non_replicated_deduplication_window = 1000"
    } else {
        ""
    };
    let log_ttl = if server.modern {
        " TTL received_at + INTERVAL 90 DAY"
    } else {
        ""
    };
    let codec = if server.modern { " CODEC(ZSTD(1))" } else { "" };
    let daily = sums(&V1_DAILY);
    let app = sums(&V1_APP_DAILY);
    let kinds = Kind::column_type();
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\
             kind {kinds}, \
             day Date, minute DateTime('UTC'), \
             model {name}, provider {name}, app {name}, reason {name}, \
             source {name}, next_offset Int64, batch_id String, \
             requests UInt64, prompt_tokens UInt64, completion_tokens UInt64, total_tokens UInt64, \
             cached_tokens UInt64, error_requests UInt64, batches UInt64, \
             watermark_ms Int64, committed_at DateTime('UTC') DEFAULT now()) \
             ENGINE = {} \
             ORDER BY (kind, day, minute, model, provider, app, reason, source, next_offset, batch_id)\
             {dedup_window}",
            t.object("usage_deltas"),
            t.engine(
                "SummingMergeTree",
                "usage_deltas",
                "(requests, prompt_tokens, completion_tokens, total_tokens, cached_tokens, \
                 error_requests, batches)"
            )
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\
             batch_id String, bucket Int64, id_hi UInt64, id_lo UInt64) \
             ENGINE = {} PARTITION BY intDiv(bucket, 24) ORDER BY (bucket, id_hi)",
            t.object("dedup_ids"),
            t.engine("MergeTree", "dedup_ids", "")
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\
             received_at DateTime('UTC'), batch_id String, reason {name}, field String, \
             detail String, raw String{codec}) \
             ENGINE = {} PARTITION BY toYYYYMM(received_at) ORDER BY (received_at, reason)\
             {log_ttl}",
            t.object("rejected_events_log"),
            t.engine("MergeTree", "rejected_events_log", "")
        ),
        format!(
            "CREATE VIEW IF NOT EXISTS {} AS \
             SELECT day, model, provider, {daily} FROM {db}.usage_deltas \
             WHERE kind = 'daily' GROUP BY day, model, provider",
            t.object("usage_daily")
        ),
        format!(
            "CREATE VIEW IF NOT EXISTS {} AS \
             SELECT minute, model, {daily} FROM {db}.usage_deltas \
             WHERE kind = 'minute' GROUP BY minute, model",
            t.object("usage_minute")
        ),
        format!(
            "CREATE VIEW IF NOT EXISTS {} AS \
             SELECT day, app, model, {app} FROM {db}.usage_deltas \
             WHERE kind = 'app_daily' GROUP BY day, app, model",
            t.object("usage_app_daily")
        ),
        format!(
            "CREATE VIEW IF NOT EXISTS {} AS \
             SELECT reason, sum(requests) AS count FROM {db}.usage_deltas \
             WHERE kind = 'rejected' GROUP BY reason",
            t.object("rejected")
        ),
        format!(
            "CREATE VIEW IF NOT EXISTS {} AS \
             SELECT source, max(next_offset) AS next_offset, max(committed_at) AS committed_at, \
             max(watermark_ms) AS watermark_ms FROM {db}.usage_deltas \
             WHERE kind = 'progress' GROUP BY source",
            t.object("ingest_progress")
        ),
        format!(
            "CREATE VIEW IF NOT EXISTS {} AS \
             SELECT received_at, reason, field, detail, raw FROM {db}.rejected_events_log \
             WHERE batch_id IN (SELECT batch_id FROM {db}.usage_deltas WHERE kind = 'progress')",
            t.object("rejected_events")
        ),
    ]
}

fn v2(t: &Target<'_>) -> Vec<String> {
    let db = t.db;
    let name = t.server.name_type();
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\
             id String, type {name}, scope {name}, model String, provider String, day String, \
             threshold UInt64, value UInt64, previous_record UInt64, previous_holder String, \
             detected_at DateTime('UTC')) \
             ENGINE = {} ORDER BY id",
            t.object("milestones_log"),
            t.engine("ReplacingMergeTree", "milestones_log", "")
        ),
        format!(
            "CREATE VIEW IF NOT EXISTS {} AS \
             SELECT id, type, scope, model, provider, day, threshold, value, previous_record, \
             previous_holder, detected_at FROM {db}.milestones_log FINAL",
            t.object("milestones")
        ),
    ]
}

/// `dedup_ids` held one row per id (65,536 rows per batch, each repeating
/// the batch id); `dedup_id_sets` holds one row of arrays per batch and
/// hour, which ClickHouse inserts and merges far faster. The old rows are
/// copied over and the old table dropped. Rerunnable at any point: the old
/// table is recreated (empty) if a previous run already dropped it, and
/// sets already copied are skipped. Aggregators must be stopped meanwhile.
fn v3(t: &Target<'_>) -> Vec<String> {
    let db = t.db;
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\
             batch_id String, bucket Int64, ids_hi Array(UInt64), ids_lo Array(UInt64)) \
             ENGINE = {} PARTITION BY intDiv(bucket, 24) ORDER BY (bucket, batch_id)",
            t.object("dedup_id_sets"),
            t.engine("MergeTree", "dedup_id_sets", "")
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\
             batch_id String, bucket Int64, id_hi UInt64, id_lo UInt64) \
             ENGINE = {} PARTITION BY intDiv(bucket, 24) ORDER BY (bucket, id_hi)",
            t.object("dedup_ids"),
            t.engine("MergeTree", "dedup_ids", "")
        ),
        format!(
            "INSERT INTO {db}.dedup_id_sets (batch_id, bucket, ids_hi, ids_lo) \
             SELECT batch_id, bucket, arrayMap(p -> tupleElement(p, 1), pairs), \
             arrayMap(p -> tupleElement(p, 2), pairs) FROM (\
             SELECT batch_id, bucket, groupArray((id_hi, id_lo)) AS pairs FROM {db}.dedup_ids \
             WHERE (batch_id, bucket) NOT IN (SELECT batch_id, bucket FROM {db}.dedup_id_sets) \
             GROUP BY batch_id, bucket)"
        ),
        format!("DROP TABLE IF EXISTS {}", t.object("dedup_ids")),
    ]
}

/// Progress rows record where each batch's range starts, so that the
/// ledger's history can be checked (one gapless chain per partition); and
/// `writers` records which aggregator claimed and released which partition,
/// so that a new owner can fence an old one that never released it (see
/// `fence.rs`). Rerunnable: old servers lack `ADD COLUMN IF NOT EXISTS`,
/// and `migrate` takes "already exists" for done.
fn v4(t: &Target<'_>) -> Vec<String> {
    let if_absent = if t.server.modern {
        "IF NOT EXISTS "
    } else {
        ""
    };
    let actions = Action::column_type();
    vec![
        format!(
            "ALTER TABLE {} ADD COLUMN {if_absent}start_offset Int64 DEFAULT -1 \
             AFTER next_offset",
            t.object("usage_deltas")
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\
             source String, writer String, action {actions}, \
             seq UInt64, at DateTime('UTC') DEFAULT now()) \
             ENGINE = {} ORDER BY (source, writer, seq)",
            t.object("writers"),
            t.engine("MergeTree", "writers", "")
        ),
    ]
}

/// Progress rows by source: the ledger's per-partition chain, sorted by
/// source and offset (every sort-key column before `source` pinned, so a
/// condition on source and offset reads a few granules).
pub const BY_SOURCE: &str = "kind = 'progress' AND day = toDate(0) AND minute = toDateTime(0) \
     AND model = '' AND provider = '' AND app = '' AND reason = ''";

/// Progress rows by commit time: one per source a batch advanced (or one
/// with an empty source), `minute` = the commit time. Add a condition on
/// `minute`.
pub const BY_TIME: &str = "kind = 'progress' AND day = toDate(0)";

/// Makes every recovery read bounded by the dedup horizon and the number of
/// partitions, not by how long the system has run (see docs/ARCHITECTURE.md,
/// "What grows, and its bound"):
/// - `ledger_heads`: a lower bound of each source's committed offset,
///   written after commits; the ledger is read from there on.
/// - every batch also writes its progress rows sorted by commit time
///   (`minute`), so that "the batches committed since T" is a range read;
///   `dedup_id_sets.at` is that commit time, so the ids of the horizon say
///   how far back to read.
///
/// The conversion seeds the heads from the ledger's history and adds
/// commit-time rows for the batches whose ids or dead letters are still
/// kept (one pass over the old ledger, once). Those rows, and the id sets
/// already there, are stamped with the time of the migration, so that the
/// next recoveries read from there on; the ids age out with the horizon.
/// Rerunnable: copies already made are skipped, a head added twice is
/// harmless. Aggregators must be stopped meanwhile.
fn v5(t: &Target<'_>) -> Vec<String> {
    let db = t.db;
    let if_absent = if t.server.modern {
        "IF NOT EXISTS "
    } else {
        ""
    };
    let now = chrono::Utc::now().timestamp();
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\
             source String, next_offset Int64, watermark_ms Int64, at DateTime('UTC')) \
             ENGINE = {} ORDER BY source",
            t.object("ledger_heads"),
            t.engine("ReplacingMergeTree", "ledger_heads", "next_offset")
        ),
        format!(
            "ALTER TABLE {} ADD COLUMN {if_absent}at DateTime('UTC') \
             DEFAULT toDateTime({now}, 'UTC')",
            t.object("dedup_id_sets")
        ),
        format!(
            "INSERT INTO {db}.ledger_heads (source, next_offset, watermark_ms, at) \
             SELECT source, max(next_offset), max(watermark_ms), max(committed_at) \
             FROM {db}.usage_deltas WHERE {BY_SOURCE} AND source != '' GROUP BY source"
        ),
        format!(
            "INSERT INTO {db}.usage_deltas (kind, day, minute, source, next_offset, start_offset, \
             batch_id, requests, batches, watermark_ms, committed_at) \
             SELECT kind, day, now(), source, next_offset, start_offset, batch_id, \
             dead_letters, 1, watermark_ms, committed_at \
             FROM (SELECT * FROM {db}.usage_deltas WHERE {BY_SOURCE} \
             AND (batch_id IN (SELECT batch_id FROM {db}.dedup_id_sets) \
             OR batch_id IN (SELECT batch_id FROM {db}.rejected_events_log)) \
             AND batch_id NOT IN (SELECT batch_id FROM {db}.usage_deltas \
             WHERE {BY_TIME} AND minute > toDateTime(0))) AS p \
             ANY LEFT JOIN (SELECT batch_id, count() AS dead_letters \
             FROM {db}.rejected_events_log GROUP BY batch_id) AS d USING batch_id"
        ),
        format!("DROP TABLE IF EXISTS {}", t.object("ingest_progress")),
        format!(
            "CREATE VIEW IF NOT EXISTS {} AS \
             SELECT source, max(next_offset) AS next_offset, max(committed_at) AS committed_at, \
             max(watermark_ms) AS watermark_ms FROM (\
             SELECT source, next_offset, committed_at, watermark_ms FROM {db}.usage_deltas \
             WHERE {BY_TIME} AND minute >= now() - 3600 AND source != '' \
             UNION ALL \
             SELECT source, next_offset, at AS committed_at, watermark_ms FROM {db}.ledger_heads \
             WHERE next_offset >= 0) GROUP BY source",
            t.object("ingest_progress")
        ),
        format!("DROP TABLE IF EXISTS {}", t.object("rejected_events")),
        format!(
            "CREATE VIEW IF NOT EXISTS {} AS \
             SELECT received_at, reason, field, detail, raw FROM {db}.rejected_events_log \
             WHERE batch_id IN (SELECT batch_id FROM {db}.usage_deltas WHERE {BY_TIME} \
             AND minute >= greatest(toDateTime(1, 'UTC'), \
             (SELECT min(received_at) FROM {db}.rejected_events_log) - 3600) AND requests > 0)",
            t.object("rejected_events")
        ),
    ]
}

/// The measures of the roll-up views as migration 6 recreates them.
const V6_DAILY: [Column; 7] = [
    Column::Requests,
    Column::PromptTokens,
    Column::CompletionTokens,
    Column::TotalTokens,
    Column::CachedTokens,
    Column::ReasoningTokens,
    Column::ErrorRequests,
];

/// The measures of `usage_app_daily` as migration 6 recreates it.
const V6_APP_DAILY: [Column; 6] = [
    Column::Requests,
    Column::PromptTokens,
    Column::CompletionTokens,
    Column::TotalTokens,
    Column::CachedTokens,
    Column::ReasoningTokens,
];

/// Spend (see docs/SQL.md, "Spend"):
/// - the roll-up views recreated with `reasoning_tokens` (all three) and
///   `cached_tokens` (`usage_app_daily`). `usage_deltas` is a
///   `SummingMergeTree` whose summed columns were fixed when migration 1
///   created it, and merges combine the delta rows of one key from
///   different batches: a column added now would not be summed. So delta
///   rows keep their reasoning tokens in `batches`, summed and until now
///   always 0 in them (it counts batches in progress rows only), and the
///   views read it as `reasoning_tokens`.
/// - `model_prices`: every price table `tokentally prices load` stored,
///   one row per model, per `valid_from` and load; `prices`: the last load
///   of each `valid_from`.
/// - `cost_daily`, `cost_app_daily` and `unpriced`, from the roll-ups and
///   the prices (the SQL is in [`crate::cost`]).
/// - `milestones_log` and `milestones` get the spend milestones' columns:
///   `unit`, `app`, and the budget's `budget`, `budget_period`,
///   `budget_limit` (micro-USD) and `budget_percent`.
///
/// Rerunnable: the views are dropped and created again.
fn v6(t: &Target<'_>) -> Vec<String> {
    let db = t.db;
    let if_absent = if t.server.modern {
        "IF NOT EXISTS "
    } else {
        ""
    };
    let name = t.server.name_type();
    let daily = sums(&V6_DAILY);
    let app = sums(&V6_APP_DAILY);
    let price = format!("Decimal(38, {PRICE_SCALE})");
    let mut statements = vec![format!(
        "CREATE TABLE IF NOT EXISTS {} (\
             valid_from Date, loaded_ns UInt64, model String, provider {name}, alias_of String, \
             input {price}, output {price}, cache_read {price}, reasoning {price}, \
             loaded_at DateTime('UTC') DEFAULT now()) \
             ENGINE = {} ORDER BY (valid_from, loaded_ns, model)",
        t.object("model_prices"),
        t.engine("MergeTree", "model_prices", "")
    )];
    for column in [
        "unit String DEFAULT 'tokens'",
        "app String DEFAULT ''",
        "budget String DEFAULT ''",
        "budget_period String DEFAULT ''",
        "budget_limit UInt64 DEFAULT 0",
        "budget_percent UInt32 DEFAULT 0",
    ] {
        statements.push(format!(
            "ALTER TABLE {} ADD COLUMN {if_absent}{column}",
            t.object("milestones_log")
        ));
    }
    let views = [
        (
            "usage_daily",
            format!(
                "SELECT day, model, provider, {daily} FROM {db}.usage_deltas \
                 WHERE kind = 'daily' GROUP BY day, model, provider"
            ),
        ),
        (
            "usage_minute",
            format!(
                "SELECT minute, model, {daily} FROM {db}.usage_deltas \
                 WHERE kind = 'minute' GROUP BY minute, model"
            ),
        ),
        (
            "usage_app_daily",
            format!(
                "SELECT day, app, model, {app} FROM {db}.usage_deltas \
                 WHERE kind = 'app_daily' GROUP BY day, app, model"
            ),
        ),
        ("prices", crate::cost::prices_sql(db)),
        ("cost_daily", crate::cost::cost_daily_sql(db)),
        ("cost_app_daily", crate::cost::cost_app_daily_sql(db)),
        ("unpriced", crate::cost::unpriced_sql(db)),
        (
            "milestones",
            format!(
                "SELECT id, type, scope, model, provider, day, threshold, value, previous_record, \
                 previous_holder, detected_at, unit, app, budget, budget_period, budget_limit, \
                 budget_percent FROM {db}.milestones_log FINAL"
            ),
        ),
    ];
    for (view, sql) in views {
        statements.push(format!("DROP TABLE IF EXISTS {}", t.object(view)));
        statements.push(format!(
            "CREATE VIEW IF NOT EXISTS {} AS {sql}",
            t.object(view)
        ));
    }
    statements
}

/// Whether `error` says that a column being added exists already (a
/// rerun of a migration on a server without `ADD COLUMN IF NOT EXISTS`).
fn column_exists(sql: &str, error: &clickhouse::error::Error) -> bool {
    sql.contains(" ADD COLUMN ") && error.to_string().contains("already exists")
}

/// How long `migrate` waits for a replica to run a statement `ON CLUSTER`.
const DDL_WAIT: Duration = Duration::from_secs(600);

/// A statement's failure, worth repeating only when a replica has not run
/// the statement yet (code 159: it stays queued for that replica).
struct DdlError(clickhouse::error::Error);

impl Retryable for DdlError {
    fn verdict(&self) -> Verdict {
        if has_code(&self.0.to_string(), 159) {
            Verdict::Retry(None)
        } else {
            Verdict::Fail
        }
    }
}

/// Run one statement of a migration. On a cluster, a statement that a
/// replica has not run within `distributed_ddl_task_timeout` (code 159: the
/// replica is down, restarting or behind on its DDL queue) stays queued
/// and runs when the replica can; `migrate` waits for that by running the
/// statement again (each is idempotent), with the shared backoff, for up
/// to [`DDL_WAIT`]. Any other error is final: a server that cannot be
/// reached fails `migrate` at once.
async fn run_ddl(client: &Client, sql: &str) -> Result<(), ClickHouseError> {
    let policy = RetryPolicy {
        first: Duration::from_secs(1),
        max: Duration::from_secs(10),
        give_up_after: DDL_WAIT,
    };
    policy
        .run(
            |_| async {
                match client.query(sql).execute().await {
                    Err(e) if column_exists(sql, &e) => Ok(()),
                    r => r.map_err(DdlError),
                }
            },
            |_, attempt, wait| {
                tracing::warn!(
                    statement = %sql.chars().take(120).collect::<String>(),
                    attempt,
                    retry_in = ?wait,
                    "a replica has not run the statement yet; waiting for it"
                );
            },
        )
        .await
        .map_err(|gave_up| ClickHouseError::query(sql)(gave_up.into_inner().0))
}

/// What `migrate` did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationReport {
    pub server_version: String,
    pub modern: bool,
    pub database: String,
    /// The cluster the schema was created `ON CLUSTER`, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    pub applied: Vec<u32>,
    pub current: u32,
}

/// Apply every migration the database lacks, in order, on the server
/// `client` reaches or, with `cluster`, on every replica of that cluster
/// (`ON CLUSTER`; the statements that copy data run once, on this server,
/// and replication carries their rows). Idempotent: each statement is `IF
/// NOT EXISTS`, and a migration is recorded once all its statements
/// succeeded, so a half-applied one is simply run again.
pub async fn migrate(
    client: &Client,
    db: &str,
    cluster: Option<&str>,
) -> Result<MigrationReport, ClickHouseError> {
    let server = ServerInfo::detect(client).await?;
    let target = Target {
        db,
        server: &server,
        cluster,
    };
    for sql in bootstrap(&target) {
        run_ddl(client, &sql).await?;
    }
    let applied = applied_versions(client, db).await?;
    let mut report = MigrationReport {
        server_version: server.version.clone(),
        modern: server.modern,
        database: db.to_string(),
        cluster: cluster.map(str::to_string),
        applied: Vec::new(),
        current: applied.iter().copied().max().unwrap_or(0),
    };
    for m in MIGRATIONS {
        if applied.contains(&m.version) {
            continue;
        }
        for sql in (m.statements)(&target) {
            run_ddl(client, &sql).await?;
        }
        let record = format!(
            "INSERT INTO {db}.schema_migrations (version, name, applied_at) VALUES ({}, '{}', now())",
            m.version,
            m.name.replace('\'', "\\'")
        );
        client
            .query(&record)
            .execute()
            .await
            .map_err(ClickHouseError::query(&record))?;
        tracing::info!(version = m.version, name = m.name, "migration applied");
        report.applied.push(m.version);
        report.current = m.version;
    }
    Ok(report)
}

/// The migrations recorded in `db`.
pub async fn applied_versions(client: &Client, db: &str) -> Result<Vec<u32>, ClickHouseError> {
    let sql = format!("SELECT DISTINCT version FROM {db}.schema_migrations ORDER BY version");
    client
        .query(&sql)
        .fetch_all::<u32>()
        .await
        .map_err(ClickHouseError::query(&sql))
}

/// The newest schema version this build knows.
pub fn latest_version() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(version: &str, cluster: Option<&'static str>) -> Target<'static> {
        let server = Box::leak(Box::new(ServerInfo::from_version(version)));
        Target {
            db: "db",
            server,
            cluster,
        }
    }

    /// Every statement of every migration, as `migrate` runs them.
    fn all(t: &Target<'_>) -> Vec<String> {
        bootstrap(t)
            .into_iter()
            .chain(MIGRATIONS.iter().flat_map(|m| (m.statements)(t)))
            .collect()
    }

    #[test]
    fn on_a_cluster_every_ddl_statement_runs_on_every_replica_and_tables_replicate() {
        for version in ["18.16.1", "26.1"] {
            let statements = all(&target(version, Some("tokentally")));
            let ddl: Vec<&String> = statements
                .iter()
                .filter(|s| !s.starts_with("INSERT"))
                .collect();
            assert!(ddl.len() > 10);
            for s in &ddl {
                assert!(s.contains(" ON CLUSTER tokentally"), "{version}: {s}");
            }
            let tables: Vec<&&String> = ddl
                .iter()
                .filter(|s| s.starts_with("CREATE TABLE"))
                .collect();
            assert_eq!(tables.len(), 10, "{version}");
            for s in tables {
                let table = s
                    .split_whitespace()
                    .nth(5)
                    .unwrap()
                    .trim_start_matches("db.");
                assert!(s.contains("ENGINE = Replicated"), "{version}: {s}");
                assert!(
                    s.contains(&format!(
                        "('/clickhouse/tables/{{shard}}/db/{table}', '{{replica}}'"
                    )),
                    "{version}: {s}"
                );
                assert!(!s.contains("non_replicated_deduplication_window"), "{s}");
            }
            // Data is copied once, on the server migrate talks to.
            assert!(
                statements
                    .iter()
                    .filter(|s| s.starts_with("INSERT"))
                    .all(|s| !s.contains("ON CLUSTER"))
            );
        }
        let one = all(&target("26.1", None));
        assert!(
            one.iter()
                .all(|s| !s.contains("ON CLUSTER") && !s.contains("Replicated"))
        );
    }

    #[test]
    fn cluster_names_are_plain_identifiers() {
        for ok in ["tokentally", "prod_2", "_x"] {
            assert!(valid_cluster_name(ok), "{ok}");
        }
        for bad in ["", "2x", "a-b", "a b", "a;DROP", "ünï", "`x`"] {
            assert!(!valid_cluster_name(bad), "{bad}");
        }
    }

    #[test]
    fn version_detection() {
        assert!(!ServerInfo::from_version("18.16.1").modern);
        assert!(!ServerInfo::from_version("22.3.2.1").modern);
        assert!(ServerInfo::from_version("22.8.1").modern);
        assert!(ServerInfo::from_version("26.1.2.3").modern);
        assert!(!ServerInfo::from_version("garbage").modern);
    }

    #[test]
    fn kinds_keep_their_stored_codes() {
        let stored: Vec<(i8, &str)> = Kind::ALL.iter().map(|k| (k.code(), k.name())).collect();
        assert_eq!(
            stored,
            [
                (1, "daily"),
                (2, "minute"),
                (3, "app_daily"),
                (4, "rejected"),
                (5, "progress")
            ]
        );
        assert!(v1(&target("26.1", None))[0].contains(
            "kind Enum8('daily' = 1, 'minute' = 2, 'app_daily' = 3, 'rejected' = 4, 'progress' = 5), "
        ));
    }

    /// Migration 6's views list the roll-ups' measures as they are now: a
    /// new measure fails here until a migration recreates the views.
    #[test]
    fn the_latest_views_have_every_measure() {
        assert_eq!(V6_DAILY.as_slice(), Rollup::Daily.measures());
        assert_eq!(V6_DAILY.as_slice(), Rollup::Minute.measures());
        assert_eq!(V6_APP_DAILY.as_slice(), Rollup::AppDaily.measures());
        // Reasoning tokens are read from a column the engine sums; a column
        // added after the table was created would be merged wrongly.
        let v6 = v6(&target("18.16.1", None));
        let views: Vec<&String> = v6
            .iter()
            .filter(|s| s.starts_with("CREATE VIEW IF NOT EXISTS db.usage_"))
            .collect();
        assert_eq!(views.len(), 3);
        for view in views {
            assert!(view.contains("sum(batches) AS reasoning_tokens"), "{view}");
        }
        assert!(v6.iter().all(|s| !s.contains("usage_deltas ADD COLUMN")));
    }

    #[test]
    fn writer_actions_keep_their_stored_codes() {
        let stored: Vec<(i8, &str)> = Action::ALL.iter().map(|a| (a.code(), a.name())).collect();
        assert_eq!(stored, [(1, "claim"), (2, "release")]);
        for server in ["18.16.1", "26.1"] {
            assert!(
                v4(&target(server, None))[1].contains("action Enum8('claim' = 1, 'release' = 2), "),
                "{server}"
            );
        }
    }

    #[test]
    fn migrations_are_ordered_and_modern_ddl_differs() {
        let versions: Vec<u32> = MIGRATIONS.iter().map(|m| m.version).collect();
        let mut sorted = versions.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(versions, sorted);
        let old = v1(&target("18.16.1", None));
        let new = v1(&target("26.1", None));
        assert!(old.iter().all(|s| !s.contains("LowCardinality")));
        assert!(new[0].contains("LowCardinality(String)"));
        assert!(new[0].contains("non_replicated_deduplication_window"));
    }
}
