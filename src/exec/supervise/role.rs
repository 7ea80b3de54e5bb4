//! The three roles of an fdstore-exec process, each owning the state that
//! means something in it, and the transitions between them.
//!
//! ```text
//! Successor ──MAIN──▶ Main ──hand-over──▶ Draining
//!     │                                     ▲
//!     └── abandoned, not ready in time ─────┘
//! ```
//!
//! A transition consumes one state and returns the next, so what belongs to
//! a role ends with it: a draining generation has no control socket and no
//! reload machine, a successor no hand-over channel to a newer generation.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use super::super::relay::RelayMessage;
use super::generation::Paused;
use crate::protocol::control::{ControlConnection, ControlEndpoint};
use crate::protocol::generations::{MakingRoom, OlderGenerations};
use crate::protocol::handover::Channel;
use crate::reload::Reload;

/// At most this many notifications of a successor's program are queued
/// until it is the main process.
pub(super) const MAX_QUEUED: usize = 256;

/// How often a draining generation whose program exited looks whether the
/// processes the program left behind are gone.
pub(super) const LEFTOVER_CHECK: Duration = Duration::from_millis(100);

/// What this process is, with what only that role has.
pub(super) enum Role {
    /// Started by the previous main process; waiting to be made main.
    Successor(SuccessorState),
    /// The unit's main process.
    Main(MainState),
    /// Handed over (or failed as a successor): its program drains.
    Draining(DrainingState),
}

/// A new generation, before it is the main process.
pub(super) struct SuccessorState {
    /// The channel to the previous generation, which makes this one main.
    pub(super) predecessor: Channel,
    /// Bound at start: a generation without its control endpoint never
    /// becomes the main process. Requests are refused until then.
    pub(super) control: ControlEndpoint,
    /// This generation's reloads: none yet (it refuses requests, and notes
    /// a stop), then those it runs as the main process.
    pub(super) reload: Reload<ControlConnection>,
    /// The older generations still draining, inherited.
    pub(super) older: OlderGenerations,
    /// The program's notifications for the manager, sent once this
    /// generation is the main process (at most [`MAX_QUEUED`]).
    queued: Vec<RelayMessage>,
}

/// The unit's main process.
pub(super) struct MainState {
    pub(super) control: ControlEndpoint,
    pub(super) reload: Reload<ControlConnection>,
    /// The hand-over channel to the new generation, during a reload.
    pub(super) handover: Option<Channel>,
    /// The channel to the previous generation, until it is gone.
    pub(super) predecessor: Option<Channel>,
    /// The older generations still draining (see
    /// [`crate::protocol::generations`]).
    pub(super) older: OlderGenerations,
    /// The last reload's outcome, for the status text.
    pub(super) last_reload: Option<String>,
    /// During a reload at max-generations: the oldest generations were told
    /// to end, and the machine waits for [`crate::reload::Event::Room`].
    pub(super) making_room: Option<MakingRoom>,
    /// During a reload: `MAINPID=` was sent, and the machine waits for
    /// [`crate::reload::Event::MainPidSent`] until the manager processed it.
    pub(super) barrier: Option<Barrier>,
    /// During a reload: the program is stopped for a probe of the new
    /// generation, until this is dropped.
    pub(super) paused: Option<Paused>,
    /// The end of the pause, to tell the new generation once the stop took
    /// effect.
    pub(super) pause_owed: Option<Instant>,
}

/// The wait for the manager to process `MAINPID=` (`BARRIER=1`), polled
/// instead of waited for, so that the loop goes on.
pub(super) struct Barrier {
    /// Readable once the manager closed its copy of the write end.
    pub(super) read_end: OwnedFd,
    /// The new main process.
    pub(super) pid: u32,
    /// When to go on without the manager's word (a warning).
    pub(super) deadline: Instant,
}

/// How a drain ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Drain {
    /// The program has until the deadline to exit.
    Running,
    /// Its processes were killed: at the deadline, or at once when it never
    /// became ready.
    Killed,
    /// Its processes were killed because a newer generation needed room
    /// within max-generations.
    EndedEarly,
}

/// A generation whose program drains, after a hand-over or a failed start
/// as a successor.
pub(super) struct DrainingState {
    /// When the drain began.
    pub(super) since: Instant,
    /// When the program's processes are killed unless gone.
    pub(super) deadline: Instant,
    pub(super) drain: Drain,
    /// The channel to the next generation, kept open while draining so that
    /// newer generations learn when this one is gone, and can tell it to end
    /// early ([`crate::protocol::handover::Message::End`]).
    pub(super) successor_link: Option<Channel>,
}

impl SuccessorState {
    pub(super) fn new(
        predecessor: Channel,
        control: ControlEndpoint,
        reload: Reload<ControlConnection>,
        older: OlderGenerations,
    ) -> SuccessorState {
        SuccessorState {
            predecessor,
            control,
            reload,
            older,
            queued: Vec::new(),
        }
    }

    /// Keeps `message` for the manager until this generation is main; false
    /// when [`MAX_QUEUED`] are waiting already (it is dropped).
    pub(super) fn queue(&mut self, message: RelayMessage) -> bool {
        if self.queued.len() >= MAX_QUEUED {
            return false;
        }
        self.queued.push(message);
        true
    }

