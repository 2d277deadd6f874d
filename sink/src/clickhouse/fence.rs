//! Fencing: at most one aggregator writes a partition, enforced by
//! ClickHouse itself, on every server version.
//!
//! Checking the ledger and then inserting is two requests: two aggregators
//! can pass the check together (one of them paused, cut off from Kafka, or
//! replaced under its `--instance-id` without knowing it yet). So each
//! aggregator commits through a table of its own, a `Null` table named
//! after it whose materialized view forwards every insert into
//! `usage_deltas` (one part per insert, as before). A batch is one row of
//! that table, its roll-up rows in arrays the view unfolds: a request cut
//! off mid-body ends inside that row, and the server refuses it whole. An
//! aggregator that is assigned partitions first records its claim in
//! `writers`, then drops the table of every other aggregator whose last
//! word on one of them is a claim (one that never released it), and only
//! then reads the ledger.
//!
//! `DROP TABLE` waits for the inserts into that table already running (they
//! hold its structure lock; `SYNC` on servers with the Atomic database
//! engine, whose drops are otherwise deferred), and every insert after it
//! fails ("doesn't exist" or "is dropped"). So once the drop returns, the
//! old owner's last batch is either in the ledger the new owner is about to
//! read, or never will be: the drop is the linearization point that the
//! check alone lacks. The fenced aggregator's next commit fails and it
//! stops; a restart is a new writer and resumes from the ledger.
//!
//! An aggregator that gives partitions up cleanly (a rebalance revokes
//! them, after its batches of them are committed) records a release first,
//! so a cooperative rebalance fences nobody.

use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;

use super::database::{quote, quote_all};
use super::error::has_code;
use super::rows::{BatchRow, DeltaRow};
use super::schema::{Target, enum8};

/// This aggregator, as a writer of partitions.
#[derive(Debug)]
pub struct Writer {
    /// Random, unique per process: a restart is a new writer.
    pub id: String,
    /// Orders this writer's own claims and releases.
    seq: AtomicU64,
}

/// What a row of `writers` records: its `action` column, an `Enum8`.
///
/// The codes are stored: never renumber one. Migration 4 created the
/// column from [`Action::column_type`]; another action needs a migration
/// that modifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The writer took partitions over and may write them.
    Claim = 1,
    /// The writer gave partitions up, its batches of them committed.
    Release = 2,
}

impl Action {
    pub const ALL: [Action; 2] = [Action::Claim, Action::Release];

    /// The name SQL sees.
    pub fn name(self) -> &'static str {
        match self {
            Action::Claim => "claim",
            Action::Release => "release",
        }
    }

    /// The stored code.
    pub fn code(self) -> i8 {
        self as i8
    }

    /// The column's type: `Enum8('claim' = 1, 'release' = 2)`.
    pub fn column_type() -> String {
        enum8(Action::ALL.map(|a| (a.name(), a.code())))
    }
}

/// Written as its code (RowBinary `Enum8`).
impl serde::Serialize for Action {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i8(self.code())
    }
}

/// One row of `writers`.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, serde::Serialize)]
pub struct WriterRow<'a> {
    pub source: &'a str,
    pub writer: &'a str,
    pub action: Action,
    pub seq: u64,
}

impl Writer {
    pub fn new() -> Self {
        Writer {
            id: format!("{:016x}", rand::rng().random::<u64>()),
            seq: AtomicU64::new(0),
        }
    }

    /// The table this writer inserts its batches into.
    pub fn table(&self) -> String {
        table_of(&self.id)
    }

    /// Statements creating this writer's table and its view, from the
    /// columns of `usage_deltas` (name, type).
    pub fn create(&self, db: &str, columns: &[(String, String)]) -> Result<Vec<String>, String> {
        create_writer(db, &self.id, columns)
    }

    /// Rows recording `action` on `keys` by this writer.
    pub fn rows<'a>(&'a self, keys: &'a [String], action: Action) -> Vec<WriterRow<'a>> {
        keys.iter()
            .map(|k| WriterRow {
                source: k,
                writer: &self.id,
                action,
                seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            })
            .collect()
    }
}

