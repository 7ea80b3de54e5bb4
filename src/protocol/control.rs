//! The control socket: how `fdstore-exec reload` and `fdstore-exec status`
//! reach the unit's main process.
//!
//! The main process listens on the abstract Unix `SOCK_SEQPACKET` socket
//! `@fdstore/control/PID/TOKEN` (PID: its own pid, which systemd gives
//! `ExecReload=` as `$MAINPID`; TOKEN: 32 hex digits of a 128-bit random
//! number drawn at bind time). Every message is one packet of UTF-8 text.
//! A client sends one request, `RELOAD` or `STATUS`, and receives one reply,
//! `OK TEXT` or `ERR KIND TEXT`, where KIND is `busy`, `denied`, `failed`, `stopping`,
//! `unsupported` or `invalid`. Only root, the unit's own uid and processes in
//! the main process's own cgroup (the unit's processes, such as
//! `ExecReload=`) may send `RELOAD`; anybody who can reach the socket may ask
//! for `STATUS`.
//!
//! Abstract names belong to whoever binds them first, and anybody can bind
//! any name. The token makes the name impossible to take before the main
//! process binds it (so binding never fails for a squatter's sake); the
//! client finds the name in `/proc/net/unix` and believes an answer only from
//! a socket whose listener (`SO_PEERCRED`) is the process it asked for, so a
//! name somebody else bound under the same prefix is never mistaken for it.
//! [`ControlEndpoint`] bounds what clients can take: [`MAX_CLIENTS`] at once,
//! [`MAX_OTHER_UID_CLIENTS`] of them from other users, [`CLIENT_DEADLINE`]
//! to send the request, and a pause instead of a busy loop when `accept(2)`
//! fails (descriptors exhausted).

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::io::Errno;

use super::sysexits;
use rustix::net::{
    accept_with, bind, connect, listen, recv, send, sockopt, RecvFlags, SendFlags, SocketAddrUnix,
    SocketFlags,
};

/// The largest request or reply, in bytes.
pub const MAX_MESSAGE: usize = 4096;

/// The start of the abstract socket name (without the leading `@`) of
/// process `pid`'s control socket; the random token follows.
pub fn control_name_prefix(pid: u32) -> String {
    format!("fdstore/control/{pid}/")
}

/// The name fdstore 0.x used (no token). A client still tries it, with the
/// same peer check, so that `fdstore-exec reload` from an upgraded package
/// reaches a main process started before the upgrade.
fn legacy_name(pid: u32) -> String {
    format!("fdstore/control/{pid}")
}

/// Hex digits in the token.
const TOKEN_DIGITS: usize = 32;

/// At most this many clients are connected at once (waiting to send their
/// request, or being answered).
pub const MAX_CLIENTS: usize = 16;
/// At most this many of them may be from uids other than root and the
/// unit's own: the other half stays free for the administrator and
/// `ExecReload=`.
pub const MAX_OTHER_UID_CLIENTS: usize = 8;
/// A client has this long from connecting to sending its request; a silent
/// one is then dropped.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(2);
/// After `accept(2)` fails (no descriptor left, no memory), the listening
/// socket is not polled for this long: a readable socket that cannot be
/// accepted would otherwise spin the loop.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// At most this many connections are accepted per call of
/// [`ControlEndpoint::service`], so that a flood of connections cannot hold
/// the event loop.
const ACCEPTS_PER_ROUND: usize = 64;
/// How many candidate names a client tries at most (somebody may have bound
/// many names under the prefix).
const MAX_CANDIDATES: usize = 1024;
/// How long a client keeps trying candidates whose backlog is full.
const CONNECT_PATIENCE: Duration = Duration::from_secs(5);

/// A request to the main process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Replace the running generation with a new one.
    Reload,
    /// Describe the running generation.
    Status,
}

impl Request {
    /// Parses a request packet.
    pub fn parse(text: &str) -> Option<Request> {
        match text.trim_end() {
            "RELOAD" => Some(Request::Reload),
            "STATUS" => Some(Request::Status),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Request::Reload => "RELOAD",
            Request::Status => "STATUS",
        }
    }
}

