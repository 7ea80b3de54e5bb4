//! What every role has: the configuration, the manager's notification
//! socket, the signals, the program's notification relay, the program and
//! its listeners.

use std::path::Path;
use std::process::ExitStatus;
use std::time::Instant;

use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use tracing::{error, info};

use super::super::config::{Config, Outcome};
use super::super::listeners::ListenerSet;
use super::super::log_limit::LogLimit;
use super::super::readiness::Readiness;
use super::super::relay::NotifyRelay;
use super::generation::{describe, outcome_of, Generation};
use super::status::{status_text, StatusFacts};
use crate::notify::Notifier;

/// The parts of the supervisor that every role has.
pub(super) struct Shared<'c> {
    pub(super) config: &'c Config,
    pub(super) notifier: Notifier,
    pub(super) signal_fd: SignalFd,
    pub(super) relay: NotifyRelay,
    pub(super) generation: Generation,
    pub(super) listeners: ListenerSet,
    pub(super) own_cgroup: Option<String>,
    pub(super) stopping: bool,
    /// The readiness checks, until the program is ready (or stopping, or
    /// draining).
    pub(super) readiness: Option<Readiness>,
    /// The journal lines about notifications from outside the unit.
    pub(super) outsiders: LogLimit,
}

impl Shared<'_> {
    pub(super) fn program_name(&self) -> String {
        Path::new(&self.config.program.program)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "the program".into())
    }

    /// The status text, with what the role adds.
    pub(super) fn status_text(
        &self,
        draining: bool,
        reloading: Option<u64>,
        last_reload: Option<&str>,
        older: &str,
    ) -> String {
        let g = &self.generation;
        status_text(&StatusFacts {
            generation: g.number,
            pid: g.pid(),
            draining,
            program_status: g.program_status.as_deref(),
            ready: g.ready,
            reloading,
            last_reload,
            older,
        })
    }

    pub(super) fn ready_deadline(&self) -> Instant {
        self.generation.started + self.config.ready_timeout
    }

    /// Passes `signal` to the program.
    pub(super) fn forward(&self, signal: Signal) {
        self.generation.signal(signal);
    }

    /// The signals that arrived, with their senders.
    pub(super) fn read_signals(&mut self) -> Vec<(Signal, u32)> {
        let mut signals = Vec::new();
        while let Ok(Some(info)) = self.signal_fd.read_signal() {
            if let Ok(signal) = Signal::try_from(info.ssi_signo as i32) {
                signals.push((signal, info.ssi_pid));
            }
        }
        signals
    }

    /// How fdstore-exec ends after its program ended with `status`, with the
    /// journal line and status that say so.
    pub(super) fn finish(&self, status: ExitStatus) -> Outcome {
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
            let dead = super::super::listeners::dead_listeners(&self.listeners.active);
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
        outcome_of(status, self.stopping, g.ready)
    }
}
