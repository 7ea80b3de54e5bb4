//! In-process graceful upgrades; the public face is [`Upgrader`].

#[cfg(feature = "tokio")]
mod async_api;
mod drain;
mod worker;

pub use drain::{Drain, DrainNotice, DrainReason, Notified};

use std::ffi::OsString;
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::listen::{ListenFds, NamedFd, UnsetEnv};
use crate::notify::{Notification, Notifier};
use crate::protocol::generations::OlderGenerations;
use crate::protocol::handover::{Channel, Inheritance, Message, HANDOVER_ENV};
use crate::protocol::{AtMaxGenerations, GenerationBound};
use crate::spec::ListenerSpec;

/// Settings of an [`Upgrader`].
///
/// ```no_run
/// use std::time::Duration;
/// let options = fdstore::UpgradeOptions::default()
///     .ready_timeout(Duration::from_secs(30))
///     .drain_timeout(Duration::from_secs(20))
///     .max_generations(3)
///     .at_max_generations(fdstore::AtMaxGenerations::Refuse);
/// let upgrader = fdstore::Upgrader::with_options(options)?;
/// # Ok::<(), fdstore::UpgradeError>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UpgradeOptions {
    /// How long a new generation may take from its start to
    /// [`Upgrader::ready`] before it is killed and the upgrade fails.
    /// Default 90 s (as fdstore-exec's `--ready-timeout`).
    pub ready_timeout: Duration,
    /// How long a drained generation may take to finish its connections
    /// before the process is ended. Default 60 s (as fdstore-exec's
    /// `--drain-timeout`); keep it below the unit's `TimeoutStopSec=`.
    pub drain_timeout: Duration,
    /// How many generations (processes of the service: the serving one,
    /// the draining ones and a new one) may be alive at once; at least 2.
    /// Default 4 (as fdstore-exec's `--max-generations`).
    pub max_generations: u32,
    /// What an upgrade does when a new generation would exceed
    /// [`max_generations`](UpgradeOptions::max_generations): end the oldest
    /// draining generations early (the default, as fdstore-exec's
    /// `--at-max-generations`), or refuse as busy.
    pub at_max_generations: AtMaxGenerations,
}

impl Default for UpgradeOptions {
    fn default() -> Self {
        let bound = GenerationBound::default();
        UpgradeOptions {
            ready_timeout: Duration::from_secs(90),
            drain_timeout: Duration::from_secs(60),
            max_generations: bound.max(),
            at_max_generations: bound.at_max(),
        }
    }
}

impl UpgradeOptions {
    /// Sets [`ready_timeout`](UpgradeOptions::ready_timeout) (see the
    /// type's example).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Sets [`drain_timeout`](UpgradeOptions::drain_timeout) (see the
    /// type's example).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Sets [`max_generations`](UpgradeOptions::max_generations) (see the
    /// type's example); [`Upgrader::with_options`] refuses less than 2.
    pub fn max_generations(mut self, max: u32) -> Self {
        self.max_generations = max;
        self
    }

    /// Sets [`at_max_generations`](UpgradeOptions::at_max_generations)
    /// (see the type's example).
    pub fn at_max_generations(mut self, choice: AtMaxGenerations) -> Self {
        self.at_max_generations = choice;
        self
    }
}

/// What went wrong, for matching; the error's text says what to do.
///
/// ```no_run
/// use fdstore::UpgradeErrorKind;
/// let upgrader = fdstore::Upgrader::from_env()?;
/// if let Err(e) = upgrader.ready() {
///     if e.kind() == UpgradeErrorKind::Abandoned {
///         std::process::exit(1); // the previous generation gave up on us
///     }
/// }
/// # Ok::<(), fdstore::UpgradeError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpgradeErrorKind {
    /// Setting up (environment, listeners, signal handlers) failed.
    Setup,
    /// An upgrade is already in progress, or this generation is not ready.
    Busy,
    /// The unit is stopping, or this generation already handed over.
    Stopping,
    /// The new generation failed or was not ready in time; this generation
    /// keeps serving.
    Failed,
    /// The previous generation gave up on this one (it went away or
    /// timed out): this process must exit.
    Abandoned,
}

