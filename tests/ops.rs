//! The operations files, checked without a Docker engine or Grafana (no
//! Docker engine runs on the machines that run scripts/test):
//!
//! - `docker-compose.yml` and the `Dockerfile`, structurally: services,
//!   pinned images, health checks behind every `service_healthy`, one-shot
//!   services behind every `service_completed_successfully`, mounted paths
//!   that exist, distinct host ports, secrets as files (never values), and
//!   every tokentally command line parsed by the binary itself;
//! - the Grafana provisioning and dashboards: every panel has a provisioned
//!   data source; every ClickHouse panel's SQL, with the plugin's macros
//!   expanded for a concrete range, returns rows on the real server over
//!   simulated traffic aggregated from Kafka, and on the modern engine
//!   (chdb); every Prometheus panel's PromQL parses (promtool) and names
//!   only metrics that tokentally exports;
//! - `deploy/prometheus`: the scrape config matches the compose metrics
//!   addresses, `promtool check rules`, and the alert unit tests
//!   (`promtool test rules`), with a firing and a quiet case for every
//!   alert.
//!
//! promtool comes from `scripts/promtool` (Debian's package, unpacked on
//! first use); a promtool that cannot be had fails the tests.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use serde_json::{Map, Value};
use yaml_rust2::{Yaml, YamlLoader};

use common::services::{analyst_database, clickhouse_sql, services};
use common::{bin, run_ok};

// ------------------------------------------------------------------ files

/// The work tree, read when the test runs (a test binary built from another
/// checkout into a shared target directory keeps its compile-time path).
fn root() -> PathBuf {
    std::env::var("CARGO_MANIFEST_DIR")
        .expect("cargo sets CARGO_MANIFEST_DIR")
        .into()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A YAML file as JSON values. Anchors are resolved; merge keys (`<<`) are
/// refused, so that what is checked is exactly what the tools read.
fn yaml(rel: &str) -> Value {
    let docs = YamlLoader::load_from_str(&read(rel))
        .unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"));
    assert_eq!(docs.len(), 1, "{rel}: expected one YAML document");
    to_json(&docs[0], rel)
}

fn to_json(y: &Yaml, rel: &str) -> Value {
    match y {
        Yaml::Real(s) => Value::from(
            s.parse::<f64>()
                .unwrap_or_else(|_| panic!("{rel}: bad number {s}")),
        ),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::from(s.clone()),
        Yaml::Boolean(b) => Value::from(*b),
        Yaml::Null => Value::Null,
        Yaml::Array(items) => Value::Array(items.iter().map(|v| to_json(v, rel)).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        Yaml::Boolean(b) => b.to_string(),
                        other => panic!("{rel}: unsupported mapping key {other:?}"),
                    };
                    assert_ne!(key, "<<", "{rel}: merge keys are not allowed");
                    (key, to_json(v, rel))
                })
                .collect(),
        ),
        Yaml::Alias(_) | Yaml::BadValue => panic!("{rel}: unresolved YAML value {y:?}"),
    }
}

fn obj<'a>(v: &'a Value, what: &str) -> &'a Map<String, Value> {
    v.as_object()
        .unwrap_or_else(|| panic!("{what} is not a mapping: {v}"))
}

fn text<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

/// A list of strings (a YAML sequence), or one string.
fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Some(other) => panic!("expected a string or a list of strings: {other}"),
    }
}

// ---------------------------------------------------------------- compose

const COMPOSE: &str = "docker-compose.yml";

fn compose() -> Value {
    yaml(COMPOSE)
}

fn compose_services(doc: &Value) -> &Map<String, Value> {
    obj(&doc["services"], "services")
}

/// Services built from this repository (the tokentally image).
fn tokentally_services(doc: &Value) -> Vec<(&String, &Map<String, Value>)> {
    compose_services(doc)
        .iter()
        .map(|(name, s)| (name, obj(s, name)))
        .filter(|(_, s)| s.contains_key("build"))
        .collect()
}

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

/// `(source, target)` of a service's volumes, both syntaxes.
fn volumes(service: &Map<String, Value>) -> Vec<(String, String)> {
    service
        .get("volumes")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .map(|v| match v {
                    Value::String(s) => {
                        let mut parts = s.splitn(3, ':');
                        let source = parts.next().unwrap().to_string();
                        let target = parts
                            .next()
                            .unwrap_or_else(|| panic!("volume {s} has no target"))
                            .to_string();
                        (source, target)
                    }
                    Value::Object(m) => (
                        text(&m["source"], "volume source").to_string(),
                        text(&m["target"], "volume target").to_string(),
                    ),
                    other => panic!("unreadable volume {other}"),
                })
                .collect()
        })
        .unwrap_or_default()
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