/// Why a request was not carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Another reload is in progress.
    Busy,
    /// The client may not ask for this.
    Denied,
    /// The reload was tried and failed; the old generation still serves.
    Failed,
    /// The unit is stopping, which abandons the reload. Not an error for
    /// `ExecReload=`: systemd cancels the reload job anyway, and a failing
    /// control process would mark the stopped unit as failed.
    Stopping,
    /// The main process does not do this (for example `--mode=restart`).
    Unsupported,
    /// The request was not understood.
    Invalid,
}

impl Refusal {
    /// Every kind, for parsing and for tests.
    pub(crate) const ALL: [Refusal; 6] = [
        Refusal::Busy,
        Refusal::Denied,
        Refusal::Failed,
        Refusal::Stopping,
        Refusal::Unsupported,
        Refusal::Invalid,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Refusal::Busy => "busy",
            Refusal::Denied => "denied",
            Refusal::Failed => "failed",
            Refusal::Stopping => "stopping",
            Refusal::Unsupported => "unsupported",
            Refusal::Invalid => "invalid",
        }
    }

    fn parse(text: &str) -> Option<Refusal> {
        Refusal::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// The sysexits(3) status a client should exit with.
    pub fn exit_status(self) -> i32 {
        match self {
            Refusal::Busy => sysexits::TEMPFAIL,
            Refusal::Denied => sysexits::NOPERM,
            Refusal::Failed => sysexits::UNAVAILABLE,
            Refusal::Stopping => 0,
            Refusal::Unsupported => sysexits::CONFIG,
            Refusal::Invalid => sysexits::PROTOCOL,
        }
    }
}

/// A reply from the main process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Done; the text says what happened.
    Ok(String),
    /// Not done, and why.
    Err(Refusal, String),
}

impl Reply {
    /// The packet text.
    pub fn to_text(&self) -> String {
        match self {
            Reply::Ok(text) => format!("OK {text}"),
            Reply::Err(kind, text) => format!("ERR {} {text}", kind.as_str()),
        }
    }

    /// Parses a reply packet.
    pub fn parse(text: &str) -> Option<Reply> {
        let text = text.trim_end();
        if let Some(rest) = text.strip_prefix("OK") {
            return Some(Reply::Ok(rest.trim_start().to_owned()));
        }
        let rest = text.strip_prefix("ERR ")?;
        let (kind, message) = rest.split_once(' ').unwrap_or((rest, ""));
        Some(Reply::Err(Refusal::parse(kind)?, message.to_owned()))
    }
}

/// The protocol's standard refusals, worded once for fdstore-exec and the
/// library's upgrader.
impl Reply {
    /// A packet that is not `RELOAD` or `STATUS`.
    pub fn not_a_request(text: &str) -> Reply {
        Reply::Err(
            Refusal::Invalid,
            format!(
                "{:?} is not a request; send RELOAD or STATUS",
                text.trim_end()
            ),
        )
    }

    /// To a client of a process that has handed over to `successor`.
    pub fn handed_over(successor: u32) -> Reply {
        Reply::Err(
            Refusal::Unsupported,
            format!("this process handed over to pid {successor}; ask that one"),
        )
    }
}

/// Why a reload cannot start while generation `next` has been starting for
/// `running_for`.
pub fn busy_text(next: u64, running_for: Duration) -> String {
    format!(
        "a reload is already in progress (generation {next} starting for {} ms); wait for it to finish, then try again",
        running_for.as_millis()
    )
}

