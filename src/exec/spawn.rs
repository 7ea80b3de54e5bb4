//! Starting the next generation of fdstore-exec through a short-lived
//! intermediate process (`fdstore-exec __spawn`), which starts the new
//! fdstore-exec and exits at once; the channel and the environment it is
//! given are those of [`crate::protocol::handover`].

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::listen::{NamedFd, LISTEN_FDS_START};
use crate::protocol::generations::OlderGenerations;
use crate::protocol::handover::{Channel, Inheritance, HANDOVER_ENV};
use crate::protocol::sysexits;

/// The hidden first argument of the intermediate process.
pub const SPAWN_ARG: &str = "__spawn";

/// Starts the next generation: `fdstore_exec __spawn -- fdstore_exec __exec
/// -- fdstore_exec ARGS...` with the listeners at 3, 4, ... and the channel
/// after them, then the channels to the older generations still draining.
/// Returns the intermediate process, which the caller must reap (it exits as
/// soon as it has started the new process).
pub(crate) fn spawn_successor(
    fdstore_exec: &Path,
    args: &[OsString],
    listeners: &[NamedFd],
    channel: Channel,
    generation: u64,
    managed: &[String],
    older: &OlderGenerations,
) -> io::Result<Child> {
    let inheritance = Inheritance {
        fd: LISTEN_FDS_START + listeners.len() as i32,
        generation,
        older: older.generations(),
        managed: managed.to_vec(),
    };
    let mut command = Command::new(fdstore_exec);
    command
        .arg(SPAWN_ARG)
        .arg("--")
        .arg(fdstore_exec)
        .arg(super::program::TRAMPOLINE_ARG)
        .arg("--")
        .arg(fdstore_exec)
        .args(args)
        .env(HANDOVER_ENV, inheritance.to_env())
        .stdin(Stdio::null());
    super::program::pass_listeners(&mut command, listeners);
    let mut fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|l| l.as_fd()).collect();
    fds.push(channel.as_fd());
    fds.extend(older.channels());
    crate::sys::spawn::pass_fds(&mut command, &fds)?;
    command.spawn()
}

/// The intermediate process: starts `args` and exits without waiting for it.
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
