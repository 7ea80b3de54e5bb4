//! The real-systemd test harness shared by the integration tests.
//!
//! [`Systemd::start`] boots a private `systemd --user` manager (252 from the
//! machine, or 254 unpacked from bookworm-backports) in a fresh child cgroup
//! and a private mount + cgroup namespace, following
//! `shared/docs/private-systemd.md`. The test writes units into it, drives
//! `systemctl`, reads its journal, and everything is torn down on drop, also
//! when the test panics. A manager that cannot be started fails the test.

#![allow(dead_code, unused_imports)] // each test binary uses a different part

pub mod ports;
pub mod systemd;

pub use ports::free_port;
pub use systemd::{Systemd, Version};

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Generates one test per systemd version for each named scenario function
/// `fn NAME(sd: &Systemd)`.
#[macro_export]
macro_rules! on_each_systemd {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn systemd_252() {
                    let sd = $crate::support::Systemd::start($crate::support::Version::V252);
                    super::$name(&sd);
                }
                #[test]
                fn systemd_254() {
                    let sd = $crate::support::Systemd::start($crate::support::Version::V254);
                    super::$name(&sd);
                }
            }
        )*
    };
}

/// The path of an example program, built (or found up to date) once per test
/// process so that a test never runs a stale copy.
pub fn example(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_fdstore-exec"));
    let path = exe.parent().unwrap().join("examples").join(name);
    let mut built = BUILT.lock().unwrap();
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = std::process::Command::new(cargo);
        command
            .args(["build", "--quiet", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if exe.parent().unwrap().ends_with("release") {
            command.arg("--release");
        }
        let status = command.status().expect("running cargo build --example");
        assert!(status.success(), "cargo build --example {name} failed");
        built.push(name.to_owned());
    }
    path
}

/// The probe example (see `examples/probe.rs`).
pub fn probe() -> PathBuf {
    example("probe")
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the report file has a line for which `matches` is true and
/// returns it.
pub fn wait_for_line(
    report: &std::path::Path,
    what: &str,
    matches: impl Fn(&str) -> bool,
) -> String {
    wait_for(
        &format!("{what} in {}", report.display()),
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(report)
                .ok()?
                .lines()
                .find(|l| matches(l))
                .map(str::to_owned)
        },
    )
}

/// Connects to a loopback port and returns the one line the server answers
/// (the probe answers `pid PID`).
pub fn answer(port: u16) -> String {
    use std::io::BufRead;
    let stream = std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connecting to 127.0.0.1:{port}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut line)
        .unwrap();
    line.trim().to_owned()
}

/// The lines of a report file that start with `prefix`.
pub fn report_lines(report: &std::path::Path, prefix: &str) -> Vec<String> {
    std::fs::read_to_string(report)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}
