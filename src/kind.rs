//! What an inherited descriptor is, and turning it into a typed socket.

use std::fmt;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener};

/// The kind of object a descriptor refers to, as detected from the descriptor
/// itself (`SO_DOMAIN`, `SO_TYPE`, `SO_ACCEPTCONN`, `SO_PROTOCOL`, `fstat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FdKind {
    /// A listening TCP socket (IPv4 or IPv6).
    TcpListener,
    /// A connected (or unconnected, not listening) TCP socket.
    TcpStream,
    /// A UDP socket (IPv4 or IPv6).
    UdpSocket,
    /// A listening Unix stream socket.
    UnixListener,
    /// A Unix stream socket that is not listening.
    UnixStream,
    /// A Unix datagram socket.
    UnixDatagram,
    /// A listening Unix sequenced-packet socket.
    UnixSeqpacketListener,
    /// A Unix sequenced-packet socket that is not listening.
    UnixSeqpacket,
    /// Any other socket, with its raw address family and socket type.
    OtherSocket {
        /// The raw `AF_*` value.
        family: u16,
        /// The raw `SOCK_*` value.
        socket_type: u32,
    },
    /// A pipe or FIFO.
    Fifo,
    /// A regular file (including a memfd).
    RegularFile,
    /// A character device.
    CharacterDevice,
    /// A directory.
    Directory,
    /// Anything else that is not a socket.
    OtherFile,
}

impl fmt::Display for FdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FdKind::TcpListener => f.write_str("a TCP listener"),
            FdKind::TcpStream => f.write_str("a TCP stream (not listening)"),
            FdKind::UdpSocket => f.write_str("a UDP socket"),
            FdKind::UnixListener => f.write_str("a Unix stream listener"),
            FdKind::UnixStream => f.write_str("a Unix stream socket (not listening)"),
            FdKind::UnixDatagram => f.write_str("a Unix datagram socket"),
            FdKind::UnixSeqpacketListener => f.write_str("a Unix seqpacket listener"),
            FdKind::UnixSeqpacket => f.write_str("a Unix seqpacket socket (not listening)"),
            FdKind::OtherSocket {
                family,
                socket_type,
            } => write!(f, "a socket of family {family}, type {socket_type}"),
            FdKind::Fifo => f.write_str("a pipe or FIFO"),
            FdKind::RegularFile => f.write_str("a regular file"),
            FdKind::CharacterDevice => f.write_str("a character device"),
            FdKind::Directory => f.write_str("a directory"),
            FdKind::OtherFile => f.write_str("a file that is not a socket"),
        }
    }
}

impl FdKind {
    /// Detects the kind of the object behind `fd`.
    ///
    /// ```
    /// use fdstore::FdKind;
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// assert_eq!(FdKind::of(&listener)?, FdKind::TcpListener);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn of(fd: impl std::os::fd::AsFd) -> std::io::Result<FdKind> {
        crate::sys::socket::fd_kind(fd)
    }
}

/// A descriptor was asked for as one kind of socket but is another.
#[derive(Debug)]
pub struct WrongKind {
    /// The name the descriptor was passed under.
    pub name: String,
    /// The descriptor number.
    pub fd: i32,
    /// What the caller asked for.
    pub expected: FdKind,
    /// What the descriptor really is (`None` when it could not be examined).
    pub actual: Option<FdKind>,
}

impl fmt::Display for WrongKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fd {} named {:?} is ", self.fd, self.name)?;
        match self.actual {
            Some(actual) => write!(f, "{actual}")?,
            None => f.write_str("of a kind that could not be determined")?,
        }
        write!(
            f,
            ", not {}; check the unit's ListenStream=/ListenDatagram= lines or the --listen spec for {:?}",
            self.expected, self.name
        )
    }
}

impl std::error::Error for WrongKind {}

/// Checks that `fd` is of kind `expected`.
pub(crate) fn check(name: &str, fd: &OwnedFd, expected: FdKind) -> Result<(), WrongKind> {
    match FdKind::of(fd) {
        Ok(actual) if actual == expected => Ok(()),
        other => Err(WrongKind {
            name: name.to_owned(),
            fd: fd.as_raw_fd(),
            expected,
            actual: other.ok(),
        }),
    }
}

/// The std types a named descriptor can be converted into.
pub(crate) trait TypedSocket: From<OwnedFd> {
    const KIND: FdKind;
}

impl TypedSocket for TcpListener {
    const KIND: FdKind = FdKind::TcpListener;
}
impl TypedSocket for UdpSocket {
    const KIND: FdKind = FdKind::UdpSocket;
}
impl TypedSocket for UnixListener {
    const KIND: FdKind = FdKind::UnixListener;
}
impl TypedSocket for UnixDatagram {
    const KIND: FdKind = FdKind::UnixDatagram;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_kind_names_the_fd_and_both_kinds() {
        let udp = OwnedFd::from(UdpSocket::bind("127.0.0.1:0").unwrap());
        let raw = udp.as_raw_fd();
        let err = check("web", &udp, FdKind::TcpListener).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&format!("fd {raw}")), "{text}");
        assert!(text.contains("\"web\""), "{text}");
        assert!(text.contains("a UDP socket"), "{text}");
        assert!(text.contains("not a TCP listener"), "{text}");
    }

    #[test]
    fn right_kind_passes() {
        let tcp = OwnedFd::from(TcpListener::bind("127.0.0.1:0").unwrap());
        assert!(check("web", &tcp, FdKind::TcpListener).is_ok());
    }
}
