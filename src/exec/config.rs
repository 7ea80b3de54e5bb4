//! What fdstore-exec is told to do, and how it ends.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::program::ProgramSpec;
use super::readiness::ReadyMode;
use crate::spec::ListenerSpec;

/// How a reload is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A new generation starts while the old one serves, and takes over
    /// when it is ready (`systemctl reload`).
    Handover,
    /// No overlap: listeners are kept in the fd store and a reload is a
    /// `systemctl restart`; fdstore-exec passes SIGHUP to the program.
    Restart,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "handover" => Ok(Mode::Handover),
            "restart" => Ok(Mode::Restart),
            _ => Err(format!("{s:?} is not a mode; use handover or restart")),
        }
    }
}

/// The signals that stop fdstore-exec: passed to the program, whose end
/// ends fdstore-exec. They cannot be given another role.
pub(crate) const STOP_SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT];

/// The signals passed to the program by default, unless one of them is the
/// reload signal (`SIGHUP` by default).
pub(crate) const DEFAULT_FORWARDED: [Signal; 3] =
    [Signal::SIGHUP, Signal::SIGUSR1, Signal::SIGUSR2];

/// What the signals fdstore-exec receives mean: which one starts a reload
/// (`--reload-signal`) and which are passed on to the program unchanged
/// (`--forward-signal`, plus the defaults). The stop signals are always
/// handled (SIGTERM, SIGINT, SIGQUIT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalRoles {
    /// The signal that starts a hand-over, if any (`None`: only
    /// `fdstore-exec reload` does).
    pub reload: Option<Signal>,
    /// The signals passed on to the program.
    pub forward: Vec<Signal>,
}

impl Default for SignalRoles {
    fn default() -> Self {
        SignalRoles::new(Some(Signal::SIGHUP), &[]).expect("the defaults are consistent")
    }
}

impl SignalRoles {
    /// The roles for `--reload-signal reload` and `--forward-signal` `extra`:
    /// SIGHUP, SIGUSR1 and SIGUSR2 are forwarded unless one of them is the
    /// reload signal; `extra` adds more. Fails, naming the fix, for a signal
    /// that cannot be caught or that fdstore-exec needs for itself, and for
    /// a signal given both roles.
    pub fn new(reload: Option<Signal>, extra: &[Signal]) -> Result<SignalRoles, String> {
        if let Some(r) = reload {
            check_assignable(r, "--reload-signal")?;
            if extra.contains(&r) {
                return Err(format!(
                    "{r} is both the --reload-signal and a --forward-signal; a signal can do one of the two: \
                     give another --reload-signal (or none, and reload with `fdstore-exec reload`) to pass {r} to the program"
                ));
            }
        }
        let mut forward: Vec<Signal> = Vec::new();
        for &s in DEFAULT_FORWARDED.iter().chain(extra) {
            check_assignable(s, "--forward-signal")?;
            if Some(s) != reload && !forward.contains(&s) {
                forward.push(s);
            }
        }
        Ok(SignalRoles { reload, forward })
    }

    /// Every signal fdstore-exec handles: the stop signals, the reload
    /// signal and the forwarded ones.
    pub(crate) fn handled(&self) -> Vec<Signal> {
        let mut all = STOP_SIGNALS.to_vec();
        all.extend(self.reload);
        all.extend(&self.forward);
        all
    }
}

/// Fails for a signal that cannot be given a role: one that cannot be
/// caught, that reports a fault of the process itself, or that fdstore-exec
/// needs (the stop signals, SIGCHLD, SIGPIPE).
fn check_assignable(signal: Signal, option: &str) -> Result<(), String> {
    use Signal::*;
    let why = match signal {
        SIGKILL | SIGSTOP => "it cannot be caught",
        SIGTERM | SIGINT | SIGQUIT => {
            "it stops fdstore-exec, which passes it to the program and ends with it"
        }
        SIGSEGV | SIGBUS | SIGFPE | SIGILL | SIGTRAP | SIGSYS | SIGABRT => {
            "it reports a fault of the process that receives it"
        }
        SIGCHLD | SIGPIPE => "fdstore-exec needs it for itself",
        _ => return Ok(()),
    };
    Err(format!(
        "{signal} cannot be a {option}: {why}; use another signal, such as SIGHUP, SIGUSR1, SIGUSR2 or SIGWINCH"
    ))
}

