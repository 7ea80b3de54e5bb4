//! The real-systemd test harness shared by the integration tests.
//!
//! [`Systemd::start`] boots a private `systemd --user` manager (252 from the
//! machine; 254 from bookworm-backports, 257 from trixie or 262 from sid,
//! unpacked next to it by `.ci/`) in a fresh child cgroup
//! and a private mount + cgroup namespace, following
//! `shared/docs/private-systemd.md`. The test writes units into it, drives
//! `systemctl`, reads its journal, and everything is torn down on drop, also
//! when the test panics. A manager that cannot be started fails the test.

pub mod app;
pub mod http;
pub mod load;
pub mod ports;
pub mod servers;
pub mod systemd;

pub use ports::free_port;
pub use systemd::{Systemd, Version};

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Generates one test per systemd version (252, 254, 257, 262) for each
/// named scenario function `fn NAME(sd: &Systemd)`: `NAME::systemd_252` and
/// so on, which cargo runs in parallel as its test threads allow.
/// `on_each_systemd!(from_254: NAME, ...)` leaves out 252, for what 252
/// cannot do (each such scenario says why).
#[macro_export]
macro_rules! on_each_systemd {
    (from_254: $($name:ident),* $(,)?) => {
        $(
            mod $name {
                $crate::on_each_systemd!(@one $name, systemd_254, V254);
                $crate::on_each_systemd!(@one $name, systemd_257, V257);
                $crate::on_each_systemd!(@one $name, systemd_262, V262);
            }
        )*
    };
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                $crate::on_each_systemd!(@one $name, systemd_252, V252);
                $crate::on_each_systemd!(@one $name, systemd_254, V254);
                $crate::on_each_systemd!(@one $name, systemd_257, V257);
                $crate::on_each_systemd!(@one $name, systemd_262, V262);
            }
        )*
    };
    (@one $name:ident, $test:ident, $version:ident) => {
        #[test]
        fn $test() {
            let sd = $crate::support::Systemd::start($crate::support::Version::$version);
            super::$name(&sd);
        }
    };
}

/// Examples that need a cargo feature (their `required-features`).
const EXAMPLE_FEATURES: &[(&str, &str)] = &[("upgrade_tokio", "tokio"), ("axum", "axum")];

/// The path of an example program, built (or found up to date) once per test
/// process so that a test never runs a stale copy.
pub fn example(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    // option_env!: the demo example shares this module but builds its own.
    let Some(exe) = option_env!("CARGO_BIN_EXE_fdstore-exec") else {
        panic!("support::example() is for integration tests");
    };
    let exe = PathBuf::from(exe);
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
        if let Some((_, feature)) = EXAMPLE_FEATURES.iter().find(|(e, _)| *e == name) {
            command.args(["--features", feature]);
        }
        let status = command.status().expect("running cargo build --example");
        assert!(status.success(), "cargo build --example {name} failed");
        built.push(name.to_owned());
    }
    path
}

/// For the demo and the benchmark (run as programs, not tests): the release
/// `fdstore-exec` and `hello_http` built beside the running example. Exits
/// with a message naming `script` when one is missing (66) or when not run
/// as root (77). Not in the test binary (`cfg(test)`), which has no use for
/// it.
#[cfg(not(test))]
pub fn built_programs(tool: &str, script: &str) -> (PathBuf, PathBuf) {
    let exe = std::env::current_exe().expect("own path");
    let bin_dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/PROFILE/examples/TOOL");
    let fdstore_exec = bin_dir.join("fdstore-exec");
    let server = exe.with_file_name("hello_http");
    for needed in [&fdstore_exec, &server] {
        if !needed.exists() {
            eprintln!(
                "{tool}: {} is missing; run `bash {script}`, which builds it",
                needed.display()
            );
            std::process::exit(66);
        }
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!(
            "{tool}: run it as root: it starts private systemd managers in their own cgroups"
        );
        std::process::exit(77);
    }
    (fdstore_exec, server)
}

/// The first word of a field (such as `VmRSS:`) of `/proc/PID/status`.
pub fn proc_status(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix(field)?
            .split_whitespace()
            .next()
            .map(str::to_owned)
    })
}

/// The inode number of a pidfd of `pid`: what `LISTEN_PIDFDID` must say for
/// that process.
pub fn pidfd_id(pid: u32) -> u64 {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .unwrap_or_else(|e| panic!("pidfd_open({pid:?}): {e}"));
    rustix::fs::fstat(&fd).unwrap().st_ino
}

