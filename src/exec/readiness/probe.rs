//! Probe connections: proving that a process of *this* generation accepts
//! (and, for `http:`, answers) on a listener it shares with the old one.
//!
//! One probe per listener is open at a time. It connects to the listener's
//! own address (a wildcard address through loopback), then looks the
//! server's end of the connection up in the kernel ([`SockDiag`]) until a
//! process accepted it, and looks for that socket in the descriptors of
//! fdstore-exec's process tree, which holds this generation's program and its
//! workers and not the old generation. A probe accepted elsewhere (by the old
//! generation) is closed and retried, never counted. Nothing is sent before
//! the acceptor is known, so the old generation only sees a connection that
//! closes at once; an `http:` probe then sends one `GET` and reads the
//! answer to its end before closing, so no reset reaches the program.
//!
//! A program that waits with `EPOLLEXCLUSIVE` is woken alone, and the
//! kernel wakes the first such waiter that is waiting: the idle old
//! generation, registered first, would take every probe. Once a probe was
//! taken by another process and this generation's tree watches the listener
//! that way, or once several were taken however it waits (the old program
//! quicker to accept), the listener's next probes are made while the old
//! generation's program is paused ([`super::pause`]), where the old one
//! takes pauses.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::{
    connect, getpeername, getsockname, recv, send, shutdown, sockopt, AddressFamily, RecvFlags,
    SendFlags, Shutdown, SocketAddrUnix, SocketType,
};

use super::mode::HttpCheck;
use super::pause::PauseNow;
use crate::kind::FdKind;
use crate::listen::NamedFd;
use crate::sys::proc::{holds_socket, tree};
use crate::sys::sock_diag::{ServerEnd, SockDiag};

/// The first retry after a probe that another process accepted; doubles up
/// to [`RETRY_MAX`], so at most about ten probes a second reach the old
/// generation per listener (seven in the first 130 ms). Short, because
/// losing a probe is common and says nothing about the new generation: the
/// old one, idle in `accept`, often takes the first ones while the new
/// program is still on its way to its own accept loop, and every pause
/// here is time the reload waits (at 10 ms, four lost probes made a reload
/// 150 ms longer).
const RETRY_MIN: Duration = Duration::from_millis(1);
/// The longest pause between two probes of one listener.
const RETRY_MAX: Duration = Duration::from_millis(100);
/// How often a probe in the listen queue is looked up, at first; doubles up
/// to [`LOOK_MAX`], which bounds how late an accepted probe is seen (one
/// `sock_diag` query per look, tens of microseconds). The program accepts
/// within a fraction of a millisecond of the probe, and every moment after
/// that until the next look is time the reload waits (at 1 ms, the proof
/// made most reloads a millisecond longer) and, for a probe made while the
/// old generation's program is paused, time its clients are stalled.
const LOOK_MIN: Duration = Duration::from_micros(100);
const LOOK_MAX: Duration = Duration::from_millis(10);
/// How long an accepted `http:` probe may take to be answered.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of an answer that is read: the status line must come within
/// the first [`HEAD_MAX`] bytes, and the rest is read (and dropped) up to
/// [`BODY_MAX`] so that closing does not reset the connection.
const HEAD_MAX: usize = 4096;
/// How long the end of an answer is awaited once its status is in (a server
/// that ignores `Connection: close` is judged by its status all the same).
const END_WAIT: Duration = Duration::from_secs(1);
const BODY_MAX: usize = 64 * 1024;

/// Where a probe connects.
#[derive(Debug, Clone)]
pub(crate) enum Address {
    Tcp(SocketAddr),
    Unix {
        address: SocketAddrUnix,
        seqpacket: bool,
    },
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "{a}"),
            Address::Unix { address, .. } => {
                if let Some(name) = address.abstract_name() {
                    write!(f, "@{}", String::from_utf8_lossy(name))
                } else if let Some(path) = address.path_bytes() {
                    write!(f, "{}", String::from_utf8_lossy(path))
                } else {
                    f.write_str("an unnamed Unix socket")
                }
            }
        }
    }
}

