//! Creating listening sockets from [`ListenerSpec`]s.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;

use rustix::net::{
    bind, listen, socket_with, sockopt, AddressFamily, SocketAddrUnix, SocketFlags, SocketType,
};

use crate::listen::NamedFd;
use crate::spec::{Endpoint, ListenerSpec, Transport};

/// The backlog used when a spec gives none (the kernel caps it at
/// `net.core.somaxconn`), as systemd's `Backlog=` default.
pub const DEFAULT_BACKLOG: u32 = 4096;

/// A listener could not be created.
#[derive(Debug)]
pub struct BindError {
    /// The spec, in canonical form.
    pub spec: String,
    /// What was being done.
    pub action: String,
    /// The error.
    pub source: io::Error,
    /// What an operator can do about it, when known.
    pub hint: Option<String>,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot create listener {}: {}: {}",
            self.spec, self.action, self.source
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl ListenerSpec {
    /// Whether `fd` is the socket this spec describes: same kind and, as far
    /// as the spec fixes them, same address and port. Returns what differs,
    /// or `None` when it matches.
    ///
    /// ```
    /// use fdstore::ListenerSpec;
    /// let spec: ListenerSpec = "web=tcp:127.0.0.1:18081".parse()?;
    /// let fd = spec.bind()?;
    /// assert_eq!(spec.mismatch(&fd), None);
    /// let other: ListenerSpec = "web=udp:127.0.0.1:18081".parse()?;
    /// assert!(other.mismatch(&fd).is_some());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn mismatch(&self, fd: impl std::os::fd::AsFd) -> Option<String> {
        let fd = fd.as_fd();
        let kind = match crate::kind::FdKind::of(fd) {
            Ok(kind) => kind,
            Err(e) => return Some(format!("its kind cannot be read: {e}")),
        };
        let expected = match self.transport() {
            Transport::Tcp => crate::kind::FdKind::TcpListener,
            Transport::Udp => crate::kind::FdKind::UdpSocket,
            Transport::UnixStream => crate::kind::FdKind::UnixListener,
            Transport::UnixDatagram => crate::kind::FdKind::UnixDatagram,
        };
        if kind != expected {
            return Some(format!("it is {kind}, not {expected}"));
        }
        let local = match rustix::net::getsockname(fd) {
            Ok(addr) => addr,
            Err(e) => return Some(format!("its address cannot be read: {e}")),
        };
        match self.endpoint() {
            Endpoint::Inet(want) => {
                let Ok(have) = SocketAddr::try_from(local) else {
                    return Some("it is not an IP socket".into());
                };
                let port_ok = want.port() == have.port();
                let ip_ok = want.ip() == have.ip()
                    // [::] also shows up for 0.0.0.0 on a dual-stack socket.
                    || (want.ip().is_unspecified() && have.ip().is_unspecified());
                (!(port_ok && ip_ok)).then(|| format!("it is bound to {have}, not {want}"))
            }
            Endpoint::Path(want) => {
                let have = rustix::net::SocketAddrUnix::try_from(local).ok();
                let have_path = have
                    .as_ref()
                    .and_then(|a| a.path().map(std::borrow::Cow::into_owned));
                match have_path {
                    Some(p)
                        if p.to_bytes()
                            == std::os::unix::ffi::OsStrExt::as_bytes(want.as_os_str()) =>
                    {
                        None
                    }
                    Some(p) => Some(format!(
                        "it is bound to {}, not {}",
                        String::from_utf8_lossy(p.to_bytes()),
                        want.display()
                    )),
                    None => Some(format!("it is not bound to {}", want.display())),
                }
            }
            Endpoint::Abstract(want) => {
                let have = rustix::net::SocketAddrUnix::try_from(local).ok();
                match have.as_ref().and_then(|a| a.abstract_name()) {
                    Some(name) if name == want.as_bytes() => None,
                    _ => Some(format!("it is not bound to @{want}")),
                }
            }
        }
    }

