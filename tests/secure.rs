//! The secure paths, against the real services that `scripts/services`
//! starts with TLS: the gateway over HTTPS → Kafka over SASL_SSL (SCRAM)
//! → aggregate → ClickHouse over HTTPS with a password → alerts to HTTPS
//! receivers in every format, exact against an independent reference and
//! with no secret in any log at debug level; and each bad setting (a wrong
//! password, a CA that does not sign, a plaintext client at a TLS listener,
//! an unknown or expired server certificate, a receiver whose certificate
//! does not verify) failing with one line naming the cause, in bounded
//! time, without reading, counting or committing anything.
//!
//! Over 600 lines: every case shares the certificates, users and secure
//! listeners of one `scripts/services` start.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::gateway::Gateway;
use common::services::{Topic, ch_totals, clickhouse_sql, services, services_up, unique};
use common::webhook::{SECRET, Seen, store_alerter, tls_receiver, verify_with_reference_library};
use common::{assert_same_totals, bin, manifest, run_ok, serial, totals, wait_until};
use serde_json::Value;

/// Where `scripts/services` put the TLS listeners, certificates and
/// passwords (its exports, from the environment of `scripts/test` or from
/// running it).
struct Secure {
    sasl_ssl: String,
    ssl: String,
    tls: PathBuf,
    kafka_user: String,
    kafka_password: String,
    https: String,
    ch_user: String,
    ch_password_file: PathBuf,
}

fn secure() -> Secure {
    services();
    let from_env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let exports: Box<dyn Fn(&str) -> String> =
        if from_env("TOKENTALLY_KAFKA_SASL_SSL_BROKERS").is_some() {
            Box::new(move |k: &str| {
                from_env(k).unwrap_or_else(|| panic!("scripts/services exports {k}"))
            })
        } else {
            Box::new(services_up(&[]))
        };
    Secure {
        sasl_ssl: exports("TOKENTALLY_KAFKA_SASL_SSL_BROKERS"),
        ssl: exports("TOKENTALLY_KAFKA_SSL_BROKERS"),
        tls: exports("TOKENTALLY_TLS_DIR").into(),
        kafka_user: exports("TOKENTALLY_KAFKA_SASL_USERNAME"),
        kafka_password: exports("TOKENTALLY_KAFKA_PASSWORD"),
        https: exports("TOKENTALLY_CLICKHOUSE_HTTPS_URL"),
        ch_user: exports("TOKENTALLY_CLICKHOUSE_HTTPS_USER"),
        ch_password_file: exports("TOKENTALLY_CLICKHOUSE_HTTPS_PASSWORD_FILE").into(),
    }
}

impl Secure {
    fn file(&self, name: &str) -> PathBuf {
        self.tls.join(name)
    }

    fn ca(&self) -> String {
        self.file("ca.pem").display().to_string()
    }

    fn ch_password(&self) -> String {
        std::fs::read_to_string(&self.ch_password_file)
            .unwrap()
            .trim()
            .to_string()
    }

    /// The environment of a SASL_SSL (SCRAM-SHA-512) client of the broker.
    fn kafka_env(&self) -> [(&'static str, String); 5] {
        [
            ("TOKENTALLY_KAFKA_SECURITY_PROTOCOL", "sasl_ssl".into()),
            ("TOKENTALLY_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512".into()),
            ("TOKENTALLY_KAFKA_SASL_USERNAME", self.kafka_user.clone()),
            ("TOKENTALLY_KAFKA_PASSWORD", self.kafka_password.clone()),
            ("TOKENTALLY_KAFKA_SSL_CA_LOCATION", self.ca()),
        ]
    }

    /// `cmd` as a SASL_SSL client of the broker, through the environment
    /// only; nothing else of the shell's Kafka settings.
    fn kafka<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.envs(self.kafka_env())
    }

    /// `cmd` as a client of ClickHouse over HTTPS, as the password-protected
    /// user, trusting the test CA.
    fn clickhouse<'a>(&self, cmd: &'a mut Command, db: &str) -> &'a mut Command {
        cmd.args([
            "--clickhouse",
            &self.https,
            "--clickhouse-user",
            &self.ch_user,
        ])
        .args([
            "--clickhouse-database",
            db,
            "--clickhouse-ca-file",
            &self.ca(),
        ])
        .env("TOKENTALLY_CLICKHOUSE_PASSWORD", self.ch_password())
    }
}

/// Run `cmd`, which must fail within `limit`; its stderr.
fn fails_within(cmd: &mut Command, limit: Duration) -> String {
    let started = Instant::now();
    let out = cmd.output().unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "it succeeded:\n{stderr}");
    assert!(took < limit, "it took {took:?}:\n{stderr}");
    stderr
}

