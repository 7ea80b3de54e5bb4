//! The main process: it relays the program's notifications, answers the
//! control socket and, on a reload, drives the reload state machine
//! ([`crate::reload`]) until it hands over and drains.

use std::collections::VecDeque;
use std::process::ExitStatus;
use std::time::Instant;

use tracing::{debug, error, info, warn};

use super::super::config::{fail, ExecError, Outcome};
use super::super::spawn::spawn_successor;
use super::generation::describe;
use super::role::{Barrier, MainState, Role};
use super::shared::Shared;
use super::signals::on_signals;
use crate::listen::NamedFd;
use crate::notify::barrier_passed;
use crate::notify::Notification;
use crate::protocol::control::{ControlConnection, Reply};
use crate::protocol::generations::END_TIMEOUT;
use crate::protocol::handover::{send_main_pid, Message};
use crate::protocol::sysexits;
use crate::reload::{successor_events, Action, Event, Requester, BARRIER_TIMEOUT};

impl MainState {
    pub(super) fn status_text(&self, shared: &Shared<'_>) -> String {
        shared.status_text(
            false,
            self.reload.in_progress().map(|(next, _)| next),
            self.last_reload.as_deref(),
            &self.older.status_suffix(),
        )
    }

    pub(super) fn update_status(&self, shared: &Shared<'_>) {
        let _ = shared.notifier.status(&self.status_text(shared));
    }

    /// `READY=1` with the status.
    pub(super) fn notify_ready(&self, shared: &Shared<'_>) {
        let status = self.status_text(shared);
        if let Err(e) = shared
            .notifier
            .notify(&[Notification::Ready, Notification::Status(&status)])
        {
            warn!("telling the service manager about readiness: {e}");
        }
    }

    fn take_outcome(&mut self) {
        if let Some(outcome) = self.reload.take_outcome() {
            self.last_reload = Some(outcome);
        }
    }

    /// The new generation wrote on the hand-over channel.
    pub(super) fn on_successor(self, shared: &mut Shared<'_>) -> Role {
        let Some(channel) = &self.handover else {
            return Role::Main(self);
        };
        let events = successor_events(channel);
        let mut role = Role::Main(self);
        for event in events {
            role = match role {
                Role::Main(main) => main.drive(shared, event),
                // Handed over: what else it said is for the new main
                // process's own channel.
                other => return other,
            };
        }
        role
    }

    /// Hands `event` to the reload state machine and carries out what it
    /// says, feeding the outcomes back; a hand-over ends the role.
    pub(super) fn drive(
        mut self,
        shared: &mut Shared<'_>,
        event: Event<ControlConnection>,
    ) -> Role {
        let mut queue: VecDeque<Action<ControlConnection>> =
            self.reload.handle(event, Instant::now()).into();
        while let Some(action) = queue.pop_front() {
            if let Action::BeginDrain { successor } = action {
                return self.hand_over(shared, successor, queue);
            }
            // What follows from an action comes before the rest.
            for event in self.carry_out(shared, action).into_iter().rev() {
                for action in self.reload.handle(event, Instant::now()).into_iter().rev() {
                    queue.push_front(action);
                }
            }
        }
        Role::Main(self)
    }

