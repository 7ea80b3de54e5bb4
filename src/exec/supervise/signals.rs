//! Signals: stop, reload, and those passed to the program.

use nix::sys::signal::Signal;
use tracing::info;

use super::super::config::{Mode, STOP_SIGNALS};
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

fn on_signal(shared: &mut Shared<'_>, role: Role, signal: Signal, sender: u32) -> Role {
    let config = shared.config;
    let reload = config.mode == Mode::Handover && config.signals.reload == Some(signal);
    if reload {
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
    if !STOP_SIGNALS.contains(&signal) {
        // A forwarded signal (or, in --mode restart, the reload signal,
        // since there is no hand-over to start).
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
