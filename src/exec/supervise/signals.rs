//! Signals: stop, reload, and those passed to the program.

use nix::sys::signal::Signal;
use tracing::info;

use super::super::config::{Mode, SignalRoles, STOP_SIGNALS};
use super::role::Role;
use super::shared::Shared;
use crate::reload::{Event, Requester};

pub(super) fn on_signals(shared: &mut Shared<'_>, role: Role) -> Role {
    let mut role = role;
    for (signal, sender) in shared.read_signals() {
        role = on_signal(shared, role, signal, sender);
    }
    role
}

/// What a signal to fdstore-exec asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SignalUse {
    /// A reload by hand-over (by the main process; ignored by the others).
    Reload,
    /// The unit stops: passed to the program.
    Stop,
    /// Passed to the program, nothing else.
    Forward,
}

/// What `signal` asks for under `mode` and `roles`: in `--mode restart`
/// the reload signal has no hand-over to start, and is passed on.
pub(super) fn signal_use(mode: Mode, roles: &SignalRoles, signal: Signal) -> SignalUse {
    if mode == Mode::Handover && roles.reload == Some(signal) {
        SignalUse::Reload
    } else if STOP_SIGNALS.contains(&signal) {
        SignalUse::Stop
    } else {
        SignalUse::Forward
    }
}

fn on_signal(shared: &mut Shared<'_>, role: Role, signal: Signal, sender: u32) -> Role {
    let config = shared.config;
    let wanted = signal_use(config.mode, &config.signals, signal);
    if wanted == SignalUse::Reload {
        return match role {
            Role::Main(main) => {
                info!(sender, "{signal}: reloading by hand-over");
                main.start_reload(shared, Requester::Signal)
            }
            role => {
                info!("{signal} ignored: this process is not the main process");
                role
            }
        };
    }
    if wanted == SignalUse::Forward {
        info!(
            sender,
            pid = shared.generation.pid(),
            "{signal}: passing it to the program"
        );
        shared.forward(signal);
        return role;
    }
    shared.note_stop(signal, sender);
    let role = match role {
        Role::Main(main) => main.drive(shared, Event::Stop),
        Role::Successor(mut s) => {
            s.on_stop(shared, signal);
            Role::Successor(s)
        }
        Role::Draining(d) => Role::Draining(d),
    };
    shared.forward(signal);
    role
}

impl Shared<'_> {
    /// A stop signal arrived: the unit is stopping.
    pub(super) fn note_stop(&mut self, signal: Signal, sender: u32) {
        info!(
            ?signal,
            sender,
            pid = self.generation.pid(),
            "stopping: passing the signal to the program"
        );
        self.stopping = true;
        // Ends the probes and kills a check command in progress.
        self.readiness = None;
    }
}
