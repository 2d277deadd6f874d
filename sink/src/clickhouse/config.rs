//! The sink's settings (`[clickhouse]`), and a client built from them.

use std::time::Duration;

use clickhouse::Client;
use serde::{Deserialize, Serialize};

use super::ClickHouseError;

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
        let bytes =
            crate::files::read_bounded(path, crate::files::SECRET_FILE_BYTES).map_err(|e| {
                ClickHouseError::Config(format!(
                    "reading the password file {}: {e}",
                    path.display()
                ))
            })?;
        let text = String::from_utf8_lossy(&bytes);
        Ok(Some(text.lines().next().unwrap_or_default().to_string()))
    }
}
