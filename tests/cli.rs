//! Command-line behaviour: help for every command, clear errors.

mod common;

use common::{bin, run_ok};

#[test]
fn every_command_explains_itself() {
    for cmd in ["demo", "ingest", "query", "simulate", "serve"] {
        let out = run_ok(bin().args([cmd, "--help"]));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("Usage: tokentally"), "{cmd}: {text}");
        assert!(text.len() > 300, "{cmd} help is too thin: {text}");
    }
}

#[test]
fn errors_are_clear_and_fail_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let missing = bin()
        .args(["query", "--store"])
        .arg(dir.path().join("none"))
        .arg("SELECT 1")
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no tokentally store"));

    let store = dir.path().join("s");
    run_ok(
        bin()
            .args(["ingest", "--file", "/dev/null", "--store"])
            .arg(&store),
    );
    let bad_sql = bin()
        .args(["query", "--store"])
        .arg(&store)
        .arg("SELEC nope")
        .output()
        .unwrap();
    assert_eq!(bad_sql.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad_sql.stderr).contains("invalid query"));

    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[store]\ndirr = 1\n").unwrap();
    let bad_cfg = bin()
        .arg("--config")
        .arg(&cfg)
        .args(["query", "SELECT 1"])
        .output()
        .unwrap();
    assert_eq!(bad_cfg.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad_cfg.stderr).contains("invalid config file"));

    let bad_rate = bin()
        .args(["simulate", "--events", "1", "--late-rate", "2"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&bad_rate.stderr).contains("--late-rate must be between 0 and 1")
    );
}

#[test]
fn simulate_pipes_into_ingest_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let sim = run_ok(bin().args(["simulate", "--events", "5000", "--seed", "3"]));
    let mut child = bin()
        .args(["ingest", "--json", "--file", "-", "--store"])
        .arg(dir.path().join("s"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&sim.stdout).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["records"], 5000);
    assert_eq!(summary["accepted"], 5000);
}
