//! Telling the service manager about state changes (`sd_notify(3)`).
//!
//! Messages are datagrams of `FIELD=value` lines sent to the socket named by
//! `$NOTIFY_SOCKET`, which may be a file-system path (`/run/...`) or an abstract
//! address (`@name`). Descriptors for the fd store travel as `SCM_RIGHTS`.
//!
//! Outside systemd (`$NOTIFY_SOCKET` unset) every call succeeds and reports
//! [`Delivery::NoManager`], so the same program runs anywhere.
//!
//! What a successful send does **not** prove: systemd checks `NotifyAccess=`
//! after the message is received, and drops messages from processes that may
//! not speak (with `NotifyAccess=main`, anything but the main process), and it
//! drops `FDSTORE=1` descriptors when `FileDescriptorStoreMax=` is 0 or the
//! store is full. Neither is reported back. [`Notifier::barrier`] proves only
//! that earlier messages were *processed*. systemd 254 and later export
//! `$FDSTORE` with the store's size, which [`Notifier::fd_store_max`] reads.

use std::fmt;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::{
    sendmsg_addr, socket_with, AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
    SocketAddrUnix, SocketFlags, SocketType,
};
use rustix::pipe::{pipe_with, PipeFlags};
use rustix::time::{clock_gettime, ClockId};

use crate::name::check_fd_name;

/// The most descriptors one message can carry (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS_PER_MESSAGE: usize = 253;

/// The watchdog interval the manager sets for the main process
/// (`WatchdogSec=`), in microseconds.
pub(crate) const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// The pid the watchdog interval is meant for (`sd_watchdog_enabled()`
/// ignores `WATCHDOG_USEC` in any other process).
pub(crate) const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// One state change or request for the service manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notification<'a> {
    /// `READY=1`: start-up (or a reload) is complete.
    Ready,
    /// `RELOADING=1` with `MONOTONIC_USEC=` set to now, as `Type=notify-reload`
    /// (systemd 253+) requires; older managers ignore the timestamp.
    Reloading,
    /// `STOPPING=1`: the service is shutting down. Never send it from a
    /// generation that is handing over: systemd may stop the unit.
    Stopping,
    /// `STATUS=`: a single line of free text for `systemctl status`.
    Status(&'a str),
    /// `ERRNO=`: the error the service failed with.
    Errno(i32),
    /// `MAINPID=`: another process becomes the unit's main process.
    MainPid(u32),
    /// `MAINPIDFDID=` (systemd 257+): the inode number of a pidfd of the
    /// process `MAINPID=` names; the manager refuses the change when it
    /// names another process (a recycled pid). Older managers ignore it.
    MainPidFdId(u64),
    /// `WATCHDOG=1`: keep-alive for `WatchdogSec=`.
    Watchdog,
    /// `WATCHDOG=trigger`: ask the manager to treat the service as hung.
    WatchdogTrigger,
    /// `WATCHDOG_USEC=`: change the watchdog interval.
    WatchdogUsec(u64),
    /// `EXTEND_TIMEOUT_USEC=` (systemd 236+): ask for more time for the
    /// current start, reload or stop.
    ExtendTimeout(Duration),
    /// `NOTIFYACCESS=` (systemd 254+): change `NotifyAccess=` at run time.
    NotifyAccess(&'a str),
}

impl Notification<'_> {
    fn append_to(&self, out: &mut String) -> Result<(), NotifyError> {
        use std::fmt::Write as _;
        let line = |out: &mut String, field: &'static str, value: &str| {
            if value.contains('\n') || value.contains('\0') {
                return Err(NotifyError::BadField {
                    field,
                    value: value.to_owned(),
                    problem: "a value must be one line without NUL bytes",
                });
            }
            let _ = writeln!(out, "{field}={value}");
            Ok(())
        };
        match *self {
            Notification::Ready => line(out, "READY", "1"),
            Notification::Reloading => {
                line(out, "RELOADING", "1")?;
                line(out, "MONOTONIC_USEC", &monotonic_usec().to_string())
            }
            Notification::Stopping => line(out, "STOPPING", "1"),
            Notification::Status(text) => line(out, "STATUS", text),
            Notification::Errno(errno) => line(out, "ERRNO", &errno.to_string()),
            Notification::MainPid(pid) => {
                if pid <= 1 {
                    return Err(NotifyError::BadField {
                        field: "MAINPID",
                        value: pid.to_string(),
                        problem: "the manager ignores pid 0 and 1",
                    });
                }
                line(out, "MAINPID", &pid.to_string())
            }
            Notification::MainPidFdId(id) => line(out, "MAINPIDFDID", &id.to_string()),
            Notification::Watchdog => line(out, "WATCHDOG", "1"),
            Notification::WatchdogTrigger => line(out, "WATCHDOG", "trigger"),
            Notification::WatchdogUsec(usec) => line(out, "WATCHDOG_USEC", &usec.to_string()),
            Notification::ExtendTimeout(d) => {
                line(out, "EXTEND_TIMEOUT_USEC", &d.as_micros().to_string())
            }
            Notification::NotifyAccess(value) => line(out, "NOTIFYACCESS", value),
        }
    }
}