#[test]
fn compose_file_is_complete_and_consistent() {
    let doc = compose();
    let top = obj(&doc, COMPOSE);
    for key in top.keys() {
        assert!(
            [
                "name", "services", "volumes", "secrets", "networks", "configs"
            ]
            .contains(&key.as_str())
                || key.starts_with("x-"),
            "unknown top-level key {key}"
        );
    }
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
    let declared_volumes: BTreeSet<&String> = top
        .get("volumes")
        .map(|v| obj(v, "volumes").keys().collect())
        .unwrap_or_default();
    let declared_secrets = top
        .get("secrets")
        .map(|v| obj(v, "secrets").clone())
        .unwrap_or_default();

    let mut host_ports: BTreeMap<u16, String> = BTreeMap::new();
    let mut one_shots = BTreeSet::new();
    for (name, s) in services {
        let s = obj(s, name);
        let restart = s.get("restart").and_then(Value::as_str).unwrap_or("no");
        if restart == "no" {
            one_shots.insert(name.clone());
        }
        // An image or a build, and third-party images pinned to a version.
        match (s.get("image"), s.get("build")) {
            (None, None) => panic!("service {name} has neither image nor build"),
            (_, Some(build)) => {
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
            }
            (Some(image), None) => {
                let image = text(image, "image");
                let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
                assert!(
                    !tag.is_empty() && tag != "latest" && !tag.contains('/'),
                    "{name}: pin the image version ({image})"
                );
            }
        }
        // Bind mounts exist in the repository; named volumes are declared.
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
            } else {
                assert!(
                    declared_volumes.contains(&source),
                    "{name}: volume {source} is not declared under volumes:"
                );
            }
        }
        for env_file in strings(s.get("env_file")) {
            assert!(
                repo_path(&env_file).is_file(),
                "{name}: env_file {env_file} does not exist"
            );
        }
        for secret in strings(s.get("secrets")) {
            assert!(
                declared_secrets.contains_key(&secret),
                "{name}: secret {secret} is not declared under secrets:"
            );
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
        // Health checks are runnable commands.
        if let Some(hc) = s.get("healthcheck") {
            let test = strings(hc.get("test"));
            assert!(!test.is_empty(), "{name}: healthcheck without test");
            assert!(
                test.len() == 1 || ["CMD", "CMD-SHELL"].contains(&test[0].as_str()),
                "{name}: healthcheck test must start with CMD or CMD-SHELL: {test:?}"
            );
        }
    }
    assert!(!host_ports.is_empty(), "nothing is published");

    // depends_on: targets exist, conditions are backed, no cycles, and
    // nothing outside a profile waits for a service inside one.
    let profiles = |s: &Value| strings(s.get("profiles"));
    for (name, s) in services {
        for (target, condition) in depends_on(obj(s, name)) {
            let t = services
                .get(&target)
                .unwrap_or_else(|| panic!("{name} depends on unknown service {target}"));
            match condition.as_str() {
                "service_healthy" => assert!(
                    t.get("healthcheck").is_some(),
                    "{name} waits for {target} to be healthy, but {target} has no healthcheck"
                ),
                "service_completed_successfully" => assert!(
                    one_shots.contains(&target),
                    "{name} waits for {target} to complete, but {target} restarts"
                ),
                "service_started" => {}
                other => panic!("{name}: unknown depends_on condition {other}"),
            }
            let tp = profiles(t);
            assert!(
                tp.is_empty() || profiles(s).iter().any(|p| tp.contains(p)),
                "{name} depends on {target}, which only runs with profile {tp:?}"
            );
        }
    }
    fn visit(
        name: &str,
        services: &Map<String, Value>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(name) {
            return;
        }
        assert!(
            !path.iter().any(|p| p == name),
            "depends_on cycle: {path:?} -> {name}"
        );
        path.push(name.to_string());
        for (t, _) in depends_on(obj(&services[name], name)) {
            visit(&t, services, path, done);
        }
        path.pop();
        done.insert(name.to_string());
    }
    let mut done = BTreeSet::new();
    for name in services.keys() {
        visit(name, services, &mut Vec::new(), &mut done);
    }

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

