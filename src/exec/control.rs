//! The control socket: how `fdstore-exec reload` and `fdstore-exec status`
//! reach the unit's main process.
//!
//! The main process listens on the abstract Unix `SOCK_SEQPACKET` socket
//! `@fdstore/control/PID` (PID: its own pid, which systemd gives
//! `ExecReload=` as `$MAINPID`). Every message is one packet of UTF-8 text.
//! A client sends one request, `RELOAD` or `STATUS`, and receives one reply,
//! `OK TEXT` or `ERR KIND TEXT`, where KIND is `busy`, `denied`, `failed`, `stopping`,
//! `unsupported` or `invalid`. Only root and processes in the main process's
//! own cgroup (the unit's processes, such as `ExecReload=`) may send
//! `RELOAD`; anybody who can reach the socket may ask for `STATUS`.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{
    accept_with, bind, connect, listen, recv, send, socket_with, sockopt, AddressFamily, RecvFlags,
    SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

/// The largest request or reply, in bytes.
pub const MAX_MESSAGE: usize = 4096;

/// The abstract socket name (without the leading `@`) of process `pid`'s
/// control socket.
pub fn control_socket_name(pid: u32) -> String {
    format!("fdstore/control/{pid}")
}

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
        [
            Refusal::Busy,
            Refusal::Denied,
            Refusal::Failed,
            Refusal::Stopping,
            Refusal::Unsupported,
            Refusal::Invalid,
        ]
        .into_iter()
        .find(|r| r.as_str() == text)
    }

    /// The sysexits(3) status a client should exit with.
    pub fn exit_status(self) -> i32 {
        match self {
            Refusal::Busy => 75,   // EX_TEMPFAIL
            Refusal::Denied => 77, // EX_NOPERM
            Refusal::Failed => 69, // EX_UNAVAILABLE
            Refusal::Stopping => 0,
            Refusal::Unsupported => 78, // EX_CONFIG
            Refusal::Invalid => 76,     // EX_PROTOCOL
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
}

impl ControlServer {
    /// Listens on `@fdstore/control/OWN-PID`, close-on-exec and non-blocking.
    pub fn bind() -> io::Result<ControlServer> {
        let socket = socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        let name = control_socket_name(std::process::id());
        bind(
            &socket,
            &SocketAddrUnix::new_abstract_name(name.as_bytes())?,
        )?;
        listen(&socket, 16)?;
        Ok(ControlServer { socket })
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
            SendFlags::NOSIGNAL,
        )?;
        Ok(())
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
                "pid {} (uid {}) may not reload this service: only root and the unit's own processes (ExecReload=) may",
                self.peer_pid, self.peer_uid
            ),
        ));
    }

    /// Whether the client may ask for a reload: root, or a process in
    /// `own_cgroup` (the unit's cgroup).
    pub fn may_reload(&self, own_cgroup: Option<&str>) -> bool {
        if self.peer_uid == 0 {
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

/// Sends `request` to the control socket of process `pid` and waits for the
/// reply. `interrupt` is polled alongside: when it becomes readable (a
/// signalfd, say) the wait ends with `Ok(None)`.
pub fn request(
    pid: u32,
    request: Request,
    interrupt: Option<BorrowedFd<'_>>,
    timeout: Option<Duration>,
) -> io::Result<Option<Reply>> {
    let socket = socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let name = control_socket_name(pid);
    connect(
        &socket,
        &SocketAddrUnix::new_abstract_name(name.as_bytes())?,
    )?;
    send(&socket, request.as_str().as_bytes(), SendFlags::NOSIGNAL)?;
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        use rustix::event::{poll, PollFd, PollFlags};
        let mut fds = vec![PollFd::new(&socket, PollFlags::IN)];
        if let Some(fd) = interrupt.as_ref() {
            fds.push(PollFd::new(fd, PollFlags::IN));
        }
        let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
        if left == Some(Duration::ZERO) {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let left = left.and_then(|l| rustix::time::Timespec::try_from(l).ok());
        match poll(&mut fds, left.as_ref()) {
            Ok(_) => {}
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        if fds.get(1).is_some_and(|f| !f.revents().is_empty()) {
            return Ok(None);
        }
        if fds[0].revents().is_empty() {
            continue;
        }
        let mut buf = [0u8; MAX_MESSAGE];
        let (n, _) = recv(&socket, &mut buf, RecvFlags::empty())?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the main process closed the connection without a reply (did it exit?)",
            ));
        }
        let text = String::from_utf8_lossy(&buf[..n.min(buf.len())]);
        return Reply::parse(&text).map(Some).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected reply {text:?}"),
            )
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
    fn status_round_trip_over_a_real_socket() {
        let server = ControlServer::bind().unwrap();
        let pid = std::process::id();
        let client = std::thread::spawn(move || {
            request(pid, Request::Status, None, Some(Duration::from_secs(5)))
        });
        let connection = loop {
            if let Some(c) = server.accept().unwrap() {
                break c;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(connection.peer_pid, pid);
        assert!(connection.may_reload(cgroup_of(pid).as_deref()));
        let request = loop {
            if let Some(r) = connection.read_request().unwrap() {
                break r;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(request, Ok(Request::Status));
        connection.reply(&Reply::Ok("generation 1".into())).unwrap();
        assert_eq!(
            client.join().unwrap().unwrap(),
            Some(Reply::Ok("generation 1".into()))
        );
    }
}
