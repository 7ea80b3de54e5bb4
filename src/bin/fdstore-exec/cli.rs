//! The command line of `fdstore-exec`, kept apart from `main` so that the
//! manual page and the shell completions can be generated from it
//! (`tests/integration/generated.rs`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use fdstore::exec::{Mode, ReadyMode, ReloadSignal};
use fdstore::protocol::DEFAULT_MAX_GENERATIONS;
use fdstore::AtMaxGenerations;
use fdstore::ListenerSpec;
use nix::sys::signal::Signal;

/// Run a network program under systemd with reloads that lose no connection.
///
/// `systemctl reload` starts a new generation of the program beside the old
/// one, hands the listeners over once it is ready, and only then lets the old
/// one drain and exit. If the new one fails, the old one keeps serving and the
/// reload fails with the reason.
///
/// The program receives its listeners as descriptors 3, 4, ... with
/// LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID, as under systemd socket
/// activation, in the same order in every generation and after a restart:
/// --listen names in command-line order, then --listen-file names in file
/// order, then every other name sorted. Listeners come from the unit's
/// socket units and fd store; a --listen name that systemd did not pass is
/// created and put into the fd store, so it stays open across crashes and
/// restarts.
#[derive(Debug, Parser)]
#[command(
    name = "fdstore-exec",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub action: Option<Action>,

    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Hand the listeners over to a new generation and wait for the outcome.
    ///
    /// Meant for ExecReload=. Exits 0 once the new generation serves, and
    /// non-zero with the reason when the old one had to keep serving.
    Reload(Target),
    /// Print the generation, its pid and the last reload's outcome.
    ///
    /// The same line as the unit's status text. Anyone may ask.
    Status(Target),
}

/// Which fdstore-exec to talk to.
#[derive(Debug, Args)]
pub struct Target {
    /// The pid of the unit's main process [default: $MAINPID, which systemd
    /// sets for ExecReload=].
    #[arg(long, value_name = "PID", conflicts_with = "unit")]
    pub pid: Option<u32>,

    /// Ask systemctl for this unit's main process.
    #[arg(long, value_name = "UNIT")]
    pub unit: Option<String>,

    /// With --unit: the unit is in the user's service manager.
    #[arg(long, requires = "unit")]
    pub user: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A listener the program needs, as NAME=KIND:ADDRESS[,OPTION]...
    /// (for example web=tcp:[::]:8080 or api=unix:/run/app/api.sock,mode=0660).
    /// Repeat for several.
    #[arg(long = "listen", value_name = "NAME=SPEC", value_parser = parse_spec)]
    pub listen: Vec<ListenerSpec>,

    /// How to tell that the program is ready: a check, or several joined by
    /// + that must all pass (for example notify+accept).
    ///
    /// notify: it sends READY=1. exec: once started. delay:DURATION: once it
    /// has run that long. accept[:NAME,...]: a probe connection to each stream
    /// listener (TCP, Unix; or the named ones) is accepted by a process of
    /// this generation (the program or a worker it started), not by the old
    /// generation, whose probes are retried. http:[NAME]/PATH[,STATUS]: as
    /// accept, and that process answers GET PATH with STATUS (default: any
    /// 2xx). command:SHELL-COMMAND: ready when it exits 0 (tried every
    /// 100 ms, each run killed after 5 s), with FDSTORE_READY_PID and
    /// FDSTORE_READY_GENERATION naming the new program; it takes the rest of
    /// the text, so it comes last.
    ///
    /// Every mode includes the accept proof for each stream listener that
    /// no accept or http: check names: --ready notify is READY=1 and then a
    /// probe accepted by this generation on each stream listener, as
    /// notify+accept; exec, delay: and command: the same. A new version
    /// that never accepts fails the reload, and the old one keeps serving.
    /// Datagram listeners cannot be proven. unproven[:NAME,...], joined to
    /// another check (notify+unproven:metrics), is the opt-out for the
    /// named stream listeners (all of them without names): a listener the
    /// program does not accept on, or a unit that cannot allow AF_NETLINK,
    /// which the probes need. It gives up the guarantee: for those
    /// listeners a reload may hand over to a version that does not serve.
    ///
    /// notify and delay: come first: the probes and the command start once
    /// they have passed, so a program that sends READY=1 before its workers
    /// accept (gunicorn) is judged by its workers. During a reload both
    /// generations share the listeners and the old one is accepting: a
    /// check that merely connects (command:curl http://127.0.0.1:8080/health)
    /// is answered by the old generation and proves nothing; the probes
    /// find out which process accepted them.
    #[arg(long, value_name = "MODE", default_value = "notify", value_parser = parse_ready)]
    pub ready: ReadyMode,