/// Formats notifications as one message.
pub(crate) fn format_message(messages: &[Notification<'_>]) -> Result<String, NotifyError> {
    let mut out = String::new();
    for message in messages {
        message.append_to(&mut out)?;
    }
    Ok(out)
}

/// What became of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Sent to the manager's socket (which does not mean it was accepted: see
    /// the module documentation).
    Sent,
    /// Not sent: `$NOTIFY_SOCKET` is not set, so no manager is listening.
    NoManager,
}

/// Whether systemd watches a stored descriptor for hang-up (`FDPOLL=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FdPoll {
    /// The default: systemd drops the descriptor from the store when it reports
    /// `EPOLLHUP` or `EPOLLERR`. Right for listening sockets.
    #[default]
    Watch,
    /// `FDPOLL=0` (systemd 246+): keep the descriptor even when it reports a
    /// hang-up, for connected sockets and pipes that may do so.
    DoNotWatch,
}

/// An error while notifying the manager.
#[derive(Debug)]
#[non_exhaustive]
pub enum NotifyError {
    /// `$NOTIFY_SOCKET` holds an address this library cannot send to.
    BadSocketAddress {
        /// The address.
        value: String,
        /// Why.
        problem: String,
    },
    /// A field's value cannot be sent.
    BadField {
        /// The field.
        field: &'static str,
        /// The value.
        value: String,
        /// Why.
        problem: &'static str,
    },
    /// A descriptor name breaks systemd's rules.
    BadFdName {
        /// The name.
        name: String,
        /// Why.
        problem: String,
    },
    /// The manager told us (`$FDSTORE=0`, systemd 254+) that the unit has no fd
    /// store.
    FdStoreDisabled,
    /// The manager told us (`$FDSTORE`, systemd 254+) that the store is smaller
    /// than the number of descriptors offered.
    FdStoreTooSmall {
        /// `FileDescriptorStoreMax=` of the unit.
        max: usize,
        /// How many descriptors were offered at once.
        offered: usize,
    },
    /// The manager did not close the barrier descriptor in time.
    BarrierTimeout(Duration),
    /// A system call failed.
    Io {
        /// What was being done.
        action: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

impl fmt::Display for NotifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotifyError::BadSocketAddress { value, problem } => {
                write!(f, "NOTIFY_SOCKET={value:?} cannot be used: {problem}")
            }
            NotifyError::BadField {
                field,
                value,
                problem,
            } => write!(f, "cannot send {field}={value:?}: {problem}"),
            NotifyError::BadFdName { name, problem } => {
                write!(f, "cannot store descriptors under the name {name:?}: {problem}")
            }
            NotifyError::FdStoreDisabled => f.write_str(
                "the unit has no file-descriptor store ($FDSTORE=0): set FileDescriptorStoreMax= in its [Service] section",
            ),
            NotifyError::FdStoreTooSmall { max, offered } => write!(
                f,
                "the unit's file-descriptor store holds {max} descriptors but {offered} were offered: raise FileDescriptorStoreMax="
            ),
            NotifyError::BarrierTimeout(timeout) => write!(
                f,
                "the service manager did not confirm the notification barrier within {timeout:?}"
            ),
            NotifyError::Io { action, source } => write!(f, "{action}: {source}"),
        }
    }
}

