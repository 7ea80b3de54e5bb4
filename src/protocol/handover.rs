//! The private channel between two generations, and the environment that
//! describes it to the new one (started by `fdstore-exec`'s `exec::spawn`
//! or by the library's upgrader).
//!
//! The outgoing main process (the *predecessor*) starts the next generation
//! as its own parent's child (one `clone` with `CLONE_PARENT`,
//! `sys::spawn`), so the new process is the service manager's child from
//! the start, before anyone tells the manager about it: when it later
//! becomes the main process, the manager supervises it as its own child.
//!
//! The new process finds the listeners at descriptors 3, 4, ... under the
//! usual `LISTEN_FDS`/`LISTEN_FDNAMES`/`LISTEN_PID` (and `LISTEN_PIDFDID`)
//! protocol, and the channel
//! right after them, described by [`HANDOVER_ENV`]. The channel is a
//! `SOCK_SEQPACKET` socket pair carrying one text message per packet:
//!
//! | direction | message | meaning |
//! |---|---|---|
//! | new → old | `HELLO PID` | the new process runs as PID |
//! | new → old | `READY` | its program is ready |
//! | new → old | `FAILED REASON` | its program failed; it is going away |
//! | old → new | `MAIN MILLISECONDS` | `MAINPID=` was sent and processed; the hand-over has taken this long |
//! | new → old | `DONE` | it sent `READY=1` as the main process |
//! | newer → old | `END` | a draining generation must end now, to make room within the bound on generations alive (see [`GenerationBound`](super::GenerationBound)) |
//! | new → old | `PAUSE` | stop your program for a probe of the accept proof (only where [`PAUSE_ENV`] says the old one takes it) |
//! | old → new | `PAUSED MILLISECONDS` | it is stopped (`SIGSTOP` to its process group) for at most this long; `PAUSED 0`: it is not |
//! | new → old | `RESUME` | the probe is over: continue it (`SIGCONT`) |
//!
//! Either side closing the channel early aborts the hand-over: the new
//! generation stops its program and exits, the old one keeps serving.
//!
//! A pause is for programs that wait with `EPOLLEXCLUSIVE` (nginx does):
//! the kernel wakes one waiter per connection, the first registered that is
//! waiting, and that is the idle old generation, registered first, every
//! time; a stopped process is not waiting, so the wake-up passes to the new
//! one. It is also for a new program that lost several probes to the old
//! one, both woken for each connection, the old one quicker to accept. The
//! old side bounds every pause ([`PAUSE_MAX`], [`PAUSES_MAX`],
//! [`PAUSE_TOTAL`]) and ends it when the new generation is ready, fails or
//! goes away, whatever the new side says.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::{
    recv, send, socketpair, AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType,
};

use crate::listen::LISTEN_FDS_START;

/// The environment variable that tells a new fdstore-exec it is taking over:
/// `fd=N,generation=G,older=G1.G2...,managed=NAME:NAME...` (`older=` may be
/// missing: a previous version of fdstore-exec did not pass it).
pub const HANDOVER_ENV: &str = "FDSTORE_EXEC_HANDOVER";

/// Set (to `1`) beside [`HANDOVER_ENV`] by an old generation that takes
/// [`Message::Pause`]. A separate variable, so that an older fdstore-exec,
/// which would end the hand-over at a message it does not know, is never
/// sent one, and one that does not know the variable ignores it.
pub const PAUSE_ENV: &str = "FDSTORE_EXEC_PAUSE";

/// The longest one pause of the old generation's program lasts (see
/// [`Message::Pause`]): the old generation continues it then, whatever the
/// new one says.
pub const PAUSE_MAX: std::time::Duration = std::time::Duration::from_millis(50);
/// The most pauses one new generation gets.
pub const PAUSES_MAX: u32 = 20;
/// The most time the old generation's program spends paused for one new
/// generation, all pauses together.
pub const PAUSE_TOTAL: std::time::Duration = std::time::Duration::from_millis(500);

/// A message on the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The new process runs as this pid.
    Hello(u32),
    /// The new generation's program is ready.
    Ready,
    /// The new generation failed, for this reason.
    Failed(String),
    /// The new process is now the main process; the hand-over has taken this
    /// many milliseconds so far.
    Main(u64),
    /// The new main process has told the manager it is ready.
    Done,
    /// To a draining generation: end now (the bound on generations alive
    /// needs room for a new one).
    End,
    /// To the old generation: stop your program for a probe.
    Pause,
    /// To the new generation: the old program is stopped for at most this
    /// many milliseconds (0: it is not).
    Paused(u64),
    /// To the old generation: continue your program.
    Resume,
}

