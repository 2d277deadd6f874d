//! Every long-running command serves Prometheus metrics on
//! `--metrics-addr`, and a real scrape of each passes `promtool check
//! metrics` (Prometheus' own linter).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::services::{brokers, corpus, migrated_database, produce, services, topic};
use common::{bin, http_get, root};

/// A command that prints `metrics on http://ADDR/metrics` on stderr.
struct Served {
    child: Child,
    addr: String,
    /// `listening on http://ADDR` (the gateway's own address).
    listen: Option<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(cmd: &mut Command, listens: bool) -> Served {
    let mut child = cmd
        .args(["--metrics-addr", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("metrics on http://") {
                let _ = tx.send((true, rest.trim_end_matches("/metrics").to_string()));
            } else if let Some(rest) = line.strip_prefix("listening on http://") {
                let _ = tx.send((false, rest.to_string()));
            }
        }
    });
    let (mut addr, mut listen) = (None, None);
    while addr.is_none() || (listens && listen.is_none()) {
        let (metrics, a) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the command printed its addresses");
        if metrics {
            addr = Some(a);
        } else {
            listen = Some(a);
        }
    }
    Served {
        child,
        addr: addr.unwrap(),
        listen,
    }
}

/// Scrape until `name` shows up (metrics appear as work happens), then lint.
fn scrape_and_check(s: &Served, names: &[&str]) -> String {
    let started = Instant::now();
    let body = loop {
        let (status, body) = http_get(&s.addr, "/metrics");
        assert_eq!(status, 200);
        if names.iter().all(|n| body.contains(n)) {
            break body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "missing one of {names:?} in:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let mut promtool = Command::new(root().join("scripts/promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("scripts/promtool runs (it fetches promtool on first use)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    body
}

#[test]
fn aggregate_gateway_alerts_and_simulate_serve_lint_clean_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let t = topic("metrics");
    produce(&t, &corpus(dir.path(), 2_000, 3));

    let aggregate = serve(
        t.aggregate("metrics")
            .arg("--store")
            .arg(dir.path().join("store")),
        false,
    );
    let body = scrape_and_check(
        &aggregate,
        &[
            "tokentally_events_received_total 2000",
            "tokentally_commit_seconds_bucket",
            "tokentally_last_commit_timestamp_seconds",
            "tokentally_consumer_lag_messages{partition=",
            // 2,000 ids: far below max_ids, so the whole 24 h horizon.
            "tokentally_dedup_effective_horizon_seconds 86400",
            "process_resident_memory_bytes",
        ],
    );
    assert!(body.contains("tokentally_events_rejected_total{reason=\"invalid_json\"}"));

    // Into ClickHouse: the sink's own metrics, recovery included.
    let url = &services().clickhouse;
    let db = migrated_database(url, "metrics");
    let into_clickhouse = serve(
        t.aggregate("metrics-ch")
            .args(["--sink", "clickhouse", "--clickhouse", url])
            .args(["--clickhouse-database", &db]),
        false,
    );
    scrape_and_check(
        &into_clickhouse,
        &[
            "tokentally_sink_recovery_seconds{kind=\"startup\"}",
            "tokentally_sink_ledger_rows 0",
            "tokentally_sink_rows_total{table=\"dedup_id_sets\"}",
            "tokentally_events_received_total 2000",
        ],
    );

    let gateway = serve(
        bin()
            .args(["gateway", "--no-auth", "--listen", "127.0.0.1:0"])
            .args(["--kafka", &brokers(), "--topic", &t.name]),
        true,
    );
    let (status, _) = http_get(gateway.listen.as_deref().unwrap(), "/healthz");
    assert_eq!(status, 200);
    scrape_and_check(
        &gateway,
        &["tokentally_gateway_requests_total{status=\"200\"} 1"],
    );
    let alerts = serve(
        bin()
            .args(["alerts", "run", "--store"])
            .arg(dir.path().join("store"))
            .arg("--state")
            .arg(dir.path().join("alerts")),
        false,
    );
    scrape_and_check(
        &alerts,
        &[
            "tokentally_webhook_deliveries_total",
            "tokentally_webhook_endpoints_disabled 0",
        ],
    );
    let simulate = serve(
        bin()
            .args([
                "simulate", "--kafka", &t.brokers, "--topic", &t.name, "--rate", "2000",
            ])
            .args(["--events", "1000000"]),
        false,
    );
    scrape_and_check(&simulate, &["tokentally_simulate_events_produced_total"]);
}