impl std::error::Error for NotifyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NotifyError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_error(action: &'static str) -> impl FnOnce(Errno) -> NotifyError {
    move |e| NotifyError::Io {
        action,
        source: e.into(),
    }
}

/// [`check_fd_name`], as a [`NotifyError::BadFdName`].
fn checked_fd_name(name: &str) -> Result<(), NotifyError> {
    check_fd_name(name).map_err(|problem| NotifyError::BadFdName {
        name: name.to_owned(),
        problem,
    })
}

/// Parses a `$NOTIFY_SOCKET` value: an absolute path or `@abstract-name`.
pub(crate) fn parse_notify_address(value: &str) -> Result<SocketAddrUnix, NotifyError> {
    let bad = |problem: String| NotifyError::BadSocketAddress {
        value: value.to_owned(),
        problem,
    };
    if let Some(name) = value.strip_prefix('@') {
        if name.is_empty() {
            return Err(bad("an abstract address needs a name after '@'".into()));
        }
        return SocketAddrUnix::new_abstract_name(name.as_bytes())
            .map_err(|_| bad("the abstract name is longer than 107 bytes".into()));
    }
    if value.starts_with('/') {
        return SocketAddrUnix::new(value)
            .map_err(|_| bad("the path is longer than 107 bytes or holds a NUL byte".into()));
    }
    if value.starts_with("vsock") {
        return Err(bad(
            "AF_VSOCK notification sockets (systemd 253+, for virtual machines) are not supported; run the service under a Unix-socket manager".into(),
        ));
    }
    Err(bad(
        "it must be an absolute path or an abstract address starting with '@'".into(),
    ))
}