/// `--reload-signal`: a signal name or number, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadSignal(pub Option<Signal>);

impl FromStr for ReloadSignal {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("none") {
            return Ok(ReloadSignal(None));
        }
        let signal = crate::parse_signal(s)?;
        check_assignable(signal, "--reload-signal")?;
        Ok(ReloadSignal(Some(signal)))
    }
}

/// What fdstore-exec runs, and how.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listeners to create (and store) when systemd did not pass them.
    pub listen: Vec<ListenerSpec>,
    /// A file with more listener specs, read by every generation.
    pub listen_file: Option<PathBuf>,
    /// The program.
    pub program: ProgramSpec,
    /// How readiness is detected.
    pub ready: ReadyMode,
    /// How long the program may take to become ready.
    pub ready_timeout: Duration,
    /// The signal that tells an old generation to drain and exit.
    pub drain_signal: Signal,
    /// How long an old generation may drain before it is killed.
    pub drain_timeout: Duration,
    /// Hand-over or plain restart.
    pub mode: Mode,
    /// How many generations may be alive at once, and what a reload does at
    /// the bound.
    pub generations: crate::protocol::GenerationBound,
    /// Which signal reloads and which are passed to the program.
    pub signals: SignalRoles,
    /// fdstore-exec's own arguments, to start the next generation with.
    pub args: Vec<OsString>,
}

/// How fdstore-exec should end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit with this status.
    Exit(i32),
    /// Die by this signal, as the program did.
    Signal(Signal),
}

/// A failure that ends fdstore-exec, with the exit status that fits it.
#[derive(Debug)]
pub struct ExecError {
    /// What went wrong and what to do about it.
    pub message: String,
    /// The sysexits status.
    pub status: i32,
}

impl fmt::Display for ExecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExecError {}

pub(crate) fn fail(status: i32, message: impl Into<String>) -> ExecError {
    ExecError {
        message: message.into(),
        status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_roles_reload_on_sighup_and_forward_usr1_usr2() {
        let roles = SignalRoles::default();
        assert_eq!(roles.reload, Some(Signal::SIGHUP));
        assert_eq!(roles.forward, [Signal::SIGUSR1, Signal::SIGUSR2]);
    }

    #[test]
    fn another_reload_signal_frees_sighup_for_the_program() {
        let roles = SignalRoles::new(Some(Signal::SIGUSR2), &[Signal::SIGWINCH]).unwrap();
        assert_eq!(
            roles.forward,
            [Signal::SIGHUP, Signal::SIGUSR1, Signal::SIGWINCH]
        );
        let none = SignalRoles::new(None, &[]).unwrap();
        assert_eq!(none.forward, DEFAULT_FORWARDED);
        assert_eq!("none".parse::<ReloadSignal>().unwrap(), ReloadSignal(None));
    }

    #[test]
    fn a_signal_with_two_roles_or_none_possible_is_refused_with_the_fix() {
        let both = SignalRoles::new(Some(Signal::SIGHUP), &[Signal::SIGHUP]).unwrap_err();
        assert!(
            both.contains("both the --reload-signal and a --forward-signal"),
            "{both}"
        );
        let stop = SignalRoles::new(None, &[Signal::SIGTERM]).unwrap_err();
        assert!(
            stop.contains("SIGTERM cannot be a --forward-signal"),
            "{stop}"
        );
        let kill = "KILL".parse::<ReloadSignal>().unwrap_err();
        assert!(kill.contains("cannot be caught"), "{kill}");
    }
}