#[test]
fn compose_keeps_secrets_in_files_never_in_values() {
    let doc = compose();
    let services = compose_services(&doc);
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
    assert!(
        root().join("secrets/README.md").is_file(),
        "secrets/README.md explains how to create the secret files"
    );
    let dockerignore = read(".dockerignore");
    assert!(dockerignore.lines().any(|l| l.trim() == "secrets/"));

    // No secret values in environments, and references to mounted secrets
    // are mounted on that service.
    let secretish = |key: &str| {
        let k = key.to_ascii_uppercase();
        !k.ends_with("_FILE")
            && ["PASSWORD", "SECRET", "TOKEN", "TOKENS"]
                .iter()
                .any(|s| k.ends_with(s))
    };
    let env_file = read("deploy/tokentally/compose.env");
    for line in env_file
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let key = line.split('=').next().unwrap();
        assert!(!secretish(key), "compose.env sets the secret {key}");
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

/// `--metrics-addr` port of a compose service's command.
fn metrics_port(service: &Map<String, Value>) -> Option<u16> {
    let command = strings(service.get("command"));
    let i = command.iter().position(|a| a == "--metrics-addr")?;
    let addr = &command[i + 1];
    assert!(
        addr.starts_with("0.0.0.0:"),
        "--metrics-addr {addr} is not reachable by Prometheus"
    );
    Some(addr.rsplit(':').next().unwrap().parse().unwrap())
}

#[test]
fn compose_commands_parse_with_the_tokentally_binary() {
    let doc = compose();
    let services = compose_services(&doc);
    let built = tokentally_services(&doc);
    assert!(built.len() >= 6, "tokentally services: {}", built.len());
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
    for line in read("deploy/tokentally/compose.env")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let key = line.split('=').next().unwrap();
        assert!(
            key == "RUST_LOG" || known_env.contains(&format!("[env: {key}=")),
            "compose.env sets {key}, which no tokentally command reads"
        );
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

#[test]
fn dockerfile_builds_the_binary_on_a_slim_runtime() {
    let text = read("Dockerfile");
    // Join continuation lines, drop comments.
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(t);
            lines.push(std::mem::take(&mut current));
        }
    }
    let args: BTreeMap<String, String> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("ARG "))
        .filter_map(|a| a.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let subst = |s: &str| {
        let mut s = s.to_string();
        for (k, v) in &args {
            s = s.replace(&format!("${{{k}}}"), v);
        }
        s
    };
    let froms: Vec<String> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("FROM "))
        .map(subst)
        .collect();
    assert!(froms.len() >= 2, "a multi-stage build: {froms:?}");
    let builder = froms
        .iter()
        .find(|f| f.ends_with(" AS builder"))
        .expect("a stage named builder");
    let rust = builder
        .strip_prefix("rust:")
        .expect("the builder uses the official rust image");
    let version = |v: &str| -> (u32, u32) {
        let mut it = v
            .split(['.', '-', ' '])
            .map(|p| p.parse::<u32>().unwrap_or(0));
        (it.next().unwrap(), it.next().unwrap_or(0))
    };
    let msrv = read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .map(|v| v.trim_end_matches('"').to_string())
        .expect("Cargo.toml has rust-version");
    assert!(
        version(rust) >= version(&msrv),
        "builder rust:{rust} is older than rust-version {msrv}"
    );
    let runtime = froms.last().unwrap();
    assert!(
        runtime.starts_with("debian:") && runtime.contains("-slim"),
        "the runtime is a slim Debian: {runtime}"
    );
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    assert!(has("cargo build --release --locked --bin tokentally"));
    assert!(has(
        "COPY --from=builder /usr/local/bin/tokentally /usr/local/bin/tokentally"
    ));
    assert!(has("ENTRYPOINT [\"tokentally\"]"));
    let user = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime runs as a non-root user");
    assert!(user != "root" && user != "0", "USER {user}");
    // Health checks of the tokentally services use curl: the runtime has it.
    let doc = compose();
    for (name, s) in tokentally_services(&doc) {
        let uses_curl = s
            .get("healthcheck")
            .is_some_and(|hc| strings(hc.get("test")).iter().any(|t| t.contains("curl")));
        if uses_curl {
            assert!(
                has("install -y --no-install-recommends ca-certificates curl"),
                "{name} uses curl"
            );
        }
    }
    let ignore = read(".dockerignore");
    for excluded in ["target/", "secrets/", ".git/"] {
        assert!(
            ignore.lines().any(|l| l.trim() == excluded),
            ".dockerignore lacks {excluded}"
        );
    }
}