/// The line that says why (the last one, `error: ...`).
fn cause(stderr: &str) -> &str {
    stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line:\n{stderr}"))
}

/// What a command printed, named.
fn logged(what: &str, out: &Output) -> (String, String) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (what.to_string(), text)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

const HOSTILE: &str = "通义/qwen-max-中文 \"x\" <b>: y";

#[test]
fn gateway_https_to_sasl_ssl_to_clickhouse_https_to_https_receivers_is_exact_and_keeps_secrets() {
    let _serial = serial();
    let s = secure();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let name = unique("secure").replace('_', "-");
    let t = Topic {
        brokers: s.sasl_ssl.clone(),
        name,
    };
    let mut logs: Vec<(String, String)> = Vec::new();

    // Topics and schema over the secure listeners.
    let out = run_ok(
        s.kafka(&mut bin())
            .args([
                "topics", "create", "--kafka", &t.brokers, "--topic", &t.name,
            ])
            .args(["--dlq-topic", &t.dlq(), "--partitions", "3"])
            .env("RUST_LOG", "debug"),
    );
    logs.push(logged("topics", &out));
    let db = unique("secure");
    let out = run_ok(
        s.clickhouse(bin().arg("migrate"), &db)
            .env("RUST_LOG", "debug"),
    );
    logs.push(logged("migrate", &out));

    // The alerter watches ClickHouse (over HTTPS) before any traffic, and
    // sends to four HTTPS receivers, one per format.
    let (cert, key) = (s.file("server.pem"), s.file("server.key"));
    let receivers: Vec<(&str, String, std::sync::Arc<Mutex<Seen>>)> =
        ["standard", "slack", "discord", "pagerduty"]
            .into_iter()
            .map(|format| {
                let (url, seen) = tls_receiver(&cert, &key);
                (format, url, seen)
            })
            .collect();
    let mut config = format!(
        "[alerts]\ninterval = \"300ms\"\nrequest_timeout = \"5s\"\n\
         [alerts.rules]\ndaily_thresholds = [1000000]\nall_time_thresholds = []\n\
         [clickhouse]\npassword_file = {:?}\nca_file = {:?}\n",
        s.ch_password_file.display().to_string(),
        s.ca()
    );
    for (format, url, _) in &receivers {
        config.push_str(&format!(
            "[[alerts.webhooks]]\nformat = \"{format}\"\nurl = \"{url}\"\nca_file = {:?}\n",
            s.ca()
        ));
    }
    let config_path = d.join("tokentally.toml");
    std::fs::write(&config_path, config).unwrap();
    let routing_key = format!("routing-{}", unique("key"));
    let state = d.join("alerts-state");
    let alerter_log = d.join("alerter.log");
    let mut alerter = bin()
        .arg("--config")
        .arg(&config_path)
        .args([
            "alerts",
            "run",
            "--from-clickhouse",
            "--clickhouse",
            &s.https,
        ])
        .args([
            "--clickhouse-user",
            &s.ch_user,
            "--clickhouse-database",
            &db,
        ])
        .arg("--state")
        .arg(&state)
        .env("TOKENTALLY_WEBHOOK_SECRET", SECRET)
        .env("TOKENTALLY_PAGERDUTY_ROUTING_KEY", &routing_key)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&alerter_log).unwrap())
        .spawn()
        .unwrap();
    wait_until(
        Duration::from_secs(60),
        100,
        || state.join("alerts.json").exists(),
        || format!("the alerter did not start:\n{}", read(&alerter_log)),
    );

    // A simulated fleet with retries and late events, plus a hostile model
    // name, through the gateway over HTTPS, which produces over SASL_SSL.
    let file = d.join("fleet.ndjson");
    run_ok(
        bin()
            .args(["simulate", "--events", "12000", "--seed", "7"])
            .args(["--start-ms", "1795737600000", "--duplicate-rate", "0.02"])
            .args(["--late-rate", "0.02", "--malformed-rate", "0", "--out"])
            .arg(&file),
    );
    let clean: Vec<String> = read(&file)
        .lines()
        .map(str::to_string)
        .chain((0..20).map(|i| {
            serde_json::json!({
                "event_id": format!("hostile-{i}"), "ts": 1_795_740_000_000i64 + i,
                "model": HOSTILE, "provider": "供应商 <i>", "app": "app: \"ü\"",
                "prompt_tokens": 60_000, "completion_tokens": 40_000,
            })
            .to_string()
        }))
        .collect();
    let sent = d.join("sent.ndjson");
    std::fs::write(&sent, clean.join("\n") + "\n").unwrap();
    let token = format!("gw-{}", unique("token"));
    let tokens = d.join("tokens");
    std::fs::write(&tokens, format!("node-1:{token}\n")).unwrap();
    let kafka_env = s.kafka_env();
    let gateway = Gateway::start_with(
        &[
            "--kafka",
            &t.brokers,
            "--topic",
            &t.name,
            "--tokens-file",
            tokens.to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[("RUST_LOG", "debug")]
            .into_iter()
            .chain(kafka_env.iter().map(|(k, v)| (*k, v.as_str())))
            .collect::<Vec<_>>(),
    );
    let headers = d.join("headers");
    std::fs::write(
        &headers,
        format!("Authorization: Bearer {token}\nContent-Type: application/x-ndjson\n"),
    )
    .unwrap();
    for (n, chunk) in clean.chunks(2_000).enumerate() {
        let body = d.join(format!("chunk-{n}"));
        std::fs::write(&body, chunk.join("\n")).unwrap();
        let out = run_ok(
            Command::new("curl")
                .args(["-sS", "--fail-with-body", "--cacert", &s.ca(), "-H"])
                .arg(format!("@{}", headers.display()))
                .arg("--data-binary")
                .arg(format!("@{}", body.display()))
                .arg(format!("https://{}/v1/events", gateway.addr)),
        );
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(answer["accepted"], chunk.len(), "{answer}");
    }
    let gateway_log = gateway.stderr.clone();
    assert!(gateway.stop().success());

    // The aggregator reads over SASL_SSL and writes over HTTPS; the
    // ClickHouse password from the config file's password_file.
    let aggregate_log = d.join("aggregate.log");
    let out = run_ok(
        s.kafka(bin().arg("--config").arg(&config_path))
            .args(["aggregate", "--kafka", &t.brokers, "--topic", &t.name])
            .args(["--dlq-topic", &t.dlq(), "--group", &t.name])
            .args(["--exit-on-idle", "3", "--sink", "clickhouse"])
            .args(["--clickhouse", &s.https, "--clickhouse-user", &s.ch_user])
            .args(["--clickhouse-database", &db])
            .env_remove("TOKENTALLY_CLICKHOUSE_PASSWORD")
            .env("RUST_LOG", "debug"),
    );
    std::fs::write(&aggregate_log, &out.stderr).unwrap();
    logs.push(logged("aggregate", &out));

    let reference = d.join("reference");
    run_ok(
        bin()
            .args(["ingest", "--file"])
            .arg(&sent)
            .arg("--store")
            .arg(&reference),
    );
    assert_same_totals(&ch_totals(&services().clickhouse, &db), &totals(&reference));
    let hostile = clickhouse_sql(
        &services().clickhouse,
        &format!("SELECT sum(requests) FROM {db}.usage_daily WHERE model = '通义/qwen-max-中文 \"x\" <b>: y'"),
    )
    .unwrap();
    assert_eq!(hostile.trim(), "20");

    // Every receiver got the fleet's milestones in its format, over HTTPS.
    wait_until(
        Duration::from_secs(120),
        200,
        || {
            receivers
                .iter()
                .all(|(_, _, seen)| seen.lock().unwrap().requests > 0)
        },
        || {
            format!(
                "not every receiver got a milestone:\n{}",
                read(&alerter_log)
            )
        },
    );
    let _ = alerter.kill();
    let _ = alerter.wait();
    for (format, _, seen) in &receivers {
        let seen = seen.lock().unwrap();
        for r in &seen.received {
            assert!(
                r.headers.iter().all(|(_, v)| v.is_ascii()),
                "{format}: {:?}",
                r.headers
            );
            let body = r.json();
            match *format {
                "standard" => assert!(body["id"].is_string(), "{body}"),
                "slack" => assert!(
                    body["text"].is_string() && body["blocks"].is_array(),
                    "{body}"
                ),
                "discord" => assert!(
                    body["content"].is_string() && body["embeds"].is_array(),
                    "{body}"
                ),
                "pagerduty" => {
                    assert_eq!(body["routing_key"], routing_key.as_str());
                    assert_eq!(body["event_action"], "trigger");
                    assert!(body["dedup_key"].is_string(), "{body}");
                }
                _ => unreachable!(),
            }
        }
        if *format == "standard" {
            assert_eq!(seen.bad_signatures, 0, "signatures that do not verify");
            verify_with_reference_library(&seen.received);
        }
    }

    // No secret in any log, at debug level, nor in --help.
    logs.push(("gateway".into(), gateway_log.lock().unwrap().clone()));
    logs.push(("alerter".into(), read(&alerter_log)));
    for cmd in ["aggregate", "gateway", "produce", "topics", "migrate"] {
        let out = s
            .kafka(bin().args([cmd, "--help"]))
            .env("TOKENTALLY_CLICKHOUSE_PASSWORD", s.ch_password())
            .output()
            .unwrap();
        logs.push(logged(&format!("{cmd} --help"), &out));
    }
    let secrets = [
        s.kafka_password.clone(),
        s.ch_password(),
        token,
        routing_key,
        SECRET.trim_start_matches("whsec_").to_string(),
    ];
    for (what, text) in &logs {
        assert!(
            !text.is_empty() || what.ends_with("--help"),
            "{what}: no log"
        );
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{what} shows a secret ({} characters)",
                secret.len()
            );
        }
    }
    // The debug logs did record the secure connections.
    assert!(read(&aggregate_log).contains("sasl_ssl"));
}

