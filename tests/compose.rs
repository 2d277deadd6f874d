//! `docker-compose.yml` and `docker-compose.cluster.yml`, checked
//! structurally without a Docker engine (none runs on the machines that run
//! scripts/test): services, pinned images,
//! health checks behind every `service_healthy`, one-shot services behind
//! every `service_completed_successfully`, mounted paths that exist,
//! distinct host ports, secrets as files (never values), and every
//! tokentally command line parsed by the binary itself. The image they run
//! is checked in tests/dockerfile.rs. What docker compose's own loader
//! checks (the schema, references to volumes, secrets and env files,
//! depends_on targets and cycles, each profile alone) is left to it:
//! `scripts/compose-check/run`, which scripts/test runs.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::{Map, Value};

use common::compose::{
    cluster_compose, compose, compose_services, metrics_port, tokentally_services, volumes,
};
use common::yaml::{obj, strings, text};
use common::{bin, read, root, run_ok};

/// `depends_on` as (target, condition), in both of compose's forms.
fn depends_on(service: &Map<String, Value>) -> Vec<(String, String)> {
    match service.get("depends_on") {
        None => Vec::new(),
        Some(Value::Array(_)) => strings(service.get("depends_on"))
            .into_iter()
            .map(|t| (t, "service_started".to_string()))
            .collect(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(t, spec)| {
                let condition = spec
                    .get("condition")
                    .map(|c| text(c, "condition").to_string())
                    .unwrap_or_else(|| "service_started".to_string());
                (t.clone(), condition)
            })
            .collect(),
        Some(other) => panic!("depends_on must be a list or a mapping: {other}"),
    }
}

/// The host port of a `ports` entry, if it publishes one.
fn host_port(entry: &Value) -> Option<u16> {
    let port = match entry {
        Value::Object(m) => m.get("published").map(|p| match p {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })?,
        Value::String(s) => {
            let s = s.split('/').next().unwrap();
            let parts: Vec<&str> = s.rsplitn(3, ':').collect();
            // rsplitn: [container, host, ip?]
            if parts.len() < 2 {
                return None;
            }
            parts[1].to_string()
        }
        Value::Number(_) => return None,
        other => panic!("unreadable ports entry {other}"),
    };
    Some(
        port.parse()
            .unwrap_or_else(|_| panic!("host port {port} is not a number")),
    )
}

fn is_bind(source: &str) -> bool {
    source.starts_with('.') || source.starts_with('/') || source.starts_with('~')
}

/// A path of the repository named relatively in the compose file.
fn repo_path(rel: &str) -> std::path::PathBuf {
    let rel = rel.trim_start_matches("./");
    assert!(
        !rel.starts_with("..") && !rel.starts_with('/') && !rel.starts_with('~'),
        "{rel}: compose may mount only paths inside the repository"
    );
    root().join(rel)
}

