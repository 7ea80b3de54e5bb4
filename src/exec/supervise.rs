//! The event loop of one generation.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::process::{Child, ExitStatus};
use std::str::FromStr;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::process::{pidfd_open, Pid, PidfdFlags};
use tracing::{error, info, warn};

use super::program::{spawn_program, ProgramSpec};
use super::relay::{NotifyRelay, RelayMessage};
use crate::listen::{ListenFds, NamedFd};
use crate::notify::{FdPoll, Notification, Notifier};
use crate::spec::ListenerSpec;
use crate::UnsetEnv;

/// How fdstore-exec decides that the program is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyMode {
    /// The program sends `READY=1` to its `NOTIFY_SOCKET`.
    Notify,
    /// Ready as soon as it has started.
    Exec,
    /// Ready after it has run for this long.
    Delay(Duration),
    /// Ready once this shell command exits 0 (tried every 100 ms).
    Command(String),
}

impl FromStr for ReadyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "notify" => Ok(ReadyMode::Notify),
            "exec" => Ok(ReadyMode::Exec),
            _ => {
                if let Some(d) = s.strip_prefix("delay:") {
                    crate::parse_duration(d).map(ReadyMode::Delay)
                } else if let Some(c) = s.strip_prefix("command:") {
                    if c.trim().is_empty() {
                        Err("command: needs a shell command, for example command:curl -fs http://127.0.0.1:8080/health".into())
                    } else {
                        Ok(ReadyMode::Command(c.to_owned()))
                    }
                } else {
                    Err(format!(
                        "{s:?} is not a readiness mode; use notify, exec, delay:DURATION or command:SHELL-COMMAND"
                    ))
                }
            }
        }
    }
}

/// What fdstore-exec runs, and how.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listeners to create (and store) when systemd did not pass them.
    pub listen: Vec<ListenerSpec>,
    /// The program.
    pub program: ProgramSpec,
    /// How readiness is detected.
    pub ready: ReadyMode,
    /// How long the program may take to become ready.
    pub ready_timeout: Duration,
}

/// How fdstore-exec should end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit with this status.
    Exit(i32),
    /// Die by this signal, as the program did.
    Signal(Signal),
}

/// A failure that ends fdstore-exec, with the exit status that fits it.
#[derive(Debug)]
pub struct ExecError {
    /// What went wrong and what to do about it.
    pub message: String,
    /// The sysexits status.
    pub status: i32,
}

impl fmt::Display for ExecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExecError {}

/// sysexits(3) statuses used by fdstore-exec.
pub mod sysexits {
    /// Bad command line or configuration.
    pub const USAGE: i32 = 64;
    /// A needed resource (a port, a path) is unavailable.
    pub const UNAVAILABLE: i32 = 69;
    /// An operating-system error.
    pub const OSERR: i32 = 71;
    /// Configuration of the environment is wrong.
    pub const CONFIG: i32 = 78;
}

fn fail(status: i32, message: impl Into<String>) -> ExecError {
    ExecError {
        message: message.into(),
        status,
    }
}

/// The signals fdstore-exec handles itself (through a signalfd).
fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        set.add(s);
    }
    set
}

/// Takes the listeners systemd passed and creates (and stores) the ones named
/// by `specs` that it did not pass.
fn gather_listeners(
    specs: &[ListenerSpec],
    notifier: &Notifier,
) -> Result<Vec<NamedFd>, ExecError> {
    let received = ListenFds::from_env(UnsetEnv::Yes)
        .map_err(|e| fail(sysexits::CONFIG, format!("receiving listeners: {e}")))?;
    let mut names: Vec<&str> = Vec::new();
    for spec in specs {
        if names.contains(&spec.name()) {
            return Err(fail(
                sysexits::USAGE,
                format!(
                    "--listen names {:?} twice; give every listener its own name",
                    spec.name()
                ),
            ));
        }
        names.push(spec.name());
    }
    let mut listeners: Vec<NamedFd> = Vec::new();
    for fd in received {
        info!(name = fd.name(), fd = fd.as_raw_fd(), "received listener");
        listeners.push(fd);
    }
    for spec in specs {
        if listeners.iter().any(|l| l.name() == spec.name()) {
            continue;
        }
        let fd = spec
            .bind()
            .map_err(|e| fail(sysexits::UNAVAILABLE, e.to_string()))?;
        match notifier.store_fds(spec.name(), &[fd.as_fd()], FdPoll::Watch) {
            Ok(_) => info!(listener = %spec, "created listener and put it into the fd store"),
            Err(e) => warn!(
                listener = %spec,
                "created listener, but could not put it into the fd store ({e}); it will not survive a restart"
            ),
        }
        listeners.push(fd);
    }
    Ok(listeners)
}