#[test]
fn bad_kafka_settings_fail_at_start_naming_the_cause() {
    let _serial = serial();
    let s = secure();
    let dir = tempfile::tempdir().unwrap();
    let plain = common::services::topic("secure-bad");
    let store = dir.path().join("store");
    let aggregate = |brokers: &str| {
        let mut cmd = bin();
        cmd.args(["aggregate", "--kafka", brokers, "--topic", &plain.name])
            .args(["--dlq-topic", &plain.dlq(), "--group", &plain.name])
            .args(["--exit-on-idle", "3", "--store"])
            .arg(&store);
        cmd
    };
    let limit = Duration::from_secs(60);

    let wrong_password = fails_within(
        s.kafka(&mut aggregate(&s.sasl_ssl))
            .env("TOKENTALLY_KAFKA_PASSWORD", "not-the-password"),
        limit,
    );
    let line = cause(&wrong_password);
    assert!(
        line.contains("Kafka refused the connection") && line.contains("SASL authentication"),
        "{line}"
    );
    assert!(!wrong_password.contains("not-the-password"));

    let other_ca = s.file("other-ca.pem");
    let unknown_ca = fails_within(
        aggregate(&s.ssl)
            .env("TOKENTALLY_KAFKA_SECURITY_PROTOCOL", "ssl")
            .env("TOKENTALLY_KAFKA_SSL_CA_LOCATION", &other_ca),
        limit,
    );
    let line = cause(&unknown_ca);
    assert!(line.contains("certificate verify failed"), "{line}");

    let plaintext = fails_within(&mut aggregate(&s.ssl), limit);
    let line = cause(&plaintext);
    assert!(line.contains("check security_protocol"), "{line}");

    // Nothing was read or committed, and the plaintext listener still
    // serves the group from the start: every event counts once.
    assert!(manifest(&store).is_none(), "a batch was committed");
    let file = dir.path().join("events.ndjson");
    std::fs::write(&file, common::event("after-the-refusals") + "\n").unwrap();
    common::services::produce(&plain, &file);
    let summary = common::summary(&mut plain.aggregate_into(&store, &plain.name, "3"));
    assert_eq!(summary["accepted"], 1, "{summary}");
}