/// What every compose file must be: third-party images pinned, built
/// services with a Dockerfile, bind mounts that exist, distinct host ports,
/// health checks that test something, and every `depends_on` condition
/// backed (a health check behind `service_healthy`, a one-shot behind
/// `service_completed_successfully`). Its one-shot services.
fn check_structure(services: &Map<String, Value>) -> BTreeSet<String> {
    let mut host_ports: BTreeMap<u16, String> = BTreeMap::new();
    let mut one_shots = BTreeSet::new();
    for (name, s) in services {
        let s = obj(s, name);
        let restart = s.get("restart").and_then(Value::as_str).unwrap_or("no");
        if restart == "no" {
            one_shots.insert(name.clone());
        }
        // A build has a Dockerfile; third-party images are pinned to a version.
        if let Some(build) = s.get("build") {
            let (context, dockerfile) = match build {
                Value::String(c) => (c.clone(), "Dockerfile".to_string()),
                Value::Object(b) => (
                    b.get("context")
                        .map(|c| text(c, "context").to_string())
                        .unwrap_or_else(|| ".".into()),
                    b.get("dockerfile")
                        .map(|d| text(d, "dockerfile").to_string())
                        .unwrap_or_else(|| "Dockerfile".into()),
                ),
                other => panic!("{name}: unreadable build {other}"),
            };
            let dir = repo_path(&context);
            assert!(
                dir.join(&dockerfile).is_file(),
                "{name}: no {dockerfile} in build context {context}"
            );
        } else if let Some(image) = s.get("image") {
            let image = text(image, "image");
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            assert!(
                !tag.is_empty() && tag != "latest" && !tag.contains('/'),
                "{name}: pin the image version ({image})"
            );
        }
        // Bind mounts exist in the repository.
        for (source, target) in volumes(s) {
            assert!(
                target.starts_with('/'),
                "{name}: volume target {target} is not absolute"
            );
            if is_bind(&source) {
                assert!(
                    repo_path(&source).exists(),
                    "{name}: mounted path {source} does not exist in the repository"
                );
            }
        }
        for port in s
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(p) = host_port(port)
                && let Some(other) = host_ports.insert(p, name.clone())
            {
                panic!("host port {p} is published by both {other} and {name}");
            }
        }
        // Health checks test something.
        if let Some(hc) = s.get("healthcheck") {
            assert!(
                !strings(hc.get("test")).is_empty(),
                "{name}: healthcheck without test"
            );
        }
    }
    assert!(!host_ports.is_empty(), "nothing is published");

    // depends_on conditions are backed: a health check behind every
    // service_healthy, a one-shot behind every service_completed_successfully.
    for (name, s) in services {
        for (target, condition) in depends_on(obj(s, name)) {
            match condition.as_str() {
                "service_healthy" => assert!(
                    services[&target].get("healthcheck").is_some(),
                    "{name} waits for {target} to be healthy, but {target} has no healthcheck"
                ),
                "service_completed_successfully" => assert!(
                    one_shots.contains(&target),
                    "{name} waits for {target} to complete, but {target} restarts"
                ),
                _ => {}
            }
        }
    }

    one_shots
}

#[test]
fn compose_file_is_complete_and_consistent() {
    let doc = compose();
    let services = compose_services(&doc);
    for required in [
        "kafka",
        "clickhouse",
        "grafana",
        "prometheus",
        "topics",
        "migrate",
        "gateway",
        "aggregate",
        "alerts",
        "simulate",
    ] {
        assert!(services.contains_key(required), "no service {required}");
    }
    for (service, prefix) in [
        ("kafka", "apache/kafka:"),
        ("clickhouse", "clickhouse/clickhouse-server:"),
        ("grafana", "grafana/grafana:"),
        ("prometheus", "prom/prometheus:"),
    ] {
        let image = text(&services[service]["image"], "image");
        assert!(
            image.starts_with(prefix),
            "{service} runs {image}, expected {prefix}*"
        );
    }
    // The compose broker is the Kafka version CI tests against.
    let tested = read("scripts/services")
        .lines()
        .find_map(|l| l.strip_prefix("KAFKA_VERSION=\""))
        .map(|v| v.trim_end_matches('"').to_string())
        .expect("scripts/services names KAFKA_VERSION");
    assert_eq!(
        text(&services["kafka"]["image"], "image"),
        format!("apache/kafka:{tested}")
    );
    let one_shots = check_structure(services);
    let profiles = |s: &Value| strings(s.get("profiles"));
    // What the stack needs: schema and topics made once, before the rest.
    for one_shot in ["topics", "migrate"] {
        assert!(one_shots.contains(one_shot), "{one_shot} must be one-shot");
    }
    for long_running in [
        "kafka",
        "clickhouse",
        "prometheus",
        "gateway",
        "aggregate",
        "alerts",
    ] {
        assert!(
            services[long_running].get("healthcheck").is_some(),
            "{long_running} has no healthcheck"
        );
    }
    assert_eq!(profiles(&services["simulate"]), ["simulate"]);
    let needs = |svc: &str, target: &str, condition: &str| {
        assert!(
            depends_on(obj(&services[svc], svc))
                .contains(&(target.to_string(), condition.to_string())),
            "{svc} must wait for {target} ({condition})"
        );
    };
    needs("migrate", "clickhouse", "service_healthy");
    needs("topics", "kafka", "service_healthy");
    needs("aggregate", "migrate", "service_completed_successfully");
    needs("aggregate", "topics", "service_completed_successfully");
    needs("aggregate", "kafka", "service_healthy");
    needs("aggregate", "clickhouse", "service_healthy");
    needs("gateway", "topics", "service_completed_successfully");
    needs("alerts", "migrate", "service_completed_successfully");
    needs("grafana", "clickhouse", "service_healthy");
    needs("grafana", "prometheus", "service_healthy");
}

