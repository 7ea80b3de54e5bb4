//! The program of this generation: its process, readiness and end.

use std::os::fd::OwnedFd;
use std::process::ExitStatus;
use std::time::Instant;

use nix::sys::signal::Signal;
use tracing::warn;

use super::super::config::Outcome;
use crate::sys::spawn::Child;

/// The program of this generation.
pub(super) struct Generation {
    pub(super) number: u64,
    pub(super) child: Child,
    pub(super) pidfd: OwnedFd,
    pub(super) started: Instant,
    pub(super) ready: bool,
    pub(super) program_status: Option<String>,
    /// How the program ended, once it was reaped (its process group may
    /// still have members).
    pub(super) exited: Option<ExitStatus>,
}

impl Generation {
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The processes of the program's process group still alive: the
    /// program and everything it started that did not leave the group.
    pub(super) fn processes(&self) -> Vec<crate::sys::process_group::Member> {
        crate::sys::process_group::members(self.pid())
    }

    /// Kills the program's whole process group (SIGKILL).
    pub(super) fn kill_all(&mut self) {
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

    /// Sends `signal` to the program.
    pub(super) fn signal(&self, signal: Signal) {
        // The child is not reaped before its pidfd reports the exit, so its
        // pid cannot have been reused.
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        if let Err(e) = nix::sys::signal::kill(pid, signal) {
            warn!(?signal, pid = self.pid(), "sending the signal: {e}");
        }
    }
}

/// How fdstore-exec ends when its program ended with `status`: as the
/// program did, except that a clean exit before readiness (and not asked
/// for by a stop) is a failure.
pub(super) fn outcome_of(status: ExitStatus, stopping: bool, ready: bool) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) if !stopping && !ready => Outcome::Exit(1),
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
