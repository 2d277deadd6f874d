//! The gateway under abuse stays up for healthy clients (issue 17, item 4).
//!
//! One `tokentally gateway` on loopback, producing to the real Kafka broker
//! (started by `scripts/services up` when TOKENTALLY_KAFKA_BROKERS is not
//! set), with short limits: 2 s header-read and body-read timeouts, 1000
//! connections, 8 MiB of request bodies in flight.
//! While a healthy client keeps posting one event per request on a
//! keep-alive connection, attackers send, first all at once:
//! - 200 connections trickling a request head, a byte every 500 ms: each
//!   is closed by the header-read timeout, sending bytes does not extend it;
//! - 50 requests trickling their body: each is answered 408 by the
//!   body-read timeout, and closed;
//! - request heads of 40 KiB, 1 MiB and 150 headers: 431 (or closed);
//! - pipelined requests, eight in one write: all answered, in order;
//!
//! then a flood of 1 MiB requests from 40 clients of another token, well
//! above what the gateway holds in flight: some are answered 429 (with
//! Retry-After), the others 200; then 2000 idle connections, twice the
//! connection limit: those beyond it are answered 503 and closed at once,
//! the others closed by the idle timeout (the header-read timeout).
//!
//! The healthy client counts a request as a success when it is answered 200
//! within 10 s of its first attempt, resending (the same event: resending
//! is safe) after a 429 or 503 once its Retry-After has passed, or at once
//! on a new connection when the gateway closed the kept-alive one before
//! answering, as HTTP clients do. Any other answer, or an error on a new
//! connection, is a failure. At least 99% must succeed; the gateway must
//! still run at the end, leak no connection, stop cleanly on SIGTERM, and
//! keep its peak RSS (VmHWM) under 512 MiB. The success rate and the peak
//! RSS are printed.
//!
//! Over 600 lines: every abuse needs a raw-socket client of its own (a
//! trickle, a flood, oversized heads, pipelining), and they run together
//! against one gateway, in one test.

mod common;

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::gateway::Gateway;
use common::services::topic;
use common::{event, http_get};

/// Floods (fleet-a).
const ABUSER: &str = "tok-abuser-0123456789abcdef0123456789ab";
/// The healthy client (fleet-b).
const HEALTHY: &str = "tok-healthy-fedcba9876543210fedcba9876";
/// Trickles its bodies (fleet-c).
const SLOW: &str = "tok-slow-00112233445566778899aabbccddee";

/// The gateway's header-read (and idle) and body-read timeouts.
const TIMEOUT: Duration = Duration::from_secs(2);
/// How late past a timeout a close may be seen: the gateway's timers and
/// our polling on a loaded 2-core machine.
const MARGIN: Duration = Duration::from_secs(8);
/// How early: our clock starts at `connect`, just before the gateway's.
const EARLY: Duration = Duration::from_millis(250);
const MAX_CONNECTIONS: usize = 1000;
const IDLE_CONNECTIONS: usize = 2000;
const MAX_IN_FLIGHT_BYTES: usize = 8 << 20;
/// A flood request's body: one record above the 1 MiB a record may have, so
/// that it costs the gateway its bytes but no Kafka traffic. Seven fit in
/// the bytes in flight.
const FLOOD_BODY_BYTES: usize = (1 << 20) + 64;
const FLOOD_CLIENTS: usize = 40;
const FLOOD_FOR: Duration = Duration::from_secs(4);
/// The healthy client's deadline for one request, retries included.
const HEALTHY_DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// The gateway process.

/// What the test reads of the gateway besides its answers.
trait Observe {
    fn metric(&self, name: &str) -> u64;
    fn peak_rss_kib(&self) -> u64;
}

impl Observe for Gateway {
    /// The value of a metric without labels.
    fn metric(&self, name: &str) -> u64 {
        let metrics = self
            .metrics
            .as_deref()
            .expect("started with --metrics-addr");
        let (status, body) = http_get(metrics, "/metrics");
        assert_eq!(status, 200, "{body}");
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in:\n{body}"))
            .parse()
            .unwrap()
    }

