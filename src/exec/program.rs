//! Starting the wrapped program with its listeners.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use crate::listen::{NamedFd, LISTEN_ENV, LISTEN_FDS, LISTEN_PID, LISTEN_PIDFDID};
use crate::notify::{WATCHDOG_PID, WATCHDOG_USEC};
use crate::protocol::sysexits;
use crate::sys::spawn::{Child, Spawn, SpawnError};

/// The hidden first argument that makes `fdstore-exec` act as the trampoline
/// (see [`run_trampoline`]). No longer used by this binary, which starts
/// its next generation and its program without it (`sys::spawn`),
/// but still accepted: at the first reload after a package upgrade the old
/// binary still starts the new one as `NEW __spawn -- NEW __exec -- NEW
/// ARGS`.
pub const TRAMPOLINE_ARG: &str = "__exec";

/// How to start the program.
#[derive(Debug, Clone)]
pub struct ProgramSpec {
    /// The fdstore-exec binary that starts the next generation.
    pub fdstore_exec: PathBuf,
    /// The program.
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
}

/// Variables of ours, or of the manager, that the program must not inherit
/// as they are (besides [`LISTEN_ENV`]; `WATCHDOG_PID` is set anew).
const SCRUBBED: &[&str] = &[
    "NOTIFY_SOCKET",
    crate::protocol::handover::HANDOVER_ENV,
    crate::protocol::handover::PAUSE_ENV,
];

/// Sets up `command` to pass `listeners` on: the manager's (or
/// predecessor's) `LISTEN_*` replaced by `LISTEN_FDS` and `LISTEN_FDNAMES`
/// naming them ([`Spawn`] adds `LISTEN_PID` and `LISTEN_PIDFDID` naming the
/// new process).
pub(crate) fn pass_listeners(command: &mut Spawn, listeners: &[NamedFd]) {
    for var in LISTEN_ENV {
        command.env_remove(var);
    }
    if listeners.is_empty() {
        return;
    }
    for (var, value) in crate::listen::passing_on(listeners.iter().map(NamedFd::name)) {
        command.env(var, value);
    }
}

/// Starts the program with `listeners` at descriptors 3, 4, ... and
/// `LISTEN_FDS`/`LISTEN_FDNAMES` naming them, `NOTIFY_SOCKET` pointing at
/// `notify_socket`, `LISTEN_PID` (and `WATCHDOG_PID`) its own pid: one fork
/// and one exec ([`Spawn`]). The program is killed (SIGKILL) if this
/// process dies, so that it never serves unsupervised, and it leads a
/// process group of its own, whose number is its pid.
pub(crate) fn spawn_program(
    spec: &ProgramSpec,
    listeners: &[NamedFd],
    notify_socket: &str,
) -> Result<Child, SpawnError> {
    let mut command = Spawn::new(&spec.program);
    command.args(&spec.args);
    for var in SCRUBBED {
        command.env_remove(var);
    }
    pass_listeners(&mut command, listeners);
    command
        .env("NOTIFY_SOCKET", notify_socket)
        // A drain ends every process the program started, also those whose
        // parent exited: they are in its process group.
        .process_group()
        .kill_with_parent();
    command.spawn(listeners)
}

/// The exit status for a program that could not be started: as a shell's
/// for a program that is missing (127) or cannot be run (126), else
/// EX_OSERR.
pub(crate) fn failure_status(error: &SpawnError) -> i32 {
    match error.exec_error().map(io::Error::kind) {
        Some(io::ErrorKind::NotFound) => sysexits::NOT_FOUND,
        Some(_) => sysexits::NOT_EXECUTABLE,
        None => sysexits::OSERR,
    }
}

/// The trampoline of older fdstore-exec binaries (kept for the first
/// reload after a package upgrade, see [`TRAMPOLINE_ARG`]): sets `LISTEN_PID` (when `LISTEN_FDS` is set) and
/// `WATCHDOG_PID` (when `WATCHDOG_USEC` is set) to this process's pid, and
/// `LISTEN_PIDFDID` (when the old binary set it empty) to its pidfd's inode
/// number (or removes it if the kernel cannot tell), then replaces itself
/// with the program. Returns only on failure, with the exit status a shell
/// would use (127 not found, 126 not executable).
pub fn run_trampoline(args: &[OsString]) -> i32 {
    let Some((program, rest)) = args.split_first() else {
        eprintln!("fdstore-exec: {TRAMPOLINE_ARG} needs a program");
        return sysexits::USAGE;
    };
    let pid = std::process::id().to_string();
    let mut command = Command::new(program);
    command.args(rest);
    if std::env::var_os(LISTEN_FDS).is_some() {
        command.env(LISTEN_PID, &pid);
        if std::env::var_os(LISTEN_PIDFDID).is_some() {
            match crate::sys::pidfd::own_pidfd_id() {
                Some(id) => command.env(LISTEN_PIDFDID, id.to_string()),
                None => command.env_remove(LISTEN_PIDFDID),
            };
        }
    }
    if std::env::var_os(WATCHDOG_USEC).is_some() {
        command.env(WATCHDOG_PID, &pid);
    }
    let error = command.exec();
    eprintln!(
        "fdstore-exec: cannot run {}: {error}",
        std::path::Path::new(program).display()
    );
    match error.kind() {
        io::ErrorKind::NotFound => sysexits::NOT_FOUND,
        _ => sysexits::NOT_EXECUTABLE,
    }
}
