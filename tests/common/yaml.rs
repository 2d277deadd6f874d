//! The repository's YAML files (compose, Prometheus, Grafana provisioning)
//! read as JSON values, and accessors of JSON values that name what was
//! expected when it is not there.

use serde_json::{Map, Value};
use yaml_rust2::{Yaml, YamlLoader};

use super::read;

/// A YAML file as JSON values. Anchors are resolved; merge keys (`<<`) are
/// refused, so that what is checked is exactly what the tools read.
pub fn yaml(rel: &str) -> Value {
    let docs = YamlLoader::load_from_str(&read(rel))
        .unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"));
    assert_eq!(docs.len(), 1, "{rel}: expected one YAML document");
    to_json(&docs[0], rel)
}

pub fn to_json(y: &Yaml, rel: &str) -> Value {
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

pub fn obj<'a>(v: &'a Value, what: &str) -> &'a Map<String, Value> {
    v.as_object()
        .unwrap_or_else(|| panic!("{what} is not a mapping: {v}"))
}

pub fn text<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

/// A list of strings (a YAML sequence), or one string.
pub fn strings(v: Option<&Value>) -> Vec<String> {
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
