//! How every tokentally Kafka client connects: bootstrap servers, TLS,
//! SASL and pass-through librdkafka properties, resolved once from
//! `[kafka]` into a [`Connection`] that producers, the admin client and the
//! consumer all start from. The SASL password is read here and nowhere
//! else (from `sasl_password_file`, else `TOKENTALLY_KAFKA_PASSWORD`).
//!
//! Over 600 lines: a quarter is unit tests of the settings each protocol
//! accepts and refuses, kept beside their parser.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryResult, ProducerContext};
use serde::{Deserialize, Serialize};
use tokentally_common::secret::SecretSource;

use super::KafkaConfig;

/// The variable the SASL password is read from when no
/// `sasl_password_file` is set.
pub const PASSWORD_ENV: &str = "TOKENTALLY_KAFKA_PASSWORD";

/// `[kafka] security_protocol`: librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SecurityProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            SecurityProtocol::Plaintext,
            SecurityProtocol::Ssl,
            SecurityProtocol::SaslPlaintext,
            SecurityProtocol::SaslSsl,
        ]
        .into_iter()
        .find(|p| p.as_str().eq_ignore_ascii_case(s))
        .ok_or_else(|| {
            format!("unknown security protocol {s:?}: plaintext, ssl, sasl_plaintext or sasl_ssl")
        })
    }
}

/// `[kafka] sasl_mechanism`: the ones librdkafka (as built here, with
/// OpenSSL) supports with a user name and password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl fmt::Display for SaslMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SaslMechanism {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            SaslMechanism::Plain,
            SaslMechanism::ScramSha256,
            SaslMechanism::ScramSha512,
        ]
        .into_iter()
        .find(|m| m.as_str().eq_ignore_ascii_case(s))
        .ok_or_else(|| {
            format!("unknown SASL mechanism {s:?}: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
        })
    }
}

/// Why `[kafka]` does not give a usable connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[kafka] {0}")]
pub struct SettingsError(String);

/// Properties that `[kafka.properties]` may not set, and why: those with
/// a setting of their own, secrets (which come only from a file or the
/// environment), and those exactly-once delivery depends on.
fn refuse(key: &str) -> Option<String> {
    let own = match key {
        "bootstrap.servers" | "metadata.broker.list" => Some("brokers"),
        "security.protocol" => Some("security_protocol"),
        "sasl.mechanism" | "sasl.mechanisms" => Some("sasl_mechanism"),
        "sasl.username" => Some("sasl_username"),
        "ssl.ca.location" => Some("ssl_ca_location"),
        "ssl.certificate.location" => Some("ssl_certificate_location"),
        "ssl.key.location" => Some("ssl_key_location"),
        _ => None,
    };
    if let Some(setting) = own {
        return Some(format!("set it as [kafka] {setting}"));
    }
    if key.contains("password")
        || key.contains("secret")
        || key.ends_with(".pem")
        || key == "sasl.oauthbearer.config"
    {
        return Some(format!(
            "secrets are not read from the configuration file; the SASL password comes from sasl_password_file or {PASSWORD_ENV}"
        ));
    }
    let owned = [
        "group.id",
        "group.instance.id",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "enable.partition.eof",
        "auto.offset.reset",
        "partition.assignment.strategy",
        "isolation.level",
        "enable.idempotence",
        "acks",
        "request.required.acks",
        "transactional.id",
    ];
    owned
        .contains(&key)
        .then(|| "tokentally sets it itself: exactly-once delivery depends on it".to_string())
}

/// The resolved connection settings every client starts from. Cloning is
/// cheap enough for a handful of clients; `Debug` never shows the
/// password.
#[derive(Clone)]
pub struct Connection {
    brokers: String,
    protocol: SecurityProtocol,
    security: Vec<(&'static str, String)>,
    password: Option<String>,
    properties: BTreeMap<String, String>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("brokers", &self.brokers)
            .field("security", &self.security)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("properties", &self.properties)
            .finish()
    }
}

impl fmt::Display for Connection {
    /// `brokers (protocol)`, for logs and errors: no user name, no password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.brokers, self.protocol)
    }
}