    /// How long the program may take to become ready.
    #[arg(long, value_name = "DURATION", default_value = "90s", value_parser = parse_duration)]
    pub ready_timeout: Duration,

    /// A file of listener specs, one NAME=KIND:ADDRESS[,OPTION]... per line
    /// (# starts a comment). Read again at every reload: added listeners
    /// appear in the new generation, removed ones are closed and removed
    /// from the fd store as soon as the new generation is the main process
    /// (the old one keeps its copy while it drains). It must be a
    /// regular file of at most 1 MiB.
    #[arg(long, value_name = "PATH", value_hint = clap::ValueHint::FilePath)]
    pub listen_file: Option<PathBuf>,

    /// handover: a reload starts a new generation beside the old one and
    /// hands over when it is ready. restart: no overlap; listeners are kept
    /// in the fd store across `systemctl restart`, SIGHUP goes to the program.
    #[arg(
        long,
        value_name = "MODE",
        default_value = "handover",
        value_parser = mode_parser(),
        hide_possible_values = true
    )]
    pub mode: Mode,

    /// The signal that tells the old generation to stop accepting and finish
    /// its connections after a hand-over.
    #[arg(long, value_name = "SIGNAL", default_value = "SIGTERM", value_parser = fdstore::parse_signal)]
    pub drain_signal: Signal,

    /// The signal that starts a reload by hand-over, as `systemctl reload`
    /// sends it with Type=notify-reload (set ReloadSignal= to the same
    /// signal), or none: only `fdstore-exec reload` reloads, and SIGHUP
    /// reaches the program. In --mode restart it is passed to the program.
    #[arg(long, value_name = "SIGNAL|none", default_value = "SIGHUP", value_parser = parse_reload_signal)]
    pub reload_signal: ReloadSignal,

    /// A signal to pass on to the program unchanged, for example SIGWINCH or
    /// SIGTTIN. SIGHUP, SIGUSR1 and SIGUSR2 are passed on anyway, unless one
    /// is the --reload-signal; SIGTERM, SIGINT and SIGQUIT always are, and
    /// stop fdstore-exec with the program. Repeat for several. Send them to
    /// fdstore-exec with `systemctl kill --kill-whom=main --signal=SIGNAL`.
    #[arg(long = "forward-signal", value_name = "SIGNAL", value_parser = fdstore::parse_signal)]
    pub forward_signal: Vec<Signal>,

    /// How long the old generation may drain before it is killed (SIGKILL).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// How many generations may be alive at once: the serving one, those
    /// still draining after a hand-over, and the one a reload starts (at
    /// least 2). Clients that keep idle connections open hold a draining
    /// generation until --drain-timeout; this bounds how many pile up when
    /// reloads come quickly.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_GENERATIONS, value_parser = parse_max_generations)]
    pub max_generations: u32,

    /// What a reload does when a new generation would exceed
    /// --max-generations: kill-oldest ends the oldest draining generations
    /// first (their programs are killed, as at --drain-timeout, which the
    /// journal says); refuse fails the reload as busy (`fdstore-exec reload`
    /// exits 75) and the serving generation keeps serving.
    #[arg(
        long,
        value_name = "CHOICE",
        default_value = "kill-oldest",
        value_parser = at_max_parser(),
        hide_possible_values = true
    )]
    pub at_max_generations: AtMaxGenerations,

    /// The program to run, and its arguments.
    #[arg(
        required = true,
        last = true,
        value_name = "PROGRAM",
        value_hint = clap::ValueHint::CommandWithArguments
    )]
    pub command: Vec<OsString>,
}

/// `--mode`: its values are listed, so that `--help` and the shell
/// completions offer them.
fn mode_parser() -> impl clap::builder::TypedValueParser<Value = Mode> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["handover", "restart"]).try_map(|s| s.parse::<Mode>())
}

/// `--at-max-generations`: its values are listed, as for `--mode`.
fn at_max_parser() -> impl clap::builder::TypedValueParser<Value = AtMaxGenerations> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(AtMaxGenerations::VALUES)
        .try_map(|s| s.parse::<AtMaxGenerations>())
}

fn parse_max_generations(s: &str) -> Result<u32, String> {
    let max: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of generations; use 2 or more"))?;
    fdstore::protocol::check_max_generations(max)?;
    Ok(max)
}

fn parse_spec(s: &str) -> Result<ListenerSpec, String> {
    s.parse().map_err(|e: fdstore::SpecError| e.to_string())
}

fn parse_ready(s: &str) -> Result<ReadyMode, String> {
    s.parse()
}

fn parse_reload_signal(s: &str) -> Result<ReloadSignal, String> {
    s.parse()
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    fdstore::parse_duration(s)
}