#[test]
fn mutual_tls_presents_the_client_certificate() {
    let _serial = serial();
    let s = secure();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("mtls").replace('_', "-");
    // The SSL listener requires a client certificate of the test CA.
    let config = |with_certificate: bool| {
        let path = dir.path().join(format!("mtls-{with_certificate}.toml"));
        let mut text = format!(
            "[kafka]\nsecurity_protocol = \"ssl\"\nssl_ca_location = {:?}\n",
            s.ca()
        );
        if with_certificate {
            text.push_str(&format!(
                "ssl_certificate_location = {:?}\nssl_key_location = {:?}\n",
                s.file("client.pem").display().to_string(),
                s.file("client.key").display().to_string()
            ));
        }
        std::fs::write(&path, text).unwrap();
        path
    };
    let create = |with_certificate: bool| {
        let mut cmd = bin();
        cmd.arg("--config")
            .arg(config(with_certificate))
            .args(["topics", "create", "--kafka", &s.ssl, "--topic", &name])
            .args(["--dlq-topic", &format!("{name}-dlq")]);
        cmd
    };
    let refused = fails_within(&mut create(false), Duration::from_secs(90));
    assert!(cause(&refused).contains("creating topics"), "{refused}");
    let out = run_ok(&mut create(true));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("created {name}")),
        "{out:?}"
    );
}