/// The state of the one generation this process runs.
struct Generation {
    number: u64,
    child: Child,
    pidfd: OwnedFd,
    started: Instant,
    ready: bool,
    program_status: Option<String>,
}

impl Generation {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn status_text(&self) -> String {
        let mut text = format!("generation {}, pid {}", self.number, self.pid());
        match &self.program_status {
            Some(s) => text.push_str(&format!(": {s}")),
            None if self.ready => text.push_str(": serving"),
            None => text.push_str(": starting"),
        }
        text
    }
}

/// Runs the program until it ends; returns how fdstore-exec should end.
pub fn run(config: &Config) -> Result<Outcome, ExecError> {
    let signals = handled_signals();
    signals
        .thread_block()
        .map_err(|e| fail(sysexits::OSERR, format!("blocking signals: {e}")))?;
    let signal_fd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| fail(sysexits::OSERR, format!("creating a signalfd: {e}")))?;
    let notifier = Notifier::from_env().map_err(|e| fail(sysexits::CONFIG, e.to_string()))?;
    let listeners = gather_listeners(&config.listen, &notifier)?;
    let relay = NotifyRelay::bind()
        .map_err(|e| fail(sysexits::OSERR, format!("notification socket: {e}")))?;
    let child = spawn_program(&config.program, &listeners, relay.address()).map_err(|e| {
        fail(
            sysexits::OSERR,
            format!("starting {}: {e}", config.program.trampoline.display()),
        )
    })?;
    let pid = child.id();
    let pidfd = pidfd_open(
        Pid::from_raw(pid as i32).expect("a child pid is positive"),
        PidfdFlags::empty(),
    )
    .map_err(|e| fail(sysexits::OSERR, format!("pidfd_open: {e}")))?;
    info!(pid, program = ?config.program.program, listeners = listeners.len(), "started generation 1");
    let mut generation = Generation {
        number: 1,
        child,
        pidfd,
        started: Instant::now(),
        ready: false,
        program_status: None,
    };
    let _ = notifier.status(&generation.status_text());
    let ready_deadline = generation.started + config.ready_timeout;
    let mut next_check = generation.started;
    let mut stopping = false;

    if config.ready == ReadyMode::Exec {
        become_ready(&mut generation, &notifier);
    }
    loop {
        let now = Instant::now();
        if !generation.ready && !stopping {
            match &config.ready {
                ReadyMode::Delay(d) if now >= generation.started + *d => {
                    become_ready(&mut generation, &notifier)
                }
                ReadyMode::Command(cmd) if now >= next_check => {
                    if check_command(cmd) {
                        become_ready(&mut generation, &notifier);
                    }
                    next_check = Instant::now() + Duration::from_millis(100);
                }
                _ => {}
            }
            if !generation.ready && Instant::now() >= ready_deadline {
                let message = format!(
                    "generation {} (pid {}) was not ready within {:?}; stopping it",
                    generation.number,
                    generation.pid(),
                    config.ready_timeout
                );
                error!("{message}");
                let _ = notifier.status(&message);
                let _ = generation.child.kill();
                let _ = generation.child.wait();
                return Err(fail(sysexits::UNAVAILABLE, message));
            }
        }
        let timeout = if generation.ready || stopping {
            None
        } else {
            let mut until = ready_deadline;
            match &config.ready {
                ReadyMode::Delay(d) => until = until.min(generation.started + *d),
                ReadyMode::Command(_) => until = until.min(next_check),
                _ => {}
            }
            Some(until.saturating_duration_since(Instant::now()))
        };
        let ready_fds = wait_readable(
            &[signal_fd.as_fd(), relay.as_fd(), generation.pidfd.as_fd()],
            timeout,
        )
        .map_err(|e| fail(sysexits::OSERR, format!("poll: {e}")))?;

        if ready_fds[1] {
            while let Ok(Some(message)) = relay.recv() {
                handle_message(message, &mut generation, &config.ready, &notifier);
            }
        }
        if ready_fds[0] {
            while let Ok(Some(info)) = signal_fd.read_signal() {
                let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else {
                    continue;
                };
                match signal {
                    Signal::SIGHUP => warn!(
                        "SIGHUP received: reloading by hand-over is not available in this version; ignored"
                    ),
                    Signal::SIGUSR1 | Signal::SIGUSR2 => forward(&generation, signal),
                    _ => {
                        info!(?signal, pid = generation.pid(), "stopping: forwarding the signal to the program");
                        stopping = true;
                        forward(&generation, signal);
                    }
                }
            }
        }
        if ready_fds[2] {
            if let Ok(Some(status)) = generation.child.try_wait() {
                return Ok(finish(&generation, status, stopping, &notifier));
            }
        }
    }
}