/// The current `CLOCK_MONOTONIC` time in microseconds, as `MONOTONIC_USEC=`
/// wants it.
pub fn monotonic_usec() -> u64 {
    let now = clock_gettime(ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

#[derive(Debug)]
struct Target {
    socket: OwnedFd,
    address: SocketAddrUnix,
}

/// A connection to the service manager's notification socket.
///
/// ```no_run
/// use fdstore::{Notifier, Notification};
///
/// let notifier = Notifier::from_env()?;
/// notifier.notify(&[Notification::Ready, Notification::Status("serving on :8080")])?;
/// # Ok::<(), fdstore::NotifyError>(())
/// ```
#[derive(Debug)]
pub struct Notifier {
    target: Option<Target>,
    fd_store_max: Option<usize>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` (and `$FDSTORE`). Without `$NOTIFY_SOCKET` the
    /// notifier is a no-op that reports [`Delivery::NoManager`].
    pub fn from_env() -> Result<Notifier, NotifyError> {
        let fd_store_max = std::env::var("FDSTORE")
            .ok()
            .and_then(|v| v.trim().parse().ok());
        let mut notifier = match std::env::var("NOTIFY_SOCKET") {
            Ok(address) if !address.is_empty() => Notifier::connect(&address)?,
            _ => Notifier::disabled(),
        };
        notifier.fd_store_max = fd_store_max;
        Ok(notifier)
    }

    /// A notifier for an explicit address (absolute path or `@abstract`).
    pub fn connect(address: &str) -> Result<Notifier, NotifyError> {
        let address = parse_notify_address(address)?;
        let socket = socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(io_error("creating the notification socket"))?;
        Ok(Notifier {
            target: Some(Target { socket, address }),
            fd_store_max: None,
        })
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier {
            target: None,
            fd_store_max: None,
        }
    }

    /// Whether messages go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The unit's `FileDescriptorStoreMax=`, when the manager exports it
    /// (`$FDSTORE`, systemd 254+). `None` means unknown, not unlimited: older
    /// managers do not say, and silently drop stored descriptors when the
    /// store is disabled.
    pub fn fd_store_max(&self) -> Option<usize> {
        self.fd_store_max
    }

    /// Sends the notifications as one message.
    pub fn notify(&self, messages: &[Notification<'_>]) -> Result<Delivery, NotifyError> {
        let text = format_message(messages)?;
        self.send_raw(text.as_bytes(), &[])
    }

    /// Sends an already formatted message with descriptors attached (at most
    /// [`MAX_FDS_PER_MESSAGE`]). For relaying messages of a wrapped program;
    /// prefer the typed calls.
    pub fn send_raw(
        &self,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<Delivery, NotifyError> {
        let Some(target) = &self.target else {
            return Ok(Delivery::NoManager);
        };
        if fds.len() > MAX_FDS_PER_MESSAGE {
            return Err(NotifyError::BadField {
                field: "SCM_RIGHTS",
                value: fds.len().to_string(),
                problem: "one message carries at most 253 descriptors",
            });
        }
        let mut space =
            [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            let pushed = control.push(SendAncillaryMessage::ScmRights(fds));
            debug_assert!(pushed, "the buffer is sized for the maximum");
        }
        loop {
            match sendmsg_addr(
                &target.socket,
                &target.address,
                &[IoSlice::new(payload)],
                &mut control,
                SendFlags::NOSIGNAL,
            ) {
                Ok(_) => return Ok(Delivery::Sent),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(io_error("sending to the notification socket")(e)),
            }
        }
    }

    /// `READY=1`.
    pub fn ready(&self) -> Result<Delivery, NotifyError> {
        self.notify(&[Notification::Ready])
    }

    /// `STATUS=`.
    pub fn status(&self, text: &str) -> Result<Delivery, NotifyError> {
        self.notify(&[Notification::Status(text)])
    }

    /// Puts descriptors into the unit's fd store under `name` (`FDSTORE=1`,
    /// `FDNAME=`), in as many messages as needed (253 descriptors each).
    ///
    /// The name is checked first (see [`check_fd_name`](crate::check_fd_name)).
    /// When the manager exports `$FDSTORE` (systemd 254+), a disabled or too
    /// small store is an error; older managers drop the descriptors silently.
    pub fn store_fds(
        &self,
        name: &str,
        fds: &[BorrowedFd<'_>],
        poll: FdPoll,
    ) -> Result<Delivery, NotifyError> {
        checked_fd_name(name)?;
        if !self.is_enabled() {
            return Ok(Delivery::NoManager);
        }
        match self.fd_store_max {
            Some(0) => return Err(NotifyError::FdStoreDisabled),
            Some(max) if fds.len() > max => {
                return Err(NotifyError::FdStoreTooSmall {
                    max,
                    offered: fds.len(),
                })
            }
            _ => {}
        }
        let mut header = format!("FDSTORE=1\nFDNAME={name}\n");
        if poll == FdPoll::DoNotWatch {
            header.push_str("FDPOLL=0\n");
        }
        let mut delivery = Delivery::NoManager;
        for chunk in fds.chunks(MAX_FDS_PER_MESSAGE) {
            delivery = self.send_raw(header.as_bytes(), chunk)?;
        }
        Ok(delivery)
    }

    /// Removes every descriptor stored under `name` (`FDSTOREREMOVE=1`,
    /// systemd 236+).
    pub fn remove_fds(&self, name: &str) -> Result<Delivery, NotifyError> {
        checked_fd_name(name)?;
        self.send_raw(format!("FDSTOREREMOVE=1\nFDNAME={name}\n").as_bytes(), &[])
    }

    /// Makes process `pid`, identified by `pidfd`, the unit's main process:
    /// `MAINPIDFD=1` with the pidfd attached (systemd 257+), `MAINPID=` for
    /// managers that do not know pidfds, and `MAINPIDFDID=` when the kernel
    /// gives pidfds an identity (pidfs).
    ///
    /// Managers before 257 take the `MAINPID=` but log a warning about the
    /// unexpected descriptor: send it only to a manager that says it knows
    /// pidfds (`$MANAGERPIDFDID`, 258+), and [`Notification::MainPid`] with
    /// [`Notification::MainPidFdId`] elsewhere.
    pub fn main_pid_fd(&self, pid: u32, pidfd: BorrowedFd<'_>) -> Result<Delivery, NotifyError> {
        let mut text = String::from("MAINPIDFD=1\n");
        let mut fields = vec![Notification::MainPid(pid)];
        fields.extend(crate::sys::pidfd::pidfd_id(pidfd).map(Notification::MainPidFdId));
        text.push_str(&format_message(&fields)?);
        self.send_raw(text.as_bytes(), &[pidfd])
    }

    /// Waits until the manager has processed every message sent before
    /// (`BARRIER=1`, systemd 246+), or `timeout` passes.
    ///
    /// It proves the messages were *processed*, not that they were accepted.
    pub fn barrier(&self, timeout: Duration) -> Result<Delivery, NotifyError> {
        if !self.is_enabled() {
            return Ok(Delivery::NoManager);
        }
        let read_end = self.send_barrier()?;
        wait_for_hangup(&read_end, timeout)?;
        Ok(Delivery::Sent)
    }

    /// Sends `BARRIER=1` without waiting: the manager has processed every
    /// message sent before once the returned descriptor is readable and
    /// [`barrier_passed`] says so. `None` without a manager.
    pub(crate) fn begin_barrier(&self) -> Result<Option<OwnedFd>, NotifyError> {
        if !self.is_enabled() {
            return Ok(None);
        }
        self.send_barrier().map(Some)
    }

    /// `BARRIER=1` with a pipe's write end; the read end comes back.
    fn send_barrier(&self) -> Result<OwnedFd, NotifyError> {
        let (read_end, write_end) =
            pipe_with(PipeFlags::CLOEXEC).map_err(io_error("creating the barrier pipe"))?;
        self.send_raw(b"BARRIER=1\n", &[write_end.as_fd()])?;
        drop(write_end);
        Ok(read_end)
    }
}

/// Whether the barrier pipe of [`Notifier::begin_barrier`], readable now,
/// is at its end: the manager processed what was sent before (call it only
/// when the pipe polls readable, or it blocks).
pub(crate) fn barrier_passed(read_end: &OwnedFd) -> Result<bool, NotifyError> {
    let mut buf = [0u8; 64];
    match rustix::io::read(read_end, &mut buf) {
        Ok(0) => Ok(true),
        // Data is not the manager's way: read it and keep waiting.
        Ok(_) | Err(Errno::INTR) | Err(Errno::AGAIN) => Ok(false),
        Err(e) => Err(io_error("waiting for the barrier")(e)),
    }
}

/// Waits until every write end of the pipe is closed.
fn wait_for_hangup(read_end: &OwnedFd, timeout: Duration) -> Result<(), NotifyError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let readable =
            crate::sys::poll::wait_readable(&[read_end.as_fd()], Some(left)).map_err(|source| {
                NotifyError::Io {
                    action: "waiting for the barrier",
                    source,
                }
            })?;
        // End of file: every write end is closed.
        if readable[0] && barrier_passed(read_end)? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(NotifyError::BarrierTimeout(timeout));
        }
    }
}

#[cfg(test)]
mod tests;