/// The address a probe of `listener` connects to, or why it cannot be
/// probed. `Ok(None)`: not a stream listener.
pub(crate) fn probe_address(listener: &NamedFd) -> Result<Option<Address>, String> {
    let kind = listener
        .kind()
        .map_err(|e| format!("listener {}: {e}", listener.name()))?;
    let seqpacket = match kind {
        FdKind::TcpListener => {
            let local = getsockname(listener)
                .ok()
                .and_then(|a| SocketAddr::try_from(a).ok())
                .ok_or_else(|| format!("listener {}: no address", listener.name()))?;
            return Ok(Some(Address::Tcp(loopback_for(local))));
        }
        FdKind::UnixListener => false,
        FdKind::UnixSeqpacketListener => true,
        _ => return Ok(None),
    };
    let address = getsockname(listener)
        .ok()
        .and_then(|a| SocketAddrUnix::try_from(a).ok())
        .filter(|a| !a.is_unnamed())
        .ok_or_else(|| {
            format!(
                "listener {} is an unnamed Unix socket, which nothing can connect to",
                listener.name()
            )
        })?;
    Ok(Some(Address::Unix { address, seqpacket }))
}

/// A wildcard address is reached through loopback.
fn loopback_for(local: SocketAddr) -> SocketAddr {
    match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), local.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), local.port())
        }
        _ => local,
    }
}

/// What a probe found, for the reason a timeout gives.
#[derive(Debug, Default)]
struct Tally {
    /// Probes accepted by a process outside this generation.
    by_others: u64,
    /// Probes whose acceptor could not be seen (closed or reset first).
    unseen: u64,
    /// Probes accepted by this generation (for `http:`).
    by_us: u64,
    /// Probes made while the old generation's program was paused.
    paused: u64,
    /// The last thing that went wrong, in words.
    last_problem: Option<String>,
}

/// One listener to prove, for one `accept` or `http:` check or for the
/// accept proof every mode includes.
pub(crate) struct Target {
    pub(crate) name: String,
    /// Probed for the proof every mode includes, not for a check given.
    pub(crate) implied: bool,
    /// The listener's inode.
    pub(crate) inode: u64,
    /// Its probes wait for the old generation to be paused: others took
    /// several, or one while this generation waits for the listener with
    /// `EPOLLEXCLUSIVE`.
    pub(crate) wants_pause: bool,
    /// A probe was taken by another process since [`Target::take_lost`].
    lost: bool,
    address: Address,
    http: Option<HttpCheck>,
    passed: bool,
    attempt: Option<Attempt>,
    next_try: Instant,
    retry: Duration,
    tally: Tally,
}

struct Attempt {
    /// Made while the old generation's program was paused.
    paused: bool,
    socket: OwnedFd,
    /// The probe's own end: its TCP address, or its Unix socket's inode.
    client: Client,
    phase: Phase,
    next_look: Instant,
    look: Duration,
}

enum Client {
    Tcp(SocketAddr),
    Unix(u64),
}

enum Phase {
    /// The connection is not established yet.
    Connecting { since: Instant },
    /// Established, in the listen queue until a process accepts it.
    Queued { since: Instant },
    /// Accepted by this generation: the request is sent and the answer read.
    Answering {
        answer: Vec<u8>,
        /// The status once the status line is in.
        status: Option<u16>,
        /// Bytes read so far.
        read: usize,
        /// The end of the wait: the answer timeout, then, once the status
        /// is in, [`END_WAIT`] for the server to close.
        deadline: Instant,
    },
}

/// How one step of an attempt ended.
enum Step {
    Wait,
    Passed,
    /// Try again later; the reason is kept for the timeout message.
    Retry(Option<String>),
}

impl Target {
    pub(crate) fn new(
        name: String,
        inode: u64,
        address: Address,
        http: Option<HttpCheck>,
        implied: bool,
    ) -> Target {
        Target {
            name,
            implied,
            inode,
            wants_pause: false,
            lost: false,
            address,
            http,
            passed: false,
            attempt: None,
            next_try: Instant::now(),
            retry: RETRY_MIN,
            tally: Tally::default(),
        }
    }

