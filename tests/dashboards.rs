//! The Grafana provisioning and dashboards, checked without Grafana: every
//! panel has a provisioned data source, provisioning matches the compose
//! mounts, and every ClickHouse panel reads only documented views and its
//! SQL, with the plugin's macros expanded for a concrete range, returns
//! rows on the real server over simulated traffic aggregated from Kafka,
//! and runs on the modern engine (chdb). The PromQL of the Prometheus
//! panels is checked with the alert rules, in tests/prometheus.rs.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use common::compose::{compose, compose_services, volumes};
use common::dashboards::{DASHBOARDS, dashboards, panel_queries, panels};
use common::read;
use common::services::{analyst_database, clickhouse_sql, modern_engine, services};
use common::yaml::{obj, text, yaml};

const CLICKHOUSE_PLUGIN: &str = "grafana-clickhouse-datasource";

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
    modern_engine(&queries);
}