// ------------------------------------------------------------- dashboards

const DASHBOARDS: &str = "dashboards/json";
const CLICKHOUSE_PLUGIN: &str = "grafana-clickhouse-datasource";

fn dashboards() -> Vec<(String, Value)> {
    let mut files: Vec<_> = std::fs::read_dir(root().join(DASHBOARDS))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards in {DASHBOARDS}");
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|e| panic!("{name} is not valid JSON: {e}"));
            (name, v)
        })
        .collect()
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(p);
        for nested in p["panels"].as_array().into_iter().flatten() {
            out.push(nested);
        }
    }
    out
}

/// One query of a panel.
struct PanelQuery {
    at: String,
    datasource_type: String,
    target: Value,
}

fn panel_queries() -> Vec<PanelQuery> {
    let mut out = Vec::new();
    for (file, d) in dashboards() {
        for p in panels(&d) {
            if p["type"] == "row" {
                continue;
            }
            for t in p["targets"].as_array().into_iter().flatten() {
                let ds = if t["datasource"].is_object() {
                    &t["datasource"]
                } else {
                    &p["datasource"]
                };
                out.push(PanelQuery {
                    at: format!("{file} / {} / {}", p["title"], t["refId"]),
                    datasource_type: ds["type"].as_str().unwrap_or_default().to_string(),
                    target: t.clone(),
                });
            }
        }
    }
    out
}

/// The dashboards' ClickHouse queries, `(where, SQL with macros)`.
fn clickhouse_queries() -> Vec<(String, String)> {
    panel_queries()
        .into_iter()
        .filter(|q| q.datasource_type == CLICKHOUSE_PLUGIN)
        .map(|q| {
            let sql = q.target["rawSql"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: no rawSql", q.at))
                .to_string();
            (q.at, sql)
        })
        .collect()
}

#[test]
fn dashboards_parse_and_every_panel_has_a_provisioned_datasource() {
    let provisioned = yaml("dashboards/provisioning/datasources/datasources.yml");
    let mut sources = BTreeMap::new();
    for ds in provisioned["datasources"].as_array().expect("datasources") {
        sources.insert(
            text(&ds["uid"], "uid").to_string(),
            text(&ds["type"], "type").to_string(),
        );
    }
    assert_eq!(
        sources
            .values()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        BTreeSet::from([CLICKHOUSE_PLUGIN, "prometheus"])
    );
    let mut titles = BTreeSet::new();
    let mut uids = BTreeSet::new();
    for (file, d) in dashboards() {
        let title = text(&d["title"], "title").to_string();
        assert!(
            uids.insert(text(&d["uid"], "uid").to_string()),
            "{file}: uid reused"
        );
        assert!(titles.insert(title.clone()), "{file}: title reused");
        let ps = panels(&d);
        assert!(!ps.is_empty(), "{file} has no panels");
        let mut ids = BTreeSet::new();
        for p in ps {
            let at = format!("{file} / {}", p["title"]);
            assert!(
                ids.insert(p["id"].as_u64().expect("panel id")),
                "{at}: id reused"
            );
            if p["type"] == "row" {
                continue;
            }
            let uid = text(&p["datasource"]["uid"], "panel datasource uid");
            let kind = text(&p["datasource"]["type"], "panel datasource type");
            assert_eq!(
                sources.get(uid).map(String::as_str),
                Some(kind),
                "{at}: data source {uid} ({kind}) is not provisioned"
            );
            let g = &p["gridPos"];
            let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
            assert!(
                x + w <= 24 && g["h"].as_u64().unwrap() > 0,
                "{at}: gridPos {g}"
            );
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{at} has no query");
            for t in targets {
                if let Some(ds) = t.get("datasource") {
                    assert_eq!(
                        ds["uid"], p["datasource"]["uid"],
                        "{at}: target data source"
                    );
                }
                match kind {
                    CLICKHOUSE_PLUGIN => {
                        let sql = text(&t["rawSql"], "rawSql");
                        assert_eq!(t["editorType"], "sql", "{at}");
                        assert!(!sql.trim_end().ends_with(';'), "{at}: trailing ;");
                        assert!(
                            !sql.to_uppercase().contains("FORMAT "),
                            "{at}: FORMAT clause"
                        );
                    }
                    _ => assert!(!text(&t["expr"], "expr").is_empty(), "{at}: empty expr"),
                }
            }
        }
    }
    assert!(
        titles.iter().any(|t| t.contains("Token usage")),
        "{titles:?}"
    );
    assert!(
        titles.iter().any(|t| t.contains("Pipeline health")),
        "{titles:?}"
    );

    // Provisioning matches the compose mounts and services.
    let doc = compose();
    let grafana = obj(&compose_services(&doc)["grafana"], "grafana");
    let mounts = volumes(grafana);
    let target_of = |source: &str| {
        mounts
            .iter()
            .find(|(s, _)| s.trim_start_matches("./") == source)
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| panic!("grafana does not mount {source}"))
    };
    assert_eq!(
        target_of("dashboards/provisioning"),
        "/etc/grafana/provisioning"
    );
    let provider = yaml("dashboards/provisioning/dashboards/dashboards.yml");
    let provider = &provider["providers"][0];
    assert_eq!(provider["type"], "file");
    assert_eq!(
        text(&provider["options"]["path"], "provider path"),
        target_of(DASHBOARDS),
        "the dashboard provider reads where compose mounts dashboards/json"
    );
    let plugins = obj(&grafana["environment"], "grafana environment");
    assert!(text(&plugins["GF_INSTALL_PLUGINS"], "GF_INSTALL_PLUGINS").contains(CLICKHOUSE_PLUGIN));
    let services = compose_services(&doc);
    for ds in provisioned["datasources"].as_array().unwrap() {
        let host = match ds["type"].as_str().unwrap() {
            CLICKHOUSE_PLUGIN => {
                assert_eq!(ds["jsonData"]["defaultDatabase"], "tokentally");
                assert_eq!(ds["jsonData"]["port"], 8123);
                assert_eq!(ds["jsonData"]["protocol"], "http");
                text(&ds["jsonData"]["host"], "host").to_string()
            }
            _ => text(&ds["url"], "url")
                .trim_start_matches("http://")
                .split(':')
                .next()
                .unwrap()
                .to_string(),
        };
        assert!(
            services.contains_key(&host),
            "data source host {host} is no compose service"
        );
    }
}