    pub(crate) fn passed(&self) -> bool {
        self.passed
    }

    /// The socket to poll while an answer is awaited.
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.attempt {
            Some(a) if matches!(a.phase, Phase::Answering { .. }) => Some(a.socket.as_fd()),
            _ => None,
        }
    }

    /// Whether its next probe is due and waits for a pause at `now`.
    pub(crate) fn waits_for_pause(&self, now: Instant) -> bool {
        !self.passed && self.wants_pause && self.attempt.is_none() && now >= self.next_try
    }

    /// Whether a probe made under a pause is under way.
    pub(crate) fn probing_paused(&self) -> bool {
        self.attempt.as_ref().is_some_and(|a| a.paused)
    }

    /// How many of its probes other processes took.
    pub(crate) fn losses(&self) -> u64 {
        self.tally.by_others
    }

    /// Whether a probe was taken by another process since the last call.
    pub(crate) fn take_lost(&mut self) -> bool {
        std::mem::take(&mut self.lost)
    }

    /// Its next probe waits for a pause, and is due at once.
    pub(crate) fn want_pause(&mut self, now: Instant) {
        if !self.wants_pause {
            self.wants_pause = true;
            self.next_try = self.next_try.min(now);
            self.retry = RETRY_MIN;
        }
    }

    /// When this target wants to be stepped again (`None` while it waits
    /// for a pause that is on its way: the answer or its end wakes the loop).
    pub(crate) fn next_wake(&self, pause_awaited: bool) -> Option<Instant> {
        if self.passed {
            return None;
        }
        if pause_awaited && self.wants_pause && self.attempt.is_none() {
            return None;
        }
        Some(match &self.attempt {
            None => self.next_try,
            Some(a) => match &a.phase {
                Phase::Answering { deadline, .. } => (*deadline).min(a.next_look),
                _ => a.next_look,
            },
        })
    }

    /// Moves the probe on; `root` is fdstore-exec's own pid, whose process
    /// tree (less itself) is this generation's; `pause` says whether the old
    /// generation's program is paused now.
    pub(crate) fn step(&mut self, now: Instant, diag: &mut SockDiag, root: u32, pause: PauseNow) {
        if self.passed {
            return;
        }
        if self.attempt.is_none() {
            if now < self.next_try {
                return;
            }
            let paused = match pause {
                _ if !self.wants_pause => false,
                PauseNow::Unavailable => false,
                PauseNow::Pending => return,
                PauseNow::Granted => true,
            };
            match self.connect(now, paused) {
                Ok(attempt) => self.attempt = Some(attempt),
                Err(problem) => return self.retry_later(now, Some(problem)),
            }
        }
        let attempt = self.attempt.as_mut().expect("connected above");
        if now < attempt.next_look && !matches!(attempt.phase, Phase::Answering { .. }) {
            return;
        }
        let others = self.tally.by_others;
        let step = attempt.step(
            now,
            diag,
            root,
            &self.address,
            self.http.as_ref(),
            &mut self.tally,
        );
        self.lost |= self.tally.by_others > others;
        match step {
            Step::Wait => {}
            Step::Passed => {
                self.passed = true;
                self.attempt = None;
            }
            Step::Retry(problem) => self.retry_later(now, problem),
        }
    }

    fn retry_later(&mut self, now: Instant, problem: Option<String>) {
        if let Some(p) = problem {
            self.tally.last_problem = Some(p);
        }
        if let Some(attempt) = self.attempt.take() {
            attempt.close();
        }
        self.next_try = now + self.retry;
        self.retry = (self.retry * 2).min(RETRY_MAX);
    }

    fn connect(&mut self, now: Instant, paused: bool) -> Result<Attempt, String> {
        let (family, kind) = match &self.address {
            Address::Tcp(a) if a.is_ipv4() => (AddressFamily::INET, SocketType::STREAM),
            Address::Tcp(_) => (AddressFamily::INET6, SocketType::STREAM),
            Address::Unix { seqpacket, .. } => (
                AddressFamily::UNIX,
                if *seqpacket {
                    SocketType::SEQPACKET
                } else {
                    SocketType::STREAM
                },
            ),
        };
        let socket = crate::sys::socket::nonblocking_socket(family, kind)
            .map_err(|e| format!("creating a probe socket: {e}"))?;
        let connected = match &self.address {
            Address::Tcp(a) => connect(&socket, a),
            Address::Unix { address, .. } => connect(&socket, address),
        };
        match connected {
            Ok(()) | Err(Errno::INPROGRESS) => {}
            // A Unix listener's queue is full: it is not accepting.
            Err(Errno::AGAIN) => {
                return Err(format!("the listen queue of {} is full", self.address))
            }
            Err(e) => return Err(format!("connecting to {}: {e}", self.address)),
        }
        let client = match &self.address {
            Address::Tcp(_) => Client::Tcp(SocketAddr::from(([0, 0, 0, 0], 0))),
            Address::Unix { .. } => Client::Unix(
                std::fs::File::from(socket.try_clone().map_err(|e| e.to_string())?)
                    .metadata()
                    .map_err(|e| format!("the probe socket: {e}"))?
                    .ino(),
            ),
        };
        if paused {
            self.tally.paused += 1;
        }
        Ok(Attempt {
            paused,
            socket,
            client,
            phase: Phase::Connecting { since: now },
            next_look: now,
            look: LOOK_MIN,
        })
    }

    /// What this target still lacks, for the timeout message.
    pub(crate) fn describe(&self, generation: u64) -> String {
        let t = &self.tally;
        let what = if self.http.is_some() {
            "answered as expected"
        } else {
            "accepted"
        };
        let mut text = format!(
            "{} ({}): no probe was {what} by generation {generation}",
            self.name, self.address
        );
        let mut notes = Vec::new();
        if t.by_others > 0 {
            notes.push(format!(
                "{} accepted by another process (the old generation)",
                t.by_others
            ));
        }
        if t.by_us > 0 {
            notes.push(format!("{} accepted by it", t.by_us));
        }
        if t.paused > 0 {
            notes.push(format!(
                "{} made while the old generation's program was paused, as it waits with EPOLLEXCLUSIVE",
                t.paused
            ));
        }
        if t.unseen > 0 {
            notes.push(format!("{} closed before its acceptor was seen", t.unseen));
        }
        if let Some(Attempt {
            phase: Phase::Queued { since },
            ..
        }) = &self.attempt
        {
            notes.push(format!(
                "one waiting in the listen queue for {} ms",
                since.elapsed().as_millis()
            ));
        }
        if let Some(p) = &t.last_problem {
            notes.push(format!("last: {p}"));
        }
        if !notes.is_empty() {
            text.push_str(&format!(" ({})", notes.join("; ")));
        }
        text
    }
}

