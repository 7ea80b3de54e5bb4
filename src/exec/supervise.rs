//! The event loop of one fdstore-exec process.
//!
//! A process plays up to three roles in turn:
//!
//! - **successor**: started by the previous main process for a reload; it
//!   starts its program, reports readiness over the hand-over channel and
//!   waits to be made the main process (see [`crate::protocol::handover`]);
//! - **main**: the unit's main process; it relays the program's
//!   notifications, answers the control socket and, on a reload, starts and
//!   hands over to a successor;
//! - **draining**: after a hand-over, it tells its program to drain, kills it
//!   after the drain timeout, and exits.
//!
//! Everything runs on one thread around `poll(2)`: a signalfd, the program's
//! notification socket and pidfd, the control socket and its clients, and the
//! hand-over channels.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use rustix::process::{pidfd_open, Pid, PidfdFlags};
use tracing::{debug, error, info, warn};

use super::config::{fail, Config, ExecError, Mode, Outcome, SignalRoles, STOP_SIGNALS};
use super::listeners::{all_specs, gather, ListenerSet};
use super::log_limit::{LogLimit, Verdict};
use super::program::spawn_program;
use super::readiness::Readiness;
use super::relay::{NotifyRelay, RelayMessage};
use super::spawn::spawn_successor;
use crate::fd_store::store;
use crate::listen::NamedFd;
use crate::notify::{Notification, Notifier};
use crate::protocol::control::{cgroup_of, ControlConnection, ControlEndpoint, Reply, Request};
use crate::protocol::generations::OlderGenerations;
use crate::protocol::handover::{
    make_main_process, told_to_end, Channel, Inheritance, Message, HANDOVER_ENV,
};
use crate::protocol::sysexits;
use crate::reload::{successor_events, Action, Event, Facts, Reload, Requester, BARRIER_TIMEOUT};
use crate::sys::poll::wait_readable;

/// At most this many "ignored a notification from outside" lines per
/// [`OUTSIDER_WINDOW`].
const OUTSIDER_LINES: u32 = 10;
const OUTSIDER_WINDOW: Duration = Duration::from_secs(10);
/// At most this many notifications of a successor's program are queued
/// until it is the main process.
const MAX_QUEUED: usize = 256;
/// How often a draining generation whose program exited looks whether the
/// processes the program left behind are gone.
const LEFTOVER_CHECK: Duration = Duration::from_millis(100);

/// The signals fdstore-exec handles itself (through a signalfd): the stop
/// signals, the reload signal and the forwarded ones (see [`SignalRoles`]).
fn handled_signals(roles: &SignalRoles) -> SigSet {
    let mut set = SigSet::empty();
    for s in roles.handled() {
        set.add(s);
    }
    set
}

/// The program of this generation.
struct Generation {
    number: u64,
    child: Child,
    pidfd: OwnedFd,
    started: Instant,
    ready: bool,
    program_status: Option<String>,
    /// How the program ended, once it was reaped (its process group may
    /// still have members).
    exited: Option<ExitStatus>,
}

impl Generation {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The processes of the program's process group still alive: the
    /// program and everything it started that did not leave the group.
    fn processes(&self) -> Vec<crate::sys::process_group::Member> {
        crate::sys::process_group::members(self.pid())
    }