impl Connection {
    /// A plaintext connection to `brokers` (tests and benchmarks).
    pub fn plaintext(brokers: impl Into<String>) -> Self {
        Connection {
            brokers: brokers.into(),
            protocol: SecurityProtocol::Plaintext,
            security: Vec::new(),
            password: None,
            properties: BTreeMap::new(),
        }
    }

    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// `role` (a producer's, a consumer's settings) plus the connection:
    /// the bootstrap servers and security settings, then
    /// `[kafka.properties]` on top (they may tune anything that is not
    /// refused, a role's settings included).
    pub fn configure(&self, mut role: ClientConfig) -> ClientConfig {
        role.set("bootstrap.servers", &self.brokers);
        role.set("security.protocol", self.protocol.as_str());
        for (key, value) in &self.security {
            role.set(*key, value);
        }
        if let Some(password) = &self.password {
            role.set("sasl.password", password);
        }
        for (key, value) in &self.properties {
            role.set(key, value);
        }
        role
    }
}

impl KafkaConfig {
    /// Check the settings and read the SASL password. Settings that the
    /// protocol does not use are ignored: SASL ones quietly (a shell may
    /// export a user name and password for other clients), TLS files with
    /// a warning.
    pub fn connection(&self) -> Result<Connection, SettingsError> {
        for key in self.properties.keys() {
            if let Some(why) = refuse(key) {
                return Err(SettingsError(format!(
                    "properties may not set {key:?}: {why}"
                )));
            }
        }
        let protocol = self.security_protocol;
        let mut security = Vec::new();
        let mut password = None;
        if protocol.sasl() {
            let mechanism = self.sasl_mechanism.ok_or_else(|| {
                SettingsError(format!(
                    "security_protocol {protocol} needs sasl_mechanism (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
                ))
            })?;
            let user = self.sasl_username.as_deref().filter(|u| !u.is_empty());
            let user = user.ok_or_else(|| {
                SettingsError(format!(
                    "security_protocol {protocol} needs sasl_username (or TOKENTALLY_KAFKA_SASL_USERNAME)"
                ))
            })?;
            let secret = SecretSource::new(PASSWORD_ENV, self.sasl_password_file.as_deref())
                .read()
                .map_err(|e| SettingsError(format!("the SASL password: {e}")))?
                .ok_or_else(|| {
                    SettingsError(format!(
                        "security_protocol {protocol} needs a password: set sasl_password_file or {PASSWORD_ENV}"
                    ))
                })?;
            security.push(("sasl.mechanism", mechanism.as_str().to_string()));
            security.push(("sasl.username", user.to_string()));
            password = Some(secret.first_line().to_string());
        } else if self.sasl_mechanism.is_some()
            || self.sasl_username.is_some()
            || self.sasl_password_file.is_some()
        {
            tracing::debug!(
                "[kafka] sasl_* settings are ignored: security_protocol is {protocol}, without SASL"
            );
        }
        let files = [
            ("ssl.ca.location", "ssl_ca_location", &self.ssl_ca_location),
            (
                "ssl.certificate.location",
                "ssl_certificate_location",
                &self.ssl_certificate_location,
            ),
            (
                "ssl.key.location",
                "ssl_key_location",
                &self.ssl_key_location,
            ),
        ];
        if self.ssl_certificate_location.is_some() != self.ssl_key_location.is_some() {
            return Err(SettingsError(
                "a client certificate needs both ssl_certificate_location and ssl_key_location"
                    .into(),
            ));
        }
        for (property, setting, path) in files {
            let Some(path) = path else { continue };
            if !protocol.tls() {
                tracing::warn!(
                    "[kafka] {setting} is ignored: security_protocol is {protocol}, without TLS"
                );
                continue;
            }
            if !path.is_file() {
                return Err(SettingsError(format!(
                    "{setting}: {} is not a readable file",
                    path.display()
                )));
            }
            let text = path.to_str().ok_or_else(|| {
                SettingsError(format!("{setting}: {} is not UTF-8", path.display()))
            })?;
            security.push((property, text.to_string()));
        }
        Ok(Connection {
            brokers: self.brokers.clone(),
            protocol,
            security,
            password,
            properties: self.properties.clone(),
        })
    }
}

