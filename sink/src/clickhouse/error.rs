//! Errors of the ClickHouse sink, which of them are worth retrying, and the
//! retry and timeout helpers every request goes through.

use std::future::Future;
use std::time::Duration;

use super::SinkMetrics;
use tokentally_common::retry::{GaveUp, RetryPolicy, Retryable, Verdict};
use tokentally_common::{error, tls};

/// Errors of the ClickHouse sink.
#[derive(Debug, thiserror::Error)]
pub enum ClickHouseError {
    // The client error is part of the message, not a `source`, so that
    // error chains do not print it twice.
    #[error("ClickHouse: {context}: {}", error::chain(.error))]
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

/// "cannot reach ClickHouse at URL: why", with every cause (a TLS
/// failure is several levels below the client's "client error (Connect)").
pub fn cannot_reach(url: &str, error: &clickhouse::error::Error) -> String {
    format!("cannot reach ClickHouse at {url}: {}", error::chain(error))
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
    /// restarting server. Not: bad SQL, a missing table, fencing, a
    /// certificate that does not verify, a wrong password.
    pub fn is_retriable(&self) -> bool {
        use clickhouse::error::Error as E;
        match self {
            ClickHouseError::Timeout(..) => true,
            ClickHouseError::Request { error, .. } => match error {
                E::Network(_) if tls::is_tls_failure(error) => false,
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

impl Retryable for ClickHouseError {
    fn verdict(&self) -> Verdict {
        if self.is_retriable() {
            Verdict::Retry(None)
        } else {
            Verdict::Fail
        }
    }
}

/// The sink's retries: backoff from 100 ms doubling to 5 s, for at most
/// `budget` (`[clickhouse] retry_for` for commits).
pub fn retry_policy(budget: Duration) -> RetryPolicy {
    RetryPolicy {
        first: Duration::from_millis(100),
        max: Duration::from_secs(5),
        give_up_after: budget,
    }
}

/// Retry `op` on retriable errors under `retry_policy(budget)`,
/// counting failures and retries in `metrics`.
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
    retry_policy(budget)
        .run(
            |attempt| {
                let attempt = op(attempt);
                async move {
                    let result = attempt.await;
                    if let (Err(_), Some(m)) = (&result, metrics) {
                        m.errors.inc();
                    }
                    result
                }
            },
            |e, attempt, wait| {
                if let Some(m) = metrics {
                    m.retries.inc();
                }
                tracing::warn!(what, attempt, error = %e, retry_in = ?wait, "ClickHouse request failed, retrying");
            },
        )
        .await
        .map_err(|gave_up| match gave_up {
            GaveUp::Final(e) => e,
            GaveUp::Exhausted { last, .. } => ClickHouseError::GaveUp(budget, Box::new(last)),
        })
}

/// Run `fut` with the request timeout.
pub(super) async fn timed<T>(
    timeout: Duration,
    what: &str,
    fut: impl Future<Output = Result<T, ClickHouseError>>,
) -> Result<T, ClickHouseError> {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| Err(ClickHouseError::Timeout(timeout, what.to_string())))
}