impl Default for Writer {
    fn default() -> Self {
        Self::new()
    }
}

/// Statements creating writer `id`'s table and its view, given the
/// `(name, type)` of every column of `usage_deltas`.
///
/// The table holds a batch as ONE row ([`BatchRow`]): its `usage_deltas`
/// rows as a `Nested` column, an array per column of [`DeltaRow`], and
/// `committed_at`, the server's time when the insert arrived. The view
/// unfolds the arrays (`ARRAY JOIN`) into `usage_deltas`, as they are,
/// except that a commit-time progress row (`minute` not 0) gets
/// `committed_at` as its `minute`: one clock for every aggregator, and a
/// batch whose insert was retried for hours is found by its arrival, not by
/// when it was cut.
///
/// One row, because a request cut off mid-body (its client killed, or a
/// connection closed cleanly mid-request) reads to the server as a clean
/// end of stream: rows parsed before it would be inserted as a finished
/// insert, and counted again by the retry. A row cut off is refused whole.
pub fn create_writer(
    db: &str,
    id: &str,
    columns: &[(String, String)],
) -> Result<Vec<String>, String> {
    use clickhouse::Row;
    let table = table_of(id);
    let nested = BatchRow::NESTED;
    let type_of = |name: &str| {
        columns
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.as_str())
            .ok_or_else(|| format!("{db}.usage_deltas has no column {name}"))
    };
    let fields = DeltaRow::COLUMN_NAMES
        .iter()
        .map(|c| Ok(format!("{c} {}", type_of(c)?)))
        .collect::<Result<Vec<_>, String>>()?
        .join(", ");
    let select = DeltaRow::COLUMN_NAMES
        .iter()
        .map(|c| match *c {
            "minute" => format!(
                "if({nested}.kind = 'progress' AND {nested}.minute != toDateTime(0), \
                 committed_at, {nested}.minute) AS minute"
            ),
            c => format!("{nested}.{c} AS {c}"),
        })
        .chain(["committed_at".to_string()])
        .collect::<Vec<_>>()
        .join(", ");
    Ok(vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.{table} ({nested} Nested({fields}), \
             committed_at {} DEFAULT now()) ENGINE = Null",
            type_of("committed_at")?
        ),
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{table}_mv TO {db}.usage_deltas \
             AS SELECT {select} FROM {db}.{table} ARRAY JOIN {nested}"
        ),
    ])
}

/// The table of writer `id`.
pub fn table_of(id: &str) -> String {
    format!("writer_{id}")
}

/// Statements dropping writer `id`'s table (first, waiting for the
/// inserts in it) and its view: to fence it out, or when it ends.
///
/// On a cluster a fencing aggregator drops `ON CLUSTER`: a writer's table
/// lives on the replica that writer is connected to, which others do not
/// know, and the statement returns only once every replica has run it (a
/// replica that is down makes it time out, and it is retried: nobody reads
/// a ledger the old writer might still add to). A writer ending drops its
/// own table where it is, with a `target` without a cluster.
pub fn drop_writer(target: &Target, id: &str) -> Vec<String> {
    let table = table_of(id);
    let sync = if target.server.modern { " SYNC" } else { "" };
    vec![
        format!("DROP TABLE IF EXISTS {}{sync}", target.object(&table)),
        format!(
            "DROP TABLE IF EXISTS {}{sync}",
            target.object(&format!("{table}_mv"))
        ),
    ]
}

/// The writers other than `me` whose last word on one of `keys` is a
/// claim: they may still write those partitions.
pub fn holders_sql(db: &str, keys: &[String], me: &str) -> String {
    let keys = quote_all(keys);
    format!(
        "SELECT DISTINCT writer FROM (SELECT writer, argMax(action, seq) AS last \
         FROM {db}.writers WHERE source IN ({keys}) GROUP BY source, writer) \
         WHERE last = '{}' AND writer != {}",
        Action::Claim.name(),
        quote(me)
    )
}