impl Attempt {
    fn look_later(&mut self, now: Instant) {
        self.next_look = now + self.look;
        self.look = (self.look * 2).min(LOOK_MAX);
    }

    fn step(
        &mut self,
        now: Instant,
        diag: &mut SockDiag,
        root: u32,
        address: &Address,
        http: Option<&HttpCheck>,
        tally: &mut Tally,
    ) -> Step {
        loop {
            match &mut self.phase {
                Phase::Connecting { since } => match getpeername(&self.socket) {
                    Ok(_) => {
                        if let Address::Tcp(_) = address {
                            match getsockname(&self.socket)
                                .ok()
                                .and_then(|a| SocketAddr::try_from(a).ok())
                            {
                                Some(local) => self.client = Client::Tcp(local),
                                None => {
                                    return Step::Retry(Some("the probe has no address".into()))
                                }
                            }
                        }
                        self.phase = Phase::Queued { since: *since };
                        self.look = LOOK_MIN;
                    }
                    Err(_) => {
                        if let Ok(Err(e)) = sockopt::socket_error(&self.socket) {
                            return Step::Retry(Some(format!("connecting to {address}: {e}")));
                        }
                        self.look_later(now);
                        return Step::Wait;
                    }
                },
                Phase::Queued { .. } => {
                    let end = match (&self.client, address) {
                        (Client::Tcp(local), Address::Tcp(server)) => {
                            diag.tcp_server_end(*local, *server)
                        }
                        (Client::Unix(inode), _) => diag.unix_server_end(*inode),
                        _ => unreachable!("a TCP probe has a TCP address"),
                    };
                    match end {
                        Ok(ServerEnd::Unaccepted) => {
                            // No inode and an end of file (or an error): a
                            // process accepted it and closed it already, too
                            // fast to be seen.
                            let mut byte = [0u8; 1];
                            match recv(
                                &self.socket,
                                &mut byte[..],
                                RecvFlags::PEEK | RecvFlags::DONTWAIT,
                            ) {
                                Ok((0, _)) => {
                                    tally.unseen += 1;
                                    return Step::Retry(None);
                                }
                                Ok(_) | Err(Errno::AGAIN) => {}
                                Err(e) => {
                                    tally.unseen += 1;
                                    return Step::Retry(Some(format!("the probe connection: {e}")));
                                }
                            }
                            self.look_later(now);
                            return Step::Wait;
                        }
                        Ok(ServerEnd::Gone) => {
                            tally.unseen += 1;
                            return Step::Retry(None);
                        }
                        Err(e) => return Step::Retry(Some(format!("sock_diag: {e}"))),
                        Ok(ServerEnd::Accepted(inode)) => match accepted_by_tree(root, inode) {
                            Ok(true) => {}
                            Ok(false) => {
                                tally.by_others += 1;
                                return Step::Retry(None);
                            }
                            Err(e) => {
                                tally.by_others += 1;
                                return Step::Retry(Some(e));
                            }
                        },
                    }
                    let Some(http) = http else {
                        return Step::Passed;
                    };
                    tally.by_us += 1;
                    let request = request_text(http, address);
                    // A fresh connection's send buffer holds a request head.
                    match send(&self.socket, request.as_bytes(), SendFlags::NOSIGNAL) {
                        Ok(n) if n == request.len() => {}
                        Ok(_) => return Step::Retry(Some("the request did not fit".into())),
                        Err(e) => return Step::Retry(Some(format!("sending the request: {e}"))),
                    }
                    // No half-close after it: some servers take the end of
                    // the request stream for a client that went away.
                    self.phase = Phase::Answering {
                        answer: Vec::new(),
                        status: None,
                        read: 0,
                        deadline: now + ANSWER_TIMEOUT,
                    };
                }
                Phase::Answering {
                    answer,
                    status,
                    read,
                    deadline,
                } => {
                    let http = http.expect("only http: probes answer");
                    let mut buffer = [0u8; 4096];
                    loop {
                        match recv(&self.socket, &mut buffer[..], RecvFlags::DONTWAIT) {
                            Ok((0, _)) => {
                                return match status {
                                    Some(code) => judge(http, *code),
                                    None => Step::Retry(Some(format!(
                                        "GET {} was closed without an answer",
                                        http.path
                                    ))),
                                };
                            }
                            Ok((n, _)) => {
                                *read += n;
                                if status.is_none() {
                                    answer.extend_from_slice(&buffer[..n]);
                                    match status_of(answer) {
                                        Ok(Some(code)) => {
                                            *status = Some(code);
                                            *deadline = (*deadline).min(now + END_WAIT);
                                        }
                                        Ok(None) if answer.len() < HEAD_MAX => {}
                                        Ok(None) | Err(()) => {
                                            return Step::Retry(Some(format!(
                                            "GET {} was answered with something other than HTTP",
                                            http.path
                                        )))
                                        }
                                    }
                                }
                                if *read > BODY_MAX {
                                    return status.map_or(Step::Retry(None), |c| judge(http, c));
                                }
                            }
                            Err(Errno::AGAIN) => break,
                            Err(e) => {
                                return match status {
                                    Some(code) => judge(http, *code),
                                    None => Step::Retry(Some(format!(
                                        "reading the answer to GET {}: {e}",
                                        http.path
                                    ))),
                                }
                            }
                        }
                    }
                    if now >= *deadline {
                        return match status {
                            Some(code) => judge(http, *code),
                            None => Step::Retry(Some(format!(
                                "GET {} was not answered within {ANSWER_TIMEOUT:?}",
                                http.path
                            ))),
                        };
                    }
                    // Woken by the socket; the timer is the deadline.
                    self.next_look = *deadline;
                    return Step::Wait;
                }
            }
        }
    }