/// An error of the upgrade API: a kind and a message naming the problem and
/// the fix.
///
/// ```no_run
/// match fdstore::Upgrader::from_env() {
///     Ok(upgrader) => drop(upgrader),
///     Err(e) => {
///         eprintln!("cannot start: {e}");
///         std::process::exit(78);
///     }
/// }
/// ```
#[derive(Debug, Clone)]
pub struct UpgradeError {
    kind: UpgradeErrorKind,
    message: String,
}

impl UpgradeError {
    pub(crate) fn new(kind: UpgradeErrorKind, message: impl Into<String>) -> Self {
        UpgradeError {
            kind,
            message: message.into(),
        }
    }

    /// What went wrong (see [`UpgradeErrorKind`] for an example).
    pub fn kind(&self) -> UpgradeErrorKind {
        self.kind
    }
}

impl fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UpgradeError {}

fn setup(message: impl Into<String>) -> UpgradeError {
    UpgradeError::new(UpgradeErrorKind::Setup, message)
}

/// A completed upgrade, as [`Upgrader::upgrade`] returns it.
///
/// ```no_run
/// let upgrader = fdstore::Upgrader::from_env()?;
/// let done = upgrader.upgrade()?;
/// println!("generation {} (pid {}) took over in {:?}", done.generation, done.pid, done.took);
/// # Ok::<(), fdstore::UpgradeError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgraded {
    /// The new main process.
    pub pid: u32,
    /// Its generation number.
    pub generation: u64,
    /// From the request to the new generation serving as the main process.
    pub took: Duration,
}

/// State shared by the API and the upgrade thread.
pub(crate) struct Shared {
    pub options: UpgradeOptions,
    /// The bound on generations alive, from the options.
    pub bound: GenerationBound,
    pub notifier: Notifier,
    pub generation: u64,
    /// The executable as it was found at start (a package upgrade replaces
    /// the file; the next generation runs the new one).
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub drain: Drain,
    pub state: Mutex<State>,
    /// The write end of the upgrade thread's wake-up pipe. Kept here, not
    /// in the [`Upgrader`], so that it lives as long as the thread: dropping
    /// the last `Upgrader` must not leave the thread polling a pipe at end
    /// of file (which is always readable: a busy loop).
    pub wake: OwnedFd,
}

/// What changes while the generation runs.
pub(crate) struct State {
    /// Every listener of this generation (our own copies), handed on in
    /// full at an upgrade, whether the program asked for it or not.
    pub listeners: Vec<NamedFd>,
    /// Names created from specs by this generation or its predecessors.
    pub managed: Vec<String>,
    /// Created before this generation was the main process; stored once it
    /// is.
    pub unstored: Vec<String>,
    /// The channel to the previous generation, until this one is main.
    pub predecessor: Option<Channel>,
    /// Whether [`Upgrader::ready`] was called.
    pub ready: bool,
    /// The names this generation asked for; a managed name not among them
    /// at [`Upgrader::ready`] was removed from the program's specs.
    pub requested: Vec<String>,
    /// The older generations still draining (see `protocol::generations`).
    pub older: OlderGenerations,
}

pub(crate) enum Command {
    Upgrade(mpsc::Sender<Result<Upgraded, UpgradeError>>),
}