/// Whether a failed insert failed because its table was dropped: the
/// writer was fenced.
pub fn is_fenced_out(message: &str) -> bool {
    // UNKNOWN_TABLE (60), TABLE_IS_DROPPED (218).
    (has_code(message, 60) || has_code(message, 218)) && message.contains(&table_of(""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clickhouse::schema::ServerInfo;

    #[test]
    fn a_writer_orders_its_own_claims_and_releases() {
        let w = Writer::new();
        assert_eq!(w.id.len(), 16);
        let keys = vec!["kafka:t:0".to_string(), "kafka:t:1".to_string()];
        let claims: Vec<u64> = w.rows(&keys, Action::Claim).iter().map(|r| r.seq).collect();
        let releases: Vec<u64> = w
            .rows(&keys, Action::Release)
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(claims, vec![1, 2]);
        assert_eq!(releases, vec![3, 4]);
        assert_ne!(Writer::new().id, w.id);
    }

    #[test]
    fn fencing_sql() {
        use clickhouse::Row;
        let old = ServerInfo::from_version("18.16.1");
        let new = ServerInfo::from_version("26.1");
        let on = |server, cluster| Target {
            db: "db",
            server,
            cluster,
        };
        assert_eq!(
            drop_writer(&on(&old, None), "ab"),
            vec![
                "DROP TABLE IF EXISTS db.writer_ab",
                "DROP TABLE IF EXISTS db.writer_ab_mv"
            ]
        );
        assert!(drop_writer(&on(&new, None), "ab")[0].ends_with(" SYNC"));
        assert_eq!(
            drop_writer(&on(&new, Some("c1")), "ab"),
            vec![
                "DROP TABLE IF EXISTS db.writer_ab ON CLUSTER c1 SYNC",
                "DROP TABLE IF EXISTS db.writer_ab_mv ON CLUSTER c1 SYNC"
            ]
        );
        let columns: Vec<(String, String)> = DeltaRow::COLUMN_NAMES
            .iter()
            .map(|c| (c.to_string(), format!("T_{c}")))
            .chain([("committed_at".into(), "DateTime('UTC')".into())])
            .collect();
        let create = create_writer("db", "ab", &columns).unwrap();
        assert!(
            create[0].starts_with(
                "CREATE TABLE IF NOT EXISTS db.writer_ab (batch Nested(kind T_kind, day T_day, \
                 minute T_minute, model T_model,"
            ),
            "{}",
            create[0]
        );
        assert!(
            create[0].ends_with(
                ", watermark_ms T_watermark_ms), committed_at DateTime('UTC') DEFAULT now()) \
                 ENGINE = Null"
            ),
            "{}",
            create[0]
        );
        // Every column a batch writes goes through, and commit-time rows
        // take the server's arrival time.
        assert!(
            create[1].contains(
                "SELECT batch.kind AS kind, batch.day AS day, if(batch.kind = 'progress' AND \
                 batch.minute != toDateTime(0), committed_at, batch.minute) AS minute, \
                 batch.model AS model,"
            ),
            "{}",
            create[1]
        );
        assert!(
            create[1].ends_with(
                ", batch.watermark_ms AS watermark_ms, committed_at FROM db.writer_ab \
                 ARRAY JOIN batch"
            ),
            "{}",
            create[1]
        );
        let missing = &columns[1..];
        assert_eq!(
            create_writer("db", "ab", missing).unwrap_err(),
            "db.usage_deltas has no column kind"
        );
        let sql = holders_sql("db", &["kafka:t:0".into(), "kafka:it's:1".into()], "me");
        assert!(sql.contains("IN ('kafka:t:0', 'kafka:it\\'s:1')"), "{sql}");
        assert!(sql.contains("writer != 'me'"), "{sql}");
        assert!(is_fenced_out(
            "Code: 60. DB::Exception: Table tokentally.writer_0123 doesn't exist."
        ));
        assert!(is_fenced_out(
            "bad response: Code: 60, e.displayText() = DB::Exception: Table t.writer_01 doesn't exist."
        ));
        assert!(is_fenced_out(
            "Code: 218, e.displayText() = DB::Exception: Table writer_01 is dropped"
        ));
        assert!(!is_fenced_out(
            "Code: 60. DB::Exception: Table db.usage_deltas doesn't exist."
        ));
    }
}