/// The views documented in docs/SQL.md.
fn documented_views() -> BTreeSet<String> {
    read("docs/SQL.md")
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn clickhouse_panels_read_only_documented_views() {
    let views = documented_views();
    assert!(
        views.contains("usage_daily") && views.contains("ingest_progress"),
        "{views:?}"
    );
    for (at, sql) in clickhouse_queries() {
        let mut rest = sql.as_str();
        let mut read_any = false;
        while let Some(i) = rest.find("tokentally.") {
            let name: String = rest[i + "tokentally.".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            assert!(
                views.contains(&name),
                "{at} reads tokentally.{name}, which docs/SQL.md does not document as a view"
            );
            read_any = true;
            rest = &rest[i + 1..];
        }
        assert!(read_any, "{at}: name tables as tokentally.<view>");
    }
}

// Grafana's time range for the checks: 2026-11-25 00:00:00 to 2026-11-27
// 23:59:59 UTC, with a 5-minute interval. It covers the simulated day of the
// real-server test (2026-11-27) and the modern-engine fixture (25th-27th).
const FROM_S: i64 = 1_795_564_800;
const TO_S: i64 = 1_795_823_999;
const FROM_DATE: &str = "2026-11-25";
const TO_DATE: &str = "2026-11-27";
const INTERVAL_S: i64 = 300;

/// The ClickHouse plugin's macros (grafana/clickhouse-datasource
/// pkg/macros), expanded as the plugin does for the range above.
fn expand_macros(sql: &str) -> String {
    let datetime = |s: i64| format!("toDateTime({s})");
    let datetime_ms = |s: i64| format!("fromUnixTimestamp64Milli({})", s * 1000);
    let mut out = String::new();
    let mut rest = sql;
    while let Some(i) = rest.find("$__") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 3..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let mut tail = &after[name.len()..];
        let mut args: Vec<String> = Vec::new();
        if tail.starts_with('(') {
            let mut depth = 0;
            let end = tail
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map(|(j, _)| j)
                .unwrap_or_else(|| panic!("unbalanced macro call in:\n{sql}"));
            args = tail[1..end]
                .split(',')
                .map(|a| a.trim().to_string())
                .collect();
            tail = &tail[end + 1..];
        }
        let arg = |n: usize| -> String {
            assert_eq!(args.len(), n, "$__{name} takes {n} argument(s) in:\n{sql}");
            args[0].clone()
        };
        let expansion = match name.as_str() {
            "fromTime" => datetime(FROM_S),
            "toTime" => datetime(TO_S),
            "fromTime_ms" => datetime_ms(FROM_S),
            "toTime_ms" => datetime_ms(TO_S),
            "timeFilter" => {
                let c = arg(1);
                format!("{c} >= {} AND {c} <= {}", datetime(FROM_S), datetime(TO_S))
            }
            "timeFilter_ms" => {
                let c = arg(1);
                format!(
                    "{c} >= {} AND {c} <= {}",
                    datetime_ms(FROM_S),
                    datetime_ms(TO_S)
                )
            }
            "dateFilter" => {
                let c = arg(1);
                format!("{c} >= toDate('{FROM_DATE}') AND {c} <= toDate('{TO_DATE}')")
            }
            "dateTimeFilter" | "dt" => {
                arg(2);
                let (d, t) = (&args[0], &args[1]);
                format!(
                    "({d} >= toDate('{FROM_DATE}') AND {d} <= toDate('{TO_DATE}')) AND ({t} >= {} AND {t} <= {})",
                    datetime(FROM_S),
                    datetime(TO_S)
                )
            }
            "timeInterval" => format!(
                "toStartOfInterval(toDateTime({}), INTERVAL {INTERVAL_S} second)",
                arg(1)
            ),
            "timeInterval_ms" => format!(
                "toStartOfInterval(toDateTime64({}, 3), INTERVAL {} millisecond)",
                arg(1),
                INTERVAL_S * 1000
            ),
            "interval_s" => INTERVAL_S.to_string(),
            other => panic!("unknown Grafana macro $__{other} in:\n{sql}"),
        };
        out.push_str(&expansion);
        rest = tail;
    }
    out.push_str(rest);
    assert!(
        !out.contains('$'),
        "a Grafana variable is left after expanding macros (panels take no variables):\n{out}"
    );
    out
}

#[test]
fn macro_expansion_matches_the_plugin() {
    assert_eq!(
        expand_macros("SELECT 1 WHERE $__timeFilter(minute) AND day = toDate($__toTime)"),
        "SELECT 1 WHERE minute >= toDateTime(1795564800) AND minute <= toDateTime(1795823999) AND day = toDate(toDateTime(1795823999))"
    );
    assert_eq!(
        expand_macros("$__dateFilter(day) GROUP BY $__timeInterval(minute) / $__interval_s"),
        "day >= toDate('2026-11-25') AND day <= toDate('2026-11-27') GROUP BY toStartOfInterval(toDateTime(minute), INTERVAL 300 second) / 300"
    );
    // The constants agree with each other.
    assert_eq!((TO_S + 1 - FROM_S) % 86_400, 0);
    assert_eq!(FROM_S % 86_400, 0);
}

/// Not a single row, or nothing but zeros and empty strings: the panel
/// would be blank.
fn assert_shows_something(at: &str, sql: &str, rows: &[Map<String, Value>]) {
    assert!(!rows.is_empty(), "{at}: no rows from\n{sql}");
    let something = rows.iter().flat_map(|r| r.values()).any(|v| match v {
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty() && s.parse::<f64>().ok() != Some(0.0),
        Value::Null => false,
        _ => true,
    });
    assert!(
        something,
        "{at}: only zeros and empty values from\n{sql}\n{rows:?}"
    );
}

#[test]
fn dashboard_clickhouse_queries_return_rows_on_the_real_server() {
    let queries = clickhouse_queries();
    assert!(
        queries.len() >= 8,
        "ClickHouse panel queries: {}",
        queries.len()
    );
    let s = services();
    let dir = tempfile::tempdir().unwrap();
    let db = analyst_database(dir.path(), "ops");
    for (at, sql) in &queries {
        let sql = expand_macros(sql).replace("tokentally.", &format!("{db}."));
        let body = clickhouse_sql(&s.clickhouse, &format!("{sql}\nFORMAT JSONEachRow"))
            .unwrap_or_else(|e| panic!("{at}: the query fails on the server:\n{e}"));
        let rows: Vec<Map<String, Value>> = body
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).expect("JSONEachRow"))
            .collect();
        assert_shows_something(at, &sql, &rows);
    }
    let _ = clickhouse_sql(&s.clickhouse, &format!("DROP DATABASE IF EXISTS {db}"));
}