/// In-process graceful upgrades: what fdstore-exec does for a wrapped
/// program, done by a Rust service itself.
///
/// An [`Upgrader`] gives the service its listeners by name (inherited from
/// systemd or the previous generation, or created from a
/// [`ListenerSpec`](crate::ListenerSpec) and put into the fd store), reports
/// readiness, and replaces the running process with a new one on request:
/// `fdstore-exec reload` (the same control socket as fdstore-exec, so the
/// same `ExecReload=` line works) or the program's own reload command
/// ([`crate::reload()`], [`crate::client::run_if_asked`]:
/// `ExecReload=/usr/bin/myapp reload`), SIGHUP (`Type=notify-reload`, under
/// a service manager only), or [`Upgrader::upgrade`]. The new generation is the program's executable as
/// it is on disk now, started with the same arguments; it becomes the unit's
/// main process (a child of the manager, not of the old process) once it is
/// ready, and only then is the old generation told to [`drain`](Drain).
/// If it fails, the old generation keeps serving and the requester learns
/// why. The wire protocol is the one in `fdstore(7)`.
///
/// ```no_run
/// use std::io::{Read, Write};
///
/// let upgrader = fdstore::Upgrader::from_env()?;
/// let listener = upgrader.tcp_listener("web=tcp:127.0.0.1:8080")?;
/// upgrader.ready()?;
/// let drain = upgrader.drain();
/// listener.set_nonblocking(true)?;
/// while drain.notice().is_none() {
///     match listener.accept() {
///         Ok((mut stream, _)) => {
///             let mut request = [0u8; 1024];
///             let _ = stream.read(&mut request);
///             let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nhi\n");
///         }
///         Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
///             std::thread::sleep(std::time::Duration::from_millis(5));
///         }
///         Err(e) => return Err(e.into()),
///     }
/// }
/// // Drained: queued connections stay in the listener for the new generation.
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// One per process, cheap to clone: every clone is the same upgrader (an
/// `Arc` inside), so hand clones to tasks and threads instead of wrapping it
/// in an `Arc`. Dropping every clone is harmless: the upgrade thread keeps
/// answering reloads and signals, without using the CPU, until the process
/// exits.
///
/// # Blocking
///
/// [`ready`](Upgrader::ready) blocks in a new generation until the previous
/// one made this process the main process (at most
/// [`UpgradeOptions::ready_timeout`], usually milliseconds);
/// [`upgrade`](Upgrader::upgrade) blocks until the new generation is ready
/// or failed (at most the ready timeout plus a few seconds). The other
/// methods do not wait. In async code call the `_async` forms (feature
/// `tokio`), which run the wait on tokio's blocking pool.
///
/// # Caveats: process-wide effects
///
/// - Creating it installs handlers (a raw `sigaction`, replacing any handler
///   installed before) for SIGTERM and SIGINT (drain, then exit by the
///   deadline) and, only when a service manager runs the process
///   (`$NOTIFY_SOCKET` is set), for SIGHUP (upgrade, as
///   `Type=notify-reload` sends it). Outside a manager SIGHUP keeps its
///   default: closing the terminal ends the program instead of starting a
///   detached copy. A handler the application installs later (tokio's
///   `signal::unix`, signal-hook) replaces or chains onto these: tokio's
///   chains, so its SIGHUP stream fires too while the upgrade also runs;
///   do not treat SIGHUP, SIGTERM or SIGINT as your own.
/// - It takes `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_PIDFDID` and
///   `LISTEN_FDNAMES` out of the environment (so that a child does not take
///   them for its own), and marks the inherited listeners close-on-exec
///   (until then, a process another thread starts inherits them, and keeps
///   them open after this generation is gone). Changing the environment is
///   not thread-safe in glibc: a concurrent `getenv` in another thread may
///   read freed memory. Hence "create it before starting threads that spawn
///   processes or read the environment". Inside `#[tokio::main]` that holds
///   (the runtime's idle workers do neither), so creating it first thing in
///   an async `main` is fine; the airtight pattern creates it before the
///   runtime:
///
/// ```no_run
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let upgrader = fdstore::Upgrader::from_env()?; // before any thread
///     tokio::runtime::Runtime::new()?.block_on(serve(upgrader))
/// }
/// # async fn serve(_: fdstore::Upgrader) -> Result<(), Box<dyn std::error::Error>> { Ok(()) }
/// ```
///
/// - It starts a thread (`fdstore-upgrade`) that answers
///   `fdstore-exec reload`, `fdstore-exec status` and [`reload`](crate::reload()),
///   and ends the process at the drain deadline.
/// - An upgrade starts the program's executable again with the same
///   arguments, its environment and the listeners; ask for every listener
///   (by spec) before [`ready`](Upgrader::ready): a listener that an earlier
///   generation created from a spec and this one does not ask for is taken
///   out of the fd store and closed once this generation is the main process.
#[derive(Debug, Clone)]
pub struct Upgrader {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("generation", &self.generation)
            .field("program", &self.program)
            .finish_non_exhaustive()
    }
}