impl Message {
    pub(crate) fn to_text(&self) -> String {
        match self {
            Message::Hello(pid) => format!("HELLO {pid}"),
            Message::Ready => "READY".into(),
            Message::Failed(reason) => format!("FAILED {reason}"),
            Message::Main(ms) => format!("MAIN {ms}"),
            Message::Done => "DONE".into(),
            Message::End => "END".into(),
            Message::Pause => "PAUSE".into(),
            Message::Paused(ms) => format!("PAUSED {ms}"),
            Message::Resume => "RESUME".into(),
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Message> {
        let (word, rest) = text.split_once(' ').unwrap_or((text, ""));
        match word {
            "HELLO" => rest.parse().ok().map(Message::Hello),
            "READY" => Some(Message::Ready),
            "FAILED" => Some(Message::Failed(rest.to_owned())),
            "MAIN" => rest.parse().ok().map(Message::Main),
            "DONE" => Some(Message::Done),
            "END" => Some(Message::End),
            "PAUSE" => Some(Message::Pause),
            "PAUSED" => rest.parse().ok().map(Message::Paused),
            "RESUME" => Some(Message::Resume),
            _ => None,
        }
    }
}

/// One end of the channel.
#[derive(Debug)]
pub struct Channel {
    socket: OwnedFd,
}

impl Channel {
    /// A connected pair, both ends close-on-exec.
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        Ok((Channel { socket: a }, Channel { socket: b }))
    }

    /// Another descriptor for the same end (close-on-exec).
    pub fn try_clone(&self) -> io::Result<Channel> {
        Ok(Channel {
            socket: self.socket.try_clone()?,
        })
    }

    /// Wraps an inherited descriptor.
    pub fn from_fd(socket: OwnedFd) -> Channel {
        Channel { socket }
    }

    /// Sends a message.
    pub fn send(&self, message: &Message) -> io::Result<()> {
        send(
            &self.socket,
            message.to_text().as_bytes(),
            SendFlags::NOSIGNAL,
        )?;
        Ok(())
    }

    /// Receives a pending message: `Ok(Some(None))` when the other side
    /// closed the channel, `Ok(None)` when nothing is pending.
    pub fn recv(&self) -> io::Result<Option<Option<Message>>> {
        let mut buf = [0u8; 4096];
        match recv(&self.socket, &mut buf, RecvFlags::DONTWAIT) {
            Ok((0, _)) => Ok(Some(None)),
            Ok((n, _)) => {
                let text = String::from_utf8_lossy(&buf[..n.min(buf.len())]);
                Message::parse(&text).map(|m| Some(Some(m))).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected message on the hand-over channel: {text:?}"),
                    )
                })
            }
            Err(Errno::AGAIN) | Err(Errno::INTR) => Ok(None),
            Err(Errno::CONNRESET) => Ok(Some(None)),
            Err(e) => Err(e.into()),
        }
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// Reads what newer generations sent on `link`, the channel a drained
/// generation keeps to the one it handed over to: whether one said
/// [`Message::End`] (a newer generation needs room within the bound on
/// generations: this one must end now). Once every newer generation is gone
/// (end of file, or the channel failed) nobody can ask any more: `link`
/// becomes `None`. One rule for fdstore-exec and the library.
pub(crate) fn told_to_end(link: &mut Option<Channel>) -> bool {
    loop {
        let Some(channel) = link else { return false };
        match channel.recv() {
            Ok(None) => return false,
            Ok(Some(Some(Message::End))) => return true,
            Ok(Some(Some(other))) => {
                tracing::debug!(?other, "unexpected message from a newer generation")
            }
            Ok(Some(None)) | Err(_) => *link = None,
        }
    }
}

/// What a new generation learns from [`HANDOVER_ENV`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inheritance {
    /// The channel's descriptor number.
    pub fd: i32,
    /// The generation number of the new process.
    pub generation: u64,
    /// The older generations still draining, oldest first, the predecessor
    /// last: their channels follow the hand-over channel, at `fd + 1`, ...
    /// (see [`GenerationBound`](super::GenerationBound)).
    pub older: Vec<u64>,
    /// Names of listeners the predecessor created from specs (as opposed to
    /// those systemd passed from socket units).
    pub managed: Vec<String>,
}