    /// Creates the socket the spec describes: bound, listening (for stream
    /// kinds), close-on-exec, named after the spec.
    ///
    /// For a Unix path, an existing socket file is removed only when nobody is
    /// listening on it any more (a connection attempt is refused); a live
    /// socket or any other kind of file is an error, never removed. The mode
    /// and owner are applied before the socket starts listening.
    ///
    /// ```
    /// use fdstore::ListenerSpec;
    /// let spec: ListenerSpec = "web=tcp:127.0.0.1:18080".parse()?;
    /// let fd = spec.bind()?;
    /// assert_eq!(fd.name(), "web");
    /// assert_eq!(fd.kind()?, fdstore::FdKind::TcpListener);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn bind(&self) -> Result<NamedFd, BindError> {
        let fd = match self.endpoint() {
            Endpoint::Inet(addr) => self.bind_inet(*addr)?,
            Endpoint::Path(path) => self.bind_unix_path(path)?,
            Endpoint::Abstract(name) => {
                let addr = SocketAddrUnix::new_abstract_name(name.as_bytes())
                    .map_err(|e| self.fail("building the abstract address", e.into()))?;
                let fd = self.unix_socket()?;
                bind(&fd, &addr).map_err(|e| self.fail(&format!("binding @{name}"), e.into()))?;
                self.listen_if_stream(&fd)?;
                fd
            }
        };
        Ok(NamedFd::new(self.name(), fd))
    }

    fn fail(&self, action: &str, source: io::Error) -> BindError {
        let hint = match source.raw_os_error() {
            Some(98) => Some(
                "another socket is bound there: stop the other process, or let systemd pass the socket (a .socket unit or the fd store)"
                    .to_owned(),
            ),
            Some(13) => Some(
                "permission denied: ports below 1024 need CAP_NET_BIND_SERVICE (AmbientCapabilities=CAP_NET_BIND_SERVICE); a path needs a writable directory"
                    .to_owned(),
            ),
            Some(99) => Some(
                "the address is not configured on this host: add it, or use the freebind option"
                    .to_owned(),
            ),
            Some(2) => Some("the directory does not exist: create it (RuntimeDirectory=)".to_owned()),
            _ => None,
        };
        BindError {
            spec: self.to_string(),
            action: action.to_owned(),
            source,
            hint,
        }
    }

    fn socket_type(&self) -> SocketType {
        match self.transport() {
            Transport::Tcp | Transport::UnixStream => SocketType::STREAM,
            Transport::Udp | Transport::UnixDatagram => SocketType::DGRAM,
        }
    }

    fn listen_if_stream(&self, fd: &OwnedFd) -> Result<(), BindError> {
        if self.socket_type() == SocketType::STREAM {
            let backlog = self.options().backlog.unwrap_or(DEFAULT_BACKLOG);
            listen(fd, backlog.min(i32::MAX as u32) as i32)
                .map_err(|e| self.fail("listening", e.into()))?;
        }
        Ok(())
    }

    fn bind_inet(&self, addr: SocketAddr) -> Result<OwnedFd, BindError> {
        let family = match addr {
            SocketAddr::V4(_) => AddressFamily::INET,
            SocketAddr::V6(_) => AddressFamily::INET6,
        };
        let fd = socket_with(family, self.socket_type(), SocketFlags::CLOEXEC, None)
            .map_err(|e| self.fail("creating the socket", e.into()))?;
        let o = self.options();
        let set = |what: &str, r: rustix::io::Result<()>| {
            r.map_err(|e| self.fail(&format!("setting {what}"), e.into()))
        };
        if self.transport() == Transport::Tcp {
            set("SO_REUSEADDR", sockopt::set_socket_reuseaddr(&fd, true))?;
        }
        if o.reuseport {
            set("SO_REUSEPORT", sockopt::set_socket_reuseport(&fd, true))?;
        }
        if o.v6only {
            set("IPV6_V6ONLY", sockopt::set_ipv6_v6only(&fd, true))?;
        }
        if o.freebind {
            match addr {
                SocketAddr::V4(_) => set("IP_FREEBIND", sockopt::set_ip_freebind(&fd, true))?,
                SocketAddr::V6(_) => set("IPV6_FREEBIND", sockopt::set_ipv6_freebind(&fd, true))?,
            }
        }
        bind(&fd, &addr).map_err(|e| self.fail(&format!("binding {addr}"), e.into()))?;
        self.listen_if_stream(&fd)?;
        Ok(fd)
    }

    fn unix_socket(&self) -> Result<OwnedFd, BindError> {
        socket_with(
            AddressFamily::UNIX,
            self.socket_type(),
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| self.fail("creating the socket", e.into()))
    }

    fn bind_unix_path(&self, path: &Path) -> Result<OwnedFd, BindError> {
        self.remove_stale_socket(path)?;
        let addr = SocketAddrUnix::new(path)
            .map_err(|e| self.fail("building the socket address", e.into()))?;
        let fd = self.unix_socket()?;
        let shown = path.display();
        bind(&fd, &addr).map_err(|e| self.fail(&format!("binding {shown}"), e.into()))?;
        let o = self.options();
        let result = (|| {
            if let Some(mode) = o.mode {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| self.fail(&format!("setting mode {mode:04o} on {shown}"), e))?;
            }
            if o.owner.is_some() || o.group.is_some() {
                let uid = o
                    .owner
                    .as_deref()
                    .map(|u| self.resolve_user(u))
                    .transpose()?;
                let gid = o
                    .group
                    .as_deref()
                    .map(|g| self.resolve_group(g))
                    .transpose()?;
                std::os::unix::fs::chown(path, uid, gid)
                    .map_err(|e| self.fail(&format!("changing the owner of {shown}"), e))?;
            }
            self.listen_if_stream(&fd)
        })();
        if let Err(e) = result {
            // We created the file and nobody can be using it yet.
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        Ok(fd)
    }

    /// Removes `path` only if it is a socket nobody listens on.
    fn remove_stale_socket(&self, path: &Path) -> Result<(), BindError> {
        let shown = path.display();
        let meta = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.fail(&format!("examining {shown}"), e)),
        };
        if !meta.file_type().is_socket() {
            return Err(BindError {
                spec: self.to_string(),
                action: format!("refusing to replace {shown}"),
                source: io::Error::from(io::ErrorKind::AlreadyExists),
                hint: Some("it is not a socket; move it away or choose another path".to_owned()),
            });
        }
        let probe = match self.transport() {
            Transport::UnixDatagram => UnixDatagram::unbound().and_then(|s| s.connect(path)),
            _ => UnixStream::connect(path).map(drop),
        };
        match probe {
            Ok(()) => Err(BindError {
                spec: self.to_string(),
                action: format!("refusing to replace {shown}"),
                source: io::Error::from(io::ErrorKind::AddrInUse),
                hint: Some(
                    "a live socket is listening there: another instance may be running; stop it or pass the socket from systemd".to_owned(),
                ),
            }),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)
                .map_err(|e| self.fail(&format!("removing the stale socket {shown}"), e)),
            Err(e) => Err(self.fail(&format!("checking whether {shown} is still in use"), e)),
        }
    }

    fn resolve_user(&self, user: &str) -> Result<u32, BindError> {
        if let Ok(uid) = user.parse() {
            return Ok(uid);
        }
        match nix::unistd::User::from_name(user) {
            Ok(Some(u)) => Ok(u.uid.as_raw()),
            Ok(None) => Err(self.no_such("user", user)),
            Err(e) => Err(self.fail(&format!("looking up user {user}"), e.into())),
        }
    }

    fn resolve_group(&self, group: &str) -> Result<u32, BindError> {
        if let Ok(gid) = group.parse() {
            return Ok(gid);
        }
        match nix::unistd::Group::from_name(group) {
            Ok(Some(g)) => Ok(g.gid.as_raw()),
            Ok(None) => Err(self.no_such("group", group)),
            Err(e) => Err(self.fail(&format!("looking up group {group}"), e.into())),
        }
    }

    fn no_such(&self, what: &str, name: &str) -> BindError {
        BindError {
            spec: self.to_string(),
            action: format!("looking up {what} {name:?}"),
            source: io::Error::from(io::ErrorKind::NotFound),
            hint: Some(format!(
                "no such {what} on this host; create it or give a number"
            )),
        }
    }
}

#[cfg(test)]
mod tests;
