//! Asking the kernel about one socket by its address: `sock_diag(7)`.
//!
//! The readiness probe needs the inode of the *server's* end of a
//! connection it opened, to find out which process accepted it. That end is
//! looked up exactly (no dump of every socket): a TCP socket by its four
//! addresses (`inet_diag`), a Unix stream socket as the peer of the probe's
//! own socket (`unix_diag`, `UDIAG_SHOW_PEER`). Until a process accepts the
//! connection, the server's end has no inode (it has no `struct socket` yet).
//!
//! See [`sock_diag(7)`](https://man7.org/linux/man-pages/man7/sock_diag.7.html).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;

use rustix::io::Errno;
use rustix::net::{netlink, recv, send, socket_with, AddressFamily, RecvFlags, SendFlags};
use rustix::net::{SocketFlags, SocketType};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
const IPPROTO_TCP: u8 = 6;
const TCP_ESTABLISHED: u8 = 1;
const TCP_SYN_RECV: u8 = 3;
const TCP_CLOSE_WAIT: u8 = 8;
const TCP_NEW_SYN_RECV: u8 = 12;
const UDIAG_SHOW_PEER: u32 = 4;
const UNIX_DIAG_PEER: u16 = 2;
const NO_COOKIE: u32 = !0;

/// The server's end of a probe connection, as the kernel sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServerEnd {
    /// In the listener's accept queue: no process has accepted it yet (or
    /// the one that did has already closed it).
    Unaccepted,
    /// Accepted: the socket with this inode is open in some process.
    Accepted(u64),
    /// No such connection (any more).
    Gone,
}

/// A `NETLINK_SOCK_DIAG` socket.
#[derive(Debug)]
pub(crate) struct SockDiag {
    fd: OwnedFd,
    seq: u32,
}

impl SockDiag {
    /// Opens the netlink socket (close-on-exec).
    pub(crate) fn open() -> io::Result<SockDiag> {
        let fd = socket_with(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            Some(netlink::SOCK_DIAG),
        )?;
        Ok(SockDiag { fd, seq: 0 })
    }

    /// The server's end of the TCP connection from `client` to `server`.
    pub(crate) fn tcp_server_end(
        &mut self,
        client: SocketAddr,
        server: SocketAddr,
    ) -> io::Result<ServerEnd> {
        self.seq = self.seq.wrapping_add(1);
        let request = inet_request(self.seq, server, client);
        let reply = self.exchange(&request)?;
        parse_inet_reply(&reply, client.port())
    }

    /// The server's end of the Unix stream connection whose client end has
    /// inode `client_inode`.
    pub(crate) fn unix_server_end(&mut self, client_inode: u64) -> io::Result<ServerEnd> {
        let inode = u32::try_from(client_inode)
            .map_err(|_| io::Error::other("a socket inode beyond 32 bits"))?;
        self.seq = self.seq.wrapping_add(1);
        let request = unix_request(self.seq, inode);
        let reply = self.exchange(&request)?;
        parse_unix_reply(&reply)
    }

    /// Sends one request and reads its answer. The kernel answers while
    /// handling the send, so the read never waits.
    fn exchange(&self, request: &[u8]) -> io::Result<Vec<u8>> {
        send(&self.fd, request, SendFlags::empty())?;
        let mut buffer = vec![0u8; 8192];
        let (n, _) = recv(&self.fd, &mut buffer[..], RecvFlags::DONTWAIT)?;
        buffer.truncate(n);
        Ok(buffer)
    }
}

fn header(out: &mut Vec<u8>, payload: usize, seq: u32) {
    out.extend_from_slice(&((NLMSG_HDRLEN + payload) as u32).to_ne_bytes());
    out.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    out.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
}

fn address_words(ip: IpAddr) -> [u8; 16] {
    let mut words = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => words[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => words.copy_from_slice(&v6.octets()),
    }
    words
}

