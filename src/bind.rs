//! Creating listening sockets from [`ListenerSpec`]s.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
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

/// The steps of binding a Unix socket path, between which a test hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnixBindStep {
    /// The socket's directory was opened.
    DirOpened,
    /// A stale socket was checked for (and removed).
    StaleChecked,
    /// The socket was bound; mode and owner are not set yet.
    Bound,
}

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
        let (kind, local) = match crate::sys::socket::kind_and_address(fd) {
            Ok(found) => found,
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
        // A listener of the expected kind is a socket, so it has an address.
        let Some(local) = local else {
            return Some("its address cannot be read".into());
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
    /// and owner are applied before the socket starts listening, to the
    /// bound socket itself: no step follows a symlink, and the check and
    /// removal of a stale socket are relative to the directory opened once,
    /// so another user who can write the directory cannot redirect them to
    /// an unrelated file (a socket replaced after `bind()` is an error).
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
        if self.options().nonblocking {
            self.make_nonblocking(&fd)?;
        }
        Ok(NamedFd::new(self.name(), fd))
    }

    /// Sets `O_NONBLOCK` on `fd` (created from this spec, or passed under
    /// its name) for the `nonblocking` option. The flag belongs to the open
    /// file description, which every generation shares.
    pub(crate) fn make_nonblocking(&self, fd: impl std::os::fd::AsFd) -> Result<(), BindError> {
        rustix::io::ioctl_fionbio(fd, true).map_err(|e| self.fail("setting O_NONBLOCK", e.into()))
    }

    fn fail(&self, action: &str, source: io::Error) -> BindError {
        let hint = match source.raw_os_error() {
            Some(libc::EADDRINUSE) => Some(
                "another socket is bound there: stop the other process, or let systemd pass the socket (a .socket unit or the fd store)"
                    .to_owned(),
            ),
            Some(libc::EACCES) => Some(
                "permission denied: ports below 1024 need CAP_NET_BIND_SERVICE (AmbientCapabilities=CAP_NET_BIND_SERVICE); a path needs a writable directory"
                    .to_owned(),
            ),
            Some(libc::EADDRNOTAVAIL) => Some(
                "the address is not configured on this host: add it, or use the freebind option"
                    .to_owned(),
            ),
            Some(libc::ENOENT) => Some("the directory does not exist: create it (RuntimeDirectory=)".to_owned()),
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
        self.bind_unix_path_with(path, &mut |_| {})
    }

    /// Binds a Unix socket at `path` without ever following a symlink the
    /// directory's other writers may plant: the directory is opened once,
    /// the stale-socket check and the removal are relative to it, and the
    /// mode and owner are set on the bound entry opened `O_NOFOLLOW` and
    /// checked to be a socket. `hook` runs between the steps (tests use it
    /// to swap files at the worst moments).
    fn bind_unix_path_with(
        &self,
        path: &Path,
        hook: &mut dyn FnMut(UnixBindStep),
    ) -> Result<OwnedFd, BindError> {
        let shown = path.display();
        let Some((dir_path, name)) = crate::sys::path::split_socket_path(path) else {
            return Err(BindError {
                spec: self.to_string(),
                action: format!("binding {shown}"),
                source: io::Error::from(io::ErrorKind::InvalidInput),
                hint: Some("the path must end in a file name".to_owned()),
            });
        };
        let o = self.options();
        // Looked up before anything is created, so that an unknown name
        // leaves nothing behind.
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
        let dir = crate::sys::path::Dir::open(dir_path)
            .map_err(|e| self.fail(&format!("opening the directory {}", dir_path.display()), e))?;
        hook(UnixBindStep::DirOpened);
        self.remove_stale_socket(&dir, name, path)?;
        hook(UnixBindStep::StaleChecked);
        let addr = SocketAddrUnix::new(path)
            .map_err(|e| self.fail("building the socket address", e.into()))?;
        let fd = self.unix_socket()?;
        bind(&fd, &addr).map_err(|e| self.fail(&format!("binding {shown}"), e.into()))?;
        hook(UnixBindStep::Bound);
        // What is at the name now; a socket we bound, unless another writer
        // of the directory replaced it in the meantime.
        let entry = match dir.entry(name) {
            Ok(Some(entry)) if entry.is_socket() => entry,
            Ok(found) => {
                let what = found.as_ref().map_or("gone", |e| e.describe());
                return Err(BindError {
                    spec: self.to_string(),
                    action: format!("checking {shown} after binding it"),
                    source: io::Error::from(io::ErrorKind::AlreadyExists),
                    hint: Some(format!(
                        "it is {what}, not the socket just bound: another user replaced it; use a directory only the service's user can write (RuntimeDirectory=)"
                    )),
                });
            }
            Err(e) => return Err(self.fail(&format!("opening {shown} after binding it"), e)),
        };
        let result = (|| {
            if let Some(mode) = o.mode {
                entry
                    .set_mode(mode)
                    .map_err(|e| self.fail(&format!("setting mode {mode:04o} on {shown}"), e))?;
            }
            if uid.is_some() || gid.is_some() {
                entry
                    .set_owner(uid, gid)
                    .map_err(|e| self.fail(&format!("changing the owner of {shown}"), e))?;
            }
            self.listen_if_stream(&fd)
        })();
        if let Err(e) = result {
            // The entry is the socket bound above and nobody can be using it
            // yet (it does not listen); anything else there stays.
            let _ = dir.remove_if_same(name, &entry);
            return Err(e);
        }
        Ok(fd)
    }

    /// Removes the entry `name` of `dir` only if it is a socket nobody
    /// listens on (a connection attempt is refused). The probe connects to
    /// the checked inode itself, and the removal takes place only if the
    /// entry is still that inode.
    fn remove_stale_socket(
        &self,
        dir: &crate::sys::path::Dir,
        name: &std::ffi::OsStr,
        path: &Path,
    ) -> Result<(), BindError> {
        let shown = path.display();
        let entry = match dir.entry(name) {
            Ok(None) => return Ok(()),
            Ok(Some(entry)) => entry,
            Err(e) => return Err(self.fail(&format!("examining {shown}"), e)),
        };
        if !entry.is_socket() {
            return Err(BindError {
                spec: self.to_string(),
                action: format!("refusing to replace {shown}"),
                source: io::Error::from(io::ErrorKind::AlreadyExists),
                hint: Some(format!(
                    "it is {}, not a socket; move it away or choose another path",
                    entry.describe()
                )),
            });
        }
        let target = entry.proc_path();
        let probe = match self.transport() {
            Transport::UnixDatagram => UnixDatagram::unbound().and_then(|s| s.connect(&target)),
            _ => UnixStream::connect(&target).map(drop),
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
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => dir
                .remove_if_same(name, &entry)
                .map(drop)
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
