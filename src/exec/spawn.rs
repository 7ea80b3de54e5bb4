//! Starting the next generation of fdstore-exec as the manager's child,
//! with the channel and the environment of [`crate::protocol::handover`].

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::process::Command;

use crate::listen::{NamedFd, LISTEN_FDS_START};
use crate::protocol::generations::OlderGenerations;
use crate::protocol::handover::{Channel, Inheritance, HANDOVER_ENV, PAUSE_ENV};
use crate::protocol::sysexits;
use crate::sys::spawn::{Spawn, SpawnError};

/// The hidden first argument of the intermediate process of older
/// fdstore-exec binaries (see [`run_intermediate`]). No longer used by
/// this binary, which starts its next generation detached without an
/// intermediate process (`sys::spawn`), but still accepted: at
/// the first reload after a package upgrade the old binary still starts
/// the new one as `NEW __spawn -- NEW __exec -- NEW ARGS`.
pub const SPAWN_ARG: &str = "__spawn";

/// Starts the next generation, `fdstore_exec ARGS...`, as our parent's
/// (the manager's) child, with the listeners at 3, 4, ... and the channel
/// after them, then the channels to the older generations still draining;
/// `LISTEN_PID` and `LISTEN_PIDFDID` name it; [`PAUSE_ENV`] says that this
/// generation pauses its program for the new one's probes. Returns its pid once it has
/// exec'ed: it is the manager's child from its start (one `clone` with
/// `CLONE_PARENT`), before anything is said to the manager.
pub(crate) fn spawn_successor(
    fdstore_exec: &Path,
    args: &[OsString],
    listeners: &[NamedFd],
    channel: Channel,
    generation: u64,
    managed: &[String],
    older: &OlderGenerations,
) -> Result<u32, SpawnError> {
    let inheritance = Inheritance {
        fd: LISTEN_FDS_START + listeners.len() as i32,
        generation,
        older: older.generations(),
        managed: managed.to_vec(),
    };
    let mut command = Spawn::new(fdstore_exec);
    command
        .args(args)
        .env(HANDOVER_ENV, inheritance.to_env())
        .env(PAUSE_ENV, "1")
        .stdin_null();
    super::program::pass_listeners(&mut command, listeners);
    let mut fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|l| l.as_fd()).collect();
    fds.push(channel.as_fd());
    fds.extend(older.channels());
    command.spawn_detached(&fds)
}

/// The intermediate process of older binaries (see [`SPAWN_ARG`]): starts
/// `args` and exits without waiting for it.
pub fn run_intermediate(args: &[OsString]) -> i32 {
    let Some((program, rest)) = args.split_first() else {
        eprintln!("fdstore-exec: {SPAWN_ARG} needs a program");
        return sysexits::USAGE;
    };
    match Command::new(program).args(rest).spawn() {
        Ok(_) => 0,
        Err(e) => {
            eprintln!(
                "fdstore-exec: cannot start {}: {e}",
                Path::new(program).display()
            );
            sysexits::OSERR
        }
    }
}