/// `inet_diag_req_v2` for the socket whose own address is `local` and
/// whose peer is `peer`.
fn inet_request(seq: u32, local: SocketAddr, peer: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(NLMSG_HDRLEN + 56);
    header(&mut out, 56, seq);
    let family = if local.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    out.push(family.as_raw() as u8);
    out.push(IPPROTO_TCP);
    out.push(0); // no extensions
    out.push(0);
    out.extend_from_slice(&(!0u32).to_ne_bytes()); // every state
    out.extend_from_slice(&local.port().to_be_bytes());
    out.extend_from_slice(&peer.port().to_be_bytes());
    out.extend_from_slice(&address_words(local.ip()));
    out.extend_from_slice(&address_words(peer.ip()));
    let scope = match local {
        SocketAddr::V6(v6) => v6.scope_id(),
        SocketAddr::V4(_) => 0,
    };
    out.extend_from_slice(&scope.to_ne_bytes());
    out.extend_from_slice(&NO_COOKIE.to_ne_bytes());
    out.extend_from_slice(&NO_COOKIE.to_ne_bytes());
    out
}

/// `unix_diag_req` for the socket with inode `inode`, asking for its peer.
fn unix_request(seq: u32, inode: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(NLMSG_HDRLEN + 24);
    header(&mut out, 24, seq);
    out.push(AddressFamily::UNIX.as_raw() as u8);
    out.push(0);
    out.extend_from_slice(&0u16.to_ne_bytes());
    out.extend_from_slice(&(!0u32).to_ne_bytes()); // every state
    out.extend_from_slice(&inode.to_ne_bytes());
    out.extend_from_slice(&UDIAG_SHOW_PEER.to_ne_bytes());
    out.extend_from_slice(&NO_COOKIE.to_ne_bytes());
    out.extend_from_slice(&NO_COOKIE.to_ne_bytes());
    out
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn truncated() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "a truncated sock_diag answer")
}

/// The payload of the first message of a reply; `None` when the kernel
/// found no such socket.
fn payload(reply: &[u8]) -> io::Result<Option<&[u8]>> {
    let len = u32_at(reply, 0).ok_or_else(truncated)? as usize;
    let kind = u16_at(reply, 4).ok_or_else(truncated)?;
    let body = reply.get(NLMSG_HDRLEN..len).ok_or_else(truncated)?;
    match kind {
        NLMSG_ERROR => {
            let errno = u32_at(body, 0).ok_or_else(truncated)? as i32;
            match -errno {
                0 => Ok(None),
                e if e == Errno::NOENT.raw_os_error() => Ok(None),
                e => Err(io::Error::from_raw_os_error(e)),
            }
        }
        NLMSG_DONE => Ok(None),
        SOCK_DIAG_BY_FAMILY => Ok(Some(body)),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("an unexpected sock_diag message type {other}"),
        )),
    }
}

/// Reads an `inet_diag_msg`. The exact lookup falls back to the listener
/// when the connection is gone, which the peer port and state tell apart.
fn parse_inet_reply(reply: &[u8], client_port: u16) -> io::Result<ServerEnd> {
    let Some(msg) = payload(reply)? else {
        return Ok(ServerEnd::Gone);
    };
    let state = *msg.get(1).ok_or_else(truncated)?;
    let dport = u16::from_be_bytes(msg.get(6..8).ok_or_else(truncated)?.try_into().unwrap());
    let inode = u32_at(msg, 68).ok_or_else(truncated)?;
    if dport != client_port {
        return Ok(ServerEnd::Gone);
    }
    Ok(match (state, inode) {
        // Open in a process (which may have shut its side down already).
        (_, n) if n != 0 => ServerEnd::Accepted(n.into()),
        (TCP_SYN_RECV | TCP_NEW_SYN_RECV | TCP_ESTABLISHED | TCP_CLOSE_WAIT, _) => {
            ServerEnd::Unaccepted
        }
        // Closed, or the listener the lookup fell back to.
        _ => ServerEnd::Gone,
    })
}

