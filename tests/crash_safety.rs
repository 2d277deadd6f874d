//! Kill `tokentally ingest` with SIGKILL at random moments, restart it on
//! the same input each time, and check the final totals equal an
//! uninterrupted run's: no event lost, none counted twice.

mod common;

use std::process::Stdio;
use std::thread::sleep;
use std::time::Instant;

use common::{bin, run_ok, totals};

#[test]
fn sigkill_mid_ingest_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.ndjson");
    run_ok(
        bin()
            .args([
                "simulate",
                "--events",
                "300000",
                "--seed",
                "9",
                "--start-ms",
                "1795737600000",
            ])
            .args([
                "--duplicate-rate",
                "0.01",
                "--late-rate",
                "0.01",
                "--malformed-rate",
                "0.001",
            ])
            .arg("--out")
            .arg(&input),
    );
    let ingest = |store: &std::path::Path| {
        let mut cmd = bin();
        cmd.args(["ingest", "--batch-records", "4000", "--file"])
            .arg(&input)
            .arg("--store")
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    };

    let reference = dir.path().join("reference");
    let t0 = Instant::now();
    run_ok(&mut ingest(&reference));
    let full_run = t0.elapsed();

    let crashed = dir.path().join("crashed");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut kills = 0;
    for _ in 0..10 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let frac = (seed % 1000) as f64 / 1000.0;
        let mut child = ingest(&crashed).spawn().unwrap();
        // Each restart resumes where the last commit ended, so a kill lands
        // after 2-10% of a full run's time: mid-batch, mid-commit or
        // mid-compaction, wherever that is. A sleep on purpose, not a wait
        // for an event: waiting for a commit (as `kill_after_commit` does)
        // would only ever kill between commits, and the points in between
        // are what this test is for.
        sleep(full_run.mul_f64(0.02 + 0.08 * frac));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(kills >= 6, "only {kills} runs were killed mid-way");
    run_ok(&mut ingest(&crashed));

    // Usage and reject counts alike: progress is committed with them.
    let (got, want) = (totals(&crashed), totals(&reference));
    assert_eq!(got.len(), want.len(), "row counts differ");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "first differing row");
    }
}