#[test]
fn dashboard_clickhouse_queries_return_rows_on_the_modern_engine() {
    let queries: Vec<String> = clickhouse_queries()
        .iter()
        .map(|(_, sql)| expand_macros(sql))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let ddl = run_ok(bin().args(["migrate", "--print-ddl", "modern", "--json"]));
    let ddl_path = dir.path().join("ddl.json");
    std::fs::write(&ddl_path, &ddl.stdout).unwrap();
    let queries_path = dir.path().join("queries.json");
    std::fs::write(&queries_path, serde_json::to_vec(&queries).unwrap()).unwrap();
    let out = Command::new(root().join("scripts/chdb/run"))
        .arg(&ddl_path)
        .arg(&queries_path)
        .output()
        .expect("run scripts/chdb/run");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dashboard queries fail on the modern engine:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report.matches("ok (").count(), queries.len(), "{report}");
}

// ------------------------------------------------------------- Prometheus

/// Every metric tokentally's processes export (with the process collector's
/// memory); the dashboards and rules may use no other. `up` is Prometheus' own.
const METRICS: &[&str] = &[
    "tokentally_events_received_total",
    "tokentally_events_accepted_total",
    "tokentally_events_rejected_total",
    "tokentally_duplicates_dropped_total",
    "tokentally_late_events_total",
    "tokentally_consumer_lag_messages",
    "tokentally_dedup_ids",
    "tokentally_batch_events",
    "tokentally_commit_seconds",
    "tokentally_last_commit_timestamp_seconds",
    "tokentally_sink_rows_total",
    "tokentally_sink_errors_total",
    "tokentally_sink_retries_total",
    "tokentally_sink_recovery_seconds",
    "tokentally_sink_ledger_rows",
    "tokentally_gateway_requests_total",
    "tokentally_gateway_events_total",
    "tokentally_webhook_deliveries_total",
    "tokentally_webhook_endpoints_disabled",
    "tokentally_milestones_total",
    "tokentally_simulate_events_produced_total",
    "process_resident_memory_bytes",
];
const HISTOGRAMS: &[&str] = &["tokentally_batch_events", "tokentally_commit_seconds"];

