//! The upgrade thread: answers the control socket, reacts to signals and to
//! [`Upgrader::upgrade`](super::Upgrader::upgrade) calls, runs an upgrade
//! from start to outcome, and ends the process at the drain deadline.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rustix::event::{poll, PollFd, PollFlags};
use tracing::{info, warn};

use super::drain::DrainReason;
use super::{signals, Command, Shared, UpgradeError, UpgradeErrorKind, Upgraded};
use crate::exec::control::{
    busy_text, cgroup_of, still_starting_text, ControlConnection, ControlEndpoint, Refusal, Reply,
    Request,
};
use crate::exec::handover::{
    make_main_process, Channel, Inheritance, Message, HANDOVER_ENV, MAIN_DONE_TIMEOUT,
};
use crate::notify::Notification;
use crate::sys::spawn::{DetachedCommand, ListenIdentity};

/// Time on top of the ready timeout for the hand-over's own messages.
const MARGIN: Duration = Duration::from_secs(5);
/// How long to wait for the manager to confirm MAINPID=.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(5);

enum Requester {
    Client(ControlConnection),
    Signal,
    Call(Sender<Result<Upgraded, UpgradeError>>),
}

struct Upgrade {
    channel: Channel,
    requester: Requester,
    pid: u32,
    started: Instant,
    deadline: Instant,
    main_sent: bool,
}

struct Worker {
    shared: Arc<Shared>,
    signals: OwnedFd,
    wake: OwnedFd,
    commands: Receiver<Command>,
    /// Bound before the thread starts (so before this generation can become
    /// the main process); closed when it hands over.
    control: Option<ControlEndpoint>,
    upgrade: Option<Upgrade>,
    /// After handing over: the channel to the next generation, on which a
    /// newer one may tell this one to end early.
    successor_link: Option<Channel>,
    stopping: bool,
    own_cgroup: Option<String>,
}

/// Binds the control socket and starts the thread.
pub(super) fn start(
    shared: Arc<Shared>,
    signals: OwnedFd,
    wake: OwnedFd,
    commands: Receiver<Command>,
) -> io::Result<()> {
    let control = ControlEndpoint::bind()?;
    let worker = Worker {
        shared,
        signals,
        wake,
        commands,
        control: Some(control),
        upgrade: None,
        successor_link: None,
        stopping: false,
        own_cgroup: cgroup_of(std::process::id()),
    };
    std::thread::Builder::new()
        .name("fdstore-upgrade".into())
        .spawn(move || worker.run())?;
    Ok(())
}

impl Worker {
    fn run(mut self) {
        loop {
            self.wait();
            for signal in signals::read(&self.signals) {
                match signal {
                    Signal::SIGHUP => {
                        info!("reload requested by SIGHUP");
                        self.start_upgrade(Requester::Signal);
                    }
                    _ => self.stop(signal),
                }
            }
            let mut buf = [0u8; 64];
            while matches!(rustix::io::read(&self.wake, &mut buf), Ok(n) if n > 0) {}
            while let Ok(Command::Upgrade(reply)) = self.commands.try_recv() {
                self.start_upgrade(Requester::Call(reply));
            }
            self.serve_control();
            self.on_successor();
            self.on_successor_link();
            self.check_deadlines();
        }
    }

    /// Sleeps until something happens or the next deadline.
    fn wait(&self) {
        let now = Instant::now();
        let mut deadlines: Vec<Instant> = self
            .control
            .as_ref()
            .and_then(ControlEndpoint::next_wake)
            .into_iter()
            .collect();
        deadlines.extend(self.upgrade.as_ref().map(|u| u.deadline));
        deadlines.extend(self.shared.drain.notice().map(|n| n.deadline));
        let timeout = deadlines.into_iter().min().and_then(|d| {
            let left = d.saturating_duration_since(now) + Duration::from_millis(1);
            rustix::time::Timespec::try_from(left).ok()
        });
        let mut watched: Vec<BorrowedFd<'_>> = vec![self.signals.as_fd(), self.wake.as_fd()];
        watched.extend(self.control.iter().flat_map(ControlEndpoint::fds));
        watched.extend(self.upgrade.as_ref().map(|u| u.channel.as_fd()));
        watched.extend(self.successor_link.as_ref().map(|c| c.as_fd()));
        let mut fds: Vec<PollFd<'_>> = watched
            .iter()
            .map(|fd| PollFd::new(fd, PollFlags::IN))
            .collect();
        let _ = poll(&mut fds, timeout.as_ref());
    }

