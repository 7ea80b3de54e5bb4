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
//!
//! Each role owns its state ([`role::Role`]): a transition consumes one
//! role's state and returns the next, so a draining generation has no
//! control socket or reload machine, a successor no hand-over channel to a
//! newer generation. What every role has lives in [`shared::Shared`].
//!
//! - `role.rs`: the states and their transitions (pure);
//! - `successor.rs`, `main_role.rs`, `draining.rs`: what each role does;
//! - `sources.rs`: what is polled in each role; `signals.rs`,
//!   `notifications.rs`, `control.rs`: the events every role takes;
//! - `start.rs`: what the process inherited, the program's start;
//! - `shared.rs`, `generation.rs` (the program), `status.rs` (the text).

use std::time::{Duration, Instant};

use nix::sys::signal::SigSet;
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tracing::info;

use super::config::{fail, Config, ExecError, Outcome, SignalRoles};
use crate::protocol::handover::Message;
use crate::protocol::sysexits;
use crate::sys::poll::wait_readable;

mod control;
mod draining;
mod generation;
mod main_role;
mod notifications;
mod role;
mod shared;
mod signals;
mod sources;
mod start;
mod status;
mod successor;
#[cfg(test)]
mod tests;

use control::on_control;
pub(crate) use generation::describe;
use notifications::on_relay;
use role::{MainState, Role, SuccessorState};
use shared::Shared;
use signals::on_signals;
use sources::{sources, Source};
use start::start;
pub use start::Inherited;

/// The signals fdstore-exec handles itself (through a signalfd): the stop
/// signals, the reload signal and the forwarded ones (see [`SignalRoles`]).
fn handled_signals(roles: &SignalRoles) -> SigSet {
    let mut set = SigSet::empty();
    for s in roles.handled() {
        set.add(s);
    }
    set
}

/// How the loop goes on after an event: in a role, or to an end.
// The role is moved through each event's handler by value (a transition
// consumes it); boxing it would save a copy of a few hundred bytes per event.
#[allow(clippy::large_enum_variant)]
enum Flow {
    Go(Role),
    End(Outcome),
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
    let (number, managed, pauses, predecessor) = match inherited.handover? {
        Some(p) => {
            let _ = p.channel.send(&Message::Hello(std::process::id()));
            (
                p.inheritance.generation,
                p.inheritance.managed,
                p.pauses,
                Some((p.channel, p.older)),
            )
        }
        None => (1, Vec::new(), false, None),
    };
    let started = inherited
        .listeners
        .map_err(|e| fail(sysexits::CONFIG, format!("receiving listeners: {e}")))
        .and_then(|received| {
            start(
                config,
                signal_fd,
                received,
                number,
                &managed,
                predecessor.is_none(),
                pauses,
            )
        });
    let (shared, control, reload) = match started {
        Ok(started) => started,
        Err(e) => {
            if let Some((channel, _)) = predecessor {
                let _ = channel.send(&Message::Failed(e.message.clone()));
            }
            return Err(e);
        }
    };
    let role = match predecessor {
        Some((channel, older)) => {
            Role::Successor(SuccessorState::new(channel, control, reload, older))
        }
        None => {
            let main = MainState::first(control, reload);
            main.update_status(&shared);
            Role::Main(main)
        }
    };
    run_loop(shared, role)
}

impl Shared<'_> {
    fn waiting_for_ready(&self, role: &Role) -> bool {
        !self.generation.ready && !self.stopping && !matches!(role, Role::Draining(_))
    }
}

/// The event loop.
fn run_loop(mut shared: Shared<'_>, mut role: Role) -> Result<Outcome, ExecError> {
    loop {
        role = match check_timers(&mut shared, role)? {
            Flow::Go(role) => role,
            Flow::End(end) => return Ok(end),
        };
        let polled = sources(&shared, &role);
        let readable = {
            let fds: Vec<_> = polled.iter().map(|s| s.fd(&shared, &role)).collect();
            wait_readable(&fds, next_wake(&shared, &role))
                .map_err(|e| fail(sysexits::OSERR, format!("poll: {e}")))?
        };
        for (source, _) in polled.iter().zip(readable).filter(|(_, r)| *r) {
            role = match dispatch(&mut shared, role, *source)? {
                Flow::Go(role) => role,
                Flow::End(end) => return Ok(end),
            };
        }
        // Every wake-up: accepts, reads requests, drops silent clients.
        role = on_control(&mut shared, role);
    }
}

