//! fdstore-exec's supervisor: runs a program with its listeners under
//! systemd and replaces it by hand-over on reload.
//!
//! The wrapper is the unit's main process. It collects the listeners (passed
//! by systemd, or created from `--listen` specs and put into the fd store),
//! starts the program with them at descriptors 3, 4, ... through the
//! `LISTEN_FDS` protocol, gives it a notification socket of its own, waits for
//! it to be ready, reports readiness and status to systemd, forwards stop
//! signals, and ends the way the program ended so that `Restart=` and
//! `systemctl status` see the truth.
//!
//! On a reload (`fdstore-exec reload` through the
//! [`control`](crate::protocol::control) socket, or
//! SIGHUP under `Type=notify-reload`) it starts the next generation, which
//! becomes the main process once its program is ready; see
//! [`crate::protocol::handover`] and [`spawn`].

mod config;
mod limits;
mod listen_file;
mod listeners;
mod log_limit;
mod program;
mod readiness;
mod relay;
pub mod spawn;
mod supervise;

// What the fdstore-exec binary needs; the rest is crate-private.
pub use config::{Config, ExecError, Mode, Outcome, ReloadSignal, SignalRoles};
#[cfg(test)] // for src/proptests.rs
pub(crate) use listen_file::parse_listen_file;
pub use program::{run_trampoline, ProgramSpec, TRAMPOLINE_ARG};
pub use readiness::ReadyMode;
pub use supervise::{run, Inherited};

/// Ends this process by `signal`, as the program ended ([`Outcome::Signal`]):
/// the default disposition back, the signal unblocked and raised; exit
/// status 128 + the signal number should the process survive it.
pub fn die_by(signal: nix::sys::signal::Signal) -> ! {
    let _ = crate::sys::signals::restore_default(signal);
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(signal);
    let _ = set.thread_unblock();
    let _ = nix::sys::signal::raise(signal);
    std::process::exit(128 + signal as i32);
}
