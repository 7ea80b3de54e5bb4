//! The start of one fdstore-exec process: what it inherited, its program.

use std::time::Instant;

use nix::sys::signalfd::SignalFd;
use rustix::process::{pidfd_open, Pid, PidfdFlags};
use tracing::info;

use super::super::config::{fail, Config, ExecError};
use super::super::listeners::{all_specs, gather};
use super::super::log_limit::LogLimit;
use super::super::program::{failure_status, spawn_program};
use super::super::readiness::Readiness;
use super::super::relay::NotifyRelay;
use super::generation::Generation;
use super::notifications::{OUTSIDER_LINES, OUTSIDER_WINDOW};
use super::shared::Shared;
use crate::notify::Notifier;
use crate::protocol::control::{cgroup_of, ControlConnection, ControlEndpoint};
use crate::protocol::generations::OlderGenerations;
use crate::protocol::handover::{Channel, Inheritance, HANDOVER_ENV, PAUSE_ENV};
use crate::protocol::sysexits;
use crate::reload::Reload;

/// What this process inherited: the `LISTEN_FDS` descriptors and, for a new
/// generation, the hand-over channel.
///
/// Take it first thing in `main`, before anything opens a descriptor (the
/// journal's socket, the signalfd, the notification socket): when an
/// announced descriptor is not open, the kernel hands its number to the next
/// descriptor created, and that one would be taken, and passed to the
/// program, as a listener.
#[derive(Debug)]
pub struct Inherited {
    pub(super) listeners: Result<crate::ListenFds, crate::ListenError>,
    pub(super) handover: Result<Option<Predecessor>, ExecError>,
}

/// What a new generation inherited from the one that started it.
#[derive(Debug)]
pub(super) struct Predecessor {
    pub(super) inheritance: Inheritance,
    pub(super) channel: Channel,
    pub(super) older: OlderGenerations,
    /// It pauses its program for this generation's probes ([`PAUSE_ENV`]).
    pub(super) pauses: bool,
}

impl Inherited {
    /// Takes the inherited descriptors (once per process; the environment
    /// variables that announce them are removed). Errors are reported by
    /// [`run`](super::run).
    pub fn take() -> Inherited {
        let listeners = crate::ListenFds::from_env(crate::UnsetEnv::Yes);
        let handover = take_inheritance();
        Inherited {
            listeners,
            handover,
        }
    }
}

/// Takes the hand-over channel, and those to the older generations still
/// draining, when this process was started by a previous generation.
fn take_inheritance() -> Result<Option<Predecessor>, ExecError> {
    let pauses = std::env::var_os(PAUSE_ENV).is_some_and(|v| v == "1");
    std::env::remove_var(PAUSE_ENV);
    let Some(value) = std::env::var_os(HANDOVER_ENV) else {
        return Ok(None);
    };
    std::env::remove_var(HANDOVER_ENV);
    let inheritance =
        Inheritance::parse(&value.to_string_lossy()).map_err(|e| fail(sysexits::CONFIG, e))?;
    // The previous generation placed the channel at this number for us.
    let fd = crate::sys::fd::take_inherited_once(inheritance.fd).map_err(|e| {
        fail(
            sysexits::CONFIG,
            format!("the hand-over channel (fd {}): {e}", inheritance.fd),
        )
    })?;
    let older = OlderGenerations::inherit(&inheritance).map_err(|e| fail(sysexits::CONFIG, e))?;
    Ok(Some(Predecessor {
        inheritance,
        channel: Channel::from_fd(fd),
        older,
        pauses,
    }))
}

/// Starts this generation's program; the control endpoint and the reload
/// machine come back for the role. `pausing_predecessor`: the previous
/// generation pauses its program for this one's probes.
pub(super) fn start<'c>(
    config: &'c Config,
    signal_fd: SignalFd,
    received: crate::ListenFds,
    number: u64,
    previously_managed: &[String],
    is_main: bool,
    pausing_predecessor: bool,
) -> Result<(Shared<'c>, ControlEndpoint, Reload<ControlConnection>), ExecError> {
    let notifier = Notifier::from_env().map_err(|e| fail(sysexits::CONFIG, e.to_string()))?;
    let specs = all_specs(&config.listen, config.listen_file.as_deref())?;
    let listeners = gather(&specs, received, previously_managed, is_main, &notifier)?;
    let mut readiness = Readiness::new(&config.ready, &listeners.active, number)
        .map_err(|e| fail(sysexits::USAGE, e))?;
    if pausing_predecessor {
        readiness.allow_pauses();
    }
    let relay = NotifyRelay::bind()
        .map_err(|e| fail(sysexits::OSERR, format!("notification socket: {e}")))?;
    // Before the program starts: a generation without its control
    // endpoint never becomes the main process (the reload fails, the old
    // generation keeps serving).
    let control = ControlEndpoint::bind()
        .map_err(|e| fail(sysexits::OSERR, format!("binding the control socket: {e}")))?;
    let child = spawn_program(&config.program, &listeners.active, relay.address())
        .map_err(|e| fail(failure_status(&e), e.to_string()))?;
    let pid = child.id();
    let pidfd = pidfd_open(
        Pid::from_raw(pid as i32).expect("a child pid is positive"),
        PidfdFlags::empty(),
    )
    .map_err(|e| fail(sysexits::OSERR, format!("pidfd_open: {e}")))?;
    info!(pid, program = ?config.program.program, listeners = listeners.active.len(), "started generation {number}");
    let started = Instant::now();
    readiness.begin(pid, started);
    let shared = Shared {
        config,
        notifier,
        signal_fd,
        relay,
        generation: Generation {
            number,
            child,
            pidfd,
            started,
            ready: false,
            program_status: None,
            exited: None,
        },
        listeners,
        own_cgroup: cgroup_of(std::process::id()),
        stopping: false,
        readiness: Some(readiness),
        outsiders: LogLimit::new(OUTSIDER_LINES, OUTSIDER_WINDOW),
    };
    let reload = Reload::new(number, pid, config.ready_timeout).pausing();
    Ok((shared, control, reload))
}
