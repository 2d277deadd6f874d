//! Fencing: at most one aggregator writes a partition, enforced by
//! ClickHouse itself, on every server version.
//!
//! Checking the ledger and then inserting is two requests: two aggregators
//! can pass the check together (one of them paused, cut off from Kafka, or
//! replaced under its `--instance-id` without knowing it yet). So each
//! aggregator commits through a table of its own, a `Null` table named
//! after it whose materialized view forwards every insert into
//! `usage_deltas` (one part per insert, as before). An aggregator that is
//! assigned partitions first records its claim in `writers`, then drops the
//! table of every other aggregator whose last word on one of them is a
//! claim (one that never released it), and only then reads the ledger.
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
use super::rows::DeltaRow;
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

    /// Statements creating this writer's table and its view.
    pub fn create(&self, db: &str) -> Vec<String> {
        create_writer(db, &self.id)
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

/// Statements creating writer `id`'s table and its view. The view forwards
/// the columns a batch writes ([`DeltaRow`]) and `committed_at` (the
/// server's time when the insert arrived) as they are, except that a
/// commit-time progress row (`minute` not 0) gets `committed_at` as its
/// `minute`: one clock for every aggregator, and a batch whose insert was
/// retried for hours is found by its arrival, not by when it was cut.
pub fn create_writer(db: &str, id: &str) -> Vec<String> {
    use clickhouse::Row;
    let table = table_of(id);
    let select = DeltaRow::COLUMN_NAMES
        .iter()
        .chain(&["committed_at"])
        .map(|c| match *c {
            "minute" => {
                "if(kind = 'progress' AND minute != toDateTime(0), committed_at, minute) AS minute"
            }
            c => c,
        })
        .collect::<Vec<_>>()
        .join(", ");
    vec![
        format!("CREATE TABLE IF NOT EXISTS {db}.{table} AS {db}.usage_deltas ENGINE = Null"),
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{table}_mv TO {db}.usage_deltas \
             AS SELECT {select} FROM {db}.{table}"
        ),
    ]
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
        let create = create_writer("db", "ab");
        assert_eq!(
            create[0],
            "CREATE TABLE IF NOT EXISTS db.writer_ab AS db.usage_deltas ENGINE = Null"
        );
        // Every column a batch writes goes through, and commit-time rows
        // take the server's arrival time.
        assert!(create[1].contains("SELECT kind, day, if(kind = 'progress' AND minute != toDateTime(0), committed_at, minute) AS minute, model,"), "{}", create[1]);
        assert!(
            create[1].ends_with(", watermark_ms, committed_at FROM db.writer_ab"),
            "{}",
            create[1]
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
