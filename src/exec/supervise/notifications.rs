//! The program's notifications: what fdstore-exec reads itself, what it
//! passes to the manager, and from whom it takes them.

use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::super::log_limit::Verdict;
use super::super::relay::RelayMessage;
use super::role::Role;
use super::shared::Shared;
use crate::protocol::control::cgroup_of;

/// At most this many "ignored a notification from outside" lines per
/// [`OUTSIDER_WINDOW`].
pub(super) const OUTSIDER_LINES: u32 = 10;
pub(super) const OUTSIDER_WINDOW: Duration = Duration::from_secs(10);

/// The notification fields of the program that concern the unit as a whole
/// and pass through to the manager unchanged.
const PASSED_FIELDS: [&str; 8] = [
    "WATCHDOG",
    "WATCHDOG_USEC",
    "EXTEND_TIMEOUT_USEC",
    "ERRNO",
    "FDSTORE",
    "FDSTOREREMOVE",
    "FDNAME",
    "FDPOLL",
];

pub(super) fn on_relay(shared: &mut Shared<'_>, role: &mut Role, message: RelayMessage) {
    if !shared.sent_by_own_unit(&message) {
        return;
    }
    if matches!(role, Role::Draining(_)) {
        debug!(text = %message.text, "ignored a notification from a draining program");
        return;
    }
    if shared.take_program_fields(&message) {
        if let Role::Main(main) = role {
            main.update_status(shared);
        }
    }
    let (passed, dropped) = passed_fields(&message.text);
    for field in dropped {
        info!(field, pid = ?message.sender_pid, "ignored a notification field from the program");
    }
    if passed.is_empty() {
        return;
    }
    let relayed = RelayMessage {
        text: passed,
        ..message
    };
    match role {
        Role::Successor(s) => {
            if !s.queue(relayed) {
                warn!("dropped a notification of the new program: too many before it became the main process");
            }
        }
        Role::Main(_) => shared.relay_to_manager(&relayed),
        Role::Draining(_) => {}
    }
}

impl Shared<'_> {
    /// Whether `message` comes from the unit's own processes. Abstract
    /// socket names are visible in /proc/net/unix: accept only the unit's
    /// processes, as `NotifyAccess=all` would. Anybody can send these as
    /// fast as they like: a bounded number of journal lines.
    pub(super) fn sent_by_own_unit(&mut self, message: &RelayMessage) -> bool {
        let sender_cgroup = message.sender_pid.and_then(cgroup_of);
        if sender_cgroup.is_some() && sender_cgroup == self.own_cgroup {
            return true;
        }
        if let Verdict::Log { suppressed, last } = self.outsiders.check(Instant::now()) {
            let window = self.outsiders.window();
            if suppressed > 0 {
                warn!(
                    suppressed,
                    "{suppressed} more notifications from processes outside this unit were ignored in {window:?} without a journal line"
                );
            }
            warn!(
                sender = ?message.sender_pid,
                cgroup = ?sender_cgroup,
                "ignored a notification from a process outside this unit"
            );
            if last {
                warn!(
                    "{OUTSIDER_LINES} notifications from outside this unit in {window:?}: the next ones in this window are ignored without a journal line each"
                );
            }
        }
        false
    }

    /// Takes what the program's `message` says about itself (`READY=1`,
    /// `STATUS=`); true when its status changed.
    pub(super) fn take_program_fields(&mut self, message: &RelayMessage) -> bool {
        if message.field("READY") == Some("1") && !self.generation.ready && !self.stopping {
            if let Some(r) = &mut self.readiness {
                if self.config.ready.wants_notify() && !r.notified() {
                    // The program's own part of the time to ready; what
                    // follows until "is ready" is the proof's.
                    info!(
                        took = ?self.generation.started.elapsed(),
                        "the program of generation {} sent READY=1",
                        self.generation.number
                    );
                    r.on_notify();
                }
            }
        }
        let Some(status) = message.field("STATUS") else {
            return false;
        };
        self.generation.program_status = Some(status.to_owned());
        true
    }

    pub(super) fn relay_to_manager(&self, message: &RelayMessage) {
        let fds: Vec<BorrowedFd<'_>> = message.fds.iter().map(|f| f.as_fd()).collect();
        if let Err(e) = self.notifier.send_raw(message.text.as_bytes(), &fds) {
            warn!("relaying the program's notification: {e}");
        }
    }
}

/// The lines of a program's notification that pass to the manager
/// unchanged (see [`PASSED_FIELDS`]), and the names of the fields dropped
/// other than `READY` and `STATUS`, which fdstore-exec reads itself.
pub(super) fn passed_fields(text: &str) -> (String, Vec<&str>) {
    let mut passed = String::new();
    let mut dropped = Vec::new();
    for line in text.lines() {
        let key = line.split_once('=').map_or(line, |(k, _)| k);
        if PASSED_FIELDS.contains(&key) {
            passed.push_str(line);
            passed.push('\n');
        } else if key != "READY" && key != "STATUS" {
            dropped.push(key);
        }
    }
    (passed, dropped)
}