/// Secrets are files under ./secrets/ that git ignores, never values: not
/// in the environment file `env_file`, a service's environment or a command
/// line; and a service that reads /run/secrets/NAME mounts NAME.
fn check_secrets(doc: &Value, env_file: &str) {
    let services = compose_services(doc);
    let top_secrets = obj(&doc["secrets"], "secrets");
    for (name, spec) in top_secrets {
        let file = text(&spec["file"], "secret file");
        assert!(
            file.starts_with("./secrets/"),
            "secret {name} should be a file under ./secrets/, not {file}"
        );
        // The operator's secret files can never be committed.
        let out = Command::new("git")
            .args(["check-ignore", "-q", file.trim_start_matches("./")])
            .current_dir(root())
            .status()
            .expect("run git check-ignore");
        assert!(out.success(), "{file} is not ignored by git");
    }
    // No secret values in environments, and references to mounted secrets
    // are mounted on that service.
    let secretish = |key: &str| {
        let k = key.to_ascii_uppercase();
        !k.ends_with("_FILE")
            && ["PASSWORD", "SECRET", "TOKEN", "TOKENS"]
                .iter()
                .any(|s| k.ends_with(s))
    };
    for line in read(env_file)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let key = line.split('=').next().unwrap();
        assert!(!secretish(key), "{env_file} sets the secret {key}");
    }
    for (name, s) in services {
        let s = obj(s, name);
        let mounted = strings(s.get("secrets"));
        let mut references = Vec::new();
        if let Some(env) = s.get("environment") {
            for (key, value) in obj(env, "environment") {
                assert!(
                    !secretish(key),
                    "{name} sets the secret {key} in its environment"
                );
                references.push(value.to_string());
            }
        }
        let command = strings(s.get("command"));
        for arg in &command {
            assert!(
                !arg.contains("whsec_") && !arg.starts_with("--password"),
                "{name}: a secret on the command line: {arg}"
            );
        }
        references.extend(command);
        for r in references {
            if let Some(rest) = r.split("/run/secrets/").nth(1) {
                let secret: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '-')
                    .collect();
                assert!(
                    mounted.contains(&secret),
                    "{name} reads /run/secrets/{secret} but does not mount it"
                );
            }
        }
    }
}

#[test]
fn compose_keeps_secrets_in_files_never_in_values() {
    let doc = compose();
    let services = compose_services(&doc);
    check_secrets(&doc, "deploy/tokentally/compose.env");
    assert!(
        root().join("secrets/README.md").is_file(),
        "secrets/README.md explains how to create the secret files"
    );
    let dockerignore = read(".dockerignore");
    assert!(dockerignore.lines().any(|l| l.trim() == "secrets/"));
    // Files that read secrets, and the services that read those files.
    let has = |svc: &str, secret: &str| {
        assert!(
            strings(services[svc].get("secrets"))
                .iter()
                .any(|s| s == secret),
            "{svc} needs the secret {secret}"
        );
    };
    let config = read("deploy/tokentally/tokentally.toml");
    assert!(config.contains("/run/secrets/clickhouse_password"));
    assert!(config.contains("/run/secrets/webhook_secret"));
    for svc in ["clickhouse", "migrate", "aggregate", "alerts", "grafana"] {
        has(svc, "clickhouse_password");
    }
    has("alerts", "webhook_secret");
    has("gateway", "gateway_tokens");
    assert!(
        read("dashboards/provisioning/datasources/datasources.yml")
            .contains("$__file{/run/secrets/clickhouse_password}")
    );
}