    /// Closes the probe cleanly: a FIN, never a reset. Whatever already
    /// arrived is read first (closing with unread data would send a reset).
    fn close(self) {
        let _ = shutdown(&self.socket, Shutdown::Write);
        let mut buffer = [0u8; 4096];
        for _ in 0..16 {
            match recv(&self.socket, &mut buffer[..], RecvFlags::DONTWAIT) {
                Ok((n, _)) if n > 0 => continue,
                _ => break,
            }
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(attempt) = self.attempt.take() {
            attempt.close();
        }
    }
}

fn judge(http: &HttpCheck, code: u16) -> Step {
    let good = match http.status {
        Some(wanted) => code == wanted,
        None => (200..300).contains(&code),
    };
    if good {
        Step::Passed
    } else {
        let wanted = http
            .status
            .map_or("a 2xx status".to_owned(), |c| c.to_string());
        Step::Retry(Some(format!(
            "GET {} was answered with status {code}, not {wanted}",
            http.path
        )))
    }
}

/// Whether the socket with this inode is open in `root`'s process tree
/// (less `root` itself, which holds only the probe's own end).
fn accepted_by_tree(root: u32, inode: u64) -> Result<bool, String> {
    let mut denied = None;
    for pid in tree(root).into_iter().skip(1) {
        match holds_socket(pid, inode) {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            Err(e) => denied = Some(format!("reading /proc/{pid}/fd: {e}")),
        }
    }
    match denied {
        Some(e) => Err(e),
        None => Ok(false),
    }
}

/// The `GET` request of an `http:` probe.
pub(crate) fn request_text(http: &HttpCheck, address: &Address) -> String {
    let host = match address {
        Address::Tcp(a) => a.to_string(),
        Address::Unix { .. } => "localhost".to_owned(),
    };
    format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: fdstore-exec/{} (readiness probe)\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        http.path,
        env!("CARGO_PKG_VERSION")
    )
}