#[test]
fn bad_clickhouse_and_receiver_certificates_fail_naming_the_cause() {
    let _serial = serial();
    let s = secure();
    let dir = tempfile::tempdir().unwrap();
    let limit = Duration::from_secs(60);
    let db = unique("secure_bad");
    let migrate = || {
        let mut cmd = bin();
        cmd.args([
            "migrate",
            "--clickhouse",
            &s.https,
            "--clickhouse-user",
            &s.ch_user,
        ])
        .args(["--clickhouse-database", &db])
        .env("TOKENTALLY_CLICKHOUSE_PASSWORD", s.ch_password());
        cmd
    };

    // Self-signed for a client that trusts only the system's roots.
    let line = fails_within(&mut migrate(), limit);
    assert!(cause(&line).contains("UnknownIssuer"), "{line}");

    // A wrong password: ClickHouse's own error (193 on 18.16, 516 later).
    let wrong = fails_within(
        migrate()
            .args(["--clickhouse-ca-file", &s.ca()])
            .env("TOKENTALLY_CLICKHOUSE_PASSWORD", "not-the-password"),
        limit,
    );
    let line = cause(&wrong);
    assert!(
        line.contains("Code: 193") || line.contains("Code: 516"),
        "{line}"
    );
    assert!(!wrong.contains("not-the-password"));

    // An expired certificate, signed by the trusted CA: served by a
    // gateway standing in for the server (the handshake fails first).
    let topic = common::services::topic("secure-expired");
    let expired = Gateway::start(&[
        "--no-auth",
        "--kafka",
        &topic.brokers,
        "--topic",
        &topic.name,
        "--tls-cert",
        s.file("expired-server.pem").to_str().unwrap(),
        "--tls-key",
        s.file("expired-server.key").to_str().unwrap(),
    ]);
    let line = fails_within(
        bin()
            .args([
                "migrate",
                "--clickhouse",
                &format!("https://{}", expired.addr),
            ])
            .args([
                "--clickhouse-database",
                &db,
                "--clickhouse-ca-file",
                &s.ca(),
            ]),
        limit,
    );
    assert!(cause(&line).contains("certificate expired"), "{line}");
    let _ = expired.stop();
    // None of the refused attempts created anything.
    let created = clickhouse_sql(
        &services().clickhouse,
        &format!("SELECT count() FROM system.databases WHERE name = '{db}'"),
    )
    .unwrap();
    assert_eq!(created.trim(), "0");

    // A receiver whose certificate does not verify: retried, pending, and
    // the error in `alerts list`.
    let (url, seen) = tls_receiver(&s.file("other-server.pem"), &s.file("other-server.key"));
    let store = dir.path().join("store");
    run_ok(
        bin()
            .args(["ingest", "--file", "/dev/null", "--store"])
            .arg(&store),
    );
    let config = dir.path().join("tokentally.toml");
    std::fs::write(
        &config,
        "[alerts]\ninterval = \"200ms\"\n[alerts.rules]\ndaily_thresholds = [5]\nall_time_thresholds = []\n",
    )
    .unwrap();
    let state = dir.path().join("state");
    let mut alerter = store_alerter(&config, &store, &state, &url);
    let events = dir.path().join("events.ndjson");
    std::fs::write(&events, common::event("over-the-threshold") + "\n").unwrap();
    run_ok(
        bin()
            .args(["ingest", "--file"])
            .arg(&events)
            .arg("--store")
            .arg(&store),
    );
    let list = || -> Value {
        let out = run_ok(
            bin()
                .args(["alerts", "list", "--json", "--state"])
                .arg(&state),
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let failing = |v: &Value| -> Vec<(String, String)> {
        let mut found = Vec::new();
        for (_, m) in v["milestones"].as_object().into_iter().flatten() {
            for (_, d) in m["deliveries"].as_object().into_iter().flatten() {
                if let (Some(status), Some(error)) =
                    (d["status"].as_str(), d["last_error"].as_str())
                {
                    found.push((status.to_string(), error.to_string()));
                }
            }
        }
        found
    };
    wait_until(
        Duration::from_secs(60),
        200,
        || !failing(&list()).is_empty(),
        || format!("no failed delivery recorded: {}", list()),
    );
    let _ = alerter.kill();
    let _ = alerter.wait();
    for (status, error) in failing(&list()) {
        assert_eq!(status, "pending", "{error}");
        assert!(error.contains("UnknownIssuer"), "{error}");
    }
    assert_eq!(seen.lock().unwrap().requests, 0);
}
