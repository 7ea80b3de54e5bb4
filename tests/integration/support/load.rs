//! An HTTP/1.1 load generator for loopback: closed-loop clients (or clients
//! paced to a fixed rate) that count every failed request by kind and
//! record latencies.
//!
//! Two modes: a new TCP connection per request (shows refused and reset
//! connections) and keep-alive connections (shows requests lost by a drain
//! that closes a connection under a client). A failed request is anything
//! but a complete `200` response.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How clients use connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One connection per request (`Connection: close`).
    NewConnection,
    /// Connections reused until the server says `Connection: close`.
    KeepAlive,
}

/// Live counters, readable while the load runs.
#[derive(Debug, Default)]
pub struct Counters {
    /// Complete 200 responses.
    pub ok: AtomicU64,
    /// Failed requests.
    pub failed: AtomicU64,
}

/// What a run saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Complete 200 responses.
    pub ok: u64,
    /// Failed requests by kind: refused, reset, timeout, bad-response, other.
    pub failures: BTreeMap<&'static str, u64>,
    /// The first few failures, described.
    pub examples: Vec<String>,
    /// (when the request started, its latency in µs) for every success.
    pub latencies: Vec<(Instant, u32)>,
    /// The distinct response bodies (which server generations answered).
    pub bodies: std::collections::BTreeSet<String>,
}

impl LoadReport {
    /// All failed requests.
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    /// The `q` quantile (0.0–1.0) of the latencies that `keep` selects, in µs.
    pub fn quantile(&self, q: f64, keep: impl Fn(Instant) -> bool) -> Option<u32> {
        let mut v: Vec<u32> = self
            .latencies
            .iter()
            .filter(|(t, _)| keep(*t))
            .map(|(_, l)| *l)
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        Some(v[i.min(v.len() - 1)])
    }

    fn merge(&mut self, other: LoadReport) {
        self.ok += other.ok;
        for (k, n) in other.failures {
            *self.failures.entry(k).or_default() += n;
        }
        for e in other.examples {
            if self.examples.len() < 10 {
                self.examples.push(e);
            }
        }
        self.latencies.extend(other.latencies);
        self.bodies.extend(other.bodies);
    }
}

/// A running load.
pub struct Load {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    threads: Vec<JoinHandle<LoadReport>>,
}

impl Load {
    /// Starts `clients` closed-loop clients of `mode` against 127.0.0.1:`port`.
    pub fn start(port: u16, mode: Mode, clients: usize) -> Load {
        Load::start_paced(port, mode, clients, None)
    }

    /// Like [`Load::start`], with each client sending one request every
    /// `interval` when one is given (so that the machine keeps idle CPU).
    /// A paced request's latency counts from when it was due, not from when
    /// it was sent: a client held up by a stall would otherwise send
    /// nothing during the stall and hide it (coordinated omission).
    pub fn start_paced(port: u16, mode: Mode, clients: usize, interval: Option<Duration>) -> Load {
        let mut load = Load {
            stop: Arc::new(AtomicBool::new(false)),
            counters: Arc::new(Counters::default()),
            threads: Vec::with_capacity(clients),
        };
        for _ in 0..clients {
            let stop = load.stop.clone();
            let counters = load.counters.clone();
            let thread = std::thread::spawn(move || client(port, mode, interval, &stop, &counters));
            load.threads.push(thread);
        }
        load
    }

    /// The live counters (for the demo's progress lines; the tests read the
    /// report that [`Load::stop`] returns).
    #[cfg(not(test))]
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Stops the clients (each finishes its request under way) and returns
    /// the merged report.
    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut report = LoadReport::default();
        for t in self.threads {
            report.merge(t.join().expect("a load client panicked"));
        }
        report
    }
}

