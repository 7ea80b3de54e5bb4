//! The reload client: what `fdstore-exec reload` and `fdstore-exec status`
//! do, in the library, so that a service upgraded by [`Upgrader`](crate::Upgrader)
//! is its own `ExecReload=` command. One implementation: the fdstore-exec
//! command calls [`ask_main_process`] too.

use std::os::fd::AsFd;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::protocol::control::{self, Reply, Request};
use crate::protocol::sysexits;

/// Asks the unit's main process (`$MAINPID`, which systemd sets for
/// `ExecReload=`) for a reload and waits for the outcome, printing it as
/// `fdstore-exec reload` does: the outcome on stdout and 0 once the new
/// generation serves; the reason on stderr and the same sysexits(3) status
/// as `fdstore-exec reload` otherwise (75 busy, 69 the new generation
/// failed and the old one keeps serving, 77 not allowed, 78 not possible, 64
/// no `$MAINPID`). Returns the exit status.
///
/// It is what `ExecReload=/usr/bin/myapp reload` runs: the service needs no
/// second binary.
///
/// ```no_run
/// // First thing in main:
/// if std::env::args().nth(1).as_deref() == Some("reload") {
///     std::process::exit(fdstore::reload());
/// }
/// // ... the service: fdstore::Upgrader::from_env() ...
/// ```
///
/// ([`run_if_asked`] is that, in one line.)
///
/// with, in the unit:
///
/// ```ini
/// [Service]
/// ExecReload=/usr/bin/myapp reload
/// ```
pub fn reload() -> i32 {
    ask_env(Request::Reload, "reload")
}

/// Like [`reload`], for `fdstore-exec status`: prints the main process's
/// status line (generation, pid, state). Returns the exit status.
///
/// ```no_run
/// if std::env::args().nth(1).as_deref() == Some("status") {
///     std::process::exit(fdstore::reload_status());
/// }
/// ```
pub fn reload_status() -> i32 {
    ask_env(Request::Status, "status")
}

/// The `ExecReload=/usr/bin/myapp reload` pattern in one line: when the
/// program's first argument is `reload` (or `status`), runs [`reload`] (or
/// [`reload_status`]) and exits with its status; returns otherwise, for the
/// program to start as the service.
///
/// Call it first thing in `main`. In a plain `fn main` a stop of the unit
/// during the reload makes it exit 0, as `fdstore-exec reload` does; under
/// `#[tokio::main]` the runtime's threads do not block SIGTERM, so the stop
/// ends it by the signal instead (the reload is abandoned either way).
///
/// ```no_run
/// #[tokio::main]
/// async fn main() {
///     fdstore::client::run_if_asked();
///     // ... the service ...
/// }
/// ```
pub fn run_if_asked() {
    match std::env::args_os()
        .nth(1)
        .as_deref()
        .and_then(|a| a.to_str())
    {
        Some("reload") => std::process::exit(reload()),
        Some("status") => std::process::exit(reload_status()),
        _ => {}
    }
}

fn ask_env(request: Request, verb: &str) -> i32 {
    let who = format!("{} {verb}", program_name());
    match main_pid_from_env() {
        Ok(pid) => ask_main_process(pid, request, &who),
        Err((status, message)) => {
            eprintln!("{who}: {message}");
            status
        }
    }
}

fn program_name() -> String {
    std::env::args_os()
        .next()
        .as_deref()
        .map(std::path::Path::new)
        .and_then(std::path::Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "fdstore".into())
}

/// The unit's main process from `$MAINPID`, or the exit status and message
/// when it is unset (64) or not a pid (78).
///
/// ```no_run
/// match fdstore::client::main_pid_from_env() {
///     Ok(pid) => println!("main process {pid}"),
///     Err((status, message)) => eprintln!("{message} ({status})"),
/// }
/// ```
pub fn main_pid_from_env() -> Result<u32, (i32, String)> {
    match std::env::var("MAINPID") {
        Ok(value) => value.trim().parse().map_err(|_| {
            (
                sysexits::CONFIG,
                format!("$MAINPID is {value:?}, not a pid"),
            )
        }),
        Err(_) => Err((
            sysexits::USAGE,
            "which process? run it from ExecReload= (systemd sets $MAINPID), or give --pid PID or --unit UNIT".into(),
        )),
    }
}

/// Sends `request` to the control socket of `pid` (an fdstore-exec or a
/// program using [`Upgrader`](crate::Upgrader)), waits for the reply, prints
/// it (success on stdout; failure on stderr, after `who:`) and returns the
/// exit status: 0, the refusal's sysexits(3) status, 69 when `pid` has no
/// control socket, 76 when the socket under its name is not its own.
///
/// A SIGTERM or SIGINT meanwhile (the unit stops, which abandons the
/// reload) ends the wait with status 0, so that the unit does not end up
/// failed for it: it blocks both in the calling thread (a caller may have
/// blocked them earlier, as fdstore-exec does first thing, to close the
/// window before this call).
///
/// ```no_run
/// use fdstore::protocol::control::Request;
/// let status = fdstore::client::ask_main_process(1234, Request::Status, "myapp status");
/// std::process::exit(status);
/// ```
pub fn ask_main_process(pid: u32, request: Request, who: &str) -> i32 {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    let interrupt = signals.thread_block().ok().and_then(|_| {
        SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK).ok()
    });
    let interrupt_fd = interrupt.as_ref().map(AsFd::as_fd);
    let outcome = control::request(pid, request, interrupt_fd, None);
    // A failure while a stop signal is pending is the stop's doing (the
    // main process went away with the unit): the same as an interruption.
    let stopped = || {
        interrupt
            .as_ref()
            .is_some_and(|fd| matches!(fd.read_signal(), Ok(Some(_))))
    };
    let outcome = match outcome {
        Err(_) if stopped() => Ok(None),
        other => other,
    };
    match outcome {
        Ok(Some(Reply::Ok(text))) => {
            println!("{text}");
            0
        }
        Ok(Some(Reply::Err(kind, text))) => {
            eprintln!("{who}: {text}");
            kind.exit_status()
        }
        Ok(None) => {
            eprintln!(
                "{who}: interrupted; the unit is probably stopping, which abandons the reload"
            );
            0
        }
        Err(e @ control::ClientError::Io(_)) => {
            eprintln!("{who}: talking to pid {pid}: {e}");
            e.exit_status()
        }
        Err(e) => {
            eprintln!("{who}: {e}");
            e.exit_status()
        }
    }
}
