//! The Grafana dashboards of `dashboards/json`: their panels and the
//! queries of those panels.

use serde_json::Value;

use super::root;

pub const DASHBOARDS: &str = "dashboards/json";

pub fn dashboards() -> Vec<(String, Value)> {
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
pub fn panels(dashboard: &Value) -> Vec<&Value> {
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
pub struct PanelQuery {
    /// `file / "panel title" / "refId"`, for messages.
    pub at: String,
    pub datasource_type: String,
    pub target: Value,
}

pub fn panel_queries() -> Vec<PanelQuery> {
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
