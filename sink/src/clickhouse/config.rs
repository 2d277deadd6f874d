//! The sink's settings (`[clickhouse]`), and a client built from them.

use std::time::Duration;

use clickhouse::Client;
use serde::{Deserialize, Serialize};

use super::ClickHouseError;
use tokentally_common::secret::SecretSource;
use tokentally_common::tls;

/// Idle pooled connections are closed after this, before the server's
/// keep-alive timeout (3 s by default) closes them under a request (as the
/// `clickhouse` crate's own client does).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// The variable the password is read from when no `password_file` is set.
pub const PASSWORD_ENV: &str = "TOKENTALLY_CLICKHOUSE_PASSWORD";

/// ClickHouse settings (`[clickhouse]` in the config file). The password
/// never comes from the config file or the command line: it is read from
/// `password_file`, or else from `TOKENTALLY_CLICKHOUSE_PASSWORD`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// HTTP endpoint, `http://` or `https://`. Also `--clickhouse` or
    /// `TOKENTALLY_CLICKHOUSE_URL`.
    pub url: String,
    /// CA certificates (PEM) trusted for an `https://` URL besides the
    /// system's (a private CA, a self-signed server). Also
    /// `--clickhouse-ca-file` or `TOKENTALLY_CLICKHOUSE_CA_FILE`.
    pub ca_file: Option<std::path::PathBuf>,
    /// Database of tokentally's tables. Default `tokentally`.
    pub database: String,
    /// The cluster the schema was created on (`tokentally migrate
    /// --cluster NAME`), when it is replicated. The aggregator then fences
    /// other aggregators on every replica (`DROP TABLE ... ON CLUSTER`) and
    /// waits for its replica to hold every part of the ledger
    /// (`SYSTEM SYNC REPLICA`) before it resumes partitions, so that it
    /// counts nothing twice whichever replica it is connected to. Also
    /// `--clickhouse-cluster` or `TOKENTALLY_CLICKHOUSE_CLUSTER`. The
    /// aggregator refuses to start when this does not match the schema.
    pub cluster: Option<String>,
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
            ca_file: None,
            database: "tokentally".into(),
            cluster: None,
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
    /// servers lack what validation needs), LZ4, the credentials, TLS for
    /// `https://` URLs (system roots plus `ca_file`), and on a cluster a
    /// bound on how long `ON CLUSTER` statements wait for the replicas.
    pub fn client(&self) -> Result<Client, ClickHouseError> {
        let http = tls::http_client(self.ca_file.as_deref(), POOL_IDLE_TIMEOUT)
            .map_err(|e| ClickHouseError::Config(format!("ClickHouse TLS settings: {e}")))?;
        let mut client = Client::with_http_client(http)
            .with_url(&self.url)
            .with_user(&self.user)
            .with_validation(false)
            .with_compression(clickhouse::Compression::Lz4);
        if let Some(password) = self.password()? {
            client = client.with_password(password);
        }
        if self.cluster.is_some() {
            // `ON CLUSTER` statements wait for every replica; the server
            // reports the replicas that did not answer before the client
            // gives up on the request.
            let wait = (self.request_timeout.as_secs() * 2 / 3).max(1);
            client = client.with_setting("distributed_ddl_task_timeout", wait.to_string());
        }
        Ok(client)
    }

    /// From `password_file`, else `TOKENTALLY_CLICKHOUSE_PASSWORD` (see
    /// [`tokentally_common::secret`]); the first line.
    fn password(&self) -> Result<Option<String>, ClickHouseError> {
        let secret = SecretSource::new(PASSWORD_ENV, self.password_file.as_deref())
            .read()
            .map_err(|e| ClickHouseError::Config(format!("the ClickHouse password: {e}")))?;
        Ok(secret.map(|s| s.first_line().to_string()))
    }
}
