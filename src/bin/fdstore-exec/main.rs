//! `fdstore-exec`: the `ExecStart=` wrapper that hands listeners over between
//! generations of a program.
//!
//! This file holds only the command line and logging set-up; the work is in
//! the `fdstore` library (`fdstore::exec`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use fdstore::exec::{self, Config, Outcome, ProgramSpec, ReadyMode};
use fdstore::ListenerSpec;

/// Run a network program under systemd so that `systemctl reload` replaces it
/// with a fresh process without refusing, resetting or stalling a connection.
///
/// The program receives its listeners as descriptors 3, 4, ... with
/// LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID, as under systemd socket
/// activation. Listeners come from the unit's socket units and fd store;
/// a --listen name that systemd did not pass is created and put into the fd
/// store, so it stays open across crashes and restarts.
#[derive(Debug, Parser)]
#[command(name = "fdstore-exec", version)]
struct Cli {
    /// A listener the program needs, as NAME=KIND:ADDRESS[,OPTION]...
    /// (for example web=tcp:[::]:8080 or api=unix:/run/app/api.sock,mode=0660).
    /// Repeat for several.
    #[arg(long = "listen", value_name = "NAME=SPEC", value_parser = parse_spec)]
    listen: Vec<ListenerSpec>,

    /// How to tell that the program is ready: notify (it sends READY=1),
    /// exec (once started), delay:DURATION, or command:SHELL-COMMAND (ready
    /// when the command exits 0).
    #[arg(long, value_name = "MODE", default_value = "notify", value_parser = parse_ready)]
    ready: ReadyMode,

    /// How long the program may take to become ready.
    #[arg(long, value_name = "DURATION", default_value = "90s", value_parser = parse_duration)]
    ready_timeout: Duration,

    /// The program to run, and its arguments.
    #[arg(required = true, last = true, value_name = "PROGRAM")]
    command: Vec<OsString>,
}

fn parse_spec(s: &str) -> Result<ListenerSpec, String> {
    s.parse().map_err(|e: fdstore::SpecError| e.to_string())
}

fn parse_ready(s: &str) -> Result<ReadyMode, String> {
    s.parse()
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    fdstore::parse_duration(s)
}

/// Logs go to the journal when stderr is connected to it (as under systemd),
/// to stderr otherwise.
fn init_logging() {
    use tracing_subscriber::prelude::*;
    let journal = std::env::var_os("JOURNAL_STREAM")
        .is_some()
        .then(|| tracing_journald::layer().ok())
        .flatten();
    match journal {
        Some(layer) => tracing_subscriber::registry().with(layer).init(),
        None => tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .init(),
    }
}

/// The path to run again as trampoline (and, later, as the next generation):
/// the file on disk, so that an upgraded binary takes effect.
fn own_path() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"))
}

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == exec::TRAMPOLINE_ARG) {
        let rest = args.get(3..).unwrap_or_default();
        std::process::exit(exec::run_trampoline(rest));
    }
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        let _ = e.print();
        std::process::exit(if e.use_stderr() { 64 } else { 0 });
    });
    init_logging();
    let (program, program_args) = cli.command.split_first().expect("clap requires a program");
    let config = Config {
        listen: cli.listen,
        program: ProgramSpec {
            trampoline: own_path(),
            program: program.clone(),
            args: program_args.to_vec(),
        },
        ready: cli.ready,
        ready_timeout: cli.ready_timeout,
    };
    match exec::run(&config) {
        Ok(Outcome::Exit(code)) => std::process::exit(code),
        Ok(Outcome::Signal(signal)) => die_by(signal),
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("fdstore-exec: {e}");
            std::process::exit(e.status);
        }
    }
}

/// Ends this process by `signal`, as the program ended.
fn die_by(signal: nix::sys::signal::Signal) -> ! {
    use nix::sys::signal::{signal as set_handler, SigHandler, SigSet};
    // SAFETY: restoring the default disposition installs no handler code.
    let _ = unsafe { set_handler(signal, SigHandler::SigDfl) };
    let mut set = SigSet::empty();
    set.add(signal);
    let _ = set.thread_unblock();
    let _ = nix::sys::signal::raise(signal);
    std::process::exit(128 + signal as i32);
}