    fn serve_control(&mut self) {
        let Some(control) = &mut self.control else {
            return;
        };
        for (connection, request) in control.service(Instant::now()) {
            self.on_request(connection, request);
        }
    }

    fn on_request(&mut self, connection: ControlConnection, request: Result<Request, String>) {
        match request {
            Ok(Request::Status) => {
                let _ = connection.reply(&Reply::Ok(self.status_text()));
            }
            Ok(Request::Reload) if connection.may_reload(self.own_cgroup.as_deref()) => {
                info!(
                    client_pid = connection.peer_pid,
                    client_uid = connection.peer_uid,
                    "reload requested"
                );
                self.start_upgrade(Requester::Client(connection));
            }
            Ok(Request::Reload) => connection.deny_reload(),
            Err(text) => {
                let _ = connection.reply(&Reply::not_a_request(&text));
            }
        }
    }

    fn status_text(&self) -> String {
        let g = self.shared.generation;
        let pid = std::process::id();
        let what = match (&self.upgrade, self.shared.drain.notice()) {
            (_, Some(n)) => match n.reason {
                DrainReason::HandedOver { successor } => {
                    format!("draining; handed over to pid {successor}")
                }
                DrainReason::Stopping => "draining; stopping".into(),
            },
            (Some(u), None) => format!(
                "serving; reloading (generation {} starting, pid {})",
                g + 1,
                u.pid
            ),
            (None, None) => "serving".into(),
        };
        let older = self.lock().older.status_suffix();
        format!("generation {g}, pid {pid}: {what}{older}")
    }

    fn refusal(&self) -> Option<(Refusal, String)> {
        if self.stopping {
            return Some((Refusal::Stopping, "the unit is stopping".into()));
        }
        if let Some(n) = self.shared.drain.notice() {
            return Some((
                Refusal::Unsupported,
                format!(
                    "this process has handed over ({:?}); ask the main process",
                    n.reason
                ),
            ));
        }
        if let Some(u) = &self.upgrade {
            return Some((
                Refusal::Busy,
                busy_text(self.shared.generation + 1, u.started.elapsed()),
            ));
        }
        if !self.lock().ready {
            return Some((Refusal::Busy, still_starting_text(self.shared.generation)));
        }
        None
    }

    fn start_upgrade(&mut self, requester: Requester) {
        if let Some((kind, text)) = self.refusal() {
            warn!("reload refused: {text}");
            return answer_refusal(&self.shared, requester, kind, text);
        }
        let mut older = std::mem::take(&mut self.lock().older);
        let room = older.make_room(self.shared.bound, self.shared.generation);
        self.lock().older = older;
        if let Err(text) = room {
            warn!("reload refused: {text}");
            return answer_refusal(&self.shared, requester, Refusal::Busy, text);
        }
        if matches!(requester, Requester::Signal) {
            let _ = self.shared.notifier.notify(&[Notification::Reloading]);
        }
        let started = Instant::now();
        match self.spawn_successor() {
            Ok((channel, pid)) => {
                info!(pid, "starting generation {}", self.shared.generation + 1);
                self.upgrade = Some(Upgrade {
                    channel,
                    requester,
                    pid,
                    started,
                    deadline: started + self.shared.options.ready_timeout + MARGIN,
                    main_sent: false,
                });
                self.set_status();
            }
            Err(e) => {
                let reason = format!(
                    "could not start generation {}: {e}",
                    self.shared.generation + 1
                );
                self.finish_failed(requester, started, reason);
            }
        }
    }

    /// The program as on disk now, same arguments, our listeners at 3, 4,
    /// ... and the channel after them.
    fn spawn_successor(&self) -> io::Result<(Channel, u32)> {
        let state = self.lock();
        let (ours, theirs) = Channel::pair()?;
        let n = state.listeners.len();
        let inheritance = Inheritance {
            fd: crate::LISTEN_FDS_START + n as i32,
            generation: self.shared.generation + 1,
            older: state.older.generations(),
            managed: state.managed.clone(),
        };
        let mut env: Vec<OsString> = std::env::vars_os()
            .filter(|(k, _)| {
                !k.to_str()
                    .is_some_and(|k| k == HANDOVER_ENV || crate::listen::LISTEN_ENV.contains(&k))
            })
            .map(|(k, v)| {
                let mut entry = k;
                entry.push("=");
                entry.push(v);
                entry
            })
            .collect();
        for (var, value) in crate::listen::passing_on(state.listeners.iter().map(|l| l.name())) {
            env.push(format!("{var}={value}").into());
        }
        env.push(format!("{HANDOVER_ENV}={}", inheritance.to_env()).into());
        let identity = ListenIdentity {
            pid: true,
            pidfd_id: crate::listen::pidfd_id_given(),
        };
        let command =
            DetachedCommand::new(&self.shared.program, &self.shared.args, &env, identity)?;
        let mut fds: Vec<BorrowedFd<'_>> = state.listeners.iter().map(|l| l.as_fd()).collect();
        fds.push(theirs.as_fd());
        fds.extend(state.older.channels());
        let pid = command.spawn(&fds)?;
        Ok((ours, pid))
    }