impl Upgrader {
    /// [`with_options`](Upgrader::with_options) with the defaults.
    ///
    /// ```no_run
    /// let upgrader = fdstore::Upgrader::from_env()?;
    /// # Ok::<(), fdstore::UpgradeError>(())
    /// ```
    pub fn from_env() -> Result<Upgrader, UpgradeError> {
        Upgrader::with_options(UpgradeOptions::default())
    }

    /// Takes the listeners passed in `LISTEN_FDS` (by systemd or the
    /// previous generation), the manager's `NOTIFY_SOCKET`, and, in a new
    /// generation, the channel to the previous one. Call it early, before
    /// starting threads that spawn processes or read the environment (see
    /// *Caveats* on [`Upgrader`]: `#[tokio::main]` is fine).
    pub fn with_options(options: UpgradeOptions) -> Result<Upgrader, UpgradeError> {
        let bound = GenerationBound::new(options.max_generations, options.at_max_generations)
            .map_err(|e| setup(format!("UpgradeOptions: {e}")))?;
        let notifier = Notifier::from_env().map_err(|e| setup(e.to_string()))?;
        let inheritance = match std::env::var_os(HANDOVER_ENV) {
            Some(value) => {
                std::env::remove_var(HANDOVER_ENV);
                Some(Inheritance::parse(&value.to_string_lossy()).map_err(setup)?)
            }
            None => None,
        };
        let received = ListenFds::from_env(UnsetEnv::Yes)
            .map_err(|e| setup(format!("receiving listeners: {e}")))?;
        let mut older = OlderGenerations::default();
        let predecessor = match &inheritance {
            Some(i) => {
                // The previous generation put the channel at this number
                // for us, right after the LISTEN_FDS range.
                let fd = crate::sys::fd::take_inherited_once(i.fd)
                    .map_err(|e| setup(format!("the hand-over channel (fd {}): {e}", i.fd)))?;
                let channel = Channel::from_fd(fd);
                older = OlderGenerations::inherit(i).map_err(setup)?;
                channel
                    .send(&Message::Hello(std::process::id()))
                    .map_err(|e| setup(format!("greeting the previous generation: {e}")))?;
                Some(channel)
            }
            None => None,
        };
        let program = std::env::current_exe().map_err(|e| {
            setup(format!(
                "cannot find this program's executable for the next generation: {e}"
            ))
        })?;
        let (wake_read, wake) = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )
        .map_err(|e| setup(format!("creating the wake-up pipe: {e}")))?;
        let shared = Arc::new(Shared {
            options,
            bound,
            notifier,
            generation: inheritance.as_ref().map_or(1, |i| i.generation),
            program,
            args: std::env::args_os().collect(),
            drain: Drain::default(),
            state: Mutex::new(State {
                listeners: received.into_iter().collect(),
                managed: inheritance.map(|i| i.managed).unwrap_or_default(),
                unstored: Vec::new(),
                predecessor,
                ready: false,
                requested: Vec::new(),
                older,
            }),
            wake,
        });
        let signals = crate::sys::signals::install(shared.notifier.is_enabled())
            .map_err(|e| setup(format!("installing signal handlers: {e}")))?;
        let (commands, receiver) = mpsc::channel();
        worker::start(shared.clone(), signals, wake_read, receiver)
            .map_err(|e| setup(format!("starting the upgrade thread: {e}")))?;
        info!(generation = shared.generation, "fdstore upgrader started");
        Ok(Upgrader { shared, commands })
    }

    /// This generation's number: 1 for the first process of a unit's run,
    /// one more at each upgrade.
    ///
    /// ```no_run
    /// let upgrader = fdstore::Upgrader::from_env()?;
    /// eprintln!("generation {}", upgrader.generation());
    /// # Ok::<(), fdstore::UpgradeError>(())
    /// ```
    pub fn generation(&self) -> u64 {
        self.shared.generation
    }

    /// The listener for `spec` (`NAME=KIND:ADDRESS[,OPTION]...`, see
    /// [`ListenerSpec`]): the one passed under NAME if there is one (from a
    /// socket unit, the fd store or the previous generation), else a new one
    /// bound to the address and put into the fd store so that it outlives
    /// crashes and restarts. The caller gets its own descriptor; the
    /// upgrader keeps one to hand to the next generation.
    ///
    /// ```no_run
    /// let upgrader = fdstore::Upgrader::from_env()?;
    /// let fd = upgrader.listener("dns=udp:127.0.0.1:5353")?;
    /// let socket = std::net::UdpSocket::from(fd);
    /// # Ok::<(), fdstore::UpgradeError>(())
    /// ```
    pub fn listener(&self, spec: &str) -> Result<OwnedFd, UpgradeError> {
        let spec: ListenerSpec = spec.parse().map_err(|e| setup(format!("{e}")))?;
        let mut state = self.lock();
        let name = spec.name().to_owned();
        if !state.requested.contains(&name) {
            state.requested.push(name.clone());
        }
        if let Some(fd) = state.listeners.iter().find(|l| l.name() == name) {
            if let Some(problem) = spec.mismatch(fd) {
                if state.predecessor.is_some() {
                    // A reload: as fdstore-exec, fail it (the old
                    // generation keeps serving) rather than serve on the
                    // old address while the configuration names another.
                    return Err(setup(format!(
                        "the listener {name:?} cannot become {spec}: {problem}. A listener keeps its address across a reload; give the new address a new name (the old one is closed after the reload), or restart the unit"
                    )));
                }
                warn!(
                    name,
                    "the listener passed as {name:?} does not match {spec}: {problem}; using it"
                );
            }
            return fd
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| setup(format!("duplicating listener {name:?}: {e}")));
        }
        if let Some(max) = self.shared.notifier.fd_store_max() {
            // Those this generation keeps (asked for), not those it retires.
            let mut names: Vec<&str> = state
                .managed
                .iter()
                .filter(|n| state.requested.contains(n))
                .map(String::as_str)
                .collect();
            if !names.contains(&name.as_str()) {
                names.push(&name);
            }
            if names.len() > max {
                return Err(setup(crate::fd_store::fd_store_too_small(max, &names)));
            }
        }
        let fd = spec.bind().map_err(|e| setup(e.to_string()))?;
        let copy = fd
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| setup(format!("duplicating listener {name:?}: {e}")))?;
        if state.predecessor.is_none() {
            crate::fd_store::store(&self.shared.notifier, &fd);
        } else {
            state.unstored.push(name.clone());
        }
        if !state.managed.contains(&name) {
            state.managed.push(name);
        }
        state.listeners.push(fd);
        Ok(copy)
    }

    /// [`listener`](Upgrader::listener) as a std TCP listener. A descriptor
    /// passed under the name that is not a TCP listener is an error naming
    /// what it is.
    ///
    /// ```no_run
    /// let upgrader = fdstore::Upgrader::from_env()?;
    /// let web = upgrader.tcp_listener("web=tcp:[::]:8080,backlog=1024")?;
    /// # Ok::<(), fdstore::UpgradeError>(())
    /// ```
    pub fn tcp_listener(&self, spec: &str) -> Result<std::net::TcpListener, UpgradeError> {
        self.typed(spec, crate::FdKind::TcpListener)
            .map(std::net::TcpListener::from)
    }

    /// [`listener`](Upgrader::listener) as a std UDP socket.
    ///
    /// ```no_run
    /// let upgrader = fdstore::Upgrader::from_env()?;
    /// let dns = upgrader.udp_socket("dns=udp:127.0.0.1:5353")?;
    /// # Ok::<(), fdstore::UpgradeError>(())
    /// ```
    pub fn udp_socket(&self, spec: &str) -> Result<std::net::UdpSocket, UpgradeError> {
        self.typed(spec, crate::FdKind::UdpSocket)
            .map(std::net::UdpSocket::from)
    }

    /// [`listener`](Upgrader::listener) as a std Unix stream listener.
    ///
    /// ```no_run
    /// let upgrader = fdstore::Upgrader::from_env()?;
    /// let api = upgrader.unix_listener("api=unix:/run/app/api.sock,mode=0660")?;
    /// # Ok::<(), fdstore::UpgradeError>(())
    /// ```
    pub fn unix_listener(
        &self,
        spec: &str,
    ) -> Result<std::os::unix::net::UnixListener, UpgradeError> {
        self.typed(spec, crate::FdKind::UnixListener)
            .map(std::os::unix::net::UnixListener::from)
    }

    /// [`tcp_listener`](Upgrader::tcp_listener) as a tokio listener (non-blocking;
    /// call it inside a tokio runtime).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// let upgrader = fdstore::Upgrader::from_env()?;
    /// let listener = upgrader.tokio_tcp_listener("web=tcp:127.0.0.1:8080")?;
    /// let (stream, peer) = listener.accept().await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub fn tokio_tcp_listener(&self, spec: &str) -> Result<tokio::net::TcpListener, UpgradeError> {
        let listener = self.tcp_listener(spec)?;
        listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
            .map_err(|e| setup(format!("making {spec:?} a tokio listener: {e}")))
    }

    /// [`unix_listener`](Upgrader::unix_listener) as a tokio listener.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// let upgrader = fdstore::Upgrader::from_env()?;
    /// let api = upgrader.tokio_unix_listener("api=unix:@app-api")?;
    /// let (stream, _) = api.accept().await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub fn tokio_unix_listener(
        &self,
        spec: &str,
    ) -> Result<tokio::net::UnixListener, UpgradeError> {
        let listener = self.unix_listener(spec)?;
        listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixListener::from_std(listener))
            .map_err(|e| setup(format!("making {spec:?} a tokio listener: {e}")))
    }

    /// [`udp_socket`](Upgrader::udp_socket) as a tokio socket.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// let upgrader = fdstore::Upgrader::from_env()?;
    /// let dns = upgrader.tokio_udp_socket("dns=udp:127.0.0.1:5353")?;
    /// let mut buf = [0u8; 512];
    /// let (n, peer) = dns.recv_from(&mut buf).await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub fn tokio_udp_socket(&self, spec: &str) -> Result<tokio::net::UdpSocket, UpgradeError> {
        let socket = self.udp_socket(spec)?;
        socket
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UdpSocket::from_std(socket))
            .map_err(|e| setup(format!("making {spec:?} a tokio socket: {e}")))
    }

    /// Says this generation serves. In the first generation it sends
    /// `READY=1` to the manager. In a new generation it tells the previous
    /// one, which makes it the unit's main process, then sends `READY=1`;
    /// it returns once this process is the main process. An error of kind
    /// [`Abandoned`](UpgradeErrorKind::Abandoned) means the previous
    /// generation gave up on this one (the upgrade failed): exit.
    ///
    /// ```no_run
    /// let upgrader = fdstore::Upgrader::from_env()?;
    /// let listener = upgrader.tcp_listener("web=tcp:127.0.0.1:8080")?;
    /// // ... load the configuration, warm caches ...
    /// upgrader.ready()?;
    /// # Ok::<(), fdstore::UpgradeError>(())
    /// ```
    pub fn ready(&self) -> Result<(), UpgradeError> {
        let predecessor = self.lock().predecessor.take();
        if let Some(channel) = predecessor {
            self.become_main(&channel)?;
            self.retire_unrequested();
            let unstored: Vec<String> = std::mem::take(&mut self.lock().unstored);
            let state = self.lock();
            for name in unstored {
                if let Some(fd) = state.listeners.iter().find(|l| l.name() == name) {
                    crate::fd_store::store(&self.shared.notifier, fd);
                }
            }
            drop(state);
            self.notify_ready();
            // The previous generation starts draining now; it counts
            // against the bound until it is gone.
            let _ = channel.send(&Message::Done);
            self.lock().older.push(self.shared.generation - 1, channel);
            // The upgrade thread watches it from its next wake-up on, to
            // let go of it as soon as it ends.
            let _ = rustix::io::write(&self.shared.wake, &[0]);
        } else {
            self.notify_ready();
        }
        self.lock().ready = true;
        info!(
            generation = self.shared.generation,
            "generation {} is ready", self.shared.generation
        );
        Ok(())
    }

    /// Replaces this generation with a new one, as `fdstore-exec reload`
    /// does, and waits for the outcome: `Ok` once the new generation is
    /// ready and the unit's main process (this one is then draining), an
    /// error with the reason otherwise (this one keeps serving). One upgrade
    /// at a time: a second one meanwhile fails with
    /// [`Busy`](UpgradeErrorKind::Busy).
    ///
    /// ```no_run
    /// let upgrader = fdstore::Upgrader::from_env()?;
    /// upgrader.ready()?;
    /// match upgrader.upgrade() {
    ///     Ok(done) => eprintln!("generation {} (pid {}) took over", done.generation, done.pid),
    ///     Err(e) => eprintln!("still serving: {e}"),
    /// }
    /// # Ok::<(), fdstore::UpgradeError>(())
    /// ```
    pub fn upgrade(&self) -> Result<Upgraded, UpgradeError> {
        let (reply, outcome) = mpsc::channel();
        let gone = || UpgradeError::new(UpgradeErrorKind::Stopping, "the upgrade thread has ended");
        self.commands
            .send(Command::Upgrade(reply))
            .map_err(|_| gone())?;
        let _ = rustix::io::write(&self.shared.wake, &[0]);
        outcome.recv().map_err(|_| gone())?
    }

    /// The handle that says when this generation must drain.
    ///
    /// ```no_run
    /// let upgrader = fdstore::Upgrader::from_env()?;
    /// upgrader.ready()?;
    /// let notice = upgrader.drain().wait();
    /// eprintln!("draining ({:?}); {:?} left", notice.reason, notice.remaining());
    /// # Ok::<(), fdstore::UpgradeError>(())
    /// ```
    pub fn drain(&self) -> Drain {
        self.shared.drain.clone()
    }

    fn become_main(&self, channel: &Channel) -> Result<(), UpgradeError> {
        let abandoned = |why: String| {
            UpgradeError::new(
                UpgradeErrorKind::Abandoned,
                format!("the previous generation gave up on this one ({why}); exit"),
            )
        };
        channel
            .send(&Message::Ready)
            .map_err(|e| abandoned(format!("telling it we are ready: {e}")))?;
        let deadline = Instant::now() + self.shared.options.ready_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(abandoned(
                    "it did not make this process the main process in time".into(),
                ));
            }
            let _ = crate::sys::poll::wait_readable(&[channel.as_fd()], Some(left));
            match channel.recv() {
                Ok(Some(Some(Message::Main(_)))) => return Ok(()),
                Ok(Some(Some(Message::Failed(why)))) => return Err(abandoned(why)),
                Ok(Some(Some(_))) | Ok(None) => {}
                Ok(Some(None)) => return Err(abandoned("it closed the hand-over channel".into())),
                Err(e) => return Err(abandoned(e.to_string())),
            }
        }
    }

    /// Once this generation is the main process (only the main process may
    /// change the fd store): closes the listeners that an earlier generation
    /// created from a spec that this one did not ask for, and takes them out
    /// of the fd store, as fdstore-exec does with listeners removed from its
    /// configuration.
    fn retire_unrequested(&self) {
        let mut state = self.lock();
        let State {
            listeners,
            managed,
            requested,
            ..
        } = &mut *state;
        let retired: Vec<String> = managed
            .iter()
            .filter(|n| !requested.contains(n))
            .cloned()
            .collect();
        for name in &retired {
            listeners.retain(|l| l.name() != name);
            managed.retain(|n| n != name);
            match self.shared.notifier.remove_fds(name) {
                Ok(_) => info!(
                    name,
                    "listener {name:?} is no longer asked for: closed and removed from the fd store"
                ),
                Err(e) => warn!(
                    name,
                    "removing retired listener {name:?} from the fd store: {e}"
                ),
            }
        }
    }

    fn notify_ready(&self) {
        let status = format!("generation {}: serving", self.shared.generation);
        if let Err(e) = self
            .shared
            .notifier
            .notify(&[Notification::Ready, Notification::Status(&status)])
        {
            warn!("could not tell the service manager we are ready: {e}");
        }
    }

    fn typed(&self, spec: &str, kind: crate::FdKind) -> Result<OwnedFd, UpgradeError> {
        let fd = self.listener(spec)?;
        let actual = crate::FdKind::of(&fd)
            .map_err(|e| setup(format!("inspecting the listener for {spec:?}: {e}")))?;
        if actual != kind {
            return Err(setup(format!(
                "the listener for {spec:?} is {actual}, not {kind}: the name was passed with another kind of socket; give the spec another name or fix the socket unit"
            )));
        }
        Ok(fd)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}
