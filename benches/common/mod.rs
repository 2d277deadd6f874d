//! Helpers shared by the benches that drive the `tokentally` binary against
//! the real services (`freshness`, `suite`).

use std::process::{Child, Command};

/// The value after `name` on the command line, or `default`.
pub fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// A service address `scripts/services up` exports; exits with a hint if unset.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        eprintln!("{name} is not set: run `eval \"$(scripts/services up)\"` first");
        std::process::exit(2)
    })
}

/// The release `tokentally` binary built with the bench.
pub fn tokentally() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tokentally"))
}

/// Run a command to completion; panic with its stderr if it fails.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run tokentally");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A child process killed when dropped.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
