//! A real HTTP webhook receiver for tests.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::Duration;

use serde_json::Value;
use tokentally_alerts::webhook::{Secret, verify};

/// The secret of the Standard Webhooks reference examples.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What the receiver saw.
#[derive(Default)]
pub struct Seen {
    pub requests: u32,
    pub bad_signatures: u32,
    /// Accepted (answered 200): `webhook-id` → bodies.
    pub delivered: BTreeMap<String, Vec<Value>>,
}

/// A webhook receiver on a free port; verifies every signature. With
/// `flaky`, it answers 500 twice, then stalls past a 2 s sender timeout
/// once, then 200.
pub fn receiver(flaky: bool) -> (String, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shared = seen.clone();
    std::thread::spawn(move || {
        let secret = Secret::parse(SECRET).unwrap();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut headers = BTreeMap::new();
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line.trim() != "" {
                if let Some((k, v)) = line.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
                line.clear();
            }
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let h = |k: &str| headers.get(k).cloned().unwrap_or_default();
            let now = chrono::Utc::now().timestamp();
            let valid = verify(
                &secret,
                &h("webhook-id"),
                &h("webhook-timestamp"),
                &h("webhook-signature"),
                &body,
                now,
            )
            .is_ok();
            let n = {
                let mut s = shared.lock().unwrap();
                s.requests += 1;
                if !valid {
                    s.bad_signatures += 1;
                }
                s.requests
            };
            let status = match n {
                _ if !flaky => "200 OK",
                1 | 2 => "500 Internal Server Error",
                3 => {
                    sleep(Duration::from_secs(4)); // past the 2s request timeout
                    "200 OK"
                }
                _ => "200 OK",
            };
            if status.starts_with("200") && (n != 3 || !flaky) {
                let mut s = shared.lock().unwrap();
                s.delivered
                    .entry(h("webhook-id"))
                    .or_default()
                    .push(serde_json::from_slice(&body).unwrap());
            }
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (url, seen)
}
