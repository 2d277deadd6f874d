use clap::{Args, ValueEnum};
use tokentally_sink::clickhouse::schema::{MIGRATIONS, Target, bootstrap, delta_columns};
use tokentally_sink::clickhouse::{ClickHouseError, ServerInfo, cannot_reach, fence, migrate};

use super::clickhouse_args::ClickHouseArgs;
use tokentally::config::Config;

/// Create or upgrade tokentally's ClickHouse schema: the database, the
/// `usage_deltas` ledger, the analyst views (`usage_daily`, `usage_minute`,
/// `usage_app_daily`, `rejected`, `rejected_events`, `ingest_progress`) and
/// their helpers. Idempotent: applied migrations are recorded in
/// `schema_migrations` and skipped. Modern servers (22.8+) get
/// `LowCardinality`, codecs, TTL and insert deduplication; older ones a
/// compatible form. See docs/SQL.md.
///
/// With `--cluster NAME` the DDL runs `ON CLUSTER` and tables are
/// `Replicated*MergeTree` with the `{shard}` and `{replica}` macros, so that
/// analysts and Grafana can read from any replica; the servers need
/// ZooKeeper or ClickHouse Keeper (docs/DEPLOYMENT.md).
#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    /// Print the DDL for this kind of server instead of applying it (no
    /// connection is made): every statement, `;`-terminated, then what each
    /// aggregator runs for its own writer table (created at start, dropped
    /// when it ends or is fenced out; on a cluster, the fence's `ON
    /// CLUSTER` form), for an example writer id.
    #[arg(long, value_enum, value_name = "KIND")]
    pub print_ddl: Option<DdlKind>,
    /// Print the result (or the DDL) as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DdlKind {
    /// ClickHouse 22.8 and later.
    Modern,
    /// Older servers (e.g. 18.16).
    Compatible,
}

/// The writer id `--print-ddl` shows an aggregator's statements for.
const EXAMPLE_WRITER: &str = "0123456789abcdef";

fn print_ddl(db: &str, cluster: Option<&str>, kind: DdlKind, json: bool) -> anyhow::Result<()> {
    let server = ServerInfo::from_version(match kind {
        DdlKind::Modern => "26.1",
        DdlKind::Compatible => "18.16",
    });
    let target = Target {
        db,
        server: &server,
        cluster,
    };
    let writer = fence::create_writer(db, EXAMPLE_WRITER, &delta_columns(&server))
        .map_err(anyhow::Error::msg)?;
    let statements: Vec<String> = bootstrap(&target)
        .into_iter()
        .chain(MIGRATIONS.iter().flat_map(|m| (m.statements)(&target)))
        .chain(writer)
        .chain(fence::drop_writer(&target, EXAMPLE_WRITER))
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&statements)?);
    } else {
        for s in statements {
            println!("{s};\n");
        }
    }
    Ok(())
}

pub async fn run(mut config: Config, args: MigrateArgs) -> anyhow::Result<()> {
    args.clickhouse.apply(&mut config)?;
    let ch = &config.clickhouse;
    if let Some(kind) = args.print_ddl {
        return print_ddl(&ch.database, ch.cluster.as_deref(), kind, args.json);
    }
    let client = ch.client()?;
    let report = migrate(&client, &ch.database, ch.cluster.as_deref())
        .await
        .map_err(|e| match e {
            ClickHouseError::Request { error, .. }
                if matches!(error, clickhouse::error::Error::Network(_)) =>
            {
                anyhow::anyhow!(cannot_reach(&ch.url, &error))
            }
            other => other.into(),
        })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let mut kind = if report.modern {
            "modern"
        } else {
            "compatible"
        }
        .to_string();
        if let Some(cluster) = &report.cluster {
            kind.push_str(&format!(", ON CLUSTER {cluster}"));
        }
        if report.applied.is_empty() {
            println!(
                "database {} is up to date at schema version {} (ClickHouse {}, {kind} DDL)",
                report.database, report.current, report.server_version
            );
        } else {
            println!(
                "applied migrations {:?} to database {}: now at schema version {} (ClickHouse {}, {kind} DDL)",
                report.applied, report.database, report.current, report.server_version
            );
        }
    }
    Ok(())
}
