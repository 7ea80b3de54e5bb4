//! Starting the wrapped program with its listeners.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};

use crate::listen::{NamedFd, LISTEN_ENV, LISTEN_FDS, LISTEN_PID, LISTEN_PIDFDID};

/// The hidden first argument that makes `fdstore-exec` act as the trampoline
/// (see [`run_trampoline`]).
pub const TRAMPOLINE_ARG: &str = "__exec";

/// How to start the program.
#[derive(Debug, Clone)]
pub struct ProgramSpec {
    /// The fdstore-exec binary used as trampoline.
    pub trampoline: PathBuf,
    /// The program.
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
}

/// Variables of ours, or of the manager, that the program must not inherit
/// as they are (besides [`LISTEN_ENV`]).
const SCRUBBED: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_PID",
    crate::protocol::handover::HANDOVER_ENV,
];

/// Sets up `command`, which runs the trampoline, to pass `listeners` on: the
/// manager's (or predecessor's) `LISTEN_*` replaced by `LISTEN_FDS` and
/// `LISTEN_FDNAMES` naming them, and, when this process's listeners came
/// with a `LISTEN_PIDFDID`, an empty `LISTEN_PIDFDID` that the trampoline
/// replaces with the new process's own.
pub(crate) fn pass_listeners(command: &mut Command, listeners: &[NamedFd]) {
    for var in LISTEN_ENV {
        command.env_remove(var);
    }
    if listeners.is_empty() {
        return;
    }
    for (var, value) in crate::listen::passing_on(listeners.iter().map(NamedFd::name)) {
        command.env(var, value);
    }
    if crate::listen::pidfd_id_given() {
        command.env(LISTEN_PIDFDID, "");
    }
}

/// Starts the program with `listeners` at descriptors 3, 4, ... and
/// `LISTEN_FDS`/`LISTEN_FDNAMES` naming them, `NOTIFY_SOCKET` pointing at
/// `notify_socket`. It goes through the trampoline, which sets `LISTEN_PID`
/// (and `WATCHDOG_PID`) to the program's own pid before `exec`. The program
/// is killed (SIGKILL) if this process dies, so that it never serves
/// unsupervised, and it leads a process group of its own, whose number is
/// its pid.
pub fn spawn_program(
    spec: &ProgramSpec,
    listeners: &[NamedFd],
    notify_socket: &str,
) -> io::Result<Child> {
    let mut command = Command::new(&spec.trampoline);
    command
        .arg(TRAMPOLINE_ARG)
        .arg("--")
        .arg(&spec.program)
        .args(&spec.args);
    for var in SCRUBBED {
        command.env_remove(var);
    }
    pass_listeners(&mut command, listeners);
    command.env("NOTIFY_SOCKET", notify_socket);
    crate::sys::spawn::pass_fds(&mut command, listeners)?;
    crate::sys::spawn::kill_with_parent(&mut command);
    // Its own process group (numbered by its pid): a drain ends every
    // process the program started, also those whose parent exited.
    command.process_group(0);
    command.spawn()
}

/// The trampoline: sets `LISTEN_PID` (when `LISTEN_FDS` is set) and
/// `WATCHDOG_PID` (when `WATCHDOG_USEC` is set) to this process's pid, and
/// `LISTEN_PIDFDID` (when `pass_listeners` set it) to its pidfd's inode
/// number (or removes it if the kernel cannot tell), then replaces itself
/// with the program. Returns only on failure, with the exit status a shell
/// would use (127 not found, 126 not executable).
pub fn run_trampoline(args: &[OsString]) -> i32 {
    let Some((program, rest)) = args.split_first() else {
        eprintln!("fdstore-exec: {TRAMPOLINE_ARG} needs a program");
        return crate::protocol::sysexits::USAGE;
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
    if std::env::var_os("WATCHDOG_USEC").is_some() {
        command.env("WATCHDOG_PID", &pid);
    }
    let error = command.exec();
    eprintln!(
        "fdstore-exec: cannot run {}: {error}",
        std::path::Path::new(program).display()
    );
    match error.kind() {
        io::ErrorKind::NotFound => 127,
        _ => 126,
    }
}
