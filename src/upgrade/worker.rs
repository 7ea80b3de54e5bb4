//! The upgrade thread: answers the control socket, reacts to signals and to
//! [`Upgrader::upgrade`](super::Upgrader::upgrade) calls, runs an upgrade
//! from start to outcome, and ends the process at the drain deadline.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::{info, warn};

use super::drain::DrainReason;
use super::{Command, Shared, UpgradeError, UpgradeErrorKind, Upgraded};
use crate::notify::Notification;
use crate::protocol::control::{
    cgroup_of, ControlConnection, ControlEndpoint, Refusal, Reply, Request,
};
use crate::protocol::handover::{
    make_main_process, told_to_end, Channel, Inheritance, Message, HANDOVER_ENV,
};
use crate::reload::{
    successor_events, Action, Answer, Event, Facts, Reload, Requester, BARRIER_TIMEOUT,
};
use crate::sys::spawn::Spawn;

/// Who asked for an upgrade, besides a signal.
enum Caller {
    Client(ControlConnection),
    Call(Sender<Result<Upgraded, UpgradeError>>),
}

struct Worker {
    shared: Arc<Shared>,
    signals: OwnedFd,
    wake: OwnedFd,
    commands: Receiver<Command>,
    /// Bound before the thread starts (so before this generation can become
    /// the main process); closed when it hands over.
    control: Option<ControlEndpoint>,
    /// The reloads of this generation (see [`crate::reload`]).
    reload: Reload<Caller>,
    /// The hand-over channel to the new generation, during an upgrade.
    channel: Option<Channel>,
    /// The last upgrade's outcome, for the status.
    last_reload: Option<String>,
    /// After handing over: the channel to the next generation, on which a
    /// newer one may tell this one to end early.
    successor_link: Option<Channel>,
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
    let reload = Reload::new(
        shared.generation,
        std::process::id(),
        shared.options.ready_timeout,
    );
    let worker = Worker {
        shared,
        signals,
        wake,
        commands,
        control: Some(control),
        reload,
        channel: None,
        last_reload: None,
        successor_link: None,
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
            for signal in crate::sys::signals::read(&self.signals) {
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
                self.start_upgrade(Requester::Client(Caller::Call(reply)));
            }
            // A draining generation that ended is let go of at once (its
            // channel and pidfd closed), not at the next upgrade.
            let let_go = self.lock().older.prune();
            if let_go {
                self.set_status();
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
        deadlines.extend(self.reload.deadline());
        deadlines.extend(self.shared.drain.notice().map(|n| n.deadline));
        let timeout = deadlines
            .into_iter()
            .min()
            .map(|d| d.saturating_duration_since(now) + Duration::from_millis(1));
        let mut watched: Vec<BorrowedFd<'_>> = vec![self.signals.as_fd(), self.wake.as_fd()];
        watched.extend(self.control.iter().flat_map(ControlEndpoint::fds));
        watched.extend(self.channel.as_ref().map(|c| c.as_fd()));
        watched.extend(self.successor_link.as_ref().map(|c| c.as_fd()));
        // Copies, so that the state is not locked while this thread sleeps
        // (`Upgrader::ready` adds to it, and wakes this thread when it does).
        let older: Vec<OwnedFd> = self
            .lock()
            .older
            .watches()
            .into_iter()
            .filter_map(|fd| fd.try_clone_to_owned().ok())
            .collect();
        watched.extend(older.iter().map(AsFd::as_fd));
        let _ = crate::sys::poll::wait_readable(&watched, timeout);
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
        let own_cgroup = self.own_cgroup.as_deref();
        if let Some(connection) = connection.triage(request, own_cgroup, || self.status_text()) {
            self.start_upgrade(Requester::Client(Caller::Client(connection)));
        }
    }

    fn status_text(&self) -> String {
        let g = self.shared.generation;
        let pid = std::process::id();
        let what = match (self.reload.in_progress(), self.shared.drain.notice()) {
            (_, Some(n)) => match n.reason {
                DrainReason::HandedOver { successor } => {
                    format!("draining; handed over to pid {successor}")
                }
                DrainReason::Stopping => "draining; stopping".into(),
            },
            (Some((next, successor)), None) => format!(
                "serving; reloading (generation {next} starting, pid {})",
                successor.map_or("unknown".into(), |p| p.to_string())
            ),
            (None, None) => match &self.last_reload {
                Some(outcome) => format!("serving; {outcome}"),
                None => "serving".into(),
            },
        };
        let older = self.lock().older.status_suffix();
        format!("generation {g}, pid {pid}: {what}{older}")
    }

    fn start_upgrade(&mut self, requester: Requester<Caller>) {
        let facts = Facts {
            ready: self.lock().ready,
            // Until ready() a new generation is not the main process; it
            // refuses as still starting.
            main: true,
            unsupported: None,
        };
        self.drive(Event::Request(requester, facts));
    }

    fn drive(&mut self, event: Event<Caller>) {
        drive(self, event);
    }

    /// Carries out one action of the reload state machine (see [`Effects`]).
    fn perform(&mut self, action: Action<Caller>) -> Option<Event<Caller>> {
        match action {
            Action::MakeRoom => {
                let mut older = std::mem::take(&mut self.lock().older);
                let room = older.make_room(self.shared.bound, self.shared.generation);
                self.lock().older = older;
                return Some(Event::Room(room));
            }
            Action::NotifyReloading => {
                let _ = self.shared.notifier.notify(&[Notification::Reloading]);
            }
            Action::NotifyReady => {
                self.take_outcome();
                let status = self.status_text();
                let _ = self
                    .shared
                    .notifier
                    .notify(&[Notification::Ready, Notification::Status(&status)]);
            }
            Action::UpdateStatus => {
                self.take_outcome();
                self.set_status();
            }
            Action::Spawn => {
                return Some(Event::Spawned(match self.spawn_successor() {
                    Ok((channel, pid)) => {
                        self.channel = Some(channel);
                        Ok(Some(pid))
                    }
                    Err(e) => Err(e.to_string()),
                }));
            }
            Action::MakeMain { pid } => {
                return Some(
                    match make_main_process(&self.shared.notifier, pid, BARRIER_TIMEOUT) {
                        Ok(()) => Event::MainPidSent,
                        Err(reason) => Event::MainPidRefused(reason),
                    },
                );
            }
            Action::SendMain { took } => {
                let channel = self.channel.as_ref()?;
                if let Err(e) = channel.send(&Message::Main(took.as_millis() as u64)) {
                    return Some(Event::Broken(format!(
                        "telling the new generation it is the main process: {e}"
                    )));
                }
            }
            Action::Abandon { pid } => {
                self.channel = None;
                // A library program does not watch the channel before it
                // calls ready().
                if let Some(pid) = pid {
                    kill(pid);
                }
            }
            Action::Answer(caller, answer) => answer_caller(caller, answer),
            Action::BeginDrain { successor } => {
                self.successor_link = self.channel.take();
                // The new main process keeps track of the older generations now.
                drop(std::mem::take(&mut self.lock().older));
                self.begin_drain(successor);
            }
            // The library's machine is not pausing: its successors never
            // ask, and one that did is told no.
            Action::DeclinePause | Action::Pause { .. } => {
                if let Some(channel) = &self.channel {
                    let _ = channel.send(&Message::Paused(0));
                }
            }
            Action::Resume => {}
        }
        None
    }

    fn take_outcome(&mut self) {
        if let Some(outcome) = self.reload.take_outcome() {
            self.last_reload = Some(outcome);
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
        let mut command = Spawn::new(&self.shared.program);
        command.argv(&self.shared.args);
        for var in crate::listen::LISTEN_ENV {
            command.env_remove(var);
        }
        for (var, value) in crate::listen::passing_on(state.listeners.iter().map(|l| l.name())) {
            command.env(var, value);
        }
        command.env(HANDOVER_ENV, inheritance.to_env());
        let mut fds: Vec<BorrowedFd<'_>> = state.listeners.iter().map(|l| l.as_fd()).collect();
        fds.push(theirs.as_fd());
        fds.extend(state.older.channels());
        let pid = command.spawn_detached(&fds)?;
        Ok((ours, pid))
    }

    fn on_successor(&mut self) {
        let Some(channel) = &self.channel else { return };
        for event in successor_events(channel) {
            self.drive(event);
        }
    }

    /// A newer generation wrote on the channel to this drained one.
    fn on_successor_link(&mut self) {
        if !told_to_end(&mut self.successor_link) {
            return;
        }
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

    fn stop(&mut self, signal: Signal) {
        if self.reload.stopping() {
            return;
        }
        info!(
            "{signal} received: draining generation {}",
            self.shared.generation
        );
        self.drive(Event::Stop);
        if self.shared.drain.notice().is_none() {
            let _ = self.shared.notifier.notify(&[Notification::Stopping]);
        }
        self.shared
            .drain
            .begin(DrainReason::Stopping, self.shared.options.drain_timeout);
    }

    fn check_deadlines(&mut self) {
        let now = Instant::now();
        self.drive(Event::Tick);
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

/// What carries out the reload state machine's actions: the worker, or a
/// unit test's recorder.
trait Effects<C> {
    /// The state machine.
    fn reload(&mut self) -> &mut Reload<C>;
    /// Carries out `action`; returns the event it leads to, if any.
    fn carry_out(&mut self, action: Action<C>) -> Option<Event<C>>;
}

impl Effects<Caller> for Worker {
    fn reload(&mut self) -> &mut Reload<Caller> {
        &mut self.reload
    }

    fn carry_out(&mut self, action: Action<Caller>) -> Option<Event<Caller>> {
        self.perform(action)
    }
}

/// Hands `event` to the reload state machine and carries out what it says,
/// feeding the outcomes back.
fn drive<C>(effects: &mut impl Effects<C>, event: Event<C>) {
    let mut queue: VecDeque<Action<C>> = effects.reload().handle(event, Instant::now()).into();
    while let Some(action) = queue.pop_front() {
        // The drain notice lets the program end the process (it may return
        // from main at once), which ends this thread too: the requester
        // hears its answer first, or it would see the connection close
        // without a reply and fail a reload that handed over.
        if matches!(action, Action::BeginDrain { .. })
            && queue.iter().any(|a| matches!(a, Action::Answer(..)))
        {
            queue.push_back(action);
            continue;
        }
        if let Some(event) = effects.carry_out(action) {
            // What follows from it comes before the rest.
            for action in effects
                .reload()
                .handle(event, Instant::now())
                .into_iter()
                .rev()
            {
                queue.push_front(action);
            }
        }
    }
}

fn kill(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

fn answer_caller(caller: Caller, answer: Answer) {
    match caller {
        Caller::Client(connection) => {
            let _ = connection.reply(&answer.reply());
        }
        Caller::Call(reply) => {
            let result = match answer {
                Answer::Done {
                    pid,
                    generation,
                    took,
                    ..
                } => Ok(Upgraded {
                    pid,
                    generation,
                    took,
                }),
                Answer::Refused(kind, text) => {
                    let kind = match kind {
                        Refusal::Stopping | Refusal::Unsupported => UpgradeErrorKind::Stopping,
                        Refusal::Failed => UpgradeErrorKind::Failed,
                        _ => UpgradeErrorKind::Busy,
                    };
                    Err(UpgradeError::new(kind, text))
                }
            };
            let _ = reply.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Carries out actions by writing down what a worker would do.
    struct Recorder {
        reload: Reload<u32>,
        done: Vec<String>,
    }

    impl Effects<u32> for Recorder {
        fn reload(&mut self) -> &mut Reload<u32> {
            &mut self.reload
        }

        fn carry_out(&mut self, action: Action<u32>) -> Option<Event<u32>> {
            match action {
                Action::MakeRoom => return Some(Event::Room(Ok(()))),
                Action::Spawn => return Some(Event::Spawned(Ok(Some(40)))),
                Action::MakeMain { .. } => return Some(Event::MainPidSent),
                Action::Answer(client, Answer::Done { .. }) => {
                    self.done.push(format!("answer ok {client}"))
                }
                Action::Answer(client, Answer::Refused(..)) => {
                    self.done.push(format!("answer refused {client}"))
                }
                Action::BeginDrain { successor } => self.done.push(format!("drain {successor}")),
                _ => {}
            }
            None
        }
    }

    /// Client 7's reload, driven to "MAINPID= was sent".
    fn main_sent() -> Recorder {
        let mut worker = Recorder {
            reload: Reload::new(3, 30, Duration::from_secs(2)),
            done: Vec::new(),
        };
        let facts = Facts {
            ready: true,
            main: true,
            unsupported: None,
        };
        drive(&mut worker, Event::Request(Requester::Client(7), facts));
        drive(&mut worker, Event::Ready);
        assert_eq!(worker.reload.in_progress(), Some((4, Some(40))));
        assert!(worker.done.is_empty(), "{:?}", worker.done);
        worker
    }

    // The state machine says drain, then answer; the library's worker
    // answers first (commit 8145357): the drain notice may end the process.
    #[test]
    fn the_requester_hears_ok_before_the_drain_notice() {
        let mut worker = main_sent();
        drive(&mut worker, Event::Done);
        assert_eq!(worker.done, ["answer ok 7", "drain 40"]);
    }

    #[test]
    fn the_requester_hears_of_a_failure_after_mainpid_before_the_drain_notice() {
        let mut worker = main_sent();
        drive(&mut worker, Event::Gone);
        assert_eq!(worker.done, ["answer refused 7", "drain 40"]);
    }
}