/// The tokentally and process metric names a PromQL expression uses.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            if word.starts_with("tokentally_") || word.starts_with("process_") {
                names.insert(std::mem::take(&mut word));
            }
            word.clear();
        }
    }
    names
}

fn known_metric(name: &str) -> bool {
    // A histogram is queried through its _bucket, _sum and _count series.
    if HISTOGRAMS.contains(&name) {
        return false;
    }
    METRICS.contains(&name)
        || ["_bucket", "_sum", "_count"].iter().any(|s| {
            name.strip_suffix(s)
                .is_some_and(|base| HISTOGRAMS.contains(&base))
        })
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new(root().join("scripts/promtool"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run scripts/promtool");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn prometheus_config_and_rules_pass_promtool() {
    let out = promtool(&["check", "config", "deploy/prometheus/prometheus.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = promtool(&["check", "rules", "deploy/prometheus/rules.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = promtool(&["test", "rules", "deploy/prometheus/rules_test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_has_firing_and_quiet_unit_tests() {
    let rules = yaml("deploy/prometheus/rules.yml");
    let mut alerts = BTreeSet::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let expr = text(&rule["expr"], "expr");
            for name in metric_names(expr) {
                assert!(known_metric(&name), "rules.yml uses unknown metric {name}");
            }
            if let Some(a) = rule.get("alert") {
                alerts.insert(text(a, "alert").to_string());
            }
        }
    }
    for required in [
        "ConsumerLagGrowing",
        "NoEventsReceived",
        "DeadLetterRateHigh",
        "SinkFailing",
        "WebhookEndpointDisabled",
    ] {
        assert!(alerts.contains(required), "no alert {required}");
    }
    let tests = yaml("deploy/prometheus/rules_test.yml");
    assert_eq!(strings(tests.get("rule_files")), ["rules.yml"]);
    let (mut firing, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for t in tests["tests"].as_array().expect("tests") {
        for case in t["alert_rule_test"].as_array().into_iter().flatten() {
            let name = text(&case["alertname"], "alertname").to_string();
            assert!(alerts.contains(&name), "a test of unknown alert {name}");
            let expected = case["exp_alerts"].as_array().map_or(0, Vec::len);
            if expected > 0 {
                firing.insert(name);
            } else {
                quiet.insert(name);
            }
        }
    }
    for a in &alerts {
        assert!(firing.contains(a), "no unit test where {a} fires");
        assert!(quiet.contains(a), "no unit test where {a} stays quiet");
    }
    let config = yaml("deploy/prometheus/prometheus.yml");
    assert_eq!(strings(config.get("rule_files")), ["rules.yml"]);
}

#[test]
fn scrape_config_matches_the_compose_metrics_addresses() {
    let config = yaml("deploy/prometheus/prometheus.yml");
    let doc = compose();
    let services = compose_services(&doc);
    let mut scraped = BTreeMap::new();
    for job in config["scrape_configs"].as_array().expect("scrape_configs") {
        let name = text(&job["job_name"], "job_name");
        let Some(command) = name.strip_prefix("tokentally-") else {
            continue;
        };
        let mut targets = Vec::new();
        for sc in job["static_configs"].as_array().into_iter().flatten() {
            for t in strings(sc.get("targets")) {
                let (host, port) = t.rsplit_once(':').expect("host:port");
                targets.push((host.to_string(), port.parse::<u16>().unwrap()));
            }
        }
        for sd in job["dns_sd_configs"].as_array().into_iter().flatten() {
            let port = sd["port"].as_u64().expect("dns_sd port") as u16;
            for host in strings(sd.get("names")) {
                targets.push((host, port));
            }
        }
        assert_eq!(targets.len(), 1, "{name}: one target per job");
        let (host, port) = &targets[0];
        assert_eq!(
            host, command,
            "{name} scrapes the compose service {command}"
        );
        let service = obj(
            services
                .get(host)
                .unwrap_or_else(|| panic!("{name} scrapes {host}, which is no compose service")),
            host,
        );
        assert_eq!(
            metrics_port(service),
            Some(*port),
            "{name}: the port must be {host}'s --metrics-addr"
        );
        scraped.insert(command.to_string(), *port);
    }
    assert_eq!(
        scraped,
        BTreeMap::from([
            ("gateway".to_string(), 9101),
            ("aggregate".to_string(), 9102),
            ("alerts".to_string(), 9103),
            ("simulate".to_string(), 9104),
        ])
    );
    // Compose mounts this directory where the config is read from.
    let prometheus = obj(&services["prometheus"], "prometheus");
    assert!(
        volumes(prometheus)
            .iter()
            .any(|(s, t)| s == "./deploy/prometheus" && t == "/etc/prometheus")
    );
    assert!(
        strings(prometheus.get("command"))
            .contains(&"--config.file=/etc/prometheus/prometheus.yml".to_string())
    );
}

#[test]
fn dashboard_promql_parses_and_uses_only_exported_metrics() {
    let mut used = BTreeSet::new();
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    let mut n = 0;
    for q in panel_queries() {
        if q.datasource_type != "prometheus" {
            continue;
        }
        let expr = text(&q.target["expr"], "expr");
        for name in metric_names(expr) {
            assert!(known_metric(&name), "{}: unknown metric {name}", q.at);
            used.insert(
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| HISTOGRAMS.contains(b)))
                    .unwrap_or(&name)
                    .to_string(),
            );
        }
        // Grafana's own variables, as Grafana substitutes them.
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "30s")
            .replace("$__range", "6h");
        assert!(
            !expr.contains('$'),
            "{}: a dashboard variable in {expr}",
            q.at
        );
        n += 1;
        rules.push_str(&format!(
            "      - record: dashboard:query_{n}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    assert!(n >= 10, "Prometheus panel queries: {n}");
    // promtool parses every expression (as a recording rule).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-queries.yml");
    std::fs::write(&path, rules).unwrap();
    let out = promtool(&["check", "rules", path.to_str().unwrap()]);
    assert!(out.contains(&format!("SUCCESS: {n} rules found")), "{out}");
    // Together, the dashboards and the rules show every exported metric.
    let rules_text = read("deploy/prometheus/rules.yml");
    for m in METRICS {
        assert!(
            used.contains(*m) || rules_text.contains(m),
            "no dashboard panel or alert shows {m}"
        );
    }
}