/// Why a reload cannot start while `generation` is not yet ready.
pub fn still_starting_text(generation: u64) -> String {
    format!("generation {generation} is still starting; reload once it is ready")
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

/// The listening control socket of the main process.
#[derive(Debug)]
pub struct ControlServer {
    socket: OwnedFd,
    name: String,
}

impl ControlServer {
    /// Listens on `@fdstore/control/OWN-PID/TOKEN` with a fresh random
    /// token, close-on-exec and non-blocking.
    pub fn bind() -> io::Result<ControlServer> {
        let socket = crate::sys::socket::unix_seqpacket()?;
        let mut tries = 0;
        let name = loop {
            let name = format!("{}{}", control_name_prefix(std::process::id()), token()?);
            match bind(
                &socket,
                &SocketAddrUnix::new_abstract_name(name.as_bytes())?,
            ) {
                Ok(()) => break name,
                // 2^-128 per try; a broken random source would loop here.
                Err(Errno::ADDRINUSE) if tries < 3 => tries += 1,
                Err(e) => return Err(e.into()),
            }
        };
        listen(&socket, MAX_CLIENTS as i32)?;
        Ok(ControlServer { socket, name })
    }

    /// The abstract name bound (without the leading `@`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Accepts one pending connection, if any.
    pub fn accept(&self) -> io::Result<Option<ControlConnection>> {
        match accept_with(&self.socket, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK) {
            Ok(socket) => {
                let peer = sockopt::socket_peercred(&socket)?;
                Ok(Some(ControlConnection {
                    socket,
                    peer_pid: peer.pid.as_raw_nonzero().get() as u32,
                    peer_uid: peer.uid.as_raw(),
                }))
            }
            Err(Errno::AGAIN) | Err(Errno::INTR) | Err(Errno::CONNABORTED) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

impl AsFd for ControlServer {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// 128 random bits as 32 hex digits.
fn token() -> io::Result<String> {
    let mut random = [0u8; 16];
    let mut filled = 0;
    while filled < random.len() {
        filled +=
            rustix::rand::getrandom(&mut random[filled..], rustix::rand::GetRandomFlags::empty())?;
    }
    Ok(random.iter().map(|b| format!("{b:02x}")).collect())
}

/// The control endpoint of a main process, for fdstore-exec and the
/// library alike: the listening socket and the clients waiting to send
/// their request, with the bounds in the module documentation.
///
/// The owner polls [`fds`](ControlEndpoint::fds) for reading, wakes up at
/// [`next_wake`](ControlEndpoint::next_wake) at the latest, and then calls
/// [`service`](ControlEndpoint::service), which returns the requests that
/// arrived.
#[derive(Debug)]
pub struct ControlEndpoint {
    server: ControlServer,
    own_uid: u32,
    clients: Vec<(ControlConnection, Instant)>,
    paused_until: Option<Instant>,
}

impl ControlEndpoint {
    /// Binds a new endpoint (see [`ControlServer::bind`]).
    pub fn bind() -> io::Result<ControlEndpoint> {
        Ok(ControlEndpoint {
            server: ControlServer::bind()?,
            own_uid: rustix::process::geteuid().as_raw(),
            clients: Vec::new(),
            paused_until: None,
        })
    }

    /// The abstract name bound (without the leading `@`).
    pub fn name(&self) -> &str {
        self.server.name()
    }

    /// The descriptors to poll for reading: the listening socket (unless
    /// accepting is paused) and every waiting client.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut fds = Vec::with_capacity(self.clients.len() + 1);
        if self.paused_until.is_none() {
            fds.push(self.server.as_fd());
        }
        fds.extend(self.clients.iter().map(|(c, _)| c.as_fd()));
        fds
    }

    /// When [`service`](ControlEndpoint::service) must run at the latest:
    /// a client's deadline or the end of a pause.
    pub fn next_wake(&self) -> Option<Instant> {
        self.clients
            .iter()
            .map(|(_, d)| *d)
            .chain(self.paused_until)
            .min()
    }

    /// Accepts new clients (turning away those over the bounds with
    /// `ERR busy`), drops clients whose deadline passed or who went away,
    /// and returns the requests that arrived, each with its connection, to
    /// be answered by the caller.
    pub fn service(&mut self, now: Instant) -> Vec<(ControlConnection, Result<Request, String>)> {
        if self.paused_until.is_some_and(|t| now >= t) {
            self.paused_until = None;
        }
        if self.paused_until.is_none() {
            self.accept_new(now);
        }
        let mut requests = Vec::new();
        let mut i = 0;
        while i < self.clients.len() {
            match self.clients[i].0.read_request() {
                Ok(Some(request)) => {
                    let (connection, _) = self.clients.swap_remove(i);
                    requests.push((connection, request));
                }
                Ok(None) if self.clients[i].1 > now => i += 1,
                Ok(None) => {
                    let (connection, _) = self.clients.swap_remove(i);
                    tracing::debug!(
                        client_pid = connection.peer_pid,
                        client_uid = connection.peer_uid,
                        "dropped a control client that sent no request within {CLIENT_DEADLINE:?}"
                    );
                }
                Err(_) => {
                    self.clients.swap_remove(i);
                }
            }
        }
        requests
    }

    fn accept_new(&mut self, now: Instant) {
        for _ in 0..ACCEPTS_PER_ROUND {
            let connection = match self.server.accept() {
                Ok(Some(connection)) => connection,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(
                        "accepting a control connection: {e}; not accepting for {} ms",
                        ACCEPT_PAUSE.as_millis()
                    );
                    self.paused_until = Some(now + ACCEPT_PAUSE);
                    return;
                }
            };
            let other_uid = |c: &ControlConnection| c.peer_uid != 0 && c.peer_uid != self.own_uid;
            let others = self.clients.iter().filter(|(c, _)| other_uid(c)).count();
            let refusal = if self.clients.len() >= MAX_CLIENTS {
                Some(format!(
                    "{MAX_CLIENTS} control connections are open already; try again"
                ))
            } else if other_uid(&connection) && others >= MAX_OTHER_UID_CLIENTS {
                Some(format!(
                    "{MAX_OTHER_UID_CLIENTS} control connections of other users are open already; try again"
                ))
            } else {
                None
            };
            match refusal {
                Some(text) => connection.turn_away(&Reply::Err(Refusal::Busy, text)),
                None => self.clients.push((connection, now + CLIENT_DEADLINE)),
            }
        }
    }

    /// Answers every waiting client with `reply` and closes the endpoint
    /// (this process handed over).
    pub fn close_with(self, reply: &Reply) {
        for (connection, _) in self.clients {
            connection.turn_away(reply);
        }
    }
}

/// One client connection, with the client's credentials as the kernel
/// recorded them when it connected.
#[derive(Debug)]
pub struct ControlConnection {
    socket: OwnedFd,
    /// The client's pid.
    pub peer_pid: u32,
    /// The client's uid.
    pub peer_uid: u32,
}

impl ControlConnection {
    /// Reads the request if it has arrived. `Ok(None)`: not yet.
    /// An error means the client went away or sent nonsense.
    pub fn read_request(&self) -> io::Result<Option<Result<Request, String>>> {
        let mut buf = [0u8; MAX_MESSAGE];
        match recv(&self.socket, &mut buf, RecvFlags::DONTWAIT) {
            Ok((0, _)) => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok((n, _)) => {
                let text = String::from_utf8_lossy(&buf[..n.min(buf.len())]).into_owned();
                Ok(Some(Request::parse(&text).ok_or(text)))
            }
            Err(Errno::AGAIN) | Err(Errno::INTR) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Sends the reply (best effort: a client that went away is not an
    /// error worth more than a log line).
    pub fn reply(&self, reply: &Reply) -> io::Result<()> {
        send(
            &self.socket,
            reply.to_text().as_bytes(),
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        )?;
        Ok(())
    }

    /// Replies without reading the request, and closes. What the client
    /// sent is read first and thrown away: closing a Unix socket with
    /// unread data resets the peer, whose next `recv` would then fail
    /// instead of returning the reply.
    pub fn turn_away(self, reply: &Reply) {
        let _ = self.reply(reply);
        let mut buf = [0u8; MAX_MESSAGE];
        for _ in 0..4 {
            if !matches!(recv(&self.socket, &mut buf, RecvFlags::DONTWAIT), Ok((n, _)) if n > 0) {
                break;
            }
        }
    }

    /// Refuses a reload request from a client that may not ask for one
    /// (see [`may_reload`](ControlConnection::may_reload)), logging it.
    pub fn deny_reload(&self) {
        tracing::warn!(
            client_pid = self.peer_pid,
            client_uid = self.peer_uid,
            "refused a reload request from outside the unit"
        );
        let _ = self.reply(&Reply::Err(
            Refusal::Denied,
            format!(
                "pid {} (uid {}) may not reload this service: only root, the service's own user and the unit's own processes (ExecReload=) may",
                self.peer_pid, self.peer_uid
            ),
        ));
    }

    /// What a main process does with one request, the same in fdstore-exec
    /// and the library: a status request is answered with `status()`, a bad
    /// request with its error, a reload from a client that may not ask for
    /// one is refused; the connection of an allowed reload request is handed
    /// back, to be answered when the reload ends.
    pub fn triage(
        self,
        request: Result<Request, String>,
        own_cgroup: Option<&str>,
        status: impl FnOnce() -> String,
    ) -> Option<ControlConnection> {
        match request {
            Err(text) => {
                let _ = self.reply(&Reply::not_a_request(&text));
            }
            Ok(Request::Status) => {
                let _ = self.reply(&Reply::Ok(status()));
            }
            Ok(Request::Reload) if self.may_reload(own_cgroup) => {
                tracing::info!(
                    client_pid = self.peer_pid,
                    client_uid = self.peer_uid,
                    "reload requested"
                );
                return Some(self);
            }
            Ok(Request::Reload) => self.deny_reload(),
        }
        None
    }

    /// Whether the client may ask for a reload: root, the uid this process
    /// runs as (which could signal it anyway), or a process in `own_cgroup`
    /// (the unit's cgroup).
    pub fn may_reload(&self, own_cgroup: Option<&str>) -> bool {
        if self.peer_uid == 0 || self.peer_uid == rustix::process::geteuid().as_raw() {
            return true;
        }
        match (own_cgroup, cgroup_of(self.peer_pid)) {
            (Some(own), Some(peer)) => own == peer,
            _ => false,
        }
    }
}

impl AsFd for ControlConnection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// The cgroup (v2 path) of process `pid`, from `/proc/PID/cgroup`.
pub fn cgroup_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    parse_cgroup(&text)
}

/// Extracts the unified (cgroup v2) path from `/proc/PID/cgroup` text.
fn parse_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
}

/// Why a client got no reply.
#[derive(Debug)]
pub enum ClientError {
    /// No control socket of that process exists.
    NoEndpoint(String),
    /// Sockets under the process's name answer, but none is the process's
    /// own: somebody else bound the name (or the process ended and its pid
    /// was reused). Nothing they would answer is believed.
    WrongPeer(String),
    /// Talking to the verified endpoint failed.
    Io(io::Error),
}

impl ClientError {
    /// The sysexits(3) status a client should exit with.
    pub fn exit_status(&self) -> i32 {
        match self {
            ClientError::NoEndpoint(_) | ClientError::Io(_) => sysexits::UNAVAILABLE,
            ClientError::WrongPeer(_) => sysexits::PROTOCOL,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::NoEndpoint(text) | ClientError::WrongPeer(text) => f.write_str(text),
            ClientError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

impl From<Errno> for ClientError {
    fn from(e: Errno) -> Self {
        ClientError::Io(e.into())
    }
}

/// The candidate names (without `@`) of process `pid`'s control socket in
/// `/proc/net/unix` text: listening `SOCK_SEQPACKET` sockets named
/// `@fdstore/control/PID/` and a 32-digit hex token, or the legacy
/// `@fdstore/control/PID`; at most [`MAX_CANDIDATES`].
fn parse_candidates(pid: u32, lines: impl Iterator<Item = String>) -> Vec<String> {
    let prefix = control_name_prefix(pid);
    let legacy = legacy_name(pid);
    let mut found = Vec::new();
    for line in lines {
        // Num RefCount Protocol Flags Type St Inode Path
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(flags), Some(kind), Some(path)) = (fields.get(3), fields.get(4), fields.get(7))
        else {
            continue;
        };
        let listening = u32::from_str_radix(flags, 16).is_ok_and(|f| f & 0x10000 != 0);
        if !listening || *kind != "0005" {
            continue;
        }
        let Some(name) = path.strip_prefix('@') else {
            continue;
        };
        let fits = name.strip_prefix(prefix.as_str()).is_some_and(|token| {
            token.len() == TOKEN_DIGITS && token.bytes().all(|b| b.is_ascii_hexdigit())
        });
        if (fits || name == legacy) && !found.iter().any(|f| f == name) {
            found.push(name.to_owned());
            if found.len() == MAX_CANDIDATES {
                break;
            }
        }
    }
    found
}

/// Connects to the control socket of process `pid`: every candidate name
/// from `/proc/net/unix` is tried, and only a socket whose listener is `pid`
/// itself (`SO_PEERCRED`, recorded by the kernel when it called
/// `listen(2)`) is kept. Candidates with a full backlog are tried again for
/// 5 s.
pub fn connect_verified(pid: u32) -> Result<OwnedFd, ClientError> {
    use std::io::BufRead;
    let file = std::fs::File::open("/proc/net/unix")
        .map_err(|e| ClientError::Io(io::Error::other(format!("reading /proc/net/unix: {e}"))))?;
    let names = parse_candidates(pid, io::BufReader::new(file).lines().map_while(Result::ok));
    if names.is_empty() {
        return Err(ClientError::NoEndpoint(format!(
            "pid {pid} has no fdstore control socket (no @{}… in /proc/net/unix); is it the main process of a unit run by fdstore-exec (or the fdstore library)?",
            control_name_prefix(pid)
        )));
    }
    let deadline = Instant::now() + CONNECT_PATIENCE;
    let mut impostors: Vec<String> = Vec::new();
    let mut pending = names;
    loop {
        let mut full = Vec::new();
        for name in pending {
            let socket = crate::sys::socket::unix_seqpacket()?;
            let address = SocketAddrUnix::new_abstract_name(name.as_bytes())?;
            match connect(&socket, &address) {
                Ok(()) => {}
                Err(Errno::AGAIN) => {
                    full.push(name);
                    continue;
                }
                // Gone since the listing.
                Err(_) => continue,
            }
            let peer = sockopt::socket_peercred(&socket)?;
            let peer_pid = peer.pid.as_raw_nonzero().get() as u32;
            if peer_pid == pid {
                return Ok(socket);
            }
            impostors.push(format!(
                "@{name} (listener pid {peer_pid}, uid {})",
                peer.uid.as_raw()
            ));
        }
        if full.is_empty() || Instant::now() >= deadline {
            let mut problems = impostors;
            problems.extend(
                full.iter()
                    .map(|n| format!("@{n} (its backlog stayed full)")),
            );
            return Err(if problems.is_empty() {
                ClientError::NoEndpoint(format!(
                    "pid {pid} has no fdstore control socket (the names in /proc/net/unix went away); did it exit?"
                ))
            } else {
                ClientError::WrongPeer(format!(
                    "no control socket of pid {pid} answered: {} {} not pid {pid}'s own, so no answer from {} is believed; another local user may be squatting the name (see SECURITY in fdstore(7))",
                    problems.join(", "),
                    if problems.len() == 1 { "is" } else { "are" },
                    if problems.len() == 1 { "it" } else { "them" },
                ))
            });
        }
        pending = full;
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `request` to the control socket of process `pid` (found and
/// verified by [`connect_verified`]) and waits for the reply. `interrupt`
/// is polled alongside: when it becomes readable (a signalfd, say) the wait
/// ends with `Ok(None)`.
pub fn request(
    pid: u32,
    request: Request,
    interrupt: Option<BorrowedFd<'_>>,
    timeout: Option<Duration>,
) -> Result<Option<Reply>, ClientError> {
    exchange(&connect_verified(pid)?, request, interrupt, timeout)
}

/// Sends `request` on a connected control socket and waits for the reply
/// (see [`request`]).
fn exchange(
    socket: &OwnedFd,
    request: Request,
    interrupt: Option<BorrowedFd<'_>>,
    timeout: Option<Duration>,
) -> Result<Option<Reply>, ClientError> {
    match send(socket, request.as_str().as_bytes(), SendFlags::NOSIGNAL) {
        // Turned away (busy) before the request arrived: the reply waits
        // in our queue all the same.
        Ok(_) | Err(Errno::PIPE) | Err(Errno::CONNRESET) => {}
        Err(e) => return Err(io::Error::from(e).into()),
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut resets = 0;
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            return Err(io::Error::from(io::ErrorKind::TimedOut).into());
        }
        let mut fds = vec![socket.as_fd()];
        fds.extend(interrupt);
        let readable = crate::sys::poll::wait_readable(&fds, left)?;
        if readable.get(1) == Some(&true) {
            return Ok(None);
        }
        if !readable[0] {
            continue;
        }
        let mut buf = [0u8; MAX_MESSAGE];
        let n = match recv(socket, &mut buf, RecvFlags::DONTWAIT) {
            Ok((n, _)) => n,
            Err(Errno::AGAIN) | Err(Errno::INTR) => continue,
            // A reset is reported before the data queued ahead of it (the
            // server closed with our request unread): read again once.
            Err(Errno::CONNRESET) if resets == 0 => {
                resets += 1;
                continue;
            }
            Err(e) => return Err(io::Error::from(e).into()),
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the main process closed the connection without a reply (did it exit?)",
            )
            .into());
        }
        let text = String::from_utf8_lossy(&buf[..n.min(buf.len())]);
        return Reply::parse(&text).map(Some).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected reply {text:?}"),
            )
            .into()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip() {
        for reply in [
            Reply::Ok("generation 2, pid 7: serving".into()),
            Reply::Ok(String::new()),
            Reply::Err(Refusal::Busy, "a reload is in progress".into()),
            Reply::Err(Refusal::Failed, "app exited with status 1".into()),
        ] {
            assert_eq!(Reply::parse(&reply.to_text()), Some(reply));
        }
        assert_eq!(Reply::parse("ERR nonsense x"), None);
        assert_eq!(Reply::parse("hello"), None);
    }

    #[test]
    fn requests_parse() {
        assert_eq!(Request::parse("RELOAD\n"), Some(Request::Reload));
        assert_eq!(Request::parse("STATUS"), Some(Request::Status));
        assert_eq!(Request::parse("reload"), None);
    }

    #[test]
    fn cgroup_path_is_the_unified_line() {
        let text = "1:name=systemd:/legacy\n0::/user.slice/app.service\n";
        assert_eq!(
            parse_cgroup(text).as_deref(),
            Some("/user.slice/app.service")
        );
        assert_eq!(parse_cgroup("1:cpu:/x\n"), None);
    }

    #[test]
    fn candidates_are_listening_seqpacket_sockets_with_a_token() {
        let token = "0123456789abcdef0123456789abcdef";
        let lines = [
            "Num       RefCount Protocol Flags    Type St Inode Path".to_owned(),
            format!("0000000000000000: 00000002 00000000 00010000 0005 01 100 @fdstore/control/42/{token}"),
            // Same name again (two lines for one socket never happen, but
            // a duplicate is tried once).
            format!("0000000000000000: 00000002 00000000 00010000 0005 01 101 @fdstore/control/42/{token}"),
            // Not listening, wrong type, wrong pid, short token, a path.
            format!("0000000000000000: 00000002 00000000 00000000 0005 03 102 @fdstore/control/42/{token}"),
            format!("0000000000000000: 00000002 00000000 00010000 0001 01 103 @fdstore/control/42/{token}"),
            format!("0000000000000000: 00000002 00000000 00010000 0005 01 104 @fdstore/control/420/{token}"),
            "0000000000000000: 00000002 00000000 00010000 0005 01 105 @fdstore/control/42/abc".to_owned(),
            format!("0000000000000000: 00000002 00000000 00010000 0005 01 106 /run/fdstore/control/42/{token}"),
            // The legacy name.
            "0000000000000000: 00000002 00000000 00010000 0005 01 107 @fdstore/control/42".to_owned(),
            "0000000000000000: 00000002 00000000 00010000 0005 01 108".to_owned(),
        ];
        assert_eq!(
            parse_candidates(42, lines.into_iter()),
            vec![
                format!("fdstore/control/42/{token}"),
                "fdstore/control/42".to_owned()
            ]
        );
        let many =
            (0..5000).map(|i| format!("0: 2 0 00010000 0005 01 {i} @fdstore/control/42/{i:032x}"));
        assert_eq!(parse_candidates(42, many).len(), MAX_CANDIDATES);
    }

    #[test]
    fn two_endpoints_of_one_process_have_different_names() {
        let a = ControlEndpoint::bind().unwrap();
        let b = ControlEndpoint::bind().unwrap();
        assert_ne!(a.name(), b.name());
        assert!(a
            .name()
            .starts_with(&control_name_prefix(std::process::id())));
    }

    /// A connection to `endpoint` (tests in one process bind several
    /// endpoints, all under the same pid, so connect_verified could pick
    /// another test's).
    fn connect_to(endpoint: &ControlEndpoint) -> OwnedFd {
        let socket = crate::sys::socket::unix_seqpacket().unwrap();
        let address = SocketAddrUnix::new_abstract_name(endpoint.name().as_bytes()).unwrap();
        connect(&socket, &address).unwrap();
        socket
    }

    #[test]
    fn the_client_finds_and_verifies_an_endpoint_of_its_own_process() {
        let _endpoint = ControlEndpoint::bind().unwrap();
        let socket = connect_verified(std::process::id()).unwrap();
        let peer = sockopt::socket_peercred(&socket).unwrap();
        assert_eq!(peer.pid.as_raw_nonzero().get() as u32, std::process::id());
        // pid 1 is not this test; if it has no endpoint, that is said.
        match connect_verified(1) {
            Err(ClientError::NoEndpoint(text)) => assert!(
                text.contains("pid 1 has no fdstore control socket"),
                "{text}"
            ),
            Err(other) => panic!("{other}"),
            Ok(_) => {}
        }
    }

    /// Serves `endpoint` until `n` requests arrived.
    fn requests(
        endpoint: &mut ControlEndpoint,
        n: usize,
    ) -> Vec<(ControlConnection, Result<Request, String>)> {
        let mut got = Vec::new();
        while got.len() < n {
            got.extend(endpoint.service(Instant::now()));
            std::thread::sleep(Duration::from_millis(5));
        }
        got
    }

    #[test]
    fn status_round_trip_over_a_real_socket() {
        let mut endpoint = ControlEndpoint::bind().unwrap();
        let pid = std::process::id();
        let socket = connect_to(&endpoint);
        let client = std::thread::spawn(move || {
            exchange(&socket, Request::Status, None, Some(Duration::from_secs(5)))
        });
        let (connection, request) = requests(&mut endpoint, 1).pop().unwrap();
        assert_eq!(connection.peer_pid, pid);
        assert!(connection.may_reload(cgroup_of(pid).as_deref()));
        assert_eq!(request, Ok(Request::Status));
        connection.reply(&Reply::Ok("generation 1".into())).unwrap();
        assert_eq!(
            client.join().unwrap().unwrap(),
            Some(Reply::Ok("generation 1".into()))
        );
    }

    #[test]
    fn the_client_over_the_bound_gets_err_busy_not_a_reset() {
        let mut endpoint = ControlEndpoint::bind().unwrap();
        // 16 silent clients (this process: root or the endpoint's own uid).
        let silent: Vec<OwnedFd> = (0..MAX_CLIENTS).map(|_| connect_to(&endpoint)).collect();
        while endpoint.clients.len() < MAX_CLIENTS {
            assert!(endpoint.service(Instant::now()).is_empty());
        }
        let socket = connect_to(&endpoint);
        let client = std::thread::spawn(move || {
            exchange(&socket, Request::Status, None, Some(Duration::from_secs(5)))
        });
        let reply = loop {
            assert!(endpoint.service(Instant::now()).is_empty());
            if client.is_finished() {
                break client.join().unwrap().unwrap();
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        match reply {
            Some(Reply::Err(Refusal::Busy, text)) => {
                assert!(text.contains("16 control connections"), "{text}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(endpoint.clients.len(), MAX_CLIENTS);
        drop(silent);
    }

    #[test]
    fn a_client_that_stays_silent_past_its_deadline_is_dropped() {
        let mut endpoint = ControlEndpoint::bind().unwrap();
        let _silent = connect_to(&endpoint);
        while endpoint.clients.is_empty() {
            endpoint.service(Instant::now());
        }
        let deadline = endpoint.next_wake().unwrap();
        endpoint.service(deadline - Duration::from_millis(1));
        assert_eq!(endpoint.clients.len(), 1);
        endpoint.service(deadline);
        assert!(endpoint.clients.is_empty());
        assert_eq!(endpoint.next_wake(), None);
    }
}
