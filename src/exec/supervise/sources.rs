//! What the loop polls, in each role.

use std::os::fd::{AsFd, BorrowedFd};

use super::role::Role;
use super::shared::Shared;

/// What woke the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    Signals,
    Relay,
    Program,
    /// The control endpoint's descriptors (see
    /// [`crate::protocol::control::ControlEndpoint::fds`]).
    Control(usize),
    /// The hand-over channel to the new generation (main, during a reload).
    Successor,
    /// The channel to the previous generation (successor; main until the
    /// previous generation is gone).
    Predecessor,
    /// A probe connection or a check command of the readiness checks.
    Readiness(usize),
    /// The channel to the newer generations (draining).
    SuccessorLink,
    /// What says an older generation is gone (main): it is then let go
    /// of, and room being made within max-generations may be made.
    Older(usize),
    /// The manager's barrier pipe (main, after `MAINPID=`).
    Barrier,
}

/// The sources to poll now: those of every role, and the role's own.
pub(super) fn sources(shared: &Shared<'_>, role: &Role) -> Vec<Source> {
    let mut sources = vec![Source::Signals, Source::Relay];
    if shared.generation.exited.is_none() {
        sources.push(Source::Program);
    }
    sources.extend(role.sources());
    if let Some(r) = &shared.readiness {
        sources.extend((0..r.fds().len()).map(Source::Readiness));
    }
    sources
}

impl Role {
    /// The sources only this role has.
    pub(super) fn sources(&self) -> Vec<Source> {
        let mut sources = Vec::new();
        if let Some(control) = self.control() {
            sources.extend((0..control.fds().len()).map(Source::Control));
        }
        match self {
            Role::Successor(_) => sources.push(Source::Predecessor),
            Role::Main(m) => {
                if m.handover.is_some() {
                    sources.push(Source::Successor);
                }
                if m.predecessor.is_some() {
                    sources.push(Source::Predecessor);
                }
                sources.extend((0..m.older.watches().len()).map(Source::Older));
                if m.barrier.is_some() {
                    sources.push(Source::Barrier);
                }
            }
            Role::Draining(d) => {
                if d.successor_link.is_some() {
                    sources.push(Source::SuccessorLink);
                }
            }
        }
        sources
    }
}

impl Source {
    /// The descriptor of this source; only for one [`sources`] listed for
    /// `role`.
    pub(super) fn fd<'a>(self, shared: &'a Shared<'_>, role: &'a Role) -> BorrowedFd<'a> {
        const LISTED: &str = "polled only when sources() lists it";
        match (self, role) {
            (Source::Signals, _) => shared.signal_fd.as_fd(),
            (Source::Relay, _) => shared.relay.as_fd(),
            (Source::Program, _) => shared.generation.pidfd.as_fd(),
            (Source::Control(i), role) => role.control().expect(LISTED).fds()[i],
            (Source::Successor, Role::Main(m)) => m.handover.as_ref().expect(LISTED).as_fd(),
            (Source::Predecessor, Role::Successor(s)) => s.predecessor.as_fd(),
            (Source::Predecessor, Role::Main(m)) => m.predecessor.as_ref().expect(LISTED).as_fd(),
            (Source::Readiness(i), _) => shared.readiness.as_ref().expect(LISTED).fds()[i],
            (Source::SuccessorLink, Role::Draining(d)) => {
                d.successor_link.as_ref().expect(LISTED).as_fd()
            }
            (Source::Older(i), Role::Main(m)) => m.older.watches()[i],
            (Source::Barrier, Role::Main(m)) => m.barrier.as_ref().expect(LISTED).read_end.as_fd(),
            (source, role) => unreachable!("{source:?} is not polled as {}", role.name()),
        }
    }
}