/// Reads a `unix_diag_msg` and its `UNIX_DIAG_PEER` attribute.
fn parse_unix_reply(reply: &[u8]) -> io::Result<ServerEnd> {
    let Some(msg) = payload(reply)? else {
        return Ok(ServerEnd::Gone);
    };
    let mut at = 16;
    while at + 4 <= msg.len() {
        let len = u16_at(msg, at).ok_or_else(truncated)? as usize;
        let kind = u16_at(msg, at + 2).ok_or_else(truncated)?;
        if len < 4 {
            return Err(truncated());
        }
        if kind == UNIX_DIAG_PEER {
            return Ok(match u32_at(msg, at + 4).ok_or_else(truncated)? {
                0 => ServerEnd::Unaccepted,
                n => ServerEnd::Accepted(n.into()),
            });
        }
        at += (len + 3) & !3;
    }
    // No peer: the server's end is gone.
    Ok(ServerEnd::Gone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::{UnixListener, UnixStream};

    fn inode_of(fd: impl std::os::fd::AsFd) -> u64 {
        std::fs::File::from(fd.as_fd().try_clone_to_owned().unwrap())
            .metadata()
            .unwrap()
            .ino()
    }

    #[test]
    fn a_request_has_the_lengths_the_kernel_expects() {
        let a: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:4000".parse().unwrap();
        let r = inet_request(7, a, b);
        assert_eq!(r.len(), 72);
        assert_eq!(u32_at(&r, 0), Some(72));
        assert_eq!(u16_at(&r, 4), Some(SOCK_DIAG_BY_FAMILY));
        assert_eq!(u32_at(&r, 8), Some(7));
        assert_eq!(r[17], IPPROTO_TCP);
        assert_eq!(&r[24..26], &80u16.to_be_bytes());
        assert_eq!(&r[26..28], &4000u16.to_be_bytes());
        assert_eq!(&r[28..32], &[127, 0, 0, 1]);
        assert_eq!(&r[44..48], &[127, 0, 0, 2]);
        assert_eq!(unix_request(1, 5).len(), 40);
    }

    #[test]
    fn replies_that_say_no_such_socket() {
        let mut error = vec![0u8; 36];
        error[..4].copy_from_slice(&36u32.to_ne_bytes());
        error[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        error[16..20].copy_from_slice(&(-2i32).to_ne_bytes());
        assert_eq!(parse_inet_reply(&error, 1).unwrap(), ServerEnd::Gone);
        assert_eq!(parse_unix_reply(&error).unwrap(), ServerEnd::Gone);
        error[16..20].copy_from_slice(&(-13i32).to_ne_bytes());
        assert_eq!(
            parse_unix_reply(&error).unwrap_err().raw_os_error(),
            Some(13)
        );
        assert!(parse_inet_reply(&error[..10], 1).is_err());
    }

    #[test]
    fn a_tcp_connection_is_unaccepted_then_accepted() {
        let mut diag = SockDiag::open().unwrap();
        for address in ["127.0.0.1:0", "[::1]:0"] {
            let listener = TcpListener::bind(address).unwrap();
            let server = listener.local_addr().unwrap();
            let client = TcpStream::connect(server).unwrap();
            let local = client.local_addr().unwrap();
            assert_eq!(
                diag.tcp_server_end(local, server).unwrap(),
                ServerEnd::Unaccepted
            );
            let (accepted, _) = listener.accept().unwrap();
            assert_eq!(
                diag.tcp_server_end(local, server).unwrap(),
                ServerEnd::Accepted(inode_of(&accepted))
            );
            // Another port of the same host: not this connection.
            let other = SocketAddr::new(local.ip(), local.port().wrapping_add(1));
            assert_eq!(diag.tcp_server_end(other, server).unwrap(), ServerEnd::Gone);
        }
    }

    #[test]
    fn a_unix_connection_is_unaccepted_then_accepted() {
        let mut diag = SockDiag::open().unwrap();
        let dir = std::env::temp_dir().join(format!("fdstore-diag-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let client = UnixStream::connect(&path).unwrap();
        let ino = inode_of(&client);
        assert_eq!(diag.unix_server_end(ino).unwrap(), ServerEnd::Unaccepted);
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(
            diag.unix_server_end(ino).unwrap(),
            ServerEnd::Accepted(inode_of(&accepted))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
