//! The notification socket the wrapped program talks to.
//!
//! fdstore-exec gives the program its own `NOTIFY_SOCKET`, so that the
//! program's `READY=1` means "this generation is ready" to fdstore-exec
//! rather than to systemd, which may only hear from the unit's main process.
//! The relay reads each datagram with the sender's credentials and any
//! attached descriptors.

use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::{
    bind, recvmsg, sockopt, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags,
    SocketAddrUnix, SocketType,
};

use crate::notify::MAX_FDS_PER_MESSAGE;

/// A datagram from the program.
#[derive(Debug)]
pub(crate) struct RelayMessage {
    /// The sender's pid, when the kernel reported it.
    pub(crate) sender_pid: Option<u32>,
    /// The raw text.
    pub(crate) text: String,
    /// Descriptors attached (for `FDSTORE=1`).
    pub(crate) fds: Vec<OwnedFd>,
}

impl RelayMessage {
    /// The value of `FIELD=` in the message, if present.
    pub(crate) fn field(&self, name: &str) -> Option<&str> {
        self.text.lines().find_map(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='))
        })
    }
}

/// A bound notification socket for one program.
#[derive(Debug)]
pub(crate) struct NotifyRelay {
    socket: OwnedFd,
    address: String,
}

impl NotifyRelay {
    /// Binds a fresh abstract socket with an unguessable name, close-on-exec
    /// and non-blocking, with `SO_PASSCRED` so each message carries its
    /// sender.
    pub(crate) fn bind() -> io::Result<NotifyRelay> {
        let mut random = [0u8; 8];
        rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty())?;
        let name = format!(
            "fdstore-exec/{}/{:016x}",
            std::process::id(),
            u64::from_ne_bytes(random)
        );
        let socket =
            crate::sys::socket::nonblocking_socket(AddressFamily::UNIX, SocketType::DGRAM)?;
        sockopt::set_socket_passcred(&socket, true)?;
        bind(
            &socket,
            &SocketAddrUnix::new_abstract_name(name.as_bytes())?,
        )?;
        Ok(NotifyRelay {
            socket,
            address: format!("@{name}"),
        })
    }

    /// The `NOTIFY_SOCKET` value for the program.
    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// Reads one pending message; `None` when there is none.
    pub(crate) fn recv(&self) -> io::Result<Option<RelayMessage>> {
        let mut buf = vec![0u8; 4096];
        let mut space = [MaybeUninit::<u8>::uninit();
            rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE), ScmCredentials(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let msg = match recvmsg(
            &self.socket,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
        ) {
            Ok(msg) => msg,
            Err(Errno::AGAIN) | Err(Errno::INTR) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut sender_pid = None;
        let mut fds = Vec::new();
        for message in control.drain() {
            match message {
                RecvAncillaryMessage::ScmCredentials(cred) => {
                    sender_pid = Some(cred.pid.as_raw_nonzero().get() as u32)
                }
                RecvAncillaryMessage::ScmRights(received) => fds.extend(received),
                _ => {}
            }
        }
        buf.truncate(msg.bytes);
        Ok(Some(RelayMessage {
            sender_pid,
            text: String::from_utf8_lossy(&buf).into_owned(),
            fds,
        }))
    }
}

impl AsFd for NotifyRelay {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Notifier;

    #[test]
    fn receives_text_sender_and_descriptors() {
        let relay = NotifyRelay::bind().unwrap();
        assert!(relay.address().starts_with("@fdstore-exec/"));
        assert!(relay.recv().unwrap().is_none(), "nothing pending yet");
        let n = Notifier::connect(relay.address()).unwrap();
        n.status("hello").unwrap();
        let m = relay.recv().unwrap().unwrap();
        assert_eq!(m.field("STATUS"), Some("hello"));
        assert_eq!(m.field("READY"), None);
        assert_eq!(m.sender_pid, Some(std::process::id()));
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        n.store_fds("web", &[l.as_fd()], crate::FdPoll::Watch)
            .unwrap();
        let m = relay.recv().unwrap().unwrap();
        assert_eq!(m.field("FDNAME"), Some("web"));
        assert_eq!(m.fds.len(), 1);
    }
}
