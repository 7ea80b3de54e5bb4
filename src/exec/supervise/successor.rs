//! A new generation, started by the main process for a reload: it starts
//! its program, reports readiness over the hand-over channel and waits to be
//! made the main process (see [`crate::protocol::handover`]).

use std::process::ExitStatus;
use std::time::Instant;

use tracing::{debug, error, info, warn};

use super::super::config::{fail, ExecError, Outcome};
use super::generation::describe;
use super::role::{DrainingState, MainState, Role, SuccessorState};
use super::shared::Shared;
use crate::fd_store::store;
use crate::protocol::control::ControlConnection;
use crate::protocol::handover::Message;
use crate::protocol::sysexits;
use crate::reload::{Event, Requester};

impl SuccessorState {
    pub(super) fn status_text(&self, shared: &Shared<'_>) -> String {
        shared.status_text(false, None, None, &self.older.status_suffix())
    }

    /// Hands `event` to the reload machine, which refuses requests until
    /// this generation is main (and notes a stop); answers what it says.
    pub(super) fn drive(&mut self, event: Event<ControlConnection>) {
        for action in self.reload.handle(event, Instant::now()) {
            match action {
                crate::reload::Action::Answer(connection, answer) => {
                    let _ = connection.reply(&answer.reply());
                }
                other => warn!(?other, "ignored a reload action before the hand-over"),
            }
        }
    }

    /// A reload request: refused, with the reason the machine gives.
    pub(super) fn on_request(&mut self, shared: &Shared<'_>, connection: ControlConnection) {
        let facts = shared.facts(false);
        self.drive(Event::Request(Requester::Client(connection), facts));
    }

    /// The old generation wrote on the hand-over channel, or is gone.
    pub(super) fn on_predecessor(self, shared: &mut Shared<'_>) -> Role {
        loop {
            let message = match self.predecessor.recv() {
                Ok(None) => return Role::Successor(self),
                Ok(Some(message)) => message,
                Err(e) => {
                    warn!("hand-over channel: {e}");
                    None
                }
            };
            match message {
                Some(Message::Main(took)) => {
                    return Role::Main(self.become_main(shared, took));
                }
                Some(Message::Paused(ms)) => match &mut shared.readiness {
                    Some(readiness) => readiness.on_paused(ms, Instant::now()),
                    // Ready already: the old side ends the pause by itself.
                    None if ms > 0 => self.tell_predecessor(&Message::Resume),
                    None => {}
                },
                Some(other) => debug!(?other, "unexpected message from the old generation"),
                None => {
                    warn!(
                        "the old generation abandoned the hand-over; stopping generation {}",
                        shared.generation.number
                    );
                    drop(self.give_up());
                    return Role::Draining(stop_program(shared));
                }
            }
        }
    }

    /// Told `MAIN`: this generation is the unit's main process now.
    fn become_main(self, shared: &mut Shared<'_>, took_ms: u64) -> MainState {
        let number = shared.generation.number;
        let (main, queued, counted) = self.into_main(number, took_ms);
        if let Err(e) = counted {
            warn!(
                "keeping track of generation {}: {e}; it is not counted against max-generations",
                number - 1
            );
        }
        main.notify_ready(shared);
        for name in std::mem::take(&mut shared.listeners.unstored) {
            if let Some(fd) = shared.listeners.active.iter().find(|l| l.name() == name) {
                store(&shared.notifier, fd);
            }
        }
        for message in queued {
            shared.relay_to_manager(&message);
        }
        main.retire_listeners(shared);
        if let Some(channel) = &main.predecessor {
            let _ = channel.send(&Message::Done);
        }
        info!(
            pid = std::process::id(),
            "generation {number} is the main process"
        );
        main
    }

    /// Sends `message` to the old generation; a failure shows as the
    /// channel's end when it is next read.
    pub(super) fn tell_predecessor(&self, message: &Message) {
        if let Err(e) = self.predecessor.send(message) {
            debug!(?message, "telling the old generation: {e}");
        }
    }

    /// The program is ready: tell the old generation.
    pub(super) fn on_program_ready(&self) {
        if let Err(e) = self.predecessor.send(&Message::Ready) {
            warn!("telling the old generation about readiness: {e}");
        }
    }

    /// A stop signal before the hand-over completed.
    pub(super) fn on_stop(&mut self, shared: &Shared<'_>, signal: nix::sys::signal::Signal) {
        self.drive(Event::Stop);
        let _ = self.predecessor.send(&Message::Failed(format!(
            "generation {} received {signal} before the hand-over completed",
            shared.generation.number
        )));
    }

    /// The program exited before the hand-over completed: the reload fails.
    pub(super) fn on_program_exit(
        self,
        shared: &mut Shared<'_>,
        status: ExitStatus,
    ) -> Result<Outcome, ExecError> {
        // What it started must not go on serving the shared listeners for
        // a generation that failed.
        shared.generation.kill_all();
        let g = &shared.generation;
        let when = if g.ready {
            "before the hand-over completed"
        } else {
            "before it was ready"
        };
        let message = format!(
            "{} (generation {}, pid {}) {} {when}",
            shared.program_name(),
            g.number,
            g.pid(),
            describe(status)
        );
        let _ = self.give_up().send(&Message::Failed(message.clone()));
        if shared.stopping {
            // A stop signal reaches a new generation when the manager
            // already follows it (MAINPID= was accepted just before the
            // stop): it is then the unit's main process, and its program's
            // exit after the stop signal is the unit's clean stop, not a
            // failure.
            return Ok(shared.finish(status));
        }
        error!("{message}");
        Err(fail(sysexits::UNAVAILABLE, message))
    }

    /// Not ready in time: tell the old generation at once (the reload
    /// fails, the old one keeps serving), then let the program drain as an
    /// old generation does: a program accepts on the shared listeners before
    /// it is ready, and killing it would reset the connections it took.
    pub(super) fn not_ready_in_time(self, shared: &mut Shared<'_>, message: String) -> Role {
        let config = shared.config;
        error!(
            "{message}; telling it to drain ({}, at most {:?})",
            config.drain_signal, config.drain_timeout
        );
        let _ = self.give_up().send(&Message::Failed(message));
        shared.readiness = None;
        shared.forward(config.drain_signal);
        Role::Draining(DrainingState::new(Instant::now(), config.drain_timeout))
    }
}

/// Stops the program of a generation that will not be main: with the drain
/// signal and timeout when it may be serving, at once when it never became
/// ready.
fn stop_program(shared: &mut Shared<'_>) -> DrainingState {
    shared.readiness = None;
    if shared.generation.ready {
        shared.forward(shared.config.drain_signal);
        DrainingState::new(Instant::now(), shared.config.drain_timeout)
    } else {
        shared.generation.kill_all();
        DrainingState::killed(Instant::now())
    }
}
