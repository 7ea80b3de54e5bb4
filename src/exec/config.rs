//! What fdstore-exec is told to do, and how it ends.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::program::ProgramSpec;
use crate::spec::ListenerSpec;

/// How fdstore-exec decides that the program is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyMode {
    /// The program sends `READY=1` to its `NOTIFY_SOCKET`.
    Notify,
    /// Ready as soon as it has started.
    Exec,
    /// Ready after it has run for this long.
    Delay(Duration),
    /// Ready once this shell command exits 0 (tried every 100 ms).
    Command(String),
}

impl FromStr for ReadyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "notify" => Ok(ReadyMode::Notify),
            "exec" => Ok(ReadyMode::Exec),
            _ => {
                if let Some(d) = s.strip_prefix("delay:") {
                    crate::parse_duration(d).map(ReadyMode::Delay)
                } else if let Some(c) = s.strip_prefix("command:") {
                    if c.trim().is_empty() {
                        Err("command: needs a shell command, for example command:curl -fs http://127.0.0.1:8080/health".into())
                    } else {
                        Ok(ReadyMode::Command(c.to_owned()))
                    }
                } else {
                    Err(format!(
                        "{s:?} is not a readiness mode; use notify, exec, delay:DURATION or command:SHELL-COMMAND"
                    ))
                }
            }
        }
    }
}

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

/// sysexits(3) statuses used by fdstore-exec.
pub mod sysexits {
    /// Bad command line or configuration.
    pub const USAGE: i32 = 64;
    /// A needed resource (a port, a path) is unavailable.
    pub const UNAVAILABLE: i32 = 69;
    /// An operating-system error.
    pub const OSERR: i32 = 71;
    /// Configuration of the environment is wrong.
    pub const CONFIG: i32 = 78;
}

pub(crate) fn fail(status: i32, message: impl Into<String>) -> ExecError {
    ExecError {
        message: message.into(),
        status,
    }
}