    /// Carries out `action`; returns what came of it, in order.
    fn carry_out(
        &mut self,
        shared: &mut Shared<'_>,
        action: Action<ControlConnection>,
    ) -> Vec<Event<ControlConnection>> {
        let number = shared.generation.number;
        match action {
            Action::MakeRoom => {
                let bound = shared.config.generations;
                match self
                    .older
                    .begin_room(bound, number, END_TIMEOUT, Instant::now())
                {
                    Ok(None) => return vec![Event::Room(Ok(()))],
                    Err(refused) => return vec![Event::Room(Err(refused))],
                    // Reported by on_timers once they are gone, or late.
                    Ok(Some(making)) => self.making_room = Some(making),
                }
            }
            Action::NotifyReloading => {
                let _ = shared.notifier.notify(&[Notification::Reloading]);
            }
            Action::NotifyReady => {
                self.take_outcome();
                let status = self.status_text(shared);
                let _ = shared
                    .notifier
                    .notify(&[Notification::Ready, Notification::Status(&status)]);
            }
            Action::UpdateStatus => {
                self.take_outcome();
                self.update_status(shared);
            }
            Action::Spawn => {
                return vec![Event::Spawned(self.spawn_successor(shared).map(|()| None))]
            }
            Action::MakeMain { pid } => {
                if let Err(reason) = send_main_pid(&shared.notifier, pid) {
                    return vec![Event::MainPidRefused(reason)];
                }
                match shared.notifier.begin_barrier() {
                    // Reported by on_barrier, once the manager processed it.
                    Ok(Some(read_end)) => {
                        self.barrier = Some(Barrier {
                            read_end,
                            pid,
                            deadline: Instant::now() + BARRIER_TIMEOUT,
                        })
                    }
                    Ok(None) => return vec![Event::MainPidSent],
                    Err(e) => {
                        warn!("waiting for the manager to process MAINPID={pid}: {e}");
                        return vec![Event::MainPidSent];
                    }
                }
            }
            Action::SendMain { took } => {
                let Some(channel) = &self.handover else {
                    return Vec::new();
                };
                if let Err(e) = channel.send(&Message::Main(took.as_millis() as u64)) {
                    return vec![Event::Broken(format!(
                        "telling generation {} it is the main process: {e}",
                        number + 1
                    ))];
                }
            }
            // The new generation stops its program when its channel closes.
            Action::Abandon { .. } => {
                self.handover = None;
                self.barrier = None;
            }
            Action::Answer(connection, answer) => {
                let _ = connection.reply(&answer.reply());
            }
            Action::BeginDrain { .. } => unreachable!("drive hands over"),
            Action::Pause { for_at_most } => {
                let now = Instant::now();
                if self.paused.is_none() {
                    match shared.generation.pause(now) {
                        Ok(paused) => self.paused = Some(paused),
                        Err(e) => {
                            warn!("pausing for a probe of generation {}: {e}", number + 1);
                            self.tell_successor(&Message::Paused(0));
                            return vec![Event::ResumeAsked];
                        }
                    }
                }
                self.pause_owed = Some(now + for_at_most);
                self.answer_pause(now);
            }
            Action::DeclinePause => self.tell_successor(&Message::Paused(0)),
            Action::Resume => {
                self.paused = None;
                self.pause_owed = None;
            }
        }
        Vec::new()
    }

    /// Tells the new generation `PAUSED` once the program's stop took
    /// effect (see [`super::generation::Paused::settled`]): a probe sent
    /// before would wake a thread that has not stopped yet.
    fn answer_pause(&mut self, now: Instant) {
        let (Some(end), Some(paused)) = (self.pause_owed, &mut self.paused) else {
            return;
        };
        if !paused.settled(now) {
            return;
        }
        self.pause_owed = None;
        // Rounded up: 0 would say that it is not paused.
        let left = end
            .saturating_duration_since(now)
            .as_micros()
            .div_ceil(1000);
        self.tell_successor(&Message::Paused(left.max(1) as u64));
    }

    /// Sends `message` to the new generation; a failure shows as the
    /// channel's end or error when it is next read.
    fn tell_successor(&self, message: &Message) {
        if let Some(channel) = &self.handover {
            if let Err(e) = channel.send(message) {
                debug!(?message, "telling the new generation: {e}");
            }
        }
    }

    /// The manager's barrier pipe is readable: `MAINPID=` was processed
    /// when it is at its end.
    pub(super) fn on_barrier(self, shared: &mut Shared<'_>) -> Role {
        match self.barrier.as_ref().map(|b| barrier_passed(&b.read_end)) {
            Some(Ok(true)) => self.barrier_done(shared),
            Some(Err(e)) => {
                warn!("waiting for the manager to process MAINPID=: {e}");
                self.barrier_done(shared)
            }
            Some(Ok(false)) | None => Role::Main(self),
        }
    }

    /// The wait for the manager after `MAINPID=` ended (or timed out): a
    /// stop that raced the MAINPID= message shows up as a signal to us
    /// (the manager then ignored MAINPID=): the signals come first, and the
    /// machine drops MainPidSent after a stop.
    fn barrier_done(mut self, shared: &mut Shared<'_>) -> Role {
        self.barrier = None;
        match on_signals(shared, Role::Main(self)) {
            Role::Main(main) => main.drive(shared, Event::MainPidSent),
            other => other,
        }
    }

    /// The waits of a reload that have deadlines or no descriptor of their
    /// own (room made, the barrier's timeout), then the machine's tick.
    pub(super) fn on_timers(mut self, shared: &mut Shared<'_>, now: Instant) -> Role {
        self.answer_pause(now);
        if let Some(making) = &self.making_room {
            if let Some(made) = self.older.room_made(making, now) {
                self.making_room = None;
                return match self.drive(shared, Event::Room(made)) {
                    Role::Main(main) => main.on_timers(shared, now),
                    other => other,
                };
            }
        }
        if let Some(barrier) = &self.barrier {
            if now >= barrier.deadline {
                warn!(
                    "waiting for the manager to process MAINPID={}: no answer within {BARRIER_TIMEOUT:?}",
                    barrier.pid
                );
                return match self.barrier_done(shared) {
                    Role::Main(main) => main.on_timers(shared, now),
                    other => other,
                };
            }
        }
        self.drive(shared, Event::Tick)
    }

