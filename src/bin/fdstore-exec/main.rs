//! `fdstore-exec`: the `ExecStart=` wrapper that hands listeners over between
//! generations of a program.
//!
//! This file holds only the command line and logging set-up; the work is in
//! the `fdstore` library (`fdstore::exec`).

#![deny(unsafe_code)]

mod cli;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;
use cli::{Action, Cli, Target};
use fdstore::exec::{self, spawn, Config, Outcome, ProgramSpec, SignalRoles};
use fdstore::protocol::control::Request;
use fdstore::protocol::{self, sysexits};
use nix::sys::signal::Signal;

/// Logs go to the journal when stderr is connected to it (as under systemd),
/// to stderr otherwise, and to stderr with a warning when the journal's
/// socket cannot be reached.
fn init_logging() {
    use tracing_subscriber::prelude::*;
    let journal = std::env::var_os("JOURNAL_STREAM")
        .is_some()
        .then(tracing_journald::layer);
    let journal_error = match journal {
        Some(Ok(layer)) => {
            tracing_subscriber::registry().with(layer).init();
            return;
        }
        Some(Err(e)) => Some(e),
        None => None,
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    if let Some(e) = journal_error {
        tracing::warn!("cannot log to the journal's socket ({e}); logging to stderr instead");
    }
}

/// The path to run as the next generation: the file on disk, so that an
/// upgraded binary takes effect.
fn own_path() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"))
}

/// The signals that end a reload client: a stop of the unit while a reload
/// is pending terminates `ExecReload=`, which must then exit 0 so that the
/// unit does not end up failed (the stop abandons the hand-over anyway).
fn client_signals() -> nix::sys::signal::SigSet {
    let mut signals = nix::sys::signal::SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals
}

fn main() {
    // The very first thing, before the arguments are even looked at: a
    // `systemctl stop` racing `systemctl reload` sends SIGTERM to the reload
    // client within its first milliseconds, and the default action (die)
    // would mark the unit failed. What is left is the time from execve(2)
    // to here (see fdstore(7) SECURITY). Other roles restore the mask.
    let inherited_mask = client_signals().thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK);
    let restore_mask = || {
        if let Ok(mask) = &inherited_mask {
            let _ = mask.thread_set_mask();
        }
    };
    let args: Vec<OsString> = std::env::args_os().collect();
    // The trampoline and the intermediate of older binaries: this one no
    // longer starts them, but an old binary starts the new one through them
    // at the first reload after a package upgrade.
    match args.get(1).and_then(|a| a.to_str()) {
        Some(exec::TRAMPOLINE_ARG) => {
            restore_mask();
            let rest = args.get(3..).unwrap_or_default();
            std::process::exit(exec::run_trampoline(rest));
        }
        Some(spawn::SPAWN_ARG) => {
            restore_mask();
            let rest = args.get(3..).unwrap_or_default();
            std::process::exit(spawn::run_intermediate(rest));
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
        None => restore_mask(),
    }
    // Before logging opens the journal's socket: see exec::Inherited.
    let inherited = exec::Inherited::take();
    init_logging();
    let run = cli.run;
    let (program, program_args) = run.command.split_first().expect("clap requires a program");
    let signals = SignalRoles::new(run.reload_signal.0, &run.forward_signal).unwrap_or_else(|e| {
        eprintln!("fdstore-exec: {e}");
        std::process::exit(sysexits::USAGE);
    });
    let config = Config {
        listen: run.listen,
        listen_file: run.listen_file,
        program: ProgramSpec {
            fdstore_exec: own_path(),
            program: program.clone(),
            args: program_args.to_vec(),
        },
        ready: run.ready,
        ready_timeout: run.ready_timeout,
        drain_signal: run.drain_signal,
        drain_timeout: run.drain_timeout,
        mode: run.mode,
        generations: protocol::GenerationBound::new(run.max_generations, run.at_max_generations)
            .unwrap_or_else(|e| {
                eprintln!("fdstore-exec: --{e}");
                std::process::exit(sysexits::USAGE);
            }),
        signals,
        args: args[1..].to_vec(),
    };
    match exec::run(&config, inherited) {
        Ok(Outcome::Exit(code)) => std::process::exit(code),
        Ok(Outcome::Signal(signal)) => exec::die_by(signal),
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
    fdstore::client::ask_main_process(pid, request, &format!("fdstore-exec {verb}"))
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
            .map_err(|e| (sysexits::UNAVAILABLE, format!("running systemctl: {e}")))?;
        let text = String::from_utf8_lossy(&output.stdout);
        return match text.trim().parse::<u32>() {
            Ok(pid) if pid > 0 => Ok(pid),
            _ => Err((
                sysexits::UNAVAILABLE,
                format!("{unit} has no main process (is it running?)"),
            )),
        };
    }
    fdstore::client::main_pid_from_env()
}