/// A client context that logs librdkafka's errors, as rdkafka's default
/// does, and keeps the most telling recent one. librdkafka reports a wrong
/// password, a certificate that does not verify or a plaintext client at
/// a TLS listener only through this callback, while the call that fails
/// (a metadata request, a topic creation) just times out; the caller
/// names the reason with [`ErrorLog::explain`], and tells a refused
/// connection from a slow one with [`ErrorLog::refused`].
#[derive(Clone, Default)]
pub struct ErrorLog {
    last: Arc<Mutex<Option<Reported>>>,
}

/// One error as librdkafka reported it.
struct Reported {
    code: Option<RDKafkaErrorCode>,
    reason: String,
}

impl ErrorLog {
    /// The last error librdkafka reported, if any: `None` when the
    /// brokers were merely unreachable or slow.
    pub fn last(&self) -> Option<String> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref().map(|r| r.reason.clone())
    }

    /// The reason, when the last error says the brokers refuse this
    /// client's settings (authentication, TLS, a protocol mismatch):
    /// waiting will not help, unlike a broker that is down.
    pub fn refused(&self) -> Option<String> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let Reported { code, reason } = last.as_ref()?;
        let refused = matches!(
            code,
            Some(
                RDKafkaErrorCode::Authentication
                    | RDKafkaErrorCode::SSL
                    | RDKafkaErrorCode::SaslAuthenticationFailed
            )
        ) || reason.contains("security.protocol");
        refused.then(|| reason.clone())
    }

    /// Record an error of a client callback.
    pub fn record(&self, error: &KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        // "All brokers are down" follows the real cause; keep the cause.
        if code == Some(RDKafkaErrorCode::AllBrokersDown) && self.last().is_some() {
            return;
        }
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Reported {
            code,
            reason: reason.to_string(),
        });
    }

    /// `message`, with the reason librdkafka gave when it gave one.
    pub fn explain(&self, message: impl fmt::Display) -> String {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let Some(Reported { code, reason }) = last.as_ref() else {
            return message.to_string();
        };
        // A TLS listener closes a plaintext client's connection without a
        // word, and librdkafka then reports only that the brokers are down.
        let hint = if reason.contains("APIVERSION_QUERY")
            || *code == Some(RDKafkaErrorCode::AllBrokersDown)
        {
            " (every connection failed: the brokers are down or unreachable, or they \
             expect TLS or SASL: check security_protocol)"
        } else {
            ""
        };
        format!("{message}; librdkafka reported: {reason}{hint}")
    }
}

impl ClientContext for ErrorLog {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::error!("librdkafka: {error}: {reason}");
        self.record(&error, reason);
    }

    /// As rdkafka's default, through `tracing`; a failed connection
    /// (`FAIL`) is also recorded: a plaintext client at a TLS listener
    /// learns why only from this line, the error callback says just that
    /// all brokers are down.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        use RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            L::Warning => tracing::warn!(target: "librdkafka", "librdkafka: {fac} {message}"),
            L::Notice | L::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            L::Debug => tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}"),
        }
        if fac == "FAIL" {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            // An error with a code (authentication, TLS) says more; "all
            // brokers are down" says less.
            let telling = |r: &Reported| {
                r.code
                    .is_some_and(|c| c != RDKafkaErrorCode::AllBrokersDown)
            };
            if !last.as_ref().is_some_and(telling) {
                *last = Some(Reported {
                    code: None,
                    reason: message.to_string(),
                });
            }
        }
    }
}

impl ProducerContext for ErrorLog {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sasl() -> KafkaConfig {
        KafkaConfig {
            security_protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(SaslMechanism::ScramSha512),
            sasl_username: Some("tokentally".into()),
            ..KafkaConfig::default()
        }
    }