    fn on_successor(&mut self) {
        loop {
            let Some(u) = &self.upgrade else { return };
            let message = match u.channel.recv() {
                Ok(None) => return,
                Ok(Some(message)) => message,
                Err(e) => return self.fail(format!("the hand-over channel failed: {e}")),
            };
            match message {
                Some(Message::Hello(_)) | Some(Message::Main(_)) | Some(Message::End) => {}
                Some(Message::Ready) => self.on_successor_ready(),
                Some(Message::Failed(reason)) => return self.fail(reason),
                Some(Message::Done) => return self.complete(),
                None if u.main_sent => {
                    // It became the main process and went away before
                    // saying READY=1: the manager now handles its exit.
                    let reason = format!(
                        "generation {} (pid {}) exited right after becoming the main process",
                        self.shared.generation + 1,
                        u.pid
                    );
                    let u = self.upgrade.take().expect("checked above");
                    warn!("{reason}");
                    answer_failure(&self.shared, u.requester, reason);
                    self.begin_drain(u.pid);
                    return;
                }
                None => {
                    let pid = u.pid;
                    return self.fail(format!(
                        "generation {} (pid {pid}) exited before it was ready",
                        self.shared.generation + 1
                    ));
                }
            }
        }
    }

    fn on_successor_ready(&mut self) {
        let Some(u) = &self.upgrade else { return };
        let pid = u.pid;
        if let Err(reason) = make_main_process(&self.shared.notifier, pid, BARRIER_TIMEOUT) {
            return self.fail(reason);
        }
        let Some(u) = &mut self.upgrade else { return };
        let took = u.started.elapsed().as_millis() as u64;
        if let Err(e) = u.channel.send(&Message::Main(took)) {
            return self.fail(format!(
                "telling the new generation it is the main process: {e}"
            ));
        }
        u.main_sent = true;
        u.deadline = Instant::now() + MAIN_DONE_TIMEOUT;
        info!(
            pid,
            "generation {} is the main process now",
            self.shared.generation + 1
        );
    }

    fn complete(&mut self) {
        let Some(u) = self.upgrade.take() else { return };
        let took = u.started.elapsed();
        let text = format!(
            "generation {} (pid {}) is serving; the hand-over took {} ms",
            self.shared.generation + 1,
            u.pid,
            took.as_millis()
        );
        info!(
            ?took,
            "{text}; draining generation {}", self.shared.generation
        );
        match u.requester {
            Requester::Client(connection) => {
                let _ = connection.reply(&Reply::Ok(text));
            }
            Requester::Call(reply) => {
                let _ = reply.send(Ok(Upgraded {
                    pid: u.pid,
                    generation: self.shared.generation + 1,
                    took,
                }));
            }
            // The new main process says READY=1, which ends the reload.
            Requester::Signal => {}
        }
        self.successor_link = Some(u.channel);
        // The new main process keeps track of the older generations now.
        drop(std::mem::take(&mut self.lock().older));
        self.begin_drain(u.pid);
    }

    /// A newer generation wrote on the channel to this drained one.
    fn on_successor_link(&mut self) {
        loop {
            let Some(link) = &self.successor_link else {
                return;
            };
            match link.recv() {
                Ok(None) => return,
                Ok(Some(Some(Message::End))) => {
                    let drained = self.shared.drain.notice().map_or(Duration::ZERO, |n| {
                        self.shared
                            .options
                            .drain_timeout
                            .saturating_sub(n.remaining())
                    });
                    warn!(
                        "generation {} ends early, {} ms into its drain: a newer generation needs room within max-generations {}; exiting",
                        self.shared.generation,
                        drained.as_millis(),
                        self.shared.bound.max()
                    );
                    std::process::exit(1);
                }
                Ok(Some(Some(_))) => {}
                // Every newer generation is gone: nobody can ask any more.
                Ok(Some(None)) | Err(_) => self.successor_link = None,
            }
        }
    }

