//! Creating the sockets that fdstore waits on, and finding out what kind of
//! object a descriptor refers to.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{fstat, FileType};
use rustix::io::Errno;
use rustix::net::{
    getsockname, socket_with, sockopt, AddressFamily, SocketAddrAny, SocketFlags, SocketType,
};

use crate::kind::FdKind;

/// A new socket, close-on-exec (no program started later inherits it) and
/// non-blocking (it is waited for with [`super::poll`], never blocked on).
pub(crate) fn nonblocking_socket(family: AddressFamily, ty: SocketType) -> io::Result<OwnedFd> {
    Ok(socket_with(
        family,
        ty,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?)
}

/// A new Unix `SOCK_SEQPACKET` socket, close-on-exec and non-blocking: the
/// kind of the control socket (fdstore(7) CONTROL), for listening on or
/// connecting to.
pub(crate) fn unix_seqpacket() -> io::Result<OwnedFd> {
    nonblocking_socket(AddressFamily::UNIX, SocketType::SEQPACKET)
}

/// Describes the object behind `fd`: for a socket its family, type and
/// whether it is listening (`SO_DOMAIN`, `SO_TYPE`, `SO_ACCEPTCONN`,
/// `SO_PROTOCOL`); for anything else its file type (`fstat`).
///
/// See [`socket(7)`](https://man7.org/linux/man-pages/man7/socket.7.html).
pub(crate) fn fd_kind(fd: impl AsFd) -> io::Result<FdKind> {
    let fd = fd.as_fd();
    let stat = fstat(fd)?;
    let file_type = FileType::from_raw_mode(stat.st_mode);
    if file_type != FileType::Socket {
        return Ok(match file_type {
            FileType::Fifo => FdKind::Fifo,
            FileType::RegularFile => FdKind::RegularFile,
            FileType::CharacterDevice => FdKind::CharacterDevice,
            FileType::Directory => FdKind::Directory,
            _ => FdKind::OtherFile,
        });
    }
    socket_kind(fd, sockopt::socket_domain(fd)?)
}

/// What [`fd_kind`] tells, and for a socket its own address
/// (`getsockname`), in fewer system calls: the address carries the family,
/// so a socket costs neither `fstat` nor `SO_DOMAIN` (three or four calls,
/// where `fd_kind` and then `getsockname` make five or six). A new
/// generation checks every listener it receives against its spec; with a
/// thousand listeners that is two thousand calls fewer per reload.
pub(crate) fn kind_and_address(fd: impl AsFd) -> io::Result<(FdKind, Option<SocketAddrAny>)> {
    let fd = fd.as_fd();
    match getsockname(fd) {
        Ok(local) => Ok((socket_kind(fd, local.address_family())?, Some(local))),
        Err(Errno::NOTSOCK) => Ok((fd_kind(fd)?, None)),
        Err(e) => Err(e.into()),
    }
}

/// Whether the socket `fd` listens (`SO_ACCEPTCONN`): one system call,
/// where [`fd_kind`] makes four or five.
pub(crate) fn is_listening(fd: impl AsFd) -> io::Result<bool> {
    Ok(sockopt::socket_acceptconn(fd.as_fd())?)
}

/// The kind of the socket `fd` of family `domain`.
fn socket_kind(fd: BorrowedFd<'_>, domain: AddressFamily) -> io::Result<FdKind> {
    let ty = sockopt::socket_type(fd)?;
    let listening = match sockopt::socket_acceptconn(fd) {
        Ok(listening) => listening,
        // Datagram sockets of some families refuse the question.
        Err(Errno::NOPROTOOPT) => false,
        Err(e) => return Err(e.into()),
    };
    let inet = domain == AddressFamily::INET || domain == AddressFamily::INET6;
    let kind = if inet {
        let protocol = sockopt::socket_protocol(fd)?;
        match (ty, protocol) {
            (SocketType::STREAM, Some(p)) if p == rustix::net::ipproto::TCP => {
                if listening {
                    FdKind::TcpListener
                } else {
                    FdKind::TcpStream
                }
            }
            (SocketType::DGRAM, Some(p)) if p == rustix::net::ipproto::UDP => FdKind::UdpSocket,
            _ => other(domain, ty),
        }
    } else if domain == AddressFamily::UNIX {
        match ty {
            SocketType::STREAM if listening => FdKind::UnixListener,
            SocketType::STREAM => FdKind::UnixStream,
            SocketType::DGRAM => FdKind::UnixDatagram,
            SocketType::SEQPACKET if listening => FdKind::UnixSeqpacketListener,
            SocketType::SEQPACKET => FdKind::UnixSeqpacket,
            _ => other(domain, ty),
        }
    } else {
        other(domain, ty)
    };
    Ok(kind)
}

fn other(domain: AddressFamily, ty: SocketType) -> FdKind {
    FdKind::OtherSocket {
        family: domain.as_raw(),
        socket_type: ty.as_raw(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};

    #[test]
    fn detects_tcp_listeners_and_streams() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(fd_kind(&listener).unwrap(), FdKind::TcpListener);
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert_eq!(fd_kind(&stream).unwrap(), FdKind::TcpStream);
    }

    #[test]
    fn detects_ipv6_tcp_listener() {
        let listener = TcpListener::bind("[::1]:0").unwrap();
        assert_eq!(fd_kind(&listener).unwrap(), FdKind::TcpListener);
    }

    #[test]
    fn detects_udp() {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(fd_kind(&udp).unwrap(), FdKind::UdpSocket);
    }

    #[test]
    fn detects_unix_sockets() {
        let dir = std::env::temp_dir().join(format!("fdstore-kind-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        assert_eq!(fd_kind(&listener).unwrap(), FdKind::UnixListener);
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(fd_kind(&a).unwrap(), FdKind::UnixStream);
        let (d, _e) = UnixDatagram::pair().unwrap();
        assert_eq!(fd_kind(&d).unwrap(), FdKind::UnixDatagram);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn new_sockets_are_close_on_exec_and_non_blocking() {
        let seqpacket = unix_seqpacket().unwrap();
        assert_eq!(fd_kind(&seqpacket).unwrap(), FdKind::UnixSeqpacket);
        let datagram = nonblocking_socket(AddressFamily::UNIX, SocketType::DGRAM).unwrap();
        assert_eq!(fd_kind(&datagram).unwrap(), FdKind::UnixDatagram);
        for fd in [&seqpacket, &datagram] {
            let fd_flags = rustix::io::fcntl_getfd(fd).unwrap();
            assert!(fd_flags.contains(rustix::io::FdFlags::CLOEXEC));
            let status = rustix::fs::fcntl_getfl(fd).unwrap();
            assert!(status.contains(rustix::fs::OFlags::NONBLOCK));
        }
    }

    #[test]
    fn detects_files_and_pipes() {
        let file = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(fd_kind(&file).unwrap(), FdKind::CharacterDevice);
        let (r, _w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        assert_eq!(fd_kind(&r).unwrap(), FdKind::Fifo);
    }

    #[test]
    fn the_shorter_questions_agree_with_fd_kind() {
        use std::os::linux::net::SocketAddrExt;
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp6 = TcpListener::bind("[::1]:0").unwrap();
        let stream = TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let unix = UnixListener::bind_addr(
            &std::os::unix::net::SocketAddr::from_abstract_name(format!(
                "fdstore-kind-{}",
                std::process::id()
            ))
            .unwrap(),
        )
        .unwrap();
        let (pair, _other) = UnixStream::pair().unwrap();
        let (datagram, _peer) = UnixDatagram::pair().unwrap();
        let seqpacket = unix_seqpacket().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        let (pipe, _w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let fds: [BorrowedFd<'_>; 10] = [
            tcp.as_fd(),
            tcp6.as_fd(),
            stream.as_fd(),
            udp.as_fd(),
            unix.as_fd(),
            pair.as_fd(),
            datagram.as_fd(),
            seqpacket.as_fd(),
            file.as_fd(),
            pipe.as_fd(),
        ];
        for fd in fds {
            let kind = fd_kind(fd).unwrap();
            let (short, address) = kind_and_address(fd).unwrap();
            assert_eq!(short, kind, "{fd:?}");
            let is_socket = !matches!(kind, FdKind::CharacterDevice | FdKind::Fifo);
            assert_eq!(address.is_some(), is_socket, "{kind}");
            if let Some(address) = address {
                assert_eq!(address, getsockname(fd).unwrap());
            }
        }
        assert!(is_listening(&tcp).unwrap());
        assert!(is_listening(&unix).unwrap());
        assert!(!is_listening(&stream).unwrap());
        assert!(!is_listening(&pair).unwrap());
        assert!(is_listening(&file).is_err());
    }
}