    /// Told `MAIN` by generation `number - 1`, whose hand-over took
    /// `took_ms`: the main state, and the notifications queued until now.
    /// The predecessor drains from now on, and counts against the bound
    /// until it is gone; `Err` says why it cannot be counted.
    pub(super) fn into_main(
        self,
        number: u64,
        took_ms: u64,
    ) -> (MainState, Vec<RelayMessage>, Result<(), String>) {
        let mut older = self.older;
        let counted = self
            .predecessor
            .try_clone()
            .map(|copy| older.push(number - 1, copy))
            .map_err(|e| e.to_string());
        let main = MainState {
            control: self.control,
            reload: self.reload,
            handover: None,
            predecessor: Some(self.predecessor),
            older,
            last_reload: Some(format!("last reload took {took_ms} ms")),
            making_room: None,
            barrier: None,
            paused: None,
            pause_owed: None,
        };
        (main, self.queued, counted)
    }

    /// The hand-over will not happen (the old generation abandoned it, or
    /// this one was not ready in time): the control socket, the reload
    /// machine and the queued notifications end here; the channel to the
    /// old generation comes back for a last word.
    pub(super) fn give_up(self) -> Channel {
        self.predecessor
    }
}

impl MainState {
    /// The first generation: main from the start.
    pub(super) fn first(control: ControlEndpoint, reload: Reload<ControlConnection>) -> MainState {
        MainState {
            control,
            reload,
            handover: None,
            predecessor: None,
            older: OlderGenerations::default(),
            last_reload: None,
            making_room: None,
            barrier: None,
            paused: None,
            pause_owed: None,
        }
    }

    /// Handed over to the new main process: the hand-over channel becomes
    /// the link to the newer generations, the new main process keeps track
    /// of the older ones, the reload machine has nothing left to do. The
    /// control endpoint comes back, for the caller to close with a reply
    /// naming the new main process.
    pub(super) fn into_draining(
        self,
        now: Instant,
        drain_timeout: Duration,
    ) -> (DrainingState, ControlEndpoint) {
        let mut drain = DrainingState::new(now, drain_timeout);
        drain.successor_link = self.handover;
        (drain, self.control)
    }
}

impl DrainingState {
    /// A drain that began at `now`, with `timeout` for the program to exit.
    pub(super) fn new(now: Instant, timeout: Duration) -> DrainingState {
        DrainingState {
            since: now,
            deadline: now + timeout,
            drain: Drain::Running,
            successor_link: None,
        }
    }

    /// A program that never became ready: killed at once at `now`.
    pub(super) fn killed(now: Instant) -> DrainingState {
        DrainingState {
            since: now,
            deadline: now,
            drain: Drain::Killed,
            successor_link: None,
        }
    }

    /// Whether the drain timeout passed at `now` with the program's
    /// processes not yet killed.
    pub(super) fn timed_out(&self, now: Instant) -> bool {
        self.drain == Drain::Running && now >= self.deadline
    }

    /// When to wake: the deadline while it matters, and, once the program
    /// exited, every [`LEFTOVER_CHECK`] to see whether what it left behind
    /// is gone.
    pub(super) fn next_wake(&self, now: Instant, program_exited: bool) -> Option<Instant> {
        let deadline = (self.drain == Drain::Running).then_some(self.deadline);
        let leftovers = program_exited.then(|| now + LEFTOVER_CHECK);
        match (deadline, leftovers) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Marks the processes killed (`early`: for a newer generation); false
    /// when they were already.
    pub(super) fn kill(&mut self, early: bool) -> bool {
        if self.drain != Drain::Running {
            return false;
        }
        self.drain = if early {
            Drain::EndedEarly
        } else {
            Drain::Killed
        };
        true
    }

    /// How long this generation has been draining at `now`.
    pub(super) fn drained_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.since)
    }

    /// The end of the journal line of a complete drain.
    pub(super) fn ending(&self, ready: bool) -> String {
        let how = match self.drain {
            Drain::Running => "",
            Drain::Killed => " (killed after the drain timeout)",
            Drain::EndedEarly => " (ended early for a newer generation)",
        };
        let what = if ready {
            "its hand-over is complete"
        } else {
            "it never became ready, and the reload did not hand over to it"
        };
        format!("{how}; {what}")
    }
}

/// A drain is complete once the program was reaped and no process of its
/// group is left.
pub(super) fn drain_complete(program_exited: bool, processes_left: usize) -> bool {
    program_exited && processes_left == 0
}

impl Role {
    /// The role's name, for logs and tests.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Role::Successor(_) => "successor",
            Role::Main(_) => "main",
            Role::Draining(_) => "draining",
        }
    }

    /// The control endpoint, in the roles that have one.
    pub(super) fn control(&self) -> Option<&ControlEndpoint> {
        match self {
            Role::Successor(s) => Some(&s.control),
            Role::Main(m) => Some(&m.control),
            Role::Draining(_) => None,
        }
    }

    /// When this role needs to wake at `now`: the reload's deadline, the
    /// control clients' deadlines, the drain's.
    pub(super) fn next_wake(&self, now: Instant, program_exited: bool) -> Option<Instant> {
        let mut wakes = Vec::new();
        match self {
            Role::Successor(_) => {}
            Role::Main(m) => {
                wakes.extend(m.reload.deadline());
                wakes.extend(m.making_room.as_ref().map(|r| r.deadline));
                wakes.extend(m.barrier.as_ref().map(|b| b.deadline));
                if m.pause_owed.is_some() {
                    wakes.extend(m.paused.as_ref().and_then(|p| p.next_look()));
                }
            }
            Role::Draining(d) => wakes.extend(d.next_wake(now, program_exited)),
        }
        wakes.extend(self.control().and_then(ControlEndpoint::next_wake));
        wakes.into_iter().min()
    }
}
