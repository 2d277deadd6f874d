//! `deploy/prometheus` and the PromQL of the dashboards, checked with
//! promtool and against the metrics tokentally registers: the scrape
//! config matches the compose metrics addresses, `promtool check config`
//! and `check rules` pass, the alert unit tests (`promtool test rules`)
//! pass with a firing and a quiet case for every alert, every Prometheus
//! panel's PromQL parses, rules and panels name only metrics that
//! tokentally exports, and together they show every one of them.
//!
//! promtool comes from `scripts/promtool` (Debian's package, unpacked on
//! first use); a promtool that cannot be had fails the tests.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use prometheus::proto::MetricType;

use common::compose::{compose, compose_services, metrics_port, volumes};
use common::dashboards::panel_queries;
use common::yaml::{obj, strings, text, yaml};
use common::{read, root};

/// What tokentally's processes export: every metric family of the registry
/// the commands register their metrics in
/// ([`tokentally::metrics::every_metric`]), the process collector's
/// included. The dashboards and rules may use no other; `up` is
/// Prometheus' own.
struct Exported {
    metrics: BTreeSet<String>,
    histograms: BTreeSet<String>,
}

fn exported() -> Exported {
    let families = tokentally::metrics::every_metric()
        .expect("every metric registers")
        .gather();
    let names = |only_histograms: bool| {
        families
            .iter()
            .filter(|f| !only_histograms || f.get_field_type() == MetricType::HISTOGRAM)
            .map(|f| f.name().to_string())
            .collect()
    };
    Exported {
        metrics: names(false),
        histograms: names(true),
    }
}

impl Exported {
    /// What the dashboards and rules together must show: every metric of
    /// tokentally's own, and the processes' memory (the process collector
    /// exports more, which they may show).
    fn to_show(&self) -> impl Iterator<Item = &str> {
        self.metrics
            .iter()
            .map(String::as_str)
            .filter(|m| m.starts_with("tokentally_"))
            .chain(["process_resident_memory_bytes"])
    }
}

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

fn known_metric(exported: &Exported, name: &str) -> bool {
    // A histogram is queried through its _bucket, _sum and _count series.
    if exported.histograms.contains(name) {
        return false;
    }
    exported.metrics.contains(name)
        || ["_bucket", "_sum", "_count"].iter().any(|s| {
            name.strip_suffix(s)
                .is_some_and(|base| exported.histograms.contains(base))
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
    let exported = exported();
    let rules = yaml("deploy/prometheus/rules.yml");
    let mut alerts = BTreeSet::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let expr = text(&rule["expr"], "expr");
            for name in metric_names(expr) {
                assert!(
                    known_metric(&exported, &name),
                    "rules.yml uses unknown metric {name}"
                );
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
    let exported = exported();
    let mut used = BTreeSet::new();
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    let mut n = 0;
    for q in panel_queries() {
        if q.datasource_type != "prometheus" {
            continue;
        }
        let expr = text(&q.target["expr"], "expr");
        for name in metric_names(expr) {
            assert!(
                known_metric(&exported, &name),
                "{}: unknown metric {name}",
                q.at
            );
            used.insert(
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| {
                        name.strip_suffix(s)
                            .filter(|b| exported.histograms.contains(*b))
                    })
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
    for m in exported.to_show() {
        assert!(
            used.contains(m) || rules_text.contains(m),
            "no dashboard panel or alert shows {m}"
        );
    }
}
