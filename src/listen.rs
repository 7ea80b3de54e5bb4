//! Receiving descriptors under the `LISTEN_FDS` protocol (`sd_listen_fds(3)`).
//!
//! systemd (and fdstore-exec, for the program it wraps) passes descriptors to a
//! service starting at fd 3, with three environment variables:
//!
//! - `LISTEN_PID`: the pid the descriptors are meant for. When it is not ours
//!   (the variables leaked from a parent), nothing is taken.
//! - `LISTEN_PIDFDID` (systemd 259+, optional): the inode number of a pidfd
//!   of that process, which tells it apart from an earlier process with a
//!   recycled pid. When it is set, it is valid and the kernel can say what
//!   ours is (pidfs, Linux 6.9+), it must be ours, or nothing is taken; this
//!   is what `sd_listen_fds()` does since systemd 259. Whoever passes
//!   descriptors on (fdstore-exec to its program, one generation to the
//!   next) must set it to the receiver's, or leave it out.
//! - `LISTEN_FDS`: how many descriptors, starting at 3.
//! - `LISTEN_FDNAMES`: their names, separated by `:`. Socket units name theirs
//!   with `FileDescriptorName=` (default: the socket unit's name), fd-store
//!   entries carry the `FDNAME=` they were stored with. When the variable is
//!   missing every descriptor is called `unknown`, as `sd_listen_fds_with_names`
//!   does; when it has a different number of names than `LISTEN_FDS` counts, the
//!   environment is rejected, as `sd_listen_fds_with_names` does.
//!
//! The order of the descriptors is not meaningful (the fd store returns them
//! in arbitrary order), so look them up by name.

use std::fmt;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::kind::{check, FdKind, TypedSocket, WrongKind};

/// The first descriptor number of the `LISTEN_FDS` protocol.
pub const LISTEN_FDS_START: RawFd = 3;

/// The name systemd gives descriptors when `LISTEN_FDNAMES` is not set.
pub const UNKNOWN_NAME: &str = "unknown";

/// The variables of the `LISTEN_FDS` protocol, which a process passing
/// descriptors on replaces as a whole (and [`ListenFds::from_env`] removes
/// with [`UnsetEnv::Yes`]).
pub const LISTEN_ENV: [&str; 4] = [LISTEN_PID, LISTEN_PIDFDID, LISTEN_FDS, LISTEN_FDNAMES];

/// The pid the descriptors are for (`LISTEN_PID`).
pub(crate) const LISTEN_PID: &str = "LISTEN_PID";
/// The pidfd id of that process (`LISTEN_PIDFDID`, systemd 258+).
pub(crate) const LISTEN_PIDFDID: &str = "LISTEN_PIDFDID";
/// How many descriptors there are from [`LISTEN_FDS_START`] (`LISTEN_FDS`).
pub(crate) const LISTEN_FDS: &str = "LISTEN_FDS";
/// Their names, separated by colons (`LISTEN_FDNAMES`).
pub(crate) const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";

/// Whether [`ListenFds::from_env`] removes the `LISTEN_*` variables
/// from the environment, so that child processes do not see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsetEnv {
    /// Leave the variables in place.
    No,
    /// Remove them (call this early, before the process starts threads: the
    /// environment is not thread-safe).
    Yes,
}

