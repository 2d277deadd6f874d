//! The `Dockerfile`, checked without a Docker engine (none runs on the
//! machines that run scripts/test): a multi-stage build of the binary with
//! a Rust no older than the crate's `rust-version`, on a slim Debian
//! runtime as a non-root user, with what the compose health checks run,
//! and a `.dockerignore` that keeps the build context clean.

mod common;

use std::collections::BTreeMap;

use common::compose::{compose, tokentally_services};
use common::read;
use common::yaml::strings;

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