    /// The peak resident set size, in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmHWM in:\n{status}"))
    }
}

// ---------------------------------------------------------------------------
// A minimal HTTP/1.1 client.

#[derive(Debug)]
struct Response {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {} {}", self.head, self.text()))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn connect(addr: &str) -> io::Result<BufReader<TcpStream>> {
    let stream = TcpStream::connect(addr)?;
    // Never hang on a stuck gateway: fail instead.
    stream.set_read_timeout(Some(HEALTHY_DEADLINE + MARGIN))?;
    stream.set_nodelay(true)?;
    Ok(BufReader::new(stream))
}

/// One response (an interim 100 Continue too): the head, and the body its
/// Content-Length announces (every answer of the gateway has one).
fn read_response(r: &mut impl BufRead) -> io::Result<Response> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                format!("closed after {head:?}"),
            ));
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(ErrorKind::InvalidData, head.clone()))?;
    let mut response = Response {
        status,
        head,
        body: Vec::new(),
    };
    let length: usize = response
        .header("content-length")
        .map_or(0, |v| v.parse().unwrap());
    response.body.resize(length, 0);
    r.read_exact(&mut response.body)?;
    Ok(response)
}

fn post(token: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST /v1/events HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

// ---------------------------------------------------------------------------
// The healthy client.

#[derive(Debug, Default)]
struct Healthy {
    requests: u64,
    succeeded: u64,
    /// Answered 200 at the first attempt.
    first_try: u64,
    /// Resent after a 429.
    after_429: u64,
    /// Resent after a 503.
    after_503: u64,
    /// Resent on a new connection: the gateway closed the kept-alive one.
    reconnects: u64,
    failures: Vec<String>,
    slowest: Duration,
}

/// Post one event per request until `stop`; `succeeded` counts as it goes.
fn healthy_client(addr: &str, stop: &AtomicBool, succeeded: &AtomicU64) -> Healthy {
    let mut h = Healthy::default();
    let mut kept: Option<BufReader<TcpStream>> = None;
    while !stop.load(Ordering::Relaxed) {
        h.requests += 1;
        let body = event(&format!("healthy-{}", h.requests));
        let request = post(HEALTHY, "application/json", body.as_bytes());
        let started = Instant::now();
        let mut attempts = 0;
        let outcome = loop {
            if started.elapsed() > HEALTHY_DEADLINE {
                break Err(format!("no 200 within {HEALTHY_DEADLINE:?}"));
            }
            attempts += 1;
            let reused = kept.is_some();
            let mut conn = match kept.take() {
                Some(conn) => conn,
                None => match connect(addr) {
                    Ok(conn) => conn,
                    Err(e) => break Err(format!("connect: {e}")),
                },
            };
            let answer = conn
                .get_mut()
                .write_all(&request)
                .and_then(|()| read_response(&mut conn));
            match answer {
                Ok(r) if r.status == 200 => {
                    assert_eq!(r.json()["accepted"], 1, "{}", r.text());
                    if !r.closes() {
                        kept = Some(conn);
                    }
                    break Ok(());
                }
                Ok(r) if r.status == 429 || r.status == 503 => {
                    let Some(after) = r.header("retry-after").and_then(|v| v.parse().ok()) else {
                        break Err(format!("{} without Retry-After", r.status));
                    };
                    if r.status == 429 {
                        h.after_429 += 1;
                    } else {
                        h.after_503 += 1;
                    }
                    if !r.closes() {
                        kept = Some(conn);
                    }
                    std::thread::sleep(Duration::from_secs(after));
                }
                Ok(r) => break Err(format!("answered {}: {}", r.status, r.text())),
                Err(_) if reused => h.reconnects += 1,
                Err(e) => break Err(format!("on a new connection: {e}")),
            }
        };
        match outcome {
            Ok(()) => {
                h.succeeded += 1;
                h.first_try += u64::from(attempts == 1);
                succeeded.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => h.failures.push(format!("request {}: {e}", h.requests)),
        }
        h.slowest = h.slowest.max(started.elapsed());
    }
    h
}

// ---------------------------------------------------------------------------
// Attacks.

/// What became of an attacking connection.
#[derive(Debug)]
struct Fate {
    /// What the gateway sent.
    received: Vec<u8>,
    /// When the gateway closed it, from our `connect`.
    closed_after: Option<Duration>,
}

impl Fate {
    fn answered(&self, status: u16) -> bool {
        self.received
            .starts_with(format!("HTTP/1.1 {status} ").as_bytes())
    }
}

/// Open `n` connections; on each, send `head` at once, then `dribble` one
/// byte every 500 ms; watch them until the gateway has closed every one,
/// or `watch_for` has passed.
fn trickle(addr: &str, n: usize, head: &[u8], dribble: &[u8], watch_for: Duration) -> Vec<Fate> {
    let mut conns: Vec<(TcpStream, Instant)> = (0..n)
        .map(|_| {
            let s = TcpStream::connect(addr).expect("connect");
            let opened = Instant::now();
            s.set_nodelay(true).unwrap();
            (s, opened)
        })
        .collect();
    for (s, _) in &mut conns {
        s.write_all(head).unwrap();
        s.set_nonblocking(true).unwrap();
    }
    let mut fates: Vec<Fate> = (0..n)
        .map(|_| Fate {
            received: Vec::new(),
            closed_after: None,
        })
        .collect();
    let mut sent = vec![0usize; n];
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let mut open = 0;
        for ((s, opened), (fate, sent)) in conns.iter_mut().zip(fates.iter_mut().zip(&mut sent)) {
            if fate.closed_after.is_some() {
                continue;
            }
            loop {
                match s.read(&mut buf) {
                    Ok(0) => fate.closed_after = Some(opened.elapsed()),
                    Ok(k) => {
                        fate.received.extend_from_slice(&buf[..k]);
                        continue;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => open += 1,
                    // Reset: closed with our bytes unread.
                    Err(_) => fate.closed_after = Some(opened.elapsed()),
                }
                break;
            }
            let due = (opened.elapsed().as_millis() / 500) as usize;
            if fate.closed_after.is_none() && *sent < due.min(dribble.len()) {
                // A failed write shows as a close at the next read.
                let _ = s.write(&dribble[*sent..*sent + 1]);
                *sent += 1;
            }
        }
        if open == 0 || started.elapsed() > watch_for {
            return fates;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Statuses a flood client got until `until`: 1 MiB requests of the abusing
/// token, each waiting for 100 Continue (as clients sending large bodies
/// do) and then sending its body over ~400 ms.
fn flood(addr: &str, body: &[u8], until: Instant) -> Vec<u16> {
    let mut statuses = Vec::new();
    while Instant::now() < until {
        let mut conn = connect(addr).expect("connect");
        let head = format!(
            "POST /v1/events HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {ABUSER}\r\n\
             Content-Type: application/x-ndjson\r\nExpect: 100-continue\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        conn.get_mut().write_all(head.as_bytes()).unwrap();
        let mut r = read_response(&mut conn).expect("an answer to a flood request");
        if r.status == 100 {
            for chunk in body.chunks(body.len().div_ceil(4)) {
                conn.get_mut().write_all(chunk).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
            r = read_response(&mut conn).expect("an answer to a flood body");
        }
        match r.status {
            200 => assert_eq!(r.json()["rejected"][0]["reason"], "too_large"),
            429 => assert!(r.header("retry-after").is_some(), "{}", r.head),
            _ => panic!("a flood request answered {}: {}", r.status, r.text()),
        }
        statuses.push(r.status);
    }
    statuses
}

/// What a request with an oversized head got: 431, or `None` when the
/// gateway closed the connection without an answer. It must close it
/// either way.
fn oversized(addr: &str, head: &[u8]) -> Option<u16> {
    let mut conn = connect(addr).unwrap();
    conn.get_mut().set_read_timeout(Some(MARGIN)).unwrap();
    // The gateway may answer and close before taking it all.
    let _ = conn.get_mut().write_all(head);
    let status = read_response(&mut conn).ok().map(|r| r.status);
    let mut rest = Vec::new();
    if let Err(e) = conn.read_to_end(&mut rest) {
        assert!(
            !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "the connection was left open after {status:?}"
        );
    }
    status
}

/// Eight requests in one write; their answers, in order.
fn pipelined(addr: &str, round: usize) -> Vec<Response> {
    let ndjson = |ids: &[&str]| {
        ids.iter()
            .map(|id| event(&format!("pipe-{round}-{id}")) + "\n")
            .collect::<String>()
    };
    let get = |path: &str, last: bool| {
        let close = if last { "Connection: close\r\n" } else { "" };
        format!("GET {path} HTTP/1.1\r\nHost: gw\r\n{close}\r\n").into_bytes()
    };
    let nd = "application/x-ndjson";
    let requests = [
        post(HEALTHY, nd, ndjson(&["a"]).as_bytes()),
        get("/healthz", false),
        post(HEALTHY, nd, br#"{"event_id":"incomplete"}"#),
        get("/nope", false),
        post(HEALTHY, nd, ndjson(&["b", "c"]).as_bytes()),
        get("/healthz", false),
        post(HEALTHY, nd, ndjson(&["d", "e", "f"]).as_bytes()),
        get("/healthz", true),
    ];
    let mut conn = connect(addr).unwrap();
    conn.get_mut().write_all(&requests.concat()).unwrap();
    let answers = (0..requests.len())
        .map(|i| read_response(&mut conn).unwrap_or_else(|e| panic!("pipelined answer {i}: {e}")))
        .collect();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "after the last answer: {rest:?}");
    answers
}

/// Sets its flag when dropped, panicking or not.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Raise this process's soft limit of open files (the gateway inherits it)
/// to `want`, if it is lower.
fn raise_open_files_limit(want: libc::rlim_t) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only access the struct passed.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    if limit.rlim_cur >= want {
        return;
    }
    assert!(
        limit.rlim_max >= want,
        "the open-files hard limit ({}) is below the {want} this test needs",
        limit.rlim_max
    );
    limit.rlim_cur = want;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
}

/// Assert every fate was closed by the gateway within `TIMEOUT` (minus
/// `EARLY`, plus `MARGIN`) of opening; the fates answered `status` (or
/// nothing at all when `None`).
#[track_caller]
fn assert_timed_out(what: &str, fates: &[Fate], status: Option<u16>) {
    for (i, f) in fates.iter().enumerate() {
        let closed = f
            .closed_after
            .unwrap_or_else(|| panic!("{what} {i} still open after {:?}", TIMEOUT + MARGIN));
        assert!(
            closed >= TIMEOUT - EARLY && closed <= TIMEOUT + MARGIN,
            "{what} {i} closed after {closed:?}, not about {TIMEOUT:?}"
        );
        match status {
            Some(status) => assert!(
                f.answered(status),
                "{what} {i}: {:?}",
                String::from_utf8_lossy(&f.received)
            ),
            None => assert!(
                f.received.is_empty(),
                "{what} {i}: {:?}",
                String::from_utf8_lossy(&f.received)
            ),
        }
    }
}

#[test]
fn under_abuse_the_gateway_stays_up_for_healthy_clients() {
    let started = Instant::now();
    raise_open_files_limit(4 * IDLE_CONNECTIONS as libc::rlim_t);
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("fleet-a:{ABUSER}\nfleet-b:{HEALTHY}\nfleet-c:{SLOW}\n"),
    )
    .unwrap();
    let t = topic("gw-abuse");
    let timeout = format!("{}s", TIMEOUT.as_secs());
    let mut gw = Gateway::start(&[
        "--metrics-addr",
        "127.0.0.1:0",
        "--kafka",
        &t.brokers,
        "--topic",
        &t.name,
        "--tokens-file",
        tokens.to_str().unwrap(),
        "--header-read-timeout",
        &timeout,
        "--body-read-timeout",
        &timeout,
        "--max-connections",
        &MAX_CONNECTIONS.to_string(),
        "--max-in-flight-bytes",
        &MAX_IN_FLIGHT_BYTES.to_string(),
        "--max-body-bytes",
        &(2 * FLOOD_BODY_BYTES).to_string(),
    ]);
    let addr = gw.addr.clone();

    let stop = AtomicBool::new(false);
    let succeeded = AtomicU64::new(0);
    let flood_body = {
        let mut line = br#"{"event_id":"flood","pad":""#.to_vec();
        line.resize(FLOOD_BODY_BYTES - 3, b'x');
        line.extend_from_slice(b"\"}\n");
        line
    };
    let (addr, flood_body, watched) = (addr.as_str(), flood_body.as_slice(), &gw);
    let healthy = std::thread::scope(|s| {
        let healthy = s.spawn(|| healthy_client(addr, &stop, &succeeded));
        // A failed assertion below must stop the healthy client too, or the
        // scope would wait for it forever.
        let _stop = StopOnDrop(&stop);
        let warm = Instant::now();
        while succeeded.load(Ordering::Relaxed) < 20 {
            assert!(
                warm.elapsed() < Duration::from_secs(30) && !healthy.is_finished(),
                "the healthy client does not get through before the attacks"
            );
            std::thread::sleep(Duration::from_millis(20));
        }

        // Phase 1: slow heads, slow bodies, oversized heads and pipelining,
        // at once.
        let watch_for = TIMEOUT + MARGIN;
        let slow_heads = s.spawn(move || {
            let head = b"POST /v1/events HTTP/1.1\r\nHost: gw\r\n";
            trickle(addr, 200, head, &[b'a'; 64], watch_for)
        });
        let slow_bodies = s.spawn(move || {
            let head = format!(
                "POST /v1/events HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {SLOW}\r\n\
                 Content-Type: application/x-ndjson\r\nContent-Length: 4096\r\n\r\n"
            );
            trickle(addr, 50, head.as_bytes(), &[b' '; 4096], watch_for)
        });
        let big_heads = s.spawn(move || {
            let with_header_of = |bytes: usize| {
                format!(
                    "GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Big: {}\r\n\r\n",
                    "h".repeat(bytes)
                )
            };
            // Above the gateway's 32 KiB (hyper alone would take 400 KB).
            let big = with_header_of(40 << 10);
            let huge = with_header_of(1 << 20);
            let many = format!(
                "GET /healthz HTTP/1.1\r\nHost: gw\r\n{}\r\n",
                (0..150)
                    .map(|i| format!("X-H{i}: {i}\r\n"))
                    .collect::<String>()
            );
            (0..5)
                .flat_map(|_| [&big, &huge, &many])
                .map(|head| oversized(addr, head.as_bytes()))
                .collect::<Vec<_>>()
        });
        let mut rounds = Vec::new();
        while rounds.is_empty() || !slow_heads.is_finished() {
            rounds.push(pipelined(addr, rounds.len()));
        }
        for answers in &rounds {
            let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
            assert_eq!(statuses, [200, 200, 200, 404, 200, 200, 200, 200]);
            let accepted: Vec<_> = [0, 2, 4, 6]
                .iter()
                .map(|&i| answers[i].json()["accepted"].clone())
                .collect();
            assert_eq!(accepted, [1, 0, 2, 3], "answers out of order");
            assert_eq!(answers[2].json()["rejected"][0]["reason"], "missing_field");
            for i in [1, 5, 7] {
                assert_eq!(answers[i].text(), "ok\n");
            }
        }
        eprintln!(
            "pipelining: {} rounds of 8 requests, in order",
            rounds.len()
        );
        let fates = slow_heads.join().unwrap();
        assert_timed_out("a slow head", &fates, None);
        let fates = slow_bodies.join().unwrap();
        assert_timed_out("a slow body", &fates, Some(408));
        for status in big_heads.join().unwrap() {
            assert!(matches!(status, Some(431) | None), "{status:?}");
        }

        // Phase 2: a flood. Its requests wait in line with the healthy
        // client's, which may get a 429 too (and resends it).
        let flood_until = Instant::now() + FLOOD_FOR;
        let floods: Vec<_> = (0..FLOOD_CLIENTS)
            .map(|_| s.spawn(move || flood(addr, flood_body, flood_until)))
            .collect();
        let statuses: Vec<u16> = floods.into_iter().flat_map(|f| f.join().unwrap()).collect();
        let refused = statuses.iter().filter(|s| **s == 429).count();
        eprintln!(
            "flood: {} requests, {refused} answered 429, the others 200",
            statuses.len()
        );
        assert!(refused > 0, "no flood request was answered 429");
        assert!(refused < statuses.len(), "every flood request was refused");

        // Phase 3: twice as many idle connections as the gateway serves,
        // while its count of open connections is watched.
        let (sampled, sampling) = mpsc::channel::<()>();
        let most_open = s.spawn(move || {
            let mut most = 0;
            while sampling.recv_timeout(Duration::from_millis(100)).is_err() {
                most = most.max(watched.metric("tokentally_gateway_connections_open"));
            }
            most
        });
        let fates = trickle(addr, IDLE_CONNECTIONS, b"", b"", watch_for);
        sampled.send(()).unwrap();
        let most_open = most_open.join().unwrap();
        let (turned_away, kept): (Vec<Fate>, Vec<Fate>) =
            fates.into_iter().partition(|f| f.answered(503));
        for (i, f) in turned_away.iter().enumerate() {
            let closed = f.closed_after.expect("closed after its 503");
            assert!(
                closed < MARGIN,
                "turned-away connection {i} closed after {closed:?}"
            );
        }
        assert_timed_out("an idle connection", &kept, None);
        eprintln!(
            "idle connections: {} answered 503 at once, {} closed by the idle timeout; \
             at most {most_open} connections open",
            turned_away.len(),
            kept.len()
        );
        assert!(!turned_away.is_empty(), "the connection limit never acted");
        assert!(
            most_open <= MAX_CONNECTIONS as u64,
            "{most_open} connections open"
        );
        assert!(
            gw.metric("tokentally_gateway_connections_refused_total") >= turned_away.len() as u64
        );

        // Every attacking connection is gone: only the healthy one is left.
        let settle = Instant::now();
        loop {
            let open = gw.metric("tokentally_gateway_connections_open");
            if open <= 1 {
                break;
            }
            assert!(settle.elapsed() < MARGIN, "{open} connections still open");
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(_stop);
        healthy.join().unwrap()
    });

    assert!(
        gw.child.try_wait().unwrap().is_none(),
        "the gateway died:\n{}",
        gw.stderr.lock().unwrap()
    );
    let peak_rss_mib = gw.peak_rss_kib() / 1024;
    let rate = healthy.succeeded as f64 / healthy.requests as f64;
    eprintln!(
        "healthy client: {}/{} requests succeeded ({:.2}%), {} at the first attempt, \
         {} resent after 429, {} after 503, {} on a new connection; slowest {:?}",
        healthy.succeeded,
        healthy.requests,
        100.0 * rate,
        healthy.first_try,
        healthy.after_429,
        healthy.after_503,
        healthy.reconnects,
        healthy.slowest
    );
    eprintln!(
        "gateway peak RSS: {peak_rss_mib} MiB; test took {:?}",
        started.elapsed()
    );
    assert!(healthy.requests >= 100, "{healthy:?}");
    assert!(rate >= 0.99, "{:#?}", healthy.failures);
    assert!(peak_rss_mib < 512, "peak RSS {peak_rss_mib} MiB");
    assert!(gw.stop().success());
}