/// An error while receiving or looking up passed descriptors.
#[derive(Debug)]
#[non_exhaustive]
pub enum ListenError {
    /// One of the `LISTEN_*` variables is malformed.
    BadEnvironment {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        problem: String,
    },
    /// `LISTEN_FDNAMES` has a different number of names than `LISTEN_FDS`.
    NameCountMismatch {
        /// `LISTEN_FDS`.
        fds: usize,
        /// How many names `LISTEN_FDNAMES` holds.
        names: usize,
    },
    /// A descriptor the environment announced is not open.
    NotOpen {
        /// The descriptor number.
        fd: RawFd,
        /// Its name.
        name: String,
        /// The error from `fcntl`.
        source: std::io::Error,
    },
    /// The descriptors were already taken by an earlier call in this process.
    AlreadyTaken,
    /// No descriptor was passed under this name.
    NotFound {
        /// The name asked for.
        name: String,
        /// The names that were passed.
        available: Vec<String>,
    },
    /// Several descriptors were passed under this name, and one was asked for.
    Ambiguous {
        /// The name.
        name: String,
        /// How many there are.
        count: usize,
    },
    /// The descriptor is not of the kind asked for.
    WrongKind(Box<WrongKind>),
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenError::BadEnvironment {
                variable,
                value,
                problem,
            } => write!(
                f,
                "{variable}={value:?} is invalid: {problem}; the service manager sets it, so check ExecStart= wrappers that change it"
            ),
            ListenError::NameCountMismatch { fds, names } => write!(
                f,
                "LISTEN_FDS announces {fds} descriptors but LISTEN_FDNAMES holds {names} names; they must match (a wrapper between systemd and this program changed one but not the other)"
            ),
            ListenError::NotOpen { fd, name, source } => write!(
                f,
                "fd {fd} (named {name:?}) was announced by LISTEN_FDS but is not open ({source}); something closed it before the program started"
            ),
            ListenError::AlreadyTaken => f.write_str(
                "the passed descriptors were already taken in this process; call ListenFds::from_env once and share the result",
            ),
            ListenError::NotFound { name, available } => {
                write!(f, "no descriptor named {name:?} was passed")?;
                if available.is_empty() {
                    f.write_str(" (none were passed at all)")?;
                } else {
                    write!(f, " (passed: {})", available.join(", "))?;
                }
                f.write_str("; name it with FileDescriptorName= in the socket unit, or FDNAME= when storing it")
            }
            ListenError::Ambiguous { name, count } => write!(
                f,
                "{count} descriptors were passed under the name {name:?} but one was asked for; use the plural look-up to take them all"
            ),
            ListenError::WrongKind(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ListenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ListenError::NotOpen { source, .. } => Some(source),
            ListenError::WrongKind(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

/// One passed descriptor and its name.
#[derive(Debug)]
pub struct NamedFd {
    name: String,
    fd: OwnedFd,
}

impl NamedFd {
    /// Pairs a descriptor with a name.
    pub fn new(name: impl Into<String>, fd: OwnedFd) -> NamedFd {
        NamedFd {
            name: name.into(),
            fd,
        }
    }

    /// The name the descriptor was passed under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the descriptor is.
    pub fn kind(&self) -> std::io::Result<FdKind> {
        FdKind::of(&self.fd)
    }

    /// Gives up the name and returns the descriptor.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for NamedFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for NamedFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

static TAKEN: AtomicBool = AtomicBool::new(false);

/// Whether the descriptors this process took came with a `LISTEN_PIDFDID`
/// (naming this process): then whoever this process passes them on to gets
/// one naming itself, as from the manager.
static PIDFD_ID_GIVEN: AtomicBool = AtomicBool::new(false);

/// Whether [`ListenFds::from_env`] took descriptors that came with a
/// `LISTEN_PIDFDID`: the manager uses it, so a process this one passes
/// listeners to must get one too (naming itself).
pub(crate) fn pidfd_id_given() -> bool {
    PIDFD_ID_GIVEN.load(Ordering::SeqCst)
}

/// `LISTEN_FDS` and `LISTEN_FDNAMES` for passing descriptors named `names`
/// (in order, at 3, 4, ...) on to another process. The other two
/// [`LISTEN_ENV`] variables name the receiving process itself, so they are
/// filled in by it after `fork`: `LISTEN_PID` always, `LISTEN_PIDFDID` when
/// [`pidfd_id_given`].
pub(crate) fn passing_on<'a>(names: impl Iterator<Item = &'a str>) -> [(&'static str, String); 2] {
    let names: Vec<&str> = names.collect();
    [
        (LISTEN_FDS, names.len().to_string()),
        (LISTEN_FDNAMES, names.join(":")),
    ]
}

/// The descriptors passed to this process, looked up by name.
///
/// ```no_run
/// use fdstore::{ListenFds, UnsetEnv};
///
/// let mut fds = ListenFds::from_env(UnsetEnv::Yes)?;
/// let web = fds.tcp_listener("web")?;
/// let metrics = fds.tcp_listeners("metrics")?; // several under one name
/// # Ok::<(), fdstore::ListenError>(())
/// ```
#[derive(Debug, Default)]
pub struct ListenFds {
    fds: Vec<NamedFd>,
}

impl ListenFds {
    /// An empty set.
    pub fn new() -> ListenFds {
        ListenFds::default()
    }

    /// Takes the descriptors that the environment passes to this process.
    ///
    /// Returns an empty set when `LISTEN_PID` or `LISTEN_FDS` is unset, or when
    /// `LISTEN_PID` or `LISTEN_PIDFDID` names another process. Every descriptor taken is checked to
    /// be open and marked close-on-exec. Only the first call in a process takes
    /// the descriptors; later calls fail with [`ListenError::AlreadyTaken`], so
    /// two owners can never close the same descriptor.
    pub fn from_env(unset: UnsetEnv) -> Result<ListenFds, ListenError> {
        let [pid, pidfd_id, count, names] = LISTEN_ENV.map(|name| std::env::var(name).ok());
        if unset == UnsetEnv::Yes {
            for name in LISTEN_ENV {
                std::env::remove_var(name);
            }
        }
        let names = parse_environment(
            &Environment {
                listen_pid: pid.as_deref(),
                listen_pidfdid: pidfd_id.as_deref(),
                listen_fds: count.as_deref(),
                listen_fdnames: names.as_deref(),
            },
            std::process::id(),
            crate::sys::pidfd::own_pidfd_id,
        )?;
        if names.is_empty() {
            return Ok(ListenFds::new());
        }
        if TAKEN.swap(true, Ordering::SeqCst) {
            return Err(ListenError::AlreadyTaken);
        }
        let mut fds = Vec::with_capacity(names.len());
        for (fd, name) in (LISTEN_FDS_START..).zip(names) {
            // The LISTEN_FDS protocol hands these numbers to this process.
            match crate::sys::fd::take_inherited_once(fd) {
                Ok(owned) => fds.push(NamedFd::new(name, owned)),
                Err(source) => return Err(ListenError::NotOpen { fd, name, source }),
            }
        }
        PIDFD_ID_GIVEN.store(pidfd_id.is_some(), Ordering::SeqCst);
        Ok(ListenFds { fds })
    }

    /// Adds a descriptor under a name.
    pub fn push(&mut self, fd: NamedFd) {
        self.fds.push(fd);
    }

    /// How many descriptors are in the set.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// The names in the set, once per descriptor, in descriptor order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fds.iter().map(NamedFd::name)
    }

    /// Whether any descriptor carries this name.
    pub fn contains(&self, name: &str) -> bool {
        self.fds.iter().any(|fd| fd.name == name)
    }

    /// Iterates over the descriptors without taking them.
    pub fn iter(&self) -> impl Iterator<Item = &NamedFd> {
        self.fds.iter()
    }

    /// Removes and returns every descriptor with this name (possibly none).
    pub fn take(&mut self, name: &str) -> Vec<NamedFd> {
        let (taken, kept) = std::mem::take(&mut self.fds)
            .into_iter()
            .partition(|fd| fd.name == name);
        self.fds = kept;
        taken
    }

    /// Removes and returns the one descriptor with this name: an error if there
    /// is none or more than one (in which case nothing is removed).
    pub fn take_one(&mut self, name: &str) -> Result<NamedFd, ListenError> {
        let count = self.fds.iter().filter(|fd| fd.name == name).count();
        match count {
            0 => Err(ListenError::NotFound {
                name: name.to_owned(),
                available: self.names().map(str::to_owned).collect(),
            }),
            1 => Ok(self.take(name).remove(0)),
            count => Err(ListenError::Ambiguous {
                name: name.to_owned(),
                count,
            }),
        }
    }

    fn take_typed<T: TypedSocket>(&mut self, name: &str) -> Result<T, ListenError> {
        let count = self.fds.iter().filter(|fd| fd.name == name).count();
        if count > 1 {
            return Err(ListenError::Ambiguous {
                name: name.to_owned(),
                count,
            });
        }
        Ok(self.take_all_typed::<T>(name)?.remove(0))
    }

    /// Takes every descriptor named `name` if all of them are of kind `T`;
    /// otherwise takes nothing.
    fn take_all_typed<T: TypedSocket>(&mut self, name: &str) -> Result<Vec<T>, ListenError> {
        let mismatch = self
            .fds
            .iter()
            .filter(|fd| fd.name == name)
            .find_map(|fd| check(name, &fd.fd, T::KIND).err());
        if let Some(wrong) = mismatch {
            return Err(ListenError::WrongKind(Box::new(wrong)));
        }
        let taken = self.take(name);
        if taken.is_empty() {
            return Err(ListenError::NotFound {
                name: name.to_owned(),
                available: self.names().map(str::to_owned).collect(),
            });
        }
        Ok(taken.into_iter().map(|fd| T::from(fd.fd)).collect())
    }

    /// Takes the one TCP listener passed under `name`.
    ///
    /// A descriptor of another kind is an error naming the descriptor and what
    /// it is; it stays in the set.
    pub fn tcp_listener(&mut self, name: &str) -> Result<TcpListener, ListenError> {
        self.take_typed(name)
    }

    /// Takes every TCP listener passed under `name` (at least one).
    pub fn tcp_listeners(&mut self, name: &str) -> Result<Vec<TcpListener>, ListenError> {
        self.take_all_typed(name)
    }

    /// Takes the one UDP socket passed under `name`.
    pub fn udp_socket(&mut self, name: &str) -> Result<UdpSocket, ListenError> {
        self.take_typed(name)
    }

    /// Takes every UDP socket passed under `name` (at least one).
    pub fn udp_sockets(&mut self, name: &str) -> Result<Vec<UdpSocket>, ListenError> {
        self.take_all_typed(name)
    }

    /// Takes the one Unix stream listener passed under `name`.
    pub fn unix_listener(&mut self, name: &str) -> Result<UnixListener, ListenError> {
        self.take_typed(name)
    }

    /// Takes every Unix stream listener passed under `name` (at least one).
    pub fn unix_listeners(&mut self, name: &str) -> Result<Vec<UnixListener>, ListenError> {
        self.take_all_typed(name)
    }

    /// Takes the one Unix datagram socket passed under `name`.
    pub fn unix_datagram(&mut self, name: &str) -> Result<UnixDatagram, ListenError> {
        self.take_typed(name)
    }

    /// Takes every Unix datagram socket passed under `name` (at least one).
    pub fn unix_datagrams(&mut self, name: &str) -> Result<Vec<UnixDatagram>, ListenError> {
        self.take_all_typed(name)
    }
}

impl IntoIterator for ListenFds {
    type Item = NamedFd;
    type IntoIter = std::vec::IntoIter<NamedFd>;
    fn into_iter(self) -> Self::IntoIter {
        self.fds.into_iter()
    }
}

/// The [`LISTEN_ENV`] variables, as found.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Environment<'a> {
    pub(crate) listen_pid: Option<&'a str>,
    pub(crate) listen_pidfdid: Option<&'a str>,
    pub(crate) listen_fds: Option<&'a str>,
    pub(crate) listen_fdnames: Option<&'a str>,
}

/// Interprets the `LISTEN_*` variables for process `my_pid`, whose pidfd
/// inode number `my_pidfd_id` tells (when the kernel knows it), the way
/// `sd_listen_fds_with_names(3)` of systemd 259+ does, and returns one name
/// per descriptor (empty when nothing is meant for this process).
pub(crate) fn parse_environment(
    env: &Environment<'_>,
    my_pid: u32,
    my_pidfd_id: impl FnOnce() -> Option<u64>,
) -> Result<Vec<String>, ListenError> {
    let Some(pid) = env.listen_pid else {
        return Ok(Vec::new());
    };
    let pid: u32 = match pid.trim().parse() {
        Ok(pid) if pid > 0 => pid,
        _ => {
            return Err(ListenError::BadEnvironment {
                variable: LISTEN_PID,
                value: pid.to_owned(),
                problem: "not a process id".into(),
            })
        }
    };
    if pid != my_pid {
        return Ok(Vec::new());
    }
    if let Some(id) = env.listen_pidfdid {
        let id: u64 = id.trim().parse().map_err(|_| ListenError::BadEnvironment {
            variable: LISTEN_PIDFDID,
            value: id.to_owned(),
            problem: "not a pidfd inode number".into(),
        })?;
        // Without pidfs nobody can check it: accepted, as by sd_listen_fds().
        if my_pidfd_id().is_some_and(|mine| mine != id) {
            return Ok(Vec::new());
        }
    }
    let listen_fds = env.listen_fds;
    let listen_fdnames = env.listen_fdnames;
    let Some(count) = listen_fds else {
        return Ok(Vec::new());
    };
    let count: usize = count
        .trim()
        .parse()
        .ok()
        .filter(|n| *n <= (i32::MAX - LISTEN_FDS_START) as usize)
        .ok_or_else(|| ListenError::BadEnvironment {
            variable: LISTEN_FDS,
            value: count.to_owned(),
            problem: "not a descriptor count".into(),
        })?;
    // Checked before anything is allocated per descriptor: no process can
    // hold descriptors numbered beyond its hard RLIMIT_NOFILE, so a larger
    // count is a corrupt environment, not a reason to allocate gigabytes.
    let limit = descriptor_limit();
    if count > limit {
        return Err(ListenError::BadEnvironment {
            variable: LISTEN_FDS,
            value: count.to_string(),
            problem: format!(
                "more descriptors than this process can have open (its hard RLIMIT_NOFILE is {limit})"
            ),
        });
    }
    if count == 0 {
        return Ok(Vec::new());
    }
    match listen_fdnames {
        None => Ok(vec![UNKNOWN_NAME.to_owned(); count]),
        Some(names) => {
            let names: Vec<String> = names.split(':').map(str::to_owned).collect();
            if names.len() != count {
                return Err(ListenError::NameCountMismatch {
                    fds: count,
                    names: names.len(),
                });
            }
            Ok(names)
        }
    }
}

/// How many descriptors this process can have at most: its hard
/// `RLIMIT_NOFILE`, or the largest descriptor number when unlimited.
fn descriptor_limit() -> usize {
    let max = (i32::MAX - LISTEN_FDS_START) as u64;
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(max);
    hard.min(max) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(
        pid: Option<&'a str>,
        n: Option<&'a str>,
        names: Option<&'a str>,
    ) -> Environment<'a> {
        Environment {
            listen_pid: pid,
            listen_pidfdid: None,
            listen_fds: n,
            listen_fdnames: names,
        }
    }

    fn parse_environment(
        pid: Option<&str>,
        n: Option<&str>,
        names: Option<&str>,
        my_pid: u32,
    ) -> Result<Vec<String>, ListenError> {
        super::parse_environment(&env(pid, n, names), my_pid, || Some(7))
    }

    fn parse(pid: Option<&str>, n: Option<&str>, names: Option<&str>) -> Vec<String> {
        parse_environment(pid, n, names, 42).unwrap()
    }

    fn with_pidfd_id(id: &str, mine: Option<u64>) -> Result<Vec<String>, ListenError> {
        let env = Environment {
            listen_pidfdid: Some(id),
            ..env(Some("42"), Some("1"), Some("web"))
        };
        super::parse_environment(&env, 42, || mine)
    }

    #[test]
    fn a_pidfd_id_naming_us_is_accepted() {
        assert_eq!(with_pidfd_id("7", Some(7)).unwrap(), ["web"]);
    }

    #[test]
    fn a_pidfd_id_naming_another_process_takes_nothing() {
        // The pid was recycled, or a wrapper passed the manager's value on.
        assert!(with_pidfd_id("8", Some(7)).unwrap().is_empty());
    }

    #[test]
    fn a_pidfd_id_that_cannot_be_checked_is_accepted() {
        assert_eq!(with_pidfd_id("8", None).unwrap(), ["web"]);
    }

    #[test]
    fn a_malformed_pidfd_id_is_an_error_naming_it() {
        let err = with_pidfd_id("x", Some(7)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("LISTEN_PIDFDID=\"x\" is invalid"),
            "{err}"
        );
    }

    #[test]
    fn the_pidfd_id_is_not_looked_at_for_another_pid() {
        let env = Environment {
            listen_pidfdid: Some("x"),
            ..env(Some("41"), Some("1"), None)
        };
        let mine = || -> Option<u64> { panic!("must not be asked") };
        assert!(super::parse_environment(&env, 42, mine).unwrap().is_empty());
    }

    #[test]
    fn nothing_without_listen_pid() {
        assert!(parse(None, Some("2"), Some("a:b")).is_empty());
    }

    #[test]
    fn nothing_for_another_process() {
        assert!(parse(Some("41"), Some("2"), Some("a:b")).is_empty());
    }

    #[test]
    fn nothing_without_listen_fds_or_with_zero() {
        assert!(parse(Some("42"), None, None).is_empty());
        assert!(parse(Some("42"), Some("0"), None).is_empty());
    }

    #[test]
    fn names_in_order() {
        assert_eq!(
            parse(Some("42"), Some("3"), Some("web:admin:web")),
            ["web", "admin", "web"]
        );
    }

    #[test]
    fn missing_names_are_unknown() {
        assert_eq!(parse(Some("42"), Some("2"), None), ["unknown", "unknown"]);
    }

    #[test]
    fn empty_names_are_kept_empty() {
        assert_eq!(parse(Some("42"), Some("2"), Some(":x")), ["", "x"]);
    }

    #[test]
    fn short_or_long_name_list_is_rejected() {
        let err = parse_environment(Some("42"), Some("3"), Some("a:b"), 42).unwrap_err();
        assert!(matches!(
            err,
            ListenError::NameCountMismatch { fds: 3, names: 2 }
        ));
        assert!(err.to_string().contains("LISTEN_FDNAMES holds 2 names"));
        let err = parse_environment(Some("42"), Some("1"), Some("a:b"), 42).unwrap_err();
        assert!(matches!(
            err,
            ListenError::NameCountMismatch { fds: 1, names: 2 }
        ));
    }

    #[test]
    fn malformed_values_are_errors_naming_the_variable() {
        for (pid, n, var) in [
            ("x", "1", "LISTEN_PID"),
            ("0", "1", "LISTEN_PID"),
            ("-5", "1", "LISTEN_PID"),
            ("42", "two", "LISTEN_FDS"),
            ("42", "-1", "LISTEN_FDS"),
            ("42", "99999999999", "LISTEN_FDS"),
        ] {
            let err = parse_environment(Some(pid), Some(n), None, 42).unwrap_err();
            match &err {
                ListenError::BadEnvironment { variable, .. } => assert_eq!(*variable, var),
                other => panic!("unexpected {other:?}"),
            }
            assert!(err.to_string().starts_with(var), "{err}");
        }
    }

    #[test]
    fn a_count_beyond_the_descriptor_limit_is_refused_before_allocating() {
        // Without LISTEN_FDNAMES a name is made for every descriptor: two
        // billion of them aborted the process before the bound.
        let err = parse_environment(Some("42"), Some("2000000000"), None, 42).unwrap_err();
        match &err {
            ListenError::BadEnvironment {
                variable, problem, ..
            } => {
                assert_eq!(*variable, "LISTEN_FDS");
                assert!(problem.contains("hard RLIMIT_NOFILE"), "{problem}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let limit = descriptor_limit();
        assert!(parse_environment(Some("42"), Some(&(limit + 1).to_string()), None, 42).is_err());
        assert_eq!(
            parse_environment(Some("42"), Some(&limit.min(4096).to_string()), None, 42)
                .unwrap()
                .len(),
            limit.min(4096)
        );
    }

    fn set_with(names: &[&str]) -> ListenFds {
        let mut set = ListenFds::new();
        for name in names {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            set.push(NamedFd::new(*name, OwnedFd::from(l)));
        }
        set
    }

    #[test]
    fn lookup_by_name_takes_and_removes() {
        let mut set = set_with(&["a", "b"]);
        let b = set.tcp_listener("b").unwrap();
        assert!(b.local_addr().is_ok());
        assert_eq!(set.names().collect::<Vec<_>>(), ["a"]);
        let err = set.tcp_listener("b").unwrap_err();
        assert!(matches!(err, ListenError::NotFound { .. }));
        assert!(err.to_string().contains("(passed: a)"), "{err}");
    }

    #[test]
    fn several_under_one_name() {
        let mut set = set_with(&["web", "x", "web"]);
        let err = set.tcp_listener("web").unwrap_err();
        assert!(matches!(err, ListenError::Ambiguous { count: 2, .. }));
        assert_eq!(set.len(), 3, "a failed look-up removes nothing");
        assert_eq!(set.tcp_listeners("web").unwrap().len(), 2);
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn wrong_kind_is_an_error_and_the_descriptor_stays() {
        let mut set = set_with(&["web"]);
        let err = set.udp_socket("web").unwrap_err();
        assert!(
            err.to_string()
                .contains("is a TCP listener, not a UDP socket"),
            "{err}"
        );
        assert!(set.contains("web"), "the descriptor must not be lost");
        assert!(set.tcp_listener("web").is_ok());
    }

    #[test]
    fn plural_wrong_kind_leaves_all_in_place() {
        let mut set = set_with(&["web"]);
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        set.push(NamedFd::new("web", OwnedFd::from(u)));
        assert!(set.tcp_listeners("web").is_err());
        assert_eq!(set.len(), 2);
    }
}