impl Inheritance {
    /// Formats the variable's value.
    pub fn to_env(&self) -> String {
        let older: Vec<String> = self.older.iter().map(u64::to_string).collect();
        format!(
            "fd={},generation={},older={},managed={}",
            self.fd,
            self.generation,
            older.join("."),
            self.managed.join(":")
        )
    }

    /// Parses the variable's value.
    pub fn parse(value: &str) -> Result<Inheritance, String> {
        let bad = || {
            format!("{HANDOVER_ENV}={value:?} is malformed (it is internal to fdstore-exec; do not set it)")
        };
        let rest = value.strip_prefix("fd=").ok_or_else(bad)?;
        let (fd, rest) = rest.split_once(',').ok_or_else(bad)?;
        let rest = rest.strip_prefix("generation=").ok_or_else(bad)?;
        let (generation, rest) = rest.split_once(',').ok_or_else(bad)?;
        let (older, rest) = match rest.strip_prefix("older=") {
            Some(rest) => rest.split_once(',').ok_or_else(bad)?,
            None => ("", rest),
        };
        let managed = rest.strip_prefix("managed=").ok_or_else(bad)?;
        let older: Vec<u64> = older
            .split('.')
            .filter(|g| !g.is_empty())
            .map(|g| g.parse().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        let fd: i32 = fd.parse().map_err(|_| bad())?;
        if fd < LISTEN_FDS_START {
            return Err(bad());
        }
        Ok(Inheritance {
            fd,
            generation: generation.parse().map_err(|_| bad())?,
            older,
            managed: managed
                .split(':')
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }
}

/// Makes the ready new generation `pid` the unit's main process: checks
/// that its parent is the service manager (our own parent), sends the
/// main-PID change and waits (up to `barrier_timeout`, a warning if longer)
/// for the manager to process it. The error says why it cannot be.
///
/// The manager supervises a main process as its own child only if it is one
/// when the change arrives; the new process was started as our parent's
/// child, so anything else means our parent is not the manager.
///
/// The new process is named by a pidfd opened before the checks, so that
/// what the manager is told is the process that was checked:
/// - where the manager says it takes pidfds ([`manager_takes_pidfds`]):
///   `MAINPIDFD=1` with the pidfd attached, plus `MAINPID=` and
///   `MAINPIDFDID=`;
/// - elsewhere `MAINPID=` and `MAINPIDFDID=`: systemd 257 (which takes
///   `MAINPIDFD=1` but does not say so) refuses the change if the id names
///   another process, and 252 and 254 ignore it; a pidfd sent to those would
///   make them log "Got extra auxiliary fds" at every reload.
pub fn make_main_process(
    notifier: &crate::Notifier,
    pid: u32,
    barrier_timeout: std::time::Duration,
) -> Result<(), String> {
    send_main_pid(notifier, pid)?;
    if let Err(e) = notifier.barrier(barrier_timeout) {
        tracing::warn!("waiting for the manager to process MAINPID={pid}: {e}");
    }
    Ok(())
}

/// The checks and the main-PID change of [`make_main_process`], without
/// the wait for the manager: for an event loop, which follows up with
/// its own wait for the manager (`BARRIER=1`).
pub fn send_main_pid(notifier: &crate::Notifier, pid: u32) -> Result<(), String> {
    let exited =
        || format!("the new generation (pid {pid}) exited right after reporting readiness");
    // Kernels before 5.3 have no pidfds: then the pid alone.
    let pidfd = match crate::sys::pidfd::open(pid) {
        Ok(fd) => Some(fd),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Err(exited()),
        Err(_) => None,
    };
    let manager = std::os::unix::process::parent_id();
    match parent_of(pid) {
        Some(parent) if parent == manager => {}
        Some(parent) => {
            return Err(format!(
                "the new generation (pid {pid}) has parent {parent}, not the service manager (pid {manager}); the manager would not supervise it as its own child"
            ));
        }
        None => return Err(exited()),
    }
    let pidfd = pidfd.as_ref().map(AsFd::as_fd);
    // The parent checked above was that of the process the pidfd names.
    if pidfd.is_some_and(crate::sys::pidfd::has_exited) {
        return Err(exited());
    }
    let sent = match pidfd {
        Some(pidfd) if manager_takes_pidfds() => {
            tracing::debug!(pid, "sending MAINPIDFD=1 with the new main process's pidfd");
            notifier.main_pid_fd(pid, pidfd)
        }
        _ => {
            let id = pidfd.and_then(crate::sys::pidfd::pidfd_id);
            let mut fields = vec![crate::Notification::MainPid(pid)];
            fields.extend(id.map(crate::Notification::MainPidFdId));
            notifier.notify(&fields)
        }
    };
    sent.map_err(|e| format!("sending MAINPID={pid}: {e}"))?;
    Ok(())
}

/// Whether the service manager says it takes a main process's pidfd
/// (`MAINPIDFD=1`): it exports `$MANAGERPIDFDID` (systemd 258+), or it
/// passed this process's listeners with `LISTEN_PIDFDID` (259+). Decided
/// from what the manager tells the service, not from a version number
/// (distributions backport features). systemd 257 takes `MAINPIDFD=1` but
/// tells nothing; it gets the `MAINPIDFDID=` check instead.
pub fn manager_takes_pidfds() -> bool {
    std::env::var_os("MANAGERPIDFDID").is_some() || crate::listen::pidfd_id_given()
}

/// The parent pid of `pid`, from `/proc/PID/stat`.
pub fn parent_of(pid: u32) -> Option<u32> {
    crate::sys::proc::stat(pid).map(|s| s.ppid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for m in [
            Message::Hello(42),
            Message::Ready,
            Message::Failed("app exited with status 1 before ready".into()),
            Message::Main(17),
            Message::Done,
            Message::End,
            Message::Pause,
            Message::Paused(50),
            Message::Paused(0),
            Message::Resume,
        ] {
            assert_eq!(Message::parse(&m.to_text()), Some(m));
        }
        assert_eq!(Message::parse("HELLO x"), None);
        assert_eq!(Message::parse("PAUSED"), None);
        assert_eq!(Message::parse("PAUSED -1"), None);
        assert_eq!(Message::parse("WHAT"), None);
    }

    #[test]
    fn inheritance_round_trips() {
        let i = Inheritance {
            fd: 5,
            generation: 5,
            older: vec![2, 4],
            managed: vec!["web".into(), "api v2".into()],
        };
        assert_eq!(Inheritance::parse(&i.to_env()), Ok(i));
        let none = Inheritance {
            fd: 3,
            generation: 2,
            older: vec![],
            managed: vec![],
        };
        assert_eq!(Inheritance::parse(&none.to_env()), Ok(none));
        // As a version without the bound on generations wrote it.
        assert_eq!(
            Inheritance::parse("fd=4,generation=2,managed=web"),
            Ok(Inheritance {
                fd: 4,
                generation: 2,
                older: vec![],
                managed: vec!["web".into()],
            })
        );
    }

    #[test]
    fn inheritance_rejects_garbage() {
        for bad in [
            "",
            "fd=1,generation=2,managed=",
            "fd=x,generation=2,managed=",
            "fd=3,generation=2,older=1.x,managed=",
            "fd=3,generation=2,older=1",
            "generation=2",
        ] {
            let e = Inheritance::parse(bad).unwrap_err();
            assert!(e.contains("do not set it"), "{e}");
        }
    }

    #[test]
    fn a_drained_generation_hears_end_and_forgets_a_closed_link() {
        let (old, newer) = Channel::pair().unwrap();
        let mut link = Some(old);
        assert!(!told_to_end(&mut link));
        newer.send(&Message::Done).unwrap();
        newer.send(&Message::End).unwrap();
        assert!(told_to_end(&mut link));
        assert!(link.is_some());
        drop(newer);
        assert!(!told_to_end(&mut link));
        assert!(link.is_none());
    }

    #[test]
    fn channel_carries_messages_and_end_of_file() {
        let (a, b) = Channel::pair().unwrap();
        assert_eq!(b.recv().unwrap(), None);
        a.send(&Message::Hello(7)).unwrap();
        assert_eq!(b.recv().unwrap(), Some(Some(Message::Hello(7))));
        drop(a);
        assert_eq!(b.recv().unwrap(), Some(None));
    }

    #[test]
    fn parent_of_self_is_our_parent() {
        assert_eq!(
            parent_of(std::process::id()),
            Some(std::os::unix::process::parent_id())
        );
    }
}
