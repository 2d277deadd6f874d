//! What the fault-injection tests share: aggregator processes to signal
//! and wait for, and a seeded generator for the timing of faults.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::run_ok;

/// The seed of a fault run: `TOKENTALLY_CHAOS_SEED` (to replay one), else
/// the clock.
pub fn chaos_seed() -> u64 {
    std::env::var("TOKENTALLY_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// A small xorshift generator: the timing of a round.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }

    /// One of `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// An aggregator process, logging to a file.
pub struct Aggregator {
    pub child: Child,
    pub log: PathBuf,
}

impl Aggregator {
    /// Start `cmd` (an `aggregate` command line) with `RUST_LOG=info`, its
    /// stderr to `log`.
    pub fn spawn(cmd: &mut Command, log: PathBuf) -> Aggregator {
        cmd.env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        Aggregator {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    pub fn signal(&self, sig: &str) {
        run_ok(Command::new("kill").args([sig, &self.child.id().to_string()]));
    }

    /// SIGKILL, and reap it.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Wait (at most `limit`) for it to exit; its exit status and log.
    pub fn wait(mut self, limit: Duration) -> (ExitStatus, String) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (
                    status,
                    std::fs::read_to_string(&self.log).unwrap_or_default(),
                );
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                panic!(
                    "aggregator still running after {limit:?}:\n{}",
                    tail(&self.log)
                );
            }
            sleep(Duration::from_millis(100));
        }
    }
}

/// The last 30 lines of a log file.
pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// An aggregator that stopped may only have stopped because it was fenced
/// (it lost its partitions to another); anything else fails the case.
pub fn ok_or_fenced(who: &str, (status, log): &(ExitStatus, String)) -> &'static str {
    if status.success() {
        return "finished";
    }
    assert!(
        log.contains("fenced"),
        "{who} failed ({status}) without being fenced:\n{}",
        log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    "fenced"
}