    /// Kills the program's whole process group (SIGKILL).
    fn kill_all(&mut self) {
        // The program leads the group, numbered by its pid; while it is not
        // reaped, or any member lives, the number cannot be reused.
        if self.exited.is_none() || !self.processes().is_empty() {
            if let Err(e) = crate::sys::process_group::kill(self.pid()) {
                warn!(
                    pgid = self.pid(),
                    "killing the program's process group: {e}"
                );
            }
        }
        if self.exited.is_none() {
            let _ = self.child.kill();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Successor,
    Main,
    Draining { deadline: Instant, killed: bool },
}

/// What woke the loop.
#[derive(Debug, Clone, Copy)]
enum Source {
    Signals,
    Relay,
    Program,
    /// The control endpoint's descriptors (see [`ControlEndpoint::fds`]).
    Control(usize),
    Successor,
    Predecessor,
    /// A probe connection or a check command of the readiness checks.
    Readiness(usize),
    SuccessorLink,
}

struct Supervisor<'c> {
    config: &'c Config,
    notifier: Notifier,
    signal_fd: SignalFd,
    relay: NotifyRelay,
    generation: Generation,
    listeners: ListenerSet,
    role: Role,
    /// Bound at start, before this generation can become the main process;
    /// closed when it hands over.
    control: Option<ControlEndpoint>,
    own_cgroup: Option<String>,
    /// The reloads of this generation as the main process (see
    /// [`crate::reload`]).
    reload: Reload<ControlConnection>,
    /// The hand-over channel to the new generation, during a reload.
    handover: Option<Channel>,
    /// The channel to the previous generation: while a successor, and after
    /// that until the previous generation is gone.
    predecessor: Option<Channel>,
    /// The channel to the next generation, kept open while draining so
    /// that newer generations learn when this one is gone, and can tell it
    /// to end early ([`Message::End`]).
    successor_link: Option<Channel>,
    /// The older generations still draining (see [`crate::protocol::generations`]).
    older: OlderGenerations,
    /// Whether this draining generation was told to end early.
    ended_early: bool,
    last_reload: Option<String>,
    stopping: bool,
    /// The readiness checks, until the program is ready (or stopping).
    readiness: Option<Readiness>,
    queued: Vec<RelayMessage>,
    /// The journal lines about notifications from outside the unit.
    outsiders: LogLimit,
}

/// What this process inherited: the `LISTEN_FDS` descriptors and, for a new
/// generation, the hand-over channel.
///
/// Take it first thing in `main`, before anything opens a descriptor (the
/// journal's socket, the signalfd, the notification socket): when an
/// announced descriptor is not open, the kernel hands its number to the next
/// descriptor created, and that one would be taken, and passed to the
/// program, as a listener.
#[derive(Debug)]
pub struct Inherited {
    listeners: Result<crate::ListenFds, crate::ListenError>,
    handover: Result<Option<(Inheritance, Channel, OlderGenerations)>, ExecError>,
}

impl Inherited {
    /// Takes the inherited descriptors (once per process; the environment
    /// variables that announce them are removed). Errors are reported by
    /// [`run`].
    pub fn take() -> Inherited {
        let listeners = crate::ListenFds::from_env(crate::UnsetEnv::Yes);
        let handover = take_inheritance();
        Inherited {
            listeners,
            handover,
        }
    }
}

/// Runs fdstore-exec until it should end; returns how. `inherited` comes
/// from [`Inherited::take`], called before anything else in the process.
pub fn run(config: &Config, inherited: Inherited) -> Result<Outcome, ExecError> {
    let signals = handled_signals(&config.signals);
    signals
        .thread_block()
        .map_err(|e| fail(sysexits::OSERR, format!("blocking signals: {e}")))?;
    let signal_fd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| fail(sysexits::OSERR, format!("creating a signalfd: {e}")))?;
    let (number, managed, predecessor, older) = match inherited.handover? {
        Some((inheritance, channel, older)) => {
            let _ = channel.send(&Message::Hello(std::process::id()));
            (
                inheritance.generation,
                inheritance.managed,
                Some(channel),
                older,
            )
        }
        None => (1, Vec::new(), None, OlderGenerations::default()),
    };
    let started = inherited
        .listeners
        .map_err(|e| fail(sysexits::CONFIG, format!("receiving listeners: {e}")))
        .and_then(|received| {
            Supervisor::start(
                config,
                signal_fd,
                received,
                number,
                &managed,
                predecessor.as_ref(),
            )
        });
    match started {
        Ok(mut supervisor) => {
            supervisor.predecessor = predecessor;
            supervisor.older = older;
            supervisor.run()
        }
        Err(e) => {
            if let Some(channel) = predecessor {
                let _ = channel.send(&Message::Failed(e.message.clone()));
            }
            Err(e)
        }
    }
}

/// Takes the hand-over channel, and those to the older generations still
/// draining, when this process was started by a previous generation.
fn take_inheritance() -> Result<Option<(Inheritance, Channel, OlderGenerations)>, ExecError> {
    let Some(value) = std::env::var_os(HANDOVER_ENV) else {
        return Ok(None);
    };
    std::env::remove_var(HANDOVER_ENV);
    let inheritance =
        Inheritance::parse(&value.to_string_lossy()).map_err(|e| fail(sysexits::CONFIG, e))?;
    // The previous generation placed the channel at this number for us.
    let fd = crate::sys::fd::take_inherited_once(inheritance.fd).map_err(|e| {
        fail(
            sysexits::CONFIG,
            format!("the hand-over channel (fd {}): {e}", inheritance.fd),
        )
    })?;
    let older = OlderGenerations::inherit(&inheritance).map_err(|e| fail(sysexits::CONFIG, e))?;
    Ok(Some((inheritance, Channel::from_fd(fd), older)))
}

