//! `docker-compose.yml` (and `docker-compose.cluster.yml`), read as the compose, Dockerfile, dashboards and
//! Prometheus tests need it: its services, their volumes and their metrics
//! addresses.

use serde_json::{Map, Value};

use super::yaml::{obj, strings, text, yaml};

pub const COMPOSE: &str = "docker-compose.yml";
/// The cluster's: three brokers, Keeper, two ClickHouse replicas.
pub const CLUSTER_COMPOSE: &str = "docker-compose.cluster.yml";

pub fn compose() -> Value {
    yaml(COMPOSE)
}

pub fn cluster_compose() -> Value {
    yaml(CLUSTER_COMPOSE)
}

pub fn compose_services(doc: &Value) -> &Map<String, Value> {
    obj(&doc["services"], "services")
}

/// Services built from this repository (the tokentally image).
pub fn tokentally_services(doc: &Value) -> Vec<(&String, &Map<String, Value>)> {
    compose_services(doc)
        .iter()
        .map(|(name, s)| (name, obj(s, name)))
        .filter(|(_, s)| s.contains_key("build"))
        .collect()
}

/// `(source, target)` of a service's volumes, both syntaxes.
pub fn volumes(service: &Map<String, Value>) -> Vec<(String, String)> {
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

/// `--metrics-addr` port of a compose service's command.
pub fn metrics_port(service: &Map<String, Value>) -> Option<u16> {
    let command = strings(service.get("command"));
    let i = command.iter().position(|a| a == "--metrics-addr")?;
    let addr = &command[i + 1];
    assert!(
        addr.starts_with("0.0.0.0:"),
        "--metrics-addr {addr} is not reachable by Prometheus"
    );
    Some(addr.rsplit(':').next().unwrap().parse().unwrap())
}