/// Every tokentally service runs the one image with a command line the
/// binary parses, and the environment file `env_file` sets only variables
/// tokentally reads.
fn check_commands(doc: &Value, env_file: &str) {
    let built = tokentally_services(doc);
    for (name, s) in &built {
        assert_eq!(
            s.get("image").and_then(Value::as_str),
            Some("tokentally:local"),
            "{name}: every tokentally service shares one image"
        );
        let command = strings(s.get("command"));
        assert!(!command.is_empty(), "{name} has no command");
        // clap parses (and value-checks) every argument before --help.
        let out = bin()
            .args(&command)
            .arg("--help")
            .env_remove("TOKENTALLY_METRICS_ADDR")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: `tokentally {}` does not parse:\n{}",
            command.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The environment file sets only variables tokentally reads.
    let mut known_env = String::new();
    for args in [
        &["--help"][..],
        &["aggregate", "--help"],
        &["gateway", "--help"],
        &["alerts", "run", "--help"],
        &["migrate", "--help"],
        &["topics", "create", "--help"],
        &["simulate", "--help"],
    ] {
        known_env.push_str(&String::from_utf8_lossy(&run_ok(bin().args(args)).stdout));
    }
    for line in read(env_file)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let key = line.split('=').next().unwrap();
        assert!(
            key == "RUST_LOG" || known_env.contains(&format!("[env: {key}=")),
            "{env_file} sets {key}, which no tokentally command reads"
        );
    }
}

#[test]
fn compose_commands_parse_with_the_tokentally_binary() {
    let doc = compose();
    let services = compose_services(&doc);
    assert!(tokentally_services(&doc).len() >= 6);
    check_commands(&doc, "deploy/tokentally/compose.env");
    let command = |svc: &str| strings(services[svc].get("command")).join(" ");
    assert!(command("aggregate").contains("aggregate --sink clickhouse"));
    assert!(command("alerts").contains("alerts run --from-clickhouse"));
    assert!(command("gateway").contains("--tokens-file /run/secrets/gateway_tokens"));
    assert!(command("migrate").ends_with("migrate"));
    assert!(command("simulate").contains("simulate --kafka kafka:9092"));
    for (svc, port) in [
        ("gateway", 9101),
        ("aggregate", 9102),
        ("alerts", 9103),
        ("simulate", 9104),
    ] {
        assert_eq!(metrics_port(obj(&services[svc], svc)), Some(port), "{svc}");
    }

    // The compose configuration file is valid (unknown keys are refused).
    run_ok(
        bin().args([
            "--config",
            &root()
                .join("deploy/tokentally/tokentally.toml")
                .display()
                .to_string(),
            "migrate",
            "--print-ddl",
            "modern",
        ]),
    );
}

/// The value of `name` in a service's `environment` mapping, as text.
fn env_of(service: &Value, name: &str) -> String {
    match &service["environment"][name] {
        Value::String(v) => v.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("environment {name}: {other}"),
    }
}