/// A variable of the environment `pid` was started with (what it was
/// given, even if it removed it since).
pub fn environ_var(pid: u32, name: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/environ: {e}"));
    environ.split(|&b| b == 0).find_map(|entry| {
        let entry = String::from_utf8_lossy(entry);
        entry
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('='))
            .map(str::to_owned)
    })
}

/// Asserts that process `pid` was given `LISTEN_PIDFDID` naming itself when
/// `expected` (the manager uses it), and no `LISTEN_PIDFDID` otherwise.
pub fn assert_names_itself(pid: u32, expected: bool, what: &str) {
    let value = environ_var(pid, "LISTEN_PIDFDID");
    if expected {
        assert_eq!(
            value,
            Some(pidfd_id(pid).to_string()),
            "{what} (pid {pid}) must find LISTEN_PIDFDID naming itself"
        );
    } else {
        assert_eq!(value, None, "{what} (pid {pid}): the manager set none");
    }
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

/// How many descriptors a process has open (0 once it is gone).
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// What each open descriptor of a process is (for failure messages).
pub fn fd_targets(pid: u32) -> Vec<String> {
    let mut targets: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| {
                let e = e.ok()?;
                let target = std::fs::read_link(e.path()).ok()?;
                Some(format!(
                    "{}: {}",
                    e.file_name().to_string_lossy(),
                    target.display()
                ))
            })
            .collect()
        })
        .unwrap_or_default();
    targets.sort();
    targets
}

/// Calls `f` until `done` accepts its value or `timeout` passes; returns
/// the last value, for an assertion that shows it when it never settled.
pub fn settle<T>(timeout: Duration, f: impl Fn() -> T, done: impl Fn(&T) -> bool) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let value = f();
        if done(&value) || std::time::Instant::now() >= deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(50));
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

/// What a [`Traffic`] run saw.
#[derive(Debug, Default)]
pub struct TrafficCount {
    /// Complete answers.
    pub ok: u64,
    /// Failed requests (connection refused, reset, timeout, bad answer), the
    /// first 20 described.
    pub failed: u64,
    /// Descriptions of the first failures.
    pub failures: Vec<String>,
    /// The `pid PID` answers seen (which programs served).
    pub answers: std::collections::BTreeSet<String>,
}

/// Clients that connect to a loopback port again and again (a new
/// connection per request, the mode that shows refused and reset
/// connections) until stopped, each reading the one-line answer.
pub struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<TrafficCount>>,
}

impl Traffic {
    /// Starts `clients` client threads against 127.0.0.1:`port`.
    pub fn start(port: u16, clients: usize) -> Traffic {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let threads = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut count = TrafficCount::default();
                    while !stop.load(Ordering::Relaxed) {
                        match one_request(port) {
                            Ok(line) => {
                                count.ok += 1;
                                count.answers.insert(line);
                            }
                            Err(e) => {
                                count.failed += 1;
                                if count.failures.len() < 20 {
                                    count.failures.push(e);
                                }
                            }
                        }
                    }
                    count
                })
            })
            .collect();
        Traffic { stop, threads }
    }

    /// Stops the clients and adds up what they saw.
    pub fn stop(self) -> TrafficCount {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut total = TrafficCount::default();
        for thread in self.threads {
            let count = thread.join().expect("a traffic thread panicked");
            total.ok += count.ok;
            total.failed += count.failed;
            total.failures.extend(count.failures);
            total.answers.extend(count.answers);
        }
        total
    }
}

fn one_request(port: u16) -> Result<String, String> {
    use std::io::Read;
    let timeout = Duration::from_secs(5);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| format!("read: {e}"))?;
    let line = text.trim();
    if line.starts_with("pid ") {
        Ok(line.to_owned())
    } else {
        Err(format!("bad answer {line:?}"))
    }
}

/// A directory the hardened units can read: not under /home or /root
/// (`ProtectHome=`) nor /tmp (`PrivateTmp=`, which would also hide a build
/// directory there), removed on drop.
pub struct Visible(pub PathBuf);

impl Visible {
    /// A fresh directory `/opt/fdstore-test/TAG-PID`.
    pub fn new(tag: &str) -> Visible {
        let dir = PathBuf::from(format!("/opt/fdstore-test/{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        Visible(dir)
    }

    /// Copies the executable `from` into the directory as `name` and returns
    /// the copy's path, for a unit that must not see the build directory.
    pub fn copy_executable(&self, from: &std::path::Path, name: &str) -> PathBuf {
        let to = self.0.join(name);
        std::fs::copy(from, &to).unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
        to
    }
}

impl Drop for Visible {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
