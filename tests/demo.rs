//! `tokentally demo` shows the 1T-token milestone and leaves a queryable store.

mod common;

use common::{bin, query, run_ok, s, u};
use tokentally_alerts::webhook::webhook_id;

#[test]
fn demo_crosses_one_trillion_and_the_store_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("demo");
    let out = run_ok(
        bin()
            .args(["demo", "--events", "200000", "--wall-secs", "0", "--store"])
            .arg(&store),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let crossed = "MILESTONE qwen/qwen3.6-plus crossed 1T tokens in a day on ";
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(crossed)).collect();
    assert!(
        lines.iter().any(|l| l.contains("(now "))
            && lines.iter().any(|l| l.contains(", the first model ever (")),
        "{text}"
    );
    assert!(text.contains("Leaderboard"), "{text}");
    assert!(text.contains("tokentally query --store"), "{text}");

    let top = query(
        &store,
        "SELECT model, total_tokens FROM usage_daily ORDER BY total_tokens DESC LIMIT 1",
    );
    assert_eq!(s(&top[0], "model"), "qwen/qwen3.6-plus");
    assert!(u(&top[0], "total_tokens") >= 1_000_000_000_000);

    // Rerunning resets the demo store; a directory that is not a demo
    // store is never wiped.
    let other = dir.path().join("precious");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("data.txt"), "keep me").unwrap();
    let refused = bin()
        .args(["demo", "--events", "10", "--store"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a demo store"));
    assert!(other.join("data.txt").exists());
}

#[test]
fn demo_delivers_signed_milestones_to_a_webhook() {
    let (url, seen) = common::webhook::receiver(false);
    let dir = tempfile::tempdir().unwrap();
    let out = run_ok(
        bin()
            .args([
                "demo",
                "--events",
                "200000",
                "--wall-secs",
                "0",
                "--webhook",
                &url,
            ])
            .arg("--store")
            .arg(dir.path().join("demo"))
            .env("TOKENTALLY_WEBHOOK_SECRET", common::webhook::SECRET),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.bad_signatures, 0);
    let first = &seen.delivered[&webhook_id("first:model:1000000000000")][0];
    assert_eq!(first["model"], "qwen/qwen3.6-plus");
    assert!(
        text.contains(&format!(
            "webhook: {n} of {n} milestones delivered",
            n = seen.delivered.len()
        )),
        "{text}"
    );
}