/// When the loop must wake at the latest, from now.
fn next_wake(shared: &Shared<'_>, role: &Role) -> Option<Duration> {
    let now = Instant::now();
    let mut wakes = Vec::new();
    if shared.waiting_for_ready(role) {
        wakes.push(shared.ready_deadline());
        wakes.extend(shared.readiness.as_ref().and_then(|r| r.next_wake(now)));
    }
    wakes.extend(role.next_wake(now, shared.generation.exited.is_some()));
    wakes
        .into_iter()
        .min()
        .map(|t| t.saturating_duration_since(now))
}

fn dispatch(shared: &mut Shared<'_>, role: Role, source: Source) -> Result<Flow, ExecError> {
    let role = match (source, role) {
        (Source::Signals, role) => on_signals(shared, role),
        (Source::Relay, role) => {
            let mut role = role;
            while let Ok(Some(message)) = shared.relay.recv() {
                on_relay(shared, &mut role, message);
            }
            role
        }
        (Source::Program, role) => match shared.generation.child.try_wait() {
            Ok(Some(status)) => return on_program_exit(shared, role, status),
            _ => role,
        },
        (Source::Successor, Role::Main(main)) => main.on_successor(shared),
        (Source::Predecessor, Role::Successor(s)) => s.on_predecessor(shared),
        (Source::Predecessor, Role::Main(mut main)) => {
            main.on_predecessor(shared);
            Role::Main(main)
        }
        (Source::Barrier, Role::Main(main)) => main.on_barrier(shared),
        // Whichever of them woke the loop: those that are gone are let go
        // of together (room being made is checked in check_timers).
        (Source::Older(_), Role::Main(mut main)) => {
            if main.older.prune() {
                main.update_status(shared);
            }
            Role::Main(main)
        }
        (Source::SuccessorLink, Role::Draining(mut d)) => {
            d.on_successor_link(shared);
            Role::Draining(d)
        }
        // Control: served once per wake-up, after the other sources.
        // Readiness: the checks move on in check_timers, at the top
        // of the loop. Anything else belongs to a role this process just left.
        (_, role) => role,
    };
    Ok(Flow::Go(role))
}

fn check_timers(shared: &mut Shared<'_>, role: Role) -> Result<Flow, ExecError> {
    let now = Instant::now();
    let mut role = role;
    if shared.waiting_for_ready(&role) {
        let ready = shared.readiness.as_mut().is_some_and(|r| r.step(now));
        if let (Some(readiness), Role::Successor(s)) = (&mut shared.readiness, &role) {
            for message in readiness.take_messages() {
                s.tell_predecessor(&message);
            }
        }
        if ready {
            shared.readiness = None;
            on_program_ready(shared, &role);
        }
        if !shared.generation.ready && Instant::now() >= shared.ready_deadline() {
            role = not_ready_in_time(shared, role)?;
        }
    }
    match role {
        Role::Main(main) => Ok(Flow::Go(main.on_timers(shared, now))),
        Role::Draining(mut d) => Ok(match d.check_timers(shared, now) {
            Some(end) => Flow::End(end),
            None => Flow::Go(Role::Draining(d)),
        }),
        role => Ok(Flow::Go(role)),
    }
}

fn on_program_ready(shared: &mut Shared<'_>, role: &Role) {
    let g = &mut shared.generation;
    g.ready = true;
    info!(pid = g.pid(), took = ?g.started.elapsed(), "generation {} is ready", g.number);
    match role {
        Role::Main(main) => main.notify_ready(shared),
        Role::Successor(s) => s.on_program_ready(),
        Role::Draining(_) => {}
    }
}

/// Ends the wait for readiness as failed: a successor drains (the old
/// generation keeps serving); the first generation fails.
fn not_ready_in_time(shared: &mut Shared<'_>, role: Role) -> Result<Role, ExecError> {
    let pending = shared
        .readiness
        .take()
        .map(|r| format!(" ({})", r.pending(Instant::now())))
        .unwrap_or_default();
    let message = format!(
        "{} (generation {}, pid {}) was not ready within {:?}{pending}",
        shared.program_name(),
        shared.generation.number,
        shared.generation.pid(),
        shared.config.ready_timeout
    );
    match role {
        Role::Successor(s) => Ok(s.not_ready_in_time(shared, message)),
        Role::Main(main) => Err(main.not_ready_in_time(shared, message)),
        Role::Draining(d) => Ok(Role::Draining(d)),
    }
}

fn on_program_exit(
    shared: &mut Shared<'_>,
    role: Role,
    status: std::process::ExitStatus,
) -> Result<Flow, ExecError> {
    shared.generation.exited = Some(status);
    match role {
        Role::Draining(d) => Ok(match d.on_program_exit(shared) {
            Some(end) => Flow::End(end),
            None => Flow::Go(Role::Draining(d)),
        }),
        Role::Successor(s) => s.on_program_exit(shared, status).map(Flow::End),
        Role::Main(main) => Ok(Flow::End(main.on_program_exit(shared, status))),
    }
}
