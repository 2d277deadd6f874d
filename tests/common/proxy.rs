//! A TCP proxy on loopback that a test can cut and heal: a network
//! partition between one client and one server, while everything else
//! still reaches that server directly. Or one that cuts a single HTTP
//! request off after the first chunk of its body, as a client killed
//! mid-request leaves it: the server sees the connection close cleanly.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

pub struct Proxy {
    cut: Arc<AtomicBool>,
    /// Requests cut off mid-body (see [`Proxy::cutting_one_body`]).
    bodies_cut: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl Proxy {
    /// Forward every connection to `listen` (an address on loopback) to
    /// `target`.
    pub fn start(listen: &str, target: &str) -> Proxy {
        Proxy::with(listen, target, None)
    }

    /// Forward every connection, except the first request whose head
    /// contains `needle`: that one reaches the server up to the end of the
    /// first chunk of its (chunked) body, or the middle of it when it is
    /// the only one (see [`cut_point`]); then its connection is closed
    /// cleanly on both sides, as when the client is SIGKILLed mid-request.
    pub fn cutting_one_body(listen: &str, target: &str, needle: &'static [u8]) -> Proxy {
        Proxy::with(listen, target, Some(needle))
    }

    /// Requests cut off mid-body so far.
    pub fn bodies_cut(&self) -> u64 {
        self.bodies_cut.load(Ordering::Relaxed)
    }

    fn with(listen: &str, target: &str, needle: Option<&'static [u8]>) -> Proxy {
        let listener =
            TcpListener::bind(listen).unwrap_or_else(|e| panic!("proxy bind {listen}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let bodies_cut: Arc<AtomicU64> = Arc::default();
        let target = target.to_string();
        let acceptor = {
            let (cut, stop, open) = (cut.clone(), stop.clone(), open.clone());
            let bodies_cut = bodies_cut.clone();
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let client = match listener.accept() {
                        Ok((client, _)) => client,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                        Err(_) => continue,
                    };
                    if cut.load(Ordering::Relaxed) {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                    let _ = client.set_nonblocking(false);
                    let Ok(server) = TcpStream::connect(&target) else {
                        continue;
                    };
                    let mut tracked = open.lock().unwrap();
                    for s in [&client, &server] {
                        tracked.push(s.try_clone().unwrap());
                    }
                    drop(tracked);
                    let upstream = (client.try_clone().unwrap(), server.try_clone().unwrap());
                    match needle {
                        Some(needle) => {
                            let (from, to) = upstream;
                            let bodies_cut = bodies_cut.clone();
                            thread::spawn(move || cut_one_body(from, to, needle, &bodies_cut));
                        }
                        None => pipe(upstream.0, upstream.1),
                    }
                    pipe(server, client);
                }
            })
        };
        Proxy {
            cut,
            bodies_cut,
            stop,
            open,
            acceptor: Some(acceptor),
        }
    }

    /// Partition: close every connection through the proxy, and close new
    /// ones as they come.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// End the partition: new connections go through again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

/// Copy `from` to `to` on a thread of its own until either side closes.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

/// Copy `from` (a client) to `to` (the server) until either side closes;
/// but while `cuts` is 0, the request whose head holds `needle` is cut off
/// mid-body (see [`cut_point`]): that much is sent, then both connections
/// are closed (the server reads a clean end of stream).
fn cut_one_body(mut from: TcpStream, mut to: TcpStream, needle: &[u8], cuts: &AtomicU64) {
    let mut buf = [0u8; 64 * 1024];
    // The last bytes sent, where a needle split across reads begins.
    let mut tail: Vec<u8> = Vec::new();
    // Once the needle is seen: the request from there on, not yet sent.
    let mut held: Option<Vec<u8>> = None;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let new = &buf[..n];
        match &mut held {
            Some(held) => held.extend_from_slice(new),
            None => {
                tail.extend_from_slice(new);
                let found = find(&tail, needle).filter(|_| {
                    cuts.compare_exchange(0, 1, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                });
                // Where the needle starts in `new` (0 when it began in the
                // tail).
                let send = found.map_or(n, |at| (at + n).saturating_sub(tail.len()));
                if to.write_all(&new[..send]).is_err() {
                    break;
                }
                if found.is_none() {
                    let keep = tail.len().saturating_sub(needle.len());
                    tail.drain(..keep);
                    continue;
                }
                held = Some(new[send..].to_vec());
            }
        }
        if let Some(end) = held.as_deref().and_then(cut_point) {
            let _ = to.write_all(&held.unwrap()[..end]);
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Where to cut `request` (head included) off: after the first chunk of
/// its chunked body when more data follows (a clean break, between two
/// blocks the client compressed and sent whole), else half-way through
/// that chunk. `None` until the bytes up to there (and the next size line)
/// are all there.
fn cut_point(request: &[u8]) -> Option<usize> {
    let body = find(request, b"\r\n\r\n")? + 4;
    let (first, size) = chunk_at(request, body)?;
    let (_, next) = chunk_at(request, first + size + 2)?;
    let at = if next > 0 {
        first + size + 2
    } else {
        first + size / 2
    };
    (request.len() >= at).then_some(at)
}

/// The data start and size of the chunk whose size line starts at `at`.
fn chunk_at(request: &[u8], at: usize) -> Option<(usize, usize)> {
    let rest = request.get(at..)?;
    let line = find(rest, b"\r\n")?;
    let size = std::str::from_utf8(&rest[..line]).ok()?;
    let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
    Some((at + line + 2, size))
}
