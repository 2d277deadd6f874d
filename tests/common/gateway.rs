//! A `tokentally gateway` process for tests: started on free ports once it
//! listens, its stderr kept for failure messages, stopped with SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use super::{bin, run_ok};

pub struct Gateway {
    pub child: Child,
    /// Where it serves HTTP (`host:port`).
    pub addr: String,
    /// Where it serves `/metrics`, when started with `--metrics-addr`.
    pub metrics: Option<String>,
    pub stderr: Arc<Mutex<String>>,
}

impl Gateway {
    /// `tokentally gateway --listen 127.0.0.1:0 ARGS`, once it listens (and
    /// serves metrics, when ARGS hold `--metrics-addr`).
    pub fn start(args: &[&str]) -> Gateway {
        Gateway::start_with(args, &[])
    }

    /// [`Gateway::start`] with extra environment (which may override its
    /// `RUST_LOG=warn`).
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Gateway {
        let with_metrics = args.contains(&"--metrics-addr");
        let mut child = bin()
            .args(["gateway", "--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("TOKENTALLY_GATEWAY_TOKENS")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tokentally gateway");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let listening = line
                    .strip_prefix("listening on http://")
                    .or_else(|| line.strip_prefix("listening on https://"));
                if let Some(addr) = listening {
                    let _ = tx.send((false, addr.to_owned()));
                } else if let Some(addr) = line.strip_prefix("metrics on http://") {
                    let _ = tx.send((true, addr.trim_end_matches("/metrics").to_owned()));
                }
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let (mut addr, mut metrics) = (None, None);
        while addr.is_none() || (with_metrics && metrics.is_none()) {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok((true, a)) => metrics = Some(a),
                Ok((false, a)) => addr = Some(a),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("the gateway did not start:\n{}", stderr.lock().unwrap());
                }
            }
        }
        Gateway {
            child,
            addr: addr.unwrap(),
            metrics,
            stderr,
        }
    }

    /// SIGTERM, and wait for the exit.
    pub fn stop(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        run_ok(std::process::Command::new("kill").args(["-TERM", &pid]));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not stop on SIGTERM:\n{}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