    #[test]
    fn names_parse_as_librdkafka_spells_them() {
        assert_eq!("SASL_SSL".parse(), Ok(SecurityProtocol::SaslSsl));
        assert_eq!("plaintext".parse(), Ok(SecurityProtocol::Plaintext));
        assert_eq!("scram-sha-512".parse(), Ok(SaslMechanism::ScramSha512));
        assert!("GSSAPI".parse::<SaslMechanism>().is_err());
        assert!(
            "tls"
                .parse::<SecurityProtocol>()
                .unwrap_err()
                .contains("sasl_ssl")
        );
    }

    #[test]
    fn sasl_needs_a_mechanism_a_user_and_a_password_that_is_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "hunter2-kafka\n").unwrap();
        let config = KafkaConfig {
            sasl_password_file: Some(file),
            ..sasl()
        };
        let c = config.connection().unwrap();
        let shown = format!("{c:?} {c}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let client = c.configure(ClientConfig::new());
        assert_eq!(client.get("sasl.password"), Some("hunter2-kafka"));
        assert_eq!(client.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(client.get("security.protocol"), Some("sasl_ssl"));
        assert!(!format!("{client:?}").contains("hunter2"));

        let no_mechanism = KafkaConfig {
            sasl_mechanism: None,
            ..config.clone()
        };
        let err = no_mechanism.connection().unwrap_err().to_string();
        assert!(err.contains("sasl_mechanism"), "{err}");
        let no_user = KafkaConfig {
            sasl_username: None,
            ..config.clone()
        };
        let err = no_user.connection().unwrap_err().to_string();
        assert!(err.contains("sasl_username"), "{err}");
        let missing = KafkaConfig {
            sasl_password_file: Some(dir.path().join("nope")),
            ..config
        };
        let err = missing.connection().unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("password"), "{err}");
    }

    #[test]
    fn properties_pass_through_except_what_tokentally_owns_or_secrets() {
        let mut config = KafkaConfig::default();
        config.properties.insert("linger.ms".into(), "50".into());
        config
            .properties
            .insert("client.id".into(), "node 17: \"ü\"".into());
        let mut role = ClientConfig::new();
        role.set("linger.ms", "5");
        let client = config.connection().unwrap().configure(role);
        assert_eq!(client.get("linger.ms"), Some("50"));
        assert_eq!(client.get("security.protocol"), Some("plaintext"));
        for key in [
            "sasl.password",
            "ssl.key.password",
            "enable.auto.commit",
            "acks",
            "bootstrap.servers",
            "sasl.username",
            "ssl.key.pem",
        ] {
            let mut bad = KafkaConfig::default();
            bad.properties.insert(key.into(), "x".into());
            let err = bad.connection().unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn tls_files_must_exist_and_come_in_pairs() {
        let config = KafkaConfig {
            security_protocol: SecurityProtocol::Ssl,
            ssl_ca_location: Some("/nonexistent/ca.pem".into()),
            ..KafkaConfig::default()
        };
        let err = config.connection().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        let half = KafkaConfig {
            security_protocol: SecurityProtocol::Ssl,
            ssl_certificate_location: Some("/etc/hostname".into()),
            ..KafkaConfig::default()
        };
        assert!(half.connection().is_err());
    }
}

#[cfg(test)]
mod error_log_tests {
    use super::*;

    #[test]
    fn the_telling_reason_survives_all_brokers_down() {
        let log = ErrorLog::default();
        log.log(
            RDKafkaLogLevel::Info,
            "FAIL",
            "[thrd:x]: x: Disconnected (after 2ms in state APIVERSION_QUERY)",
        );
        log.record(
            &KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        let text = log.explain("no answer");
        assert!(
            text.contains("APIVERSION_QUERY") && text.contains("security_protocol"),
            "{text}"
        );
        assert_eq!(log.refused(), None);
        log.record(
            &KafkaError::Global(RDKafkaErrorCode::Authentication),
            "SASL authentication error",
        );
        log.log(RDKafkaLogLevel::Info, "FAIL", "Disconnected");
        assert_eq!(log.refused().as_deref(), Some("SASL authentication error"));
    }
}