/// How long a connection may take to be established.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the status of an answer may take before the request counts as
/// stalled ("timeout"). A stall this suite looks for (a connection left in
/// a listen queue nobody accepts, or held by a process that will never
/// answer it) lasts until the test ends, so a long bound still finds it;
/// a short one counted starvation of a loaded CI machine as a stall (a CI
/// run with gunicorn's own reload taking 7.2 s at most: two requests of the
/// gthread recipe waited more than 5 s for a worker to be scheduled).
/// wrk (support::servers) is given the same bound.
pub const READ_TIMEOUT: Duration = Duration::from_secs(20);

fn client(
    port: u16,
    mode: Mode,
    interval: Option<Duration>,
    stop: &AtomicBool,
    counters: &Counters,
) -> LoadReport {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut report = LoadReport::default();
    let mut connection: Option<BufReader<TcpStream>> = None;
    let mut due = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let started = match interval {
            None => Instant::now(),
            Some(interval) => {
                // The schedule is kept: after a stall the requests that
                // fell due during it go out at once, each timed from when
                // it was due, as wrk2 does.
                let this = due;
                due += interval;
                let now = Instant::now();
                if this > now {
                    std::thread::sleep(this - now);
                }
                this
            }
        };
        let result = request(addr, mode, &mut connection);
        match result {
            Ok(body) => {
                report.ok += 1;
                counters.ok.fetch_add(1, Ordering::Relaxed);
                report
                    .latencies
                    .push((started, started.elapsed().as_micros() as u32));
                if !report.bodies.contains(&body) {
                    report.bodies.insert(body);
                }
            }
            Err((kind, text)) => {
                connection = None;
                *report.failures.entry(kind).or_default() += 1;
                counters.failed.fetch_add(1, Ordering::Relaxed);
                if report.examples.len() < 10 {
                    report.examples.push(format!("{kind}: {text}"));
                }
            }
        }
    }
    report
}

type Failure = (&'static str, String);

fn classify(e: std::io::Error, during: &str) -> Failure {
    use std::io::ErrorKind::*;
    let kind = match e.kind() {
        ConnectionRefused => "refused",
        ConnectionReset | ConnectionAborted | BrokenPipe => "reset",
        WouldBlock | TimedOut => "timeout",
        UnexpectedEof => "bad-response",
        _ => "other",
    };
    (kind, format!("{during}: {e}"))
}

fn request(
    addr: SocketAddr,
    mode: Mode,
    connection: &mut Option<BufReader<TcpStream>>,
) -> Result<String, Failure> {
    if connection.is_none() {
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .map_err(|e| classify(e, "connect"))?;
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .map_err(|e| classify(e, "set timeout"))?;
        let _ = stream.set_nodelay(true);
        *connection = Some(BufReader::new(stream));
    }
    let reader = connection.as_mut().expect("just connected");
    let head = match mode {
        Mode::NewConnection => "GET / HTTP/1.1\r\nHost: load\r\nConnection: close\r\n\r\n",
        Mode::KeepAlive => "GET / HTTP/1.1\r\nHost: load\r\n\r\n",
    };
    reader
        .get_mut()
        .write_all(head.as_bytes())
        .map_err(|e| classify(e, "send"))?;
    let mut status = String::new();
    let n = reader
        .read_line(&mut status)
        .map_err(|e| classify(e, "read status"))?;
    if n == 0 {
        return Err(("reset", "closed before the response".into()));
    }
    if !status.starts_with("HTTP/1.1 200") {
        return Err(("bad-response", format!("status line {status:?}")));
    }
    let mut length = None;
    let mut close = mode == Mode::NewConnection;
    loop {
        let mut line = String::new();
        if reader
            .read_line(&mut line)
            .map_err(|e| classify(e, "read headers"))?
            == 0
        {
            return Err(("bad-response", "closed in the headers".into()));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().ok();
        }
        if lower == "connection: close" {
            close = true;
        }
    }
    let length = length.ok_or(("bad-response", "no Content-Length".to_owned()))?;
    let mut body = vec![0u8; length];
    reader
        .read_exact(&mut body)
        .map_err(|e| classify(e, "read body"))?;
    if close {
        *connection = None;
    }
    Ok(String::from_utf8_lossy(&body).trim().to_owned())
}
