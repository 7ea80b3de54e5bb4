//! `fdstore-exec`: the `ExecStart=` wrapper that hands listeners over between
//! generations of a program.
//!
//! This file holds only the command line and logging set-up; the work is in
//! the `fdstore` library (`fdstore::exec`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use fdstore::exec::control::{self, Reply, Request};
use fdstore::exec::{self, handover, Config, Mode, Outcome, ProgramSpec, ReadyMode};
use fdstore::ListenerSpec;
use nix::sys::signal::Signal;

/// Run a network program under systemd so that `systemctl reload` replaces it
/// with a fresh process without refusing, resetting or stalling a connection.
///
/// The program receives its listeners as descriptors 3, 4, ... with
/// LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID, as under systemd socket
/// activation. Listeners come from the unit's socket units and fd store;
/// a --listen name that systemd did not pass is created and put into the fd
/// store, so it stays open across crashes and restarts.
#[derive(Debug, Parser)]
#[command(
    name = "fdstore-exec",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    action: Option<Action>,

    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Replace the running generation with a new one and wait for the
    /// outcome (for ExecReload=). Exits 0 once the new generation serves,
    /// non-zero with the reason when the old one had to keep serving.
    Reload(Target),
    /// Print the generation, its pid and the last reload's outcome.
    Status(Target),
}

/// Which fdstore-exec to talk to.
#[derive(Debug, Args)]
struct Target {
    /// The pid of the unit's main process [default: $MAINPID, which systemd
    /// sets for ExecReload=].
    #[arg(long, value_name = "PID", conflicts_with = "unit")]
    pid: Option<u32>,

    /// Ask systemctl for this unit's main process.
    #[arg(long, value_name = "UNIT")]
    unit: Option<String>,

    /// With --unit: the unit is in the user's service manager.
    #[arg(long, requires = "unit")]
    user: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
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

    /// A file of listener specs, one NAME=KIND:ADDRESS[,OPTION]... per line
    /// (# starts a comment). Read again at every reload: added listeners
    /// appear in the new generation, removed ones are closed and removed
    /// from the fd store once the old generation is gone.
    #[arg(long, value_name = "PATH")]
    listen_file: Option<PathBuf>,

    /// handover: a reload starts a new generation beside the old one and
    /// hands over when it is ready. restart: no overlap; listeners are kept
    /// in the fd store across `systemctl restart`, SIGHUP goes to the program.
    #[arg(long, value_name = "MODE", default_value = "handover", value_parser = parse_mode)]
    mode: Mode,

    /// The signal that tells the old generation to stop accepting and finish
    /// its connections after a hand-over.
    #[arg(long, value_name = "SIGNAL", default_value = "SIGTERM", value_parser = fdstore::parse_signal)]
    drain_signal: Signal,

    /// How long the old generation may drain before it is killed (SIGKILL).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    drain_timeout: Duration,

    /// The program to run, and its arguments.
    #[arg(required = true, last = true, value_name = "PROGRAM")]
    command: Vec<OsString>,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse()
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
    match args.get(1).and_then(|a| a.to_str()) {
        Some(exec::TRAMPOLINE_ARG) => {
            let rest = args.get(3..).unwrap_or_default();
            std::process::exit(exec::run_trampoline(rest));
        }
        Some(handover::SPAWN_ARG) => {
            let rest = args.get(3..).unwrap_or_default();
            std::process::exit(handover::run_intermediate(rest));
        }
        _ => {}
    }
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        let _ = e.print();
        std::process::exit(if e.use_stderr() { 64 } else { 0 });
    });
    match cli.action {
        Some(Action::Reload(target)) => std::process::exit(client(&target, Request::Reload)),
        Some(Action::Status(target)) => std::process::exit(client(&target, Request::Status)),
        None => {}
    }
    init_logging();
    let run = cli.run;
    let (program, program_args) = run.command.split_first().expect("clap requires a program");
    let config = Config {
        listen: run.listen,
        listen_file: run.listen_file,
        program: ProgramSpec {
            trampoline: own_path(),
            program: program.clone(),
            args: program_args.to_vec(),
        },
        ready: run.ready,
        ready_timeout: run.ready_timeout,
        drain_signal: run.drain_signal,
        drain_timeout: run.drain_timeout,
        mode: run.mode,
        args: args[1..].to_vec(),
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

/// `fdstore-exec reload` and `fdstore-exec status`: returns the exit status.
fn client(target: &Target, request: Request) -> i32 {
    let verb = match request {
        Request::Reload => "reload",
        Request::Status => "status",
    };
    let pid = match resolve_pid(target) {
        Ok(pid) => pid,
        Err((status, message)) => {
            eprintln!("fdstore-exec {verb}: {message}");
            return status;
        }
    };
    // A stop of the unit while a reload is pending terminates this process;
    // it then exits 0 so that the unit does not end up failed (the stop
    // aborts the hand-over anyway).
    let mut signals = nix::sys::signal::SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    let interrupt = signals.thread_block().ok().and_then(|_| {
        nix::sys::signalfd::SignalFd::with_flags(
            &signals,
            nix::sys::signalfd::SfdFlags::SFD_CLOEXEC | nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
        )
        .ok()
    });
    let interrupt_fd = interrupt.as_ref().map(std::os::fd::AsFd::as_fd);
    match control::request(pid, request, interrupt_fd, None) {
        Ok(Some(Reply::Ok(text))) => {
            println!("{text}");
            0
        }
        Ok(Some(Reply::Err(kind, text))) => {
            eprintln!("fdstore-exec {verb}: {text}");
            kind.exit_status()
        }
        Ok(None) => {
            eprintln!("fdstore-exec {verb}: interrupted; the unit is probably stopping, which abandons the reload");
            0
        }
        Err(e)
            if e.kind() == std::io::ErrorKind::ConnectionRefused
                || e.kind() == std::io::ErrorKind::NotFound =>
        {
            eprintln!(
                "fdstore-exec {verb}: pid {pid} has no fdstore control socket ({e}); is it the main process of a unit run by fdstore-exec (or the fdstore library)?"
            );
            exec::sysexits::UNAVAILABLE
        }
        Err(e) => {
            eprintln!("fdstore-exec {verb}: talking to pid {pid}: {e}");
            exec::sysexits::UNAVAILABLE
        }
    }
}

/// The pid of the main process: --pid, --unit (via systemctl), or $MAINPID.
fn resolve_pid(target: &Target) -> Result<u32, (i32, String)> {
    if let Some(pid) = target.pid {
        return Ok(pid);
    }
    if let Some(unit) = &target.unit {
        let mut command = std::process::Command::new("systemctl");
        if target.user {
            command.arg("--user");
        }
        let output = command
            .args(["show", "--property=MainPID", "--value", "--", unit])
            .output()
            .map_err(|e| {
                (
                    exec::sysexits::UNAVAILABLE,
                    format!("running systemctl: {e}"),
                )
            })?;
        let text = String::from_utf8_lossy(&output.stdout);
        return match text.trim().parse::<u32>() {
            Ok(pid) if pid > 0 => Ok(pid),
            _ => Err((
                exec::sysexits::UNAVAILABLE,
                format!("{unit} has no main process (is it running?)"),
            )),
        };
    }
    match std::env::var("MAINPID") {
        Ok(value) => value.trim().parse().map_err(|_| {
            (
                exec::sysexits::CONFIG,
                format!("$MAINPID is {value:?}, not a pid"),
            )
        }),
        Err(_) => Err((
            exec::sysexits::USAGE,
            "which process? run it from ExecReload= (systemd sets $MAINPID), or give --pid PID or --unit UNIT".into(),
        )),
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