#[test]
fn cluster_compose_file_is_complete_and_consistent() {
    let doc = cluster_compose();
    let services = compose_services(&doc);
    let brokers = ["kafka-1", "kafka-2", "kafka-3"];
    let replicas = ["clickhouse-1", "clickhouse-2"];
    for required in brokers.iter().chain(&replicas).chain(&[
        "keeper",
        "topics",
        "migrate",
        "gateway",
        "aggregate-1",
        "aggregate-2",
    ]) {
        assert!(services.contains_key(*required), "no service {required}");
    }
    let one_shots = check_structure(services);
    for one_shot in ["topics", "migrate"] {
        assert!(one_shots.contains(one_shot), "{one_shot} must be one-shot");
    }
    check_secrets(&doc, "deploy/tokentally/compose-cluster.env");
    check_commands(&doc, "deploy/tokentally/compose-cluster.env");

    // Three brokers of one KRaft cluster, each a voter, with the replication
    // the topics get (3, two in sync), on the Kafka version CI tests.
    let base = compose();
    let base = compose_services(&base);
    let voters = "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093";
    for (i, b) in brokers.iter().enumerate() {
        let s = &services[*b];
        assert_eq!(s["image"], base["kafka"]["image"], "{b}");
        assert_eq!(env_of(s, "KAFKA_NODE_ID"), (i + 1).to_string(), "{b}");
        assert_eq!(
            env_of(s, "CLUSTER_ID"),
            env_of(&services["kafka-1"], "CLUSTER_ID")
        );
        assert_eq!(env_of(s, "KAFKA_CONTROLLER_QUORUM_VOTERS"), voters, "{b}");
        assert_eq!(env_of(s, "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"), "3");
        assert_eq!(env_of(s, "KAFKA_MIN_INSYNC_REPLICAS"), "2");
        assert_eq!(env_of(s, "KAFKA_AUTO_CREATE_TOPICS_ENABLE"), "false");
        assert!(
            env_of(s, "KAFKA_ADVERTISED_LISTENERS").contains(&format!("PLAINTEXT://{b}:9092")),
            "{b}"
        );
    }

    // Two replicas of the cluster `tokentally`, named apart, coordinated by
    // the keeper service, on the ClickHouse version of docker-compose.yml.
    let config = read("deploy/clickhouse-cluster/cluster.xml");
    let keeper = read("deploy/clickhouse-cluster/keeper.xml");
    assert!(config.contains("<tokentally>"), "the cluster tokentally");
    assert!(config.contains("<host>keeper</host>") && config.contains("<port>9181</port>"));
    assert!(keeper.contains("<tcp_port>9181</tcp_port>"));
    assert!(config.contains(r#"<replica from_env="CLICKHOUSE_REPLICA" />"#));
    let mut names = BTreeSet::new();
    for r in replicas {
        let s = &services[r];
        assert_eq!(s["image"], base["clickhouse"]["image"], "{r}");
        assert!(
            config.contains(&format!("<host>{r}</host>")),
            "{r} is not in the cluster"
        );
        assert_eq!(env_of(s, "CLICKHOUSE_REPLICA_HOST"), r);
        names.insert(env_of(s, "CLICKHOUSE_REPLICA"));
        assert!(
            volumes(obj(s, r)).contains(&(
                "./deploy/clickhouse-cluster/cluster.xml".into(),
                "/etc/clickhouse-server/config.d/cluster.xml".into()
            )),
            "{r} does not mount the cluster settings"
        );
        assert!(
            depends_on(obj(s, r)).contains(&("keeper".into(), "service_healthy".into())),
            "{r} must wait for the keeper"
        );
    }
    assert_eq!(names.len(), 2, "each replica names itself apart: {names:?}");

    // tokentally: every broker, the schema ON CLUSTER tokentally (from the
    // environment), one aggregator on each replica.
    let env = read("deploy/tokentally/compose-cluster.env");
    assert!(env.contains("TOKENTALLY_KAFKA_BROKERS=kafka-1:9092,kafka-2:9092,kafka-3:9092"));
    assert!(env.contains("TOKENTALLY_CLICKHOUSE_CLUSTER=tokentally\n"));
    for r in replicas {
        assert!(
            depends_on(obj(&services["migrate"], "migrate"))
                .contains(&(r.to_string(), "service_healthy".into())),
            "migrate must wait for {r}"
        );
    }
    let mut written = BTreeSet::new();
    for a in ["aggregate-1", "aggregate-2"] {
        let command = strings(services[a].get("command"));
        let i = command
            .iter()
            .position(|c| c == "--clickhouse")
            .expect("--clickhouse");
        written.insert(command[i + 1].clone());
        for (target, condition) in [
            ("migrate", "service_completed_successfully"),
            ("topics", "service_completed_successfully"),
        ] {
            assert!(
                depends_on(obj(&services[a], a)).contains(&(target.into(), condition.into())),
                "{a} must wait for {target}"
            );
        }
    }
    assert_eq!(
        written,
        BTreeSet::from([
            "http://clickhouse-1:8123".into(),
            "http://clickhouse-2:8123".into()
        ])
    );
}