fn become_ready(generation: &mut Generation, notifier: &Notifier) {
    generation.ready = true;
    let took = generation.started.elapsed();
    info!(
        pid = generation.pid(),
        ?took,
        "generation {} is ready",
        generation.number
    );
    let status = generation.status_text();
    if let Err(e) = notifier.notify(&[Notification::Ready, Notification::Status(&status)]) {
        warn!("telling the service manager about readiness: {e}");
    }
}

fn handle_message(
    message: RelayMessage,
    generation: &mut Generation,
    mode: &ReadyMode,
    notifier: &Notifier,
) {
    if message.field("READY") == Some("1") && *mode == ReadyMode::Notify && !generation.ready {
        become_ready(generation, notifier);
    }
    if let Some(status) = message.field("STATUS") {
        generation.program_status = Some(status.to_owned());
        let _ = notifier.status(&generation.status_text());
    }
    // Fields that concern the unit as a whole pass through unchanged.
    let mut passed = String::new();
    for line in message.text.lines() {
        let key = line.split_once('=').map_or(line, |(k, _)| k);
        match key {
            "WATCHDOG"
            | "WATCHDOG_USEC"
            | "EXTEND_TIMEOUT_USEC"
            | "ERRNO"
            | "FDSTORE"
            | "FDSTOREREMOVE"
            | "FDNAME"
            | "FDPOLL" => {
                passed.push_str(line);
                passed.push('\n');
            }
            "READY" | "STATUS" => {}
            other => {
                info!(field = other, pid = ?message.sender_pid, "ignored a notification field from the program")
            }
        }
    }
    if !passed.is_empty() {
        let fds: Vec<BorrowedFd<'_>> = message.fds.iter().map(|f| f.as_fd()).collect();
        if let Err(e) = notifier.send_raw(passed.as_bytes(), &fds) {
            warn!("relaying the program's notification: {e}");
        }
    }
}

fn forward(generation: &Generation, signal: Signal) {
    let pid = nix::unistd::Pid::from_raw(generation.pid() as i32);
    if let Err(e) = nix::sys::signal::kill(pid, signal) {
        warn!(
            ?signal,
            pid = generation.pid(),
            "forwarding the signal: {e}"
        );
    }
}

fn finish(
    generation: &Generation,
    status: ExitStatus,
    stopping: bool,
    notifier: &Notifier,
) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    let described = describe(status);
    if stopping {
        info!(
            pid = generation.pid(),
            "the program {described} after the stop signal"
        );
    } else {
        let when = if generation.ready {
            "while serving"
        } else {
            "before it was ready"
        };
        error!(pid = generation.pid(), "the program {described} {when}");
        let _ = notifier.status(&format!(
            "generation {} (pid {}) {described} {when}",
            generation.number,
            generation.pid()
        ));
    }
    match (status.code(), status.signal()) {
        (Some(0), _) if !stopping && !generation.ready => Outcome::Exit(1),
        (Some(code), _) => Outcome::Exit(code),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(signal) => Outcome::Signal(signal),
            Err(_) => Outcome::Exit(128 + signal),
        },
        (None, None) => Outcome::Exit(1),
    }
}

/// "exited with status 3" / "was killed by SIGSEGV".
pub(crate) fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(s) => format!("was killed by {s}"),
            Err(_) => format!("was killed by signal {signal}"),
        },
        _ => "ended".to_owned(),
    }
}

/// Runs a readiness check command (`sh -c`), at most 5 s.
fn check_command(command: &str) -> bool {
    let Ok(mut child) = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
    else {
        return false;
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// Polls the descriptors; returns which are readable.
fn wait_readable(
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
) -> rustix::io::Result<Vec<bool>> {
    let mut polled: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    let timeout = timeout.and_then(|t| rustix::time::Timespec::try_from(t).ok());
    match poll(&mut polled, timeout.as_ref()) {
        Ok(_) => Ok(polled.iter().map(|p| !p.revents().is_empty()).collect()),
        Err(rustix::io::Errno::INTR) => Ok(vec![false; fds.len()]),
        Err(e) => Err(e),
    }
}