    fn begin_drain(&mut self, successor: u32) {
        // Requests now go to the new main process.
        if let Some(control) = self.control.take() {
            control.close_with(&Reply::handed_over(successor));
        }
        self.shared.drain.begin(
            DrainReason::HandedOver { successor },
            self.shared.options.drain_timeout,
        );
    }

    /// Ends the upgrade in progress as failed: the new generation is killed,
    /// this one keeps serving.
    fn fail(&mut self, reason: String) {
        let Some(u) = self.upgrade.take() else { return };
        kill(u.pid);
        self.finish_failed(u.requester, u.started, reason);
    }

    fn finish_failed(&mut self, requester: Requester, started: Instant, reason: String) {
        warn!(
            "reload failed after {} ms: {reason}; generation {} keeps serving",
            started.elapsed().as_millis(),
            self.shared.generation
        );
        let status = format!("{}; reload failed: {reason}", self.status_text());
        let _ = self
            .shared
            .notifier
            .notify(&[Notification::Status(&status)]);
        answer_failure(&self.shared, requester, reason);
    }

    fn stop(&mut self, signal: Signal) {
        if self.stopping {
            return;
        }
        info!(
            "{signal} received: draining generation {}",
            self.shared.generation
        );
        self.stopping = true;
        if let Some(u) = self.upgrade.take() {
            kill(u.pid);
            answer_refusal(
                &self.shared,
                u.requester,
                Refusal::Stopping,
                "the unit is stopping".into(),
            );
        }
        if self.shared.drain.notice().is_none() {
            let _ = self.shared.notifier.notify(&[Notification::Stopping]);
        }
        self.shared
            .drain
            .begin(DrainReason::Stopping, self.shared.options.drain_timeout);
    }

    fn check_deadlines(&mut self) {
        let now = Instant::now();
        if self
            .upgrade
            .as_ref()
            .is_some_and(|u| u.main_sent && now >= u.deadline)
        {
            // The manager follows the new process already: killing it would
            // end the unit, staying on would make two main processes. The
            // reload is reported as failed, and this generation drains.
            let u = self.upgrade.take().expect("checked above");
            let reason = format!(
                "generation {} (pid {}) was made the main process but did not confirm the hand-over within {MAIN_DONE_TIMEOUT:?}; the service manager follows pid {} now, so generation {} drains",
                self.shared.generation + 1,
                u.pid,
                u.pid,
                self.shared.generation
            );
            warn!("{reason}");
            answer_failure(&self.shared, u.requester, reason);
            self.successor_link = Some(u.channel);
            drop(std::mem::take(&mut self.lock().older));
            self.begin_drain(u.pid);
        }
        if let Some(u) = &self.upgrade {
            if now >= u.deadline {
                let reason = format!(
                    "generation {} (pid {}) was not ready within {:?}",
                    self.shared.generation + 1,
                    u.pid,
                    self.shared.options.ready_timeout
                );
                self.fail(reason);
            }
        }
        if let Some(notice) = self.shared.drain.notice() {
            if now >= notice.deadline {
                warn!(
                    "generation {} did not finish draining within {:?}; exiting",
                    self.shared.generation, self.shared.options.drain_timeout
                );
                std::process::exit(1);
            }
        }
    }

    fn set_status(&self) {
        let status = self.status_text();
        let _ = self
            .shared
            .notifier
            .notify(&[Notification::Status(&status)]);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, super::State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn kill(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

fn answer_refusal(shared: &Shared, requester: Requester, kind: Refusal, text: String) {
    match requester {
        Requester::Client(connection) => {
            let _ = connection.reply(&Reply::Err(kind, text));
        }
        Requester::Call(reply) => {
            let kind = match kind {
                Refusal::Stopping | Refusal::Unsupported => UpgradeErrorKind::Stopping,
                Refusal::Failed => UpgradeErrorKind::Failed,
                _ => UpgradeErrorKind::Busy,
            };
            let _ = reply.send(Err(UpgradeError::new(kind, text)));
        }
        Requester::Signal => {
            // Type=notify-reload waits for RELOADING=1 and READY=1.
            let _ = shared.notifier.notify(&[Notification::Reloading]);
            let _ = shared.notifier.notify(&[Notification::Ready]);
        }
    }
}

fn answer_failure(shared: &Shared, requester: Requester, reason: String) {
    match requester {
        Requester::Client(connection) => {
            let _ = connection.reply(&Reply::Err(Refusal::Failed, reason));
        }
        Requester::Call(reply) => {
            let _ = reply.send(Err(UpgradeError::new(UpgradeErrorKind::Failed, reason)));
        }
        Requester::Signal => {
            let _ = shared.notifier.notify(&[Notification::Ready]);
        }
    }
}
