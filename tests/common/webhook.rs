//! A real HTTP webhook receiver for tests.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::Duration;

use serde_json::Value;
use tokentally_alerts::webhook::{Secret, verify};

/// The secret of the Standard Webhooks reference examples.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    /// Header names (lowercase) and their values as sent, byte for byte.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Received {
    /// A header's value, if it was sent (and is UTF-8).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// What the receiver saw.
#[derive(Default)]
pub struct Seen {
    pub requests: u32,
    /// Requests whose Standard Webhooks signature does not verify (every
    /// request of a format that does not sign).
    pub bad_signatures: u32,
    /// Accepted (answered 200): `webhook-id` (empty when none) → bodies.
    pub delivered: BTreeMap<String, Vec<Value>>,
    /// Every request, answered or not, in order.
    pub received: Vec<Received>,
}

/// How the receiver answers its `n`th request (from 1).
enum Answer {
    Status(u16),
    /// 200 after 4 s, past a 2 s sender timeout: not taken as delivered.
    Stall,
}

/// A webhook receiver on a free port; verifies every signature. With
/// `flaky`, it answers 500 twice, then stalls past a 2 s sender timeout
/// once, then 200.
pub fn receiver(flaky: bool) -> (String, Arc<Mutex<Seen>>) {
    serve(move |n| match n {
        _ if !flaky => Answer::Status(200),
        1 | 2 => Answer::Status(500),
        3 => Answer::Stall,
        _ => Answer::Status(200),
    })
}

/// A receiver that answers every request with `status`.
pub fn answering(status: u16) -> (String, Arc<Mutex<Seen>>) {
    serve(move |_| Answer::Status(status))
}

/// `tokentally --config CONFIG alerts run` over the embedded store
/// `store`, also sending to `webhook` (standard format, signed with
/// [`SECRET`]), its state in `state`; returned once its first look is
/// recorded, so that events ingested after count as new (what it finds at
/// its first look is history).
pub fn store_alerter(config: &Path, store: &Path, state: &Path, webhook: &str) -> Child {
    let alerter = super::bin()
        .arg("--config")
        .arg(config)
        .args(["alerts", "run", "--webhook", webhook, "--store"])
        .arg(store)
        .arg("--state")
        .arg(state)
        .env("TOKENTALLY_WEBHOOK_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    super::wait_until(
        Duration::from_secs(30),
        100,
        || state.join("alerts.json").exists(),
        || "the alerter did not start".into(),
    );
    alerter
}

/// Check the signatures of `requests` (as they arrived, byte for byte)
/// with the Standard Webhooks reference library, as a receiver written in
/// Python would (`scripts/standardwebhooks/run`); panics with its report
/// unless every one verifies.
pub fn verify_with_reference_library(requests: &[Received]) {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let messages: Vec<Value> = requests
        .iter()
        .map(|r| {
            let headers: serde_json::Map<String, Value> = r
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), Value::String(hex(value))))
                .collect();
            serde_json::json!({"headers_hex": headers, "body_hex": hex(&r.body)})
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let (secret, file) = (dir.path().join("secret"), dir.path().join("messages.json"));
    std::fs::write(&secret, SECRET).unwrap();
    std::fs::write(&file, serde_json::to_vec(&messages).unwrap()).unwrap();
    let out = std::process::Command::new(super::root().join("scripts/standardwebhooks/run"))
        .arg(&secret)
        .arg(&file)
        .output()
        .expect("run scripts/standardwebhooks/run");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the reference library refuses signatures:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report.matches("ok ").count(), requests.len(), "{report}");
}

/// A receiver over HTTPS with this certificate and key (PEM), answering
/// every request with 200.
pub fn tls_receiver(cert: &Path, key: &Path) -> (String, Arc<Mutex<Seen>>) {
    let config = tokentally_common::tls::server_config(cert, key).unwrap();
    serve_on(move |_| Answer::Status(200), Some(config))
}

fn serve(answer: impl Fn(u32) -> Answer + Send + 'static) -> (String, Arc<Mutex<Seen>>) {
    serve_on(answer, None)
}

fn serve_on(
    answer: impl Fn(u32) -> Answer + Send + 'static,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (String, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}/hook", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shared = seen.clone();
    std::thread::spawn(move || {
        let secret = Secret::parse(SECRET).unwrap();
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            match &tls {
                None => handle(stream, &secret, &shared, &answer),
                Some(config) => {
                    let connection = rustls::ServerConnection::new(config.clone()).unwrap();
                    // A client that refuses the certificate ends the
                    // handshake: the first read fails and nothing is seen.
                    handle(
                        rustls::StreamOwned::new(connection, stream),
                        &secret,
                        &shared,
                        &answer,
                    )
                }
            }
        }
    });
    (url, seen)
}

/// Read one request from `stream`, record it, answer it.
fn handle(
    stream: impl Read + Write,
    secret: &Secret,
    shared: &Mutex<Seen>,
    answer: &impl Fn(u32) -> Answer,
) {
    let mut reader = BufReader::new(stream);
    let mut headers = Vec::new();
    let mut line = Vec::new();
    while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 && !line.trim_ascii().is_empty() {
        if let Some(colon) = line.iter().position(|b| *b == b':') {
            let name = String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase();
            headers.push((name, line[colon + 1..].trim_ascii().to_vec()));
        }
        line.clear();
    }
    if headers.is_empty() {
        return;
    }
    let received = Received {
        body: Vec::new(),
        headers,
    };
    let len: usize = received
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let received = Received { body, ..received };
    let h = |k: &str| received.header(k).unwrap_or_default().to_string();
    let now = chrono::Utc::now().timestamp();
    let valid = verify(
        secret,
        &h("webhook-id"),
        &h("webhook-timestamp"),
        &h("webhook-signature"),
        &received.body,
        now,
    )
    .is_ok();
    let n = {
        let mut s = shared.lock().unwrap();
        s.requests += 1;
        if !valid {
            s.bad_signatures += 1;
        }
        s.received.push(received.clone());
        s.requests
    };
    let status = match answer(n) {
        Answer::Status(status) => status,
        Answer::Stall => {
            sleep(Duration::from_secs(4)); // past the 2s request timeout
            return; // the sender gave up: dropped unanswered
        }
    };
    if status == 200 {
        let mut s = shared.lock().unwrap();
        s.delivered
            .entry(h("webhook-id"))
            .or_default()
            .push(received.json());
    }
    let stream = reader.get_mut();
    let _ = write!(
        stream,
        "HTTP/1.1 {status} Test\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    let _ = stream.flush();
}