impl<'c> Supervisor<'c> {
    fn start(
        config: &'c Config,
        signal_fd: SignalFd,
        received: crate::ListenFds,
        number: u64,
        previously_managed: &[String],
        predecessor: Option<&Channel>,
    ) -> Result<Supervisor<'c>, ExecError> {
        let is_main = predecessor.is_none();
        let notifier = Notifier::from_env().map_err(|e| fail(sysexits::CONFIG, e.to_string()))?;
        let specs = all_specs(&config.listen, config.listen_file.as_deref())?;
        let listeners = gather(&specs, received, previously_managed, is_main, &notifier)?;
        let mut readiness = Readiness::new(&config.ready, &listeners.active, number)
            .map_err(|e| fail(sysexits::USAGE, e))?;
        let relay = NotifyRelay::bind()
            .map_err(|e| fail(sysexits::OSERR, format!("notification socket: {e}")))?;
        // Before the program starts: a generation without its control
        // endpoint never becomes the main process (the reload fails, the old
        // generation keeps serving).
        let control = ControlEndpoint::bind()
            .map_err(|e| fail(sysexits::OSERR, format!("binding the control socket: {e}")))?;
        let child =
            spawn_program(&config.program, &listeners.active, relay.address()).map_err(|e| {
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
        info!(pid, program = ?config.program.program, listeners = listeners.active.len(), "started generation {number}");
        let started = Instant::now();
        readiness.begin(pid, started);
        let supervisor = Supervisor {
            config,
            notifier,
            signal_fd,
            relay,
            generation: Generation {
                number,
                child,
                pidfd,
                started,
                ready: false,
                program_status: None,
                exited: None,
            },
            listeners,
            role: if is_main { Role::Main } else { Role::Successor },
            control: Some(control),
            own_cgroup: cgroup_of(std::process::id()),
            reload: Reload::new(number, pid, config.ready_timeout),
            handover: None,
            predecessor: None,
            successor_link: None,
            older: OlderGenerations::default(),
            ended_early: false,
            last_reload: None,
            stopping: false,
            readiness: Some(readiness),
            queued: Vec::new(),
            outsiders: LogLimit::new(OUTSIDER_LINES, OUTSIDER_WINDOW),
        };
        if is_main {
            supervisor.update_status();
        }
        Ok(supervisor)
    }

    fn program_name(&self) -> String {
        Path::new(&self.config.program.program)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "the program".into())
    }

    /// `generation 3, pid 1234: serving; last reload took 41 ms`.
    fn status_text(&self) -> String {
        let g = &self.generation;
        let mut text = format!("generation {}, pid {}", g.number, g.pid());
        match (&self.role, &g.program_status) {
            (Role::Draining { .. }, _) => text.push_str(": draining"),
            (_, Some(s)) => text.push_str(&format!(": {s}")),
            (_, None) if g.ready => text.push_str(": serving"),
            (_, None) => text.push_str(": starting"),
        }
        if let Some((next, _)) = self.reload.in_progress() {
            text.push_str(&format!("; reloading (generation {next} starting)"));
        } else if let Some(outcome) = &self.last_reload {
            text.push_str("; ");
            text.push_str(outcome);
        }
        // Last, so that the text starts as it always did.
        text.push_str(&self.older.status_suffix());
        text
    }

    fn update_status(&self) {
        if self.role == Role::Main {
            let _ = self.notifier.status(&self.status_text());
        }
    }

    fn ready_deadline(&self) -> Instant {
        self.generation.started + self.config.ready_timeout
    }

    fn waiting_for_ready(&self) -> bool {
        !self.generation.ready && !self.stopping && !matches!(self.role, Role::Draining { .. })
    }

    fn run(&mut self) -> Result<Outcome, ExecError> {
        loop {
            if let Some(end) = self.check_timers()? {
                return Ok(end);
            }
            let mut sources = vec![Source::Signals, Source::Relay];
            if self.generation.exited.is_none() {
                sources.push(Source::Program);
            }
            if let Some(control) = &self.control {
                sources.extend((0..control.fds().len()).map(Source::Control));
            }
            if self.handover.is_some() {
                sources.push(Source::Successor);
            }
            if self.predecessor.is_some() {
                sources.push(Source::Predecessor);
            }
            if let Some(r) = &self.readiness {
                sources.extend((0..r.fds().len()).map(Source::Readiness));
            }
            if self.successor_link.is_some() {
                sources.push(Source::SuccessorLink);
            }
            let readable = {
                let fds: Vec<BorrowedFd<'_>> = sources.iter().map(|s| self.fd_of(*s)).collect();
                wait_readable(&fds, self.next_deadline())
                    .map_err(|e| fail(sysexits::OSERR, format!("poll: {e}")))?
            };
            for (source, _) in sources.iter().zip(readable).filter(|(_, r)| *r) {
                if let Some(end) = self.dispatch(*source)? {
                    return Ok(end);
                }
            }
            // Every wake-up: accepts, reads requests, drops silent clients.
            self.on_control();
        }
    }

