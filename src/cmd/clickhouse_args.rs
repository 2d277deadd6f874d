use clap::Args;

use tokentally_sink::clickhouse::schema::valid_cluster_name;

use tokentally::config::Config;

/// Flags that override `[clickhouse]`. The password is read from
/// `TOKENTALLY_CLICKHOUSE_PASSWORD` or `[clickhouse] password_file`, never
/// from a flag.
#[derive(Debug, Clone, Args)]
pub struct ClickHouseArgs {
    /// ClickHouse HTTP(S) URL [default: http://127.0.0.1:8123].
    #[arg(
        long = "clickhouse",
        env = "TOKENTALLY_CLICKHOUSE_URL",
        value_name = "URL"
    )]
    pub url: Option<String>,
    /// Database of tokentally's tables [default: tokentally].
    #[arg(long, env = "TOKENTALLY_CLICKHOUSE_DATABASE", value_name = "DB")]
    pub clickhouse_database: Option<String>,
    /// ClickHouse user [default: default].
    #[arg(long, env = "TOKENTALLY_CLICKHOUSE_USER", value_name = "USER")]
    pub clickhouse_user: Option<String>,
    /// CA certificates (PEM) trusted for an https:// URL, besides the
    /// system's.
    #[arg(long, env = "TOKENTALLY_CLICKHOUSE_CA_FILE", value_name = "FILE")]
    pub clickhouse_ca_file: Option<std::path::PathBuf>,
    /// The cluster (its name in the servers' `<remote_servers>`) whose
    /// replicas hold tokentally's schema: `migrate` creates it there `ON
    /// CLUSTER`, with replicated tables; `aggregate` then fences and
    /// resumes partitions on every replica. See docs/DEPLOYMENT.md.
    #[arg(
        long,
        visible_alias = "cluster",
        env = "TOKENTALLY_CLICKHOUSE_CLUSTER",
        value_name = "NAME",
        value_parser = cluster_name
    )]
    pub clickhouse_cluster: Option<String>,
}

fn cluster_name(name: &str) -> Result<String, String> {
    if valid_cluster_name(name) {
        Ok(name.to_string())
    } else {
        Err("a cluster name is letters, digits and _, not starting with a digit".into())
    }
}

impl ClickHouseArgs {
    pub fn apply(&self, config: &mut Config) -> anyhow::Result<()> {
        if let Some(u) = &self.url {
            config.clickhouse.url = u.clone();
        }
        if let Some(d) = &self.clickhouse_database {
            config.clickhouse.database = d.clone();
        }
        if let Some(u) = &self.clickhouse_user {
            config.clickhouse.user = u.clone();
        }
        if let Some(ca) = &self.clickhouse_ca_file {
            config.clickhouse.ca_file = Some(ca.clone());
        }
        if let Some(c) = &self.clickhouse_cluster {
            config.clickhouse.cluster = Some(c.clone());
        }
        let db = &config.clickhouse.database;
        anyhow::ensure!(
            !db.is_empty() && db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "the ClickHouse database name must be letters, digits and underscores, got {db:?}"
        );
        if let Some(c) = &config.clickhouse.cluster {
            anyhow::ensure!(
                valid_cluster_name(c),
                "[clickhouse] cluster: a cluster name is letters, digits and _, not starting with a digit, got {c:?}"
            );
        }
        Ok(())
    }
}