/// The status of an HTTP answer once its status line is complete:
/// `Ok(None)` while it is not, `Err` when it is not HTTP.
pub(crate) fn status_of(answer: &[u8]) -> Result<Option<u16>, ()> {
    let Some(end) = answer.iter().position(|&b| b == b'\n') else {
        return if b"HTTP/".starts_with(&answer[..answer.len().min(5)]) {
            Ok(None)
        } else {
            Err(())
        };
    };
    let line = std::str::from_utf8(&answer[..end]).map_err(|_| ())?;
    let mut words = line.trim_end_matches('\r').split(' ');
    let version = words.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(());
    }
    match words.next() {
        Some(code) if code.len() == 3 => code.parse().map(Some).map_err(|_| ()),
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pauses before each new probe after the old generation took
    /// `lost` of them in a row.
    fn pauses_after(lost: usize) -> Vec<Duration> {
        let address = Address::Tcp(SocketAddr::from(([127, 0, 0, 1], 8080)));
        let mut target = Target::new("web".into(), 0, address, None, true);
        let now = Instant::now();
        (0..lost)
            .map(|_| {
                target.retry_later(now, None);
                target.next_try - now
            })
            .collect()
    }

    #[test]
    fn a_target_that_wants_a_pause_probes_only_under_one() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = Address::Tcp(listener.local_addr().unwrap());
        let mut diag = SockDiag::open().unwrap();
        let root = std::process::id();
        let now = Instant::now();
        let target = || Target::new("web".into(), 0, address.clone(), None, true);

        let mut waiting = target();
        waiting.want_pause(now);
        waiting.step(now, &mut diag, root, PauseNow::Pending);
        assert!(waiting.attempt.is_none() && waiting.waits_for_pause(now));
        assert_eq!(waiting.next_wake(true), None, "woken by the answer");
        assert_eq!(waiting.next_wake(false), Some(now));
        waiting.step(now, &mut diag, root, PauseNow::Granted);
        assert!(waiting.probing_paused() && !waiting.waits_for_pause(now));
        assert_eq!(waiting.tally.paused, 1);

        // Where no pause can be had, it probes all the same.
        let mut refused = target();
        refused.want_pause(now);
        refused.step(now, &mut diag, root, PauseNow::Unavailable);
        assert!(refused.attempt.is_some() && !refused.probing_paused());

        // One that does not want a pause does not use one.
        let mut plain = target();
        plain.step(Instant::now(), &mut diag, root, PauseNow::Granted);
        assert!(plain.attempt.is_some() && !plain.probing_paused());
    }

    #[test]
    fn a_probe_taken_by_another_process_is_reported_lost_once() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = Address::Tcp(listener.local_addr().unwrap());
        let mut diag = SockDiag::open().unwrap();
        // The "generation" is this process's children: this process
        // itself, which accepts here, is another process.
        let root = std::process::id();
        let mut target = Target::new("web".into(), 0, address, None, true);
        let start = Instant::now();
        target.step(start, &mut diag, root, PauseNow::Unavailable);
        let (_accepted, _) = listener.accept().unwrap();
        let lost = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(5));
            target.step(Instant::now(), &mut diag, root, PauseNow::Unavailable);
            target.tally.by_others > 0
        });
        assert!(lost, "the probe was not seen accepted elsewhere");
        assert!(!target.passed());
        assert!(target.take_lost());
        assert!(!target.take_lost(), "reported once");
    }

    #[test]
    fn probes_the_old_generation_took_are_retried_at_once() {
        // The old generation, idle in accept, often takes the first probes
        // while the new program is still on its way to its accept loop:
        // losing five must not cost the reload more than 31 ms (it cost
        // 150 ms when the first pause was 10 ms).
        let waited: Duration = pauses_after(5).iter().sum();
        assert!(waited <= Duration::from_millis(31), "{waited:?}");
    }

    #[test]
    fn the_old_generation_gets_at_most_ten_probes_a_second() {
        let pauses = pauses_after(50);
        let mut elapsed = Duration::ZERO;
        let mut in_first_second = 0;
        for pause in &pauses {
            elapsed += *pause;
            if elapsed <= Duration::from_secs(1) {
                in_first_second += 1;
            }
        }
        assert!(
            in_first_second <= 16,
            "{in_first_second} probes in the first second"
        );
        assert!(
            pauses[10..]
                .iter()
                .all(|p| *p >= Duration::from_millis(100)),
            "{pauses:?}"
        );
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b""), Ok(None));
        assert_eq!(status_of(b"HTT"), Ok(None));
        assert_eq!(status_of(b"HTTP/1.1 200 OK"), Ok(None));
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\n"), Ok(Some(200)));
        assert_eq!(
            status_of(b"HTTP/1.0 503 Service Unavailable\r\nX: y"),
            Ok(Some(503))
        );
        assert_eq!(status_of(b"HTTP/1.1 204\r\n"), Ok(Some(204)));
        assert_eq!(status_of(b"SSH-2.0-OpenSSH\r\n"), Err(()));
        assert_eq!(status_of(b"pid 123\n"), Err(()));
        assert_eq!(status_of(b"HTTP/1.1 2000 OK\r\n"), Err(()));
    }

    #[test]
    fn wildcard_addresses_are_probed_through_loopback() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(loopback_for(a("0.0.0.0:80")), a("127.0.0.1:80"));
        assert_eq!(loopback_for(a("[::]:80")), a("[::1]:80"));
        assert_eq!(loopback_for(a("127.0.0.2:80")), a("127.0.0.2:80"));
        assert_eq!(loopback_for(a("[::1]:81")), a("[::1]:81"));
    }

    #[test]
    fn a_request_names_path_and_host() {
        let http = HttpCheck {
            listener: None,
            path: "/health?x=1".into(),
            status: None,
        };
        let text = request_text(&http, &Address::Tcp("127.0.0.1:8080".parse().unwrap()));
        assert!(text.starts_with("GET /health?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        assert!(text.ends_with("Connection: close\r\n\r\n"));
    }
}