    fn fd_of(&self, source: Source) -> BorrowedFd<'_> {
        match source {
            Source::Signals => self.signal_fd.as_fd(),
            Source::Relay => self.relay.as_fd(),
            Source::Program => self.generation.pidfd.as_fd(),
            Source::Control(i) => self.control.as_ref().expect("polled only when open").fds()[i],
            Source::Successor => self
                .handover
                .as_ref()
                .expect("polled only during a reload")
                .as_fd(),
            Source::Predecessor => self
                .predecessor
                .as_ref()
                .expect("polled only when linked")
                .as_fd(),
            Source::Readiness(i) => self
                .readiness
                .as_ref()
                .expect("polled only while checking")
                .fds()[i],
            Source::SuccessorLink => self
                .successor_link
                .as_ref()
                .expect("polled only when linked")
                .as_fd(),
        }
    }

    fn dispatch(&mut self, source: Source) -> Result<Option<Outcome>, ExecError> {
        match source {
            Source::Signals => self.read_signals(),
            Source::Relay => {
                while let Ok(Some(message)) = self.relay.recv() {
                    self.on_relay(message);
                }
            }
            Source::Program => {
                if let Ok(Some(status)) = self.generation.child.try_wait() {
                    return self.on_program_exit(status);
                }
            }
            // Served once per wake-up, after the other sources.
            Source::Control(_) => {}
            Source::Successor => self.on_successor(),
            Source::Predecessor => return self.on_predecessor(),
            // The checks move on in check_timers, at the top of the loop.
            Source::Readiness(_) => {}
            Source::SuccessorLink => self.on_successor_link(),
        }
        Ok(None)
    }

    fn next_deadline(&self) -> Option<Duration> {
        let mut until: Option<Instant> = None;
        let mut consider = |t: Instant| until = Some(until.map_or(t, |u| u.min(t)));
        if self.waiting_for_ready() {
            consider(self.ready_deadline());
            if let Some(t) = self
                .readiness
                .as_ref()
                .and_then(|r| r.next_wake(Instant::now()))
            {
                consider(t);
            }
        }
        if let Some(deadline) = self.reload.deadline() {
            consider(deadline);
        }
        if let Some(t) = self.control.as_ref().and_then(ControlEndpoint::next_wake) {
            consider(t);
        }
        if let Role::Draining { deadline, killed } = self.role {
            if !killed {
                consider(deadline);
            }
            if self.generation.exited.is_some() {
                consider(Instant::now() + LEFTOVER_CHECK);
            }
        }
        until.map(|u| u.saturating_duration_since(Instant::now()))
    }

    fn check_timers(&mut self) -> Result<Option<Outcome>, ExecError> {
        let now = Instant::now();
        if self.waiting_for_ready() {
            if self.readiness.as_mut().is_some_and(|r| r.step(now)) {
                self.readiness = None;
                self.on_program_ready();
            }
            if !self.generation.ready && Instant::now() >= self.ready_deadline() {
                self.not_ready_in_time()?;
            }
        }
        self.drive(Event::Tick);
        if let Role::Draining { deadline, killed } = self.role {
            if !killed && now >= deadline {
                let survivors = self.generation.processes();
                let listed: Vec<String> = survivors.iter().map(|m| m.to_string()).collect();
                warn!(
                    pid = self.generation.pid(),
                    survivors = listed.len(),
                    "generation {} did not finish within the drain timeout ({:?}); killing its processes: {}",
                    self.generation.number,
                    self.config.drain_timeout,
                    listed.join(", ")
                );
                self.kill_draining();
            }
            if self.generation.exited.is_some() {
                return Ok(self.drain_complete());
            }
        }
        Ok(None)
    }

    /// Ends a draining generation's program at once (the drain timeout
    /// passed, or a newer generation needs room).
    fn kill_draining(&mut self) {
        if let Role::Draining {
            deadline,
            killed: false,
        } = self.role
        {
            self.generation.kill_all();
            self.role = Role::Draining {
                deadline,
                killed: true,
            };
        }
    }

    /// A newer generation wrote on the channel to this draining one.
    fn on_successor_link(&mut self) {
        if !told_to_end(&mut self.successor_link) {
            return;
        }
        if let Role::Draining { killed: false, .. } = self.role {
            warn!(
                pid = self.generation.pid(),
                "generation {} ends early, {} ms into its drain: a newer generation needs room within max-generations {}; killing it",
                self.generation.number,
                self.generation_drained_for().as_millis(),
                self.config.generations.max()
            );
            self.ended_early = true;
            self.kill_draining();
        }
    }

    /// How long this generation has been draining.
    fn generation_drained_for(&self) -> Duration {
        match self.role {
            Role::Draining { deadline, .. } => self
                .config
                .drain_timeout
                .saturating_sub(deadline.saturating_duration_since(Instant::now())),
            _ => Duration::ZERO,
        }
    }

    /// The end of a drain: once the program exited and no process of its
    /// group is left, the hand-over is complete.
    fn drain_complete(&self) -> Option<Outcome> {
        let Role::Draining { killed, .. } = self.role else {
            return None;
        };
        let status = self.generation.exited?;
        if !self.generation.processes().is_empty() {
            return None;
        }
        let g = &self.generation;
        info!(
            pid = g.pid(),
            took = ?g.started.elapsed(),
            "generation {} {}{}; {}",
            g.number,
            describe(status),
            match (killed, self.ended_early) {
                (true, true) => " (ended early for a newer generation)",
                (true, false) => " (killed after the drain timeout)",
                _ => "",
            },
            if g.ready {
                "its hand-over is complete"
            } else {
                "it never became ready, and the reload did not hand over to it"
            }
        );
        Some(Outcome::Exit(0))
    }

    /// Ends the wait for readiness as failed. A new generation tells the
    /// old one at once (the reload fails, the old one keeps serving), then
    /// lets its program drain as an old generation does: a program accepts
    /// on the shared listeners before it is ready, and killing it would
    /// reset the connections it took. At start, with no other generation,
    /// the program is killed and fdstore-exec fails.
    fn not_ready_in_time(&mut self) -> Result<(), ExecError> {
        let pending = self
            .readiness
            .take()
            .map(|r| format!(" ({})", r.pending(Instant::now())))
            .unwrap_or_default();
        let message = format!(
            "{} (generation {}, pid {}) was not ready within {:?}{pending}",
            self.program_name(),
            self.generation.number,
            self.generation.pid(),
            self.config.ready_timeout
        );
        if self.role == Role::Successor {
            if let Some(channel) = self.predecessor.take() {
                error!(
                    "{message}; telling it to drain ({}, at most {:?})",
                    self.config.drain_signal, self.config.drain_timeout
                );
                let _ = channel.send(&Message::Failed(message));
                self.forward(self.config.drain_signal);
                self.role = Role::Draining {
                    deadline: Instant::now() + self.config.drain_timeout,
                    killed: false,
                };
                return Ok(());
            }
        }
        error!("{message}; killing it");
        self.generation.kill_all();
        let _ = self.generation.child.wait();
        let _ = self.notifier.status(&message);
        Err(fail(sysexits::UNAVAILABLE, message))
    }

    // ----- signals -----

    fn read_signals(&mut self) {
        while let Ok(Some(info)) = self.signal_fd.read_signal() {
            let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            self.on_signal(signal, info.ssi_pid);
        }
    }

    fn on_signal(&mut self, signal: Signal, sender: u32) {
        let reload =
            self.config.mode == Mode::Handover && self.config.signals.reload == Some(signal);
        if reload {
            match self.role {
                Role::Main => {
                    info!(sender, "{signal}: reloading by hand-over");
                    self.start_reload(Requester::Signal);
                }
                _ => info!("{signal} ignored: this process is not the main process"),
            }
        } else if STOP_SIGNALS.contains(&signal) {
            info!(
                ?signal,
                sender,
                pid = self.generation.pid(),
                "stopping: passing the signal to the program"
            );
            self.stopping = true;
            // Ends the probes and kills a check command in progress.
            self.readiness = None;
            self.drive(Event::Stop);
            if self.role == Role::Successor {
                if let Some(channel) = &self.predecessor {
                    let _ = channel.send(&Message::Failed(format!(
                        "generation {} received {signal} before the hand-over completed",
                        self.generation.number
                    )));
                }
            }
            self.forward(signal);
        } else {
            // A forwarded signal (or, in --mode restart, the reload signal,
            // since there is no hand-over to start).
            info!(
                sender,
                pid = self.generation.pid(),
                "{signal}: passing it to the program"
            );
            self.forward(signal);
        }
    }

    fn forward(&self, signal: Signal) {
        // The child is not reaped before its pidfd reports the exit, so its
        // pid cannot have been reused.
        let pid = nix::unistd::Pid::from_raw(self.generation.pid() as i32);
        if let Err(e) = nix::sys::signal::kill(pid, signal) {
            warn!(
                ?signal,
                pid = self.generation.pid(),
                "sending the signal: {e}"
            );
        }
    }

    // ----- the program -----

    fn on_program_ready(&mut self) {
        let g = &mut self.generation;
        g.ready = true;
        info!(pid = g.pid(), took = ?g.started.elapsed(), "generation {} is ready", g.number);
        match self.role {
            Role::Main => {
                let status = self.status_text();
                if let Err(e) = self
                    .notifier
                    .notify(&[Notification::Ready, Notification::Status(&status)])
                {
                    warn!("telling the service manager about readiness: {e}");
                }
            }
            Role::Successor => {
                if let Some(channel) = &self.predecessor {
                    if let Err(e) = channel.send(&Message::Ready) {
                        warn!("telling the old generation about readiness: {e}");
                    }
                }
            }
            Role::Draining { .. } => {}
        }
    }

    fn on_relay(&mut self, message: RelayMessage) {
        // Abstract socket names are visible in /proc/net/unix: accept only
        // the unit's own processes, as NotifyAccess=all would.
        let sender_cgroup = message.sender_pid.and_then(cgroup_of);
        if sender_cgroup.is_none() || sender_cgroup != self.own_cgroup {
            // Anybody can send these as fast as they like: a bounded number
            // of journal lines.
            if let Verdict::Log { suppressed, last } = self.outsiders.check(Instant::now()) {
                let window = self.outsiders.window();
                if suppressed > 0 {
                    warn!(
                        suppressed,
                        "{suppressed} more notifications from processes outside this unit were ignored in {window:?} without a journal line"
                    );
                }
                warn!(
                    sender = ?message.sender_pid,
                    cgroup = ?sender_cgroup,
                    "ignored a notification from a process outside this unit"
                );
                if last {
                    warn!(
                        "{OUTSIDER_LINES} notifications from outside this unit in {window:?}: the next ones in this window are ignored without a journal line each"
                    );
                }
            }
            return;
        }
        if matches!(self.role, Role::Draining { .. }) {
            debug!(text = %message.text, "ignored a notification from a draining program");
            return;
        }
        if message.field("READY") == Some("1") && !self.generation.ready && !self.stopping {
            if let Some(r) = &mut self.readiness {
                if self.config.ready.wants_notify() {
                    r.on_notify();
                }
            }
        }
        if let Some(status) = message.field("STATUS") {
            self.generation.program_status = Some(status.to_owned());
            self.update_status();
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
        if passed.is_empty() {
            return;
        }
        let relayed = RelayMessage {
            text: passed,
            ..message
        };
        if self.role == Role::Successor {
            if self.queued.len() < MAX_QUEUED {
                self.queued.push(relayed);
            } else {
                warn!("dropped a notification of the new program: too many before it became the main process");
            }
        } else {
            self.relay_to_manager(&relayed);
        }
    }

    fn relay_to_manager(&self, message: &RelayMessage) {
        let fds: Vec<BorrowedFd<'_>> = message.fds.iter().map(|f| f.as_fd()).collect();
        if let Err(e) = self.notifier.send_raw(message.text.as_bytes(), &fds) {
            warn!("relaying the program's notification: {e}");
        }
    }

    fn on_program_exit(&mut self, status: ExitStatus) -> Result<Option<Outcome>, ExecError> {
        let described = describe(status);
        self.generation.exited = Some(status);
        match self.role {
            Role::Draining { killed, .. } => {
                let left = self.generation.processes();
                if left.is_empty() {
                    return Ok(self.drain_complete());
                }
                // Workers whose master exited still serve: the hand-over is
                // not complete until they are gone (or killed at the
                // deadline).
                let listed: Vec<String> = left.iter().map(|m| m.to_string()).collect();
                info!(
                    pid = self.generation.pid(),
                    "the program of generation {} {described}{}, but {} of its processes still run ({}); waiting for them {}",
                    self.generation.number,
                    if killed { " (killed after the drain timeout)" } else { "" },
                    listed.len(),
                    listed.join(", "),
                    if killed { "to die" } else { "until the drain deadline" }
                );
                Ok(None)
            }
            Role::Successor => {
                // What it started must not go on serving the shared
                // listeners for a generation that failed.
                self.generation.kill_all();
                let g = &self.generation;
                let when = if g.ready {
                    "before the hand-over completed"
                } else {
                    "before it was ready"
                };
                let message = format!(
                    "{} (generation {}, pid {}) {described} {when}",
                    self.program_name(),
                    g.number,
                    g.pid()
                );
                if let Some(channel) = &self.predecessor {
                    let _ = channel.send(&Message::Failed(message.clone()));
                }
                if self.stopping {
                    // A stop signal reaches a new generation when the
                    // manager already follows it (MAINPID= was accepted
                    // just before the stop): it is then the unit's main
                    // process, and its program's exit after the stop
                    // signal is the unit's clean stop, not a failure.
                    return Ok(Some(self.finish(status)));
                }
                error!("{message}");
                Err(fail(sysexits::UNAVAILABLE, message))
            }
            Role::Main => {
                self.drive(Event::Abort(format!(
                    "the serving generation {} {described}",
                    self.generation.number
                )));
                Ok(Some(self.finish(status)))
            }
        }
    }

    fn finish(&self, status: ExitStatus) -> Outcome {
        use std::os::unix::process::ExitStatusExt;
        let g = &self.generation;
        let described = describe(status);
        if self.stopping {
            info!(
                pid = g.pid(),
                "the program {described} after the stop signal"
            );
        } else {
            let when = if g.ready {
                "while serving"
            } else {
                "before it was ready"
            };
            let dead = super::listeners::dead_listeners(&self.listeners.active);
            if dead.is_empty() {
                error!(pid = g.pid(), "the program {described} {when}");
            } else {
                error!(
                    pid = g.pid(),
                    "the program {described} {when}; listener(s) {} no longer listen: a program shut them down (shutdown(2)), which ends a socket for every process sharing it",
                    dead.join(", ")
                );
            }
            let _ = self.notifier.status(&format!(
                "generation {} (pid {}) {described} {when}",
                g.number,
                g.pid()
            ));
        }
        match (status.code(), status.signal()) {
            (Some(0), _) if !self.stopping && !g.ready => Outcome::Exit(1),
            (Some(code), _) => Outcome::Exit(code),
            (None, Some(signal)) => match Signal::try_from(signal) {
                Ok(signal) => Outcome::Signal(signal),
                Err(_) => Outcome::Exit(128 + signal),
            },
            (None, None) => Outcome::Exit(1),
        }
    }

    /// Stops the program: with the drain signal and timeout when it may be
    /// serving, at once when it never became ready.
    fn stop_program(&mut self) {
        if self.generation.ready {
            self.forward(self.config.drain_signal);
            self.role = Role::Draining {
                deadline: Instant::now() + self.config.drain_timeout,
                killed: false,
            };
        } else {
            self.generation.kill_all();
            self.role = Role::Draining {
                deadline: Instant::now(),
                killed: true,
            };
        }
    }

    // ----- the control socket -----

    fn on_control(&mut self) {
        let Some(control) = &mut self.control else {
            return;
        };
        for (connection, request) in control.service(Instant::now()) {
            self.on_request(connection, request);
        }
    }

    fn on_request(&mut self, connection: ControlConnection, request: Result<Request, String>) {
        let own_cgroup = self.own_cgroup.as_deref();
        if let Some(connection) = connection.triage(request, own_cgroup, || self.status_text()) {
            self.start_reload(Requester::Client(connection));
        }
    }

    // ----- reloads, seen from the old main process -----

    fn start_reload(&mut self, requester: Requester<ControlConnection>) {
        let facts = Facts {
            ready: self.generation.ready,
            main: self.role == Role::Main,
            unsupported: (self.config.mode == Mode::Restart).then(|| {
                "fdstore-exec runs with --mode=restart: listeners stay in the fd store across `systemctl restart`; reload by hand-over is off".to_owned()
            }),
        };
        self.drive(Event::Request(requester, facts));
    }

    fn on_successor(&mut self) {
        let Some(channel) = &self.handover else {
            return;
        };
        for event in successor_events(channel) {
            self.drive(event);
        }
    }

    /// Hands `event` to the reload state machine and carries out what it
    /// says, feeding the outcomes back.
    fn drive(&mut self, event: Event<ControlConnection>) {
        let mut queue: VecDeque<Action<ControlConnection>> =
            self.reload.handle(event, Instant::now()).into();
        while let Some(action) = queue.pop_front() {
            if let Some(event) = self.carry_out(action) {
                // What follows from it comes before the rest.
                for action in self.reload.handle(event, Instant::now()).into_iter().rev() {
                    queue.push_front(action);
                }
            }
        }
    }

    fn carry_out(&mut self, action: Action<ControlConnection>) -> Option<Event<ControlConnection>> {
        let next = self.generation.number + 1;
        match action {
            Action::MakeRoom => {
                return Some(Event::Room(
                    self.older
                        .make_room(self.config.generations, self.generation.number),
                ))
            }
            Action::NotifyReloading => {
                let _ = self.notifier.notify(&[Notification::Reloading]);
            }
            Action::NotifyReady => {
                self.take_outcome();
                let status = self.status_text();
                let _ = self
                    .notifier
                    .notify(&[Notification::Ready, Notification::Status(&status)]);
            }
            Action::UpdateStatus => {
                self.take_outcome();
                self.update_status();
            }
            Action::Spawn => return Some(Event::Spawned(self.spawn_successor().map(|()| None))),
            Action::MakeMain { pid } => {
                let made = make_main_process(&self.notifier, pid, BARRIER_TIMEOUT);
                // A stop that raced the MAINPID= message shows up as a
                // signal to us: the manager then ignored MAINPID=, and the
                // hand-over ends here (the machine drops MainPidSent).
                self.read_signals();
                return Some(match made {
                    Ok(()) => Event::MainPidSent,
                    Err(reason) => Event::MainPidRefused(reason),
                });
            }
            Action::SendMain { took } => {
                let channel = self.handover.as_ref()?;
                if let Err(e) = channel.send(&Message::Main(took.as_millis() as u64)) {
                    return Some(Event::Broken(format!(
                        "telling generation {next} it is the main process: {e}"
                    )));
                }
            }
            // The new generation stops its program when its channel closes.
            Action::Abandon { .. } => self.handover = None,
            Action::Answer(connection, answer) => {
                let _ = connection.reply(&answer.reply());
            }
            Action::BeginDrain { successor } => {
                self.successor_link = self.handover.take();
                // The new main process keeps track of the older generations now.
                self.older = OlderGenerations::default();
                if let Some(control) = self.control.take() {
                    control.close_with(&Reply::handed_over(successor));
                }
                self.forward(self.config.drain_signal);
                self.role = Role::Draining {
                    deadline: Instant::now() + self.config.drain_timeout,
                    killed: false,
                };
            }
        }
        None
    }

    fn take_outcome(&mut self) {
        if let Some(outcome) = self.reload.take_outcome() {
            self.last_reload = Some(outcome);
        }
    }

    /// Starts the next generation; its pid comes in its `HELLO`.
    fn spawn_successor(&mut self) -> Result<(), String> {
        let (ours, theirs) = Channel::pair().map_err(|e| e.to_string())?;
        let mut intermediate = spawn_successor(
            &self.config.program.trampoline,
            &self.config.args,
            &self.listeners.active,
            theirs,
            self.generation.number + 1,
            &self.listeners.managed,
            &self.older,
        )
        .map_err(|e| e.to_string())?;
        // Reaped before anything is said to the manager, so the new
        // process is re-parented to it.
        let status = intermediate.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("the intermediate process {}", describe(status)));
        }
        self.handover = Some(ours);
        Ok(())
    }

    // ----- reloads, seen from the new generation -----

    fn on_predecessor(&mut self) -> Result<Option<Outcome>, ExecError> {
        loop {
            let Some(channel) = &self.predecessor else {
                return Ok(None);
            };
            let message = match channel.recv() {
                Ok(None) => return Ok(None),
                Ok(Some(message)) => message,
                Err(e) => {
                    warn!("hand-over channel: {e}");
                    None
                }
            };
            match (message, self.role) {
                (Some(Message::Main(took)), Role::Successor) => self.become_main(took),
                (None, Role::Successor) => {
                    self.predecessor = None;
                    warn!(
                        "the old generation abandoned the hand-over; stopping generation {}",
                        self.generation.number
                    );
                    self.stop_program();
                    return Ok(None);
                }
                (None, _) => {
                    self.predecessor = None;
                    self.check_listeners_after_drain();
                    return Ok(None);
                }
                (Some(other), _) => debug!(?other, "unexpected message from the old generation"),
            }
        }
    }

    fn become_main(&mut self, took_ms: u64) {
        self.role = Role::Main;
        // The predecessor drains from now on, and counts against the bound
        // until it is gone.
        if let Some(channel) = &self.predecessor {
            match channel.try_clone() {
                Ok(copy) => self.older.push(self.generation.number - 1, copy),
                Err(e) => warn!(
                    "keeping track of generation {}: {e}; it is not counted against max-generations",
                    self.generation.number - 1
                ),
            }
        }
        self.last_reload = Some(format!("last reload took {took_ms} ms"));
        let status = self.status_text();
        if let Err(e) = self
            .notifier
            .notify(&[Notification::Ready, Notification::Status(&status)])
        {
            warn!("telling the service manager about readiness: {e}");
        }
        for name in std::mem::take(&mut self.listeners.unstored) {
            if let Some(fd) = self.listeners.active.iter().find(|l| l.name() == name) {
                store(&self.notifier, fd);
            }
        }
        for message in std::mem::take(&mut self.queued) {
            self.relay_to_manager(&message);
        }
        self.retire_listeners();
        if let Some(channel) = &self.predecessor {
            let _ = channel.send(&Message::Done);
        }
        info!(
            pid = std::process::id(),
            "generation {} is the main process", self.generation.number
        );
    }

    /// Once the old generation is gone: a listener that no longer listens
    /// was shut down (`shutdown(2)`) by the old program while it drained,
    /// which ends it for this generation too. Nothing can revive that
    /// socket; say so in the journal and the status, with the fix.
    fn check_listeners_after_drain(&mut self) {
        let dead = super::listeners::dead_listeners(&self.listeners.active);
        if dead.is_empty() {
            return;
        }
        let names = dead.join(", ");
        error!(
            listeners = %names,
            "listener(s) {names} no longer listen: the old generation's program shut them down (shutdown(2)) while draining, which ends a socket for every process sharing it; restart the unit to create them again (systemctl restart), and make the program close its listeners instead of shutting them down"
        );
        let note = format!("listener(s) {names} shut down by the old program: restart the unit");
        self.last_reload = Some(match self.last_reload.take() {
            Some(before) => format!("{before}; {note}"),
            None => note,
        });
        self.update_status();
    }

    /// Closes the listeners the configuration no longer names and removes
    /// them from the fd store. Only the main process may: the manager drops
    /// `FDSTOREREMOVE=1` from any other (and a later reload may make this
    /// generation an old one before its predecessor is gone), so this runs
    /// as soon as the generation is main. The old generation's program keeps
    /// its own copy until it has drained.
    fn retire_listeners(&mut self) {
        if self.role != Role::Main {
            if !self.listeners.retired.is_empty() {
                warn!("removed listeners can be taken out of the fd store only by the main process; they stay until the next reload or restart");
            }
            return;
        }
        for fd in std::mem::take(&mut self.listeners.retired) {
            match self.notifier.remove_fds(fd.name()) {
                Ok(_) => info!(
                    name = fd.name(),
                    "closed a removed listener and removed it from the fd store"
                ),
                Err(e) => warn!(
                    name = fd.name(),
                    "removing the listener from the fd store: {e}"
                ),
            }
            drop::<NamedFd>(fd);
        }
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