    /// Handed over to `successor`: this generation drains; the actions the
    /// machine listed after the hand-over (the requester's answer) follow
    /// the drain's start, so the requester hears OK once this generation
    /// takes no new work.
    fn hand_over(
        self,
        shared: &mut Shared<'_>,
        successor: u32,
        rest: VecDeque<Action<ControlConnection>>,
    ) -> Role {
        let (draining, control) = self.into_draining(Instant::now(), shared.config.drain_timeout);
        control.close_with(&Reply::handed_over(successor));
        shared.readiness = None;
        shared.forward(shared.config.drain_signal);
        for action in rest {
            match action {
                Action::Answer(connection, answer) => {
                    let _ = connection.reply(&answer.reply());
                }
                other => warn!(?other, "ignored a reload action after the hand-over"),
            }
        }
        Role::Draining(draining)
    }

    /// Starts the next generation; its pid comes in its `HELLO`.
    fn spawn_successor(&mut self, shared: &Shared<'_>) -> Result<(), String> {
        let (ours, theirs) =
            crate::protocol::handover::Channel::pair().map_err(|e| e.to_string())?;
        spawn_successor(
            &shared.config.program.fdstore_exec,
            &shared.config.args,
            &shared.listeners.active,
            theirs,
            shared.generation.number + 1,
            &shared.listeners.managed,
            &self.older,
        )
        .map_err(|e| e.to_string())?;
        self.handover = Some(ours);
        Ok(())
    }

    /// The previous generation wrote on its channel, or is gone.
    pub(super) fn on_predecessor(&mut self, shared: &Shared<'_>) {
        loop {
            let Some(channel) = &self.predecessor else {
                return;
            };
            match channel.recv() {
                Ok(None) => return,
                Ok(Some(Some(other))) => {
                    tracing::debug!(?other, "unexpected message from the old generation")
                }
                Ok(Some(None)) => break,
                Err(e) => {
                    warn!("hand-over channel: {e}");
                    break;
                }
            }
        }
        self.predecessor = None;
        self.check_listeners_after_drain(shared);
    }

    /// Once the old generation is gone: a listener that no longer listens
    /// was shut down (`shutdown(2)`) by the old program while it drained,
    /// which ends it for this generation too. Nothing can revive that
    /// socket; say so in the journal and the status, with the fix.
    fn check_listeners_after_drain(&mut self, shared: &Shared<'_>) {
        let dead = super::super::listeners::dead_listeners(&shared.listeners.active);
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
        self.update_status(shared);
    }

    /// Closes the listeners the configuration no longer names and removes
    /// them from the fd store. Only the main process may: the manager drops
    /// `FDSTOREREMOVE=1` from any other (and a later reload may make this
    /// generation an old one before its predecessor is gone), so this runs
    /// as soon as the generation is main. The old generation's program keeps
    /// its own copy until it has drained.
    pub(super) fn retire_listeners(&self, shared: &mut Shared<'_>) {
        for fd in std::mem::take(&mut shared.listeners.retired) {
            match shared.notifier.remove_fds(fd.name()) {
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

    /// The program exited while serving: a reload in progress fails (the
    /// new generation is abandoned unless already main), and fdstore-exec
    /// ends as its program did.
    pub(super) fn on_program_exit(self, shared: &mut Shared<'_>, status: ExitStatus) -> Outcome {
        let event = Event::Abort(format!(
            "the serving generation {} {}",
            shared.generation.number,
            describe(status)
        ));
        let _ = self.drive(shared, event);
        shared.finish(status)
    }

    /// The first generation was not ready in time: there is no other to
    /// fall back to; kill it and fail.
    pub(super) fn not_ready_in_time(&self, shared: &mut Shared<'_>, message: String) -> ExecError {
        error!("{message}; killing it");
        shared.generation.kill_all();
        let _ = shared.generation.child.wait();
        let _ = shared.notifier.status(&message);
        fail(sysexits::UNAVAILABLE, message)
    }

    /// A reload request, by a client or by the reload signal.
    pub(super) fn start_reload(
        self,
        shared: &mut Shared<'_>,
        requester: Requester<ControlConnection>,
    ) -> Role {
        let facts = shared.facts(true);
        self.drive(shared, Event::Request(requester, facts))
    }
}
