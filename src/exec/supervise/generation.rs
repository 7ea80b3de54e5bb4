//! The program of this generation: its process, readiness and end.

use std::os::fd::OwnedFd;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

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

    /// Stops the program's process group for a new generation's probe
    /// (see [`crate::protocol::handover::Message::Pause`]) until the
    /// [`Paused`] is dropped. Not once the program exited: its group's
    /// number may then be reused.
    pub(super) fn pause(&self, now: Instant) -> Result<Paused, String> {
        if self.exited.is_some() {
            return Err("the program exited".into());
        }
        crate::sys::process_group::signal(self.pid(), rustix::process::Signal::STOP)
            .map_err(|e| format!("stopping the program's process group: {e}"))?;
        Ok(Paused {
            pgid: self.pid(),
            since: now,
            confirmed: false,
            next_look: now + STOP_LOOK_MIN,
            look: STOP_LOOK_MIN,
        })
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

/// How soon after `SIGSTOP` the program is first looked at; the looks
/// double until [`STOP_CONFIRM_MAX`]. A stop takes effect once each thread
/// runs again (it leaves its wait at once, on a quiet machine within tens of
/// microseconds); until then a sleeping thread is still a waiter, and would
/// take the probe.
const STOP_LOOK_MIN: Duration = Duration::from_micros(100);
/// How long the stop is awaited at most before the new generation is told
/// that the program is paused all the same (a thread in an uninterruptible
/// wait stops only when it leaves it).
const STOP_CONFIRM_MAX: Duration = Duration::from_millis(10);

/// The program's process group, stopped (`SIGSTOP`) by
/// [`Generation::pause`] until this is dropped (`SIGCONT`). Dropping is the
/// only way to continue it, so a pause ends with whatever holds it: the end
/// of the pause, of the main role, or of the process (but for `SIGKILL`, after
/// which the service manager's own stop sends `SIGCONT`).
#[derive(Debug)]
pub(super) struct Paused {
    pgid: u32,
    since: Instant,
    /// Every thread of the program's tree was seen stopped.
    confirmed: bool,
    next_look: Instant,
    look: Duration,
}

impl Paused {
    /// Whether the stop can be counted on at `now`: every thread of the
    /// program and its descendants was seen stopped, or
    /// [`STOP_CONFIRM_MAX`] passed. Looks at most at [`Paused::next_look`].
    pub(super) fn settled(&mut self, now: Instant) -> bool {
        if self.confirmed || now >= self.since + STOP_CONFIRM_MAX {
            return true;
        }
        if now < self.next_look {
            return false;
        }
        self.confirmed = crate::sys::proc::all_stopped(&crate::sys::proc::tree(self.pgid));
        self.next_look = now + self.look;
        self.look *= 2;
        self.confirmed
    }

    /// When to look again, while the stop is not settled.
    pub(super) fn next_look(&self) -> Option<Instant> {
        (!self.confirmed).then(|| self.next_look.min(self.since + STOP_CONFIRM_MAX))
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        // Members the program started since are continued too; a process
        // of the group that someone else had stopped is continued as well.
        match crate::sys::process_group::signal(self.pgid, rustix::process::Signal::CONT) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => warn!(
                pgid = self.pgid,
                "continuing the program's process group after a pause: {e}"
            ),
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
