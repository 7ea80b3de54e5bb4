//! Deciding that a generation is ready, without ever blocking the event
//! loop.
//!
//! The checks of `--ready` ([`ReadyMode`]) fall in two groups. *Gates* are
//! things the program says or time that passes (`notify`, `delay:`,
//! `exec`); *proofs* are things fdstore-exec tries (`accept`, `http:`,
//! `command:`), started once every gate is open (a program that says
//! `READY=1` before its workers load is then probed only after it said so).
//! The generation is ready when every gate is open and every proof passed
//! once.
//!
//! Every mode includes the accept proof for each stream listener that no
//! check names and `unproven` does not exempt: a gate alone trusts the
//! program, and a program that says `READY=1` (or outlives a delay, or
//! passes a command) without accepting would be handed the service while
//! the old generation drains away. Datagram listeners have no connection
//! to accept and go unproven.
//!
//! During a reload both generations share the listeners and the old one is
//! accepting, so only a proof that knows *who* answered means anything:
//! the probes ([`probe`]) find the process that accepted their connection;
//! a check command gets the new program's pid and generation
//! (`FDSTORE_READY_PID`, `FDSTORE_READY_GENERATION`). The first generation
//! goes through the same code (nothing else accepts then).
//!
//! Probes and commands are driven by the supervisor's poll loop: they
//! expose descriptors to poll and a time to be woken at, and each
//! [`Readiness::step`] does only non-blocking work.
//!
//! A new generation that waits for a listener with `EPOLLEXCLUSIVE` gets its
//! probes made while the old generation's program is paused ([`pause`],
//! [`crate::protocol::handover::Message::Pause`]); the messages that
//! needs are sent by the loop ([`Readiness::take_messages`]).

mod mode;
mod pause;
mod probe;

use std::collections::HashSet;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{pidfd_open, Pid, PidfdFlags};
use tracing::{debug, warn};

pub use mode::ReadyMode;
pub(crate) use mode::{HttpCheck, ReadyCheck};

use crate::listen::NamedFd;
use crate::protocol::handover::Message;
use crate::sys::sock_diag::SockDiag;
use pause::{PauseNow, Pauses};
use probe::{probe_address, Target};

/// The longest one run of a `command:` check may take; it is killed (with
/// its process group) after that, and tried again.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How many listeners whose proof failed a timeout message describes one
/// by one; the rest are named in brief.
const DESCRIBED_MAX: usize = 5;
/// The pause between two runs of a `command:` check.
const COMMAND_INTERVAL: Duration = Duration::from_millis(100);
/// How often at most this generation's `epoll` sets are read to see
/// whether it waits with `EPOLLEXCLUSIVE`: after [`EXCLUSIVE_LOOK_MIN`], or
/// [`EXCLUSIVE_LOOK_COST`] times as long as the last look took (a look reads
/// every descriptor of the generation's processes: a program with a
/// thousand listeners takes milliseconds, one with a few, tens of
/// microseconds), so that looking takes at most a twentieth of a core. The
/// program registers its listener on its way to its accept loop, often
/// after the first probes were lost: a long pause between looks would keep
/// its probes unpaused (50 ms made the hand-over's p99 70 ms).
const EXCLUSIVE_LOOK_MIN: Duration = Duration::from_millis(2);
const EXCLUSIVE_LOOK_COST: u32 = 20;
/// Probes of one listener taken by another process after which its next
/// probes wait for the old generation's program to be paused, however the
/// new program waits. A program that waits with `poll` is woken with the
/// old one for every connection, and the quicker of the two accepts: an
/// old program that is awake and warm can win race after race (the
/// benchmark without load: 8 in a row in 2 of 360 reloads, 240 ms of
/// retries), and a new one still busy starting loses every race. Five
/// losses are the first 31 ms of retries. A pause stalls the old program's
/// clients (0.4-1.3 ms each): after three, under paced load, 14 of 60
/// reloads paused; after five, 1 or 2 of 60, with the hand-over's p99 at
/// 22-27 ms (40-72 ms without the rule, 14-15 ms after three).
const LOSSES_BEFORE_PAUSE: u64 = 5;

/// The readiness checks of one generation, in progress.
pub(crate) struct Readiness {
    mode: ReadyMode,
    generation: u64,
    started: Instant,
    program_pid: u32,
    notified: bool,
    targets: Vec<Target>,
    diag: Option<SockDiag>,
    command: Option<CommandCheck>,
    pauses: Pauses,
    /// The listeners this generation was last seen to wait for with
    /// `EPOLLEXCLUSIVE` (their inodes).
    exclusive: HashSet<u64>,
    /// When the next look may be.
    exclusive_next: Option<Instant>,
}

impl Readiness {
    /// Plans the checks for a generation with these listeners. Fails, with
    /// the fix in words, when a check cannot work with them (`accept` and
    /// no stream listener, a name that is not a listener).
    pub(crate) fn new(
        mode: &ReadyMode,
        listeners: &[NamedFd],
        generation: u64,
    ) -> Result<Readiness, String> {
        let all: Vec<&str> = listeners.iter().map(|l| l.name()).collect();
        let no_such = |check: &ReadyCheck, missing: &str| {
            format!(
                "--ready {check}: no listener is named {missing:?}; the listeners are {}",
                if all.is_empty() {
                    "none".into()
                } else {
                    all.join(", ")
                }
            )
        };
        // `None`: every listener is proven; `Some(empty)`: none is.
        let mut unproven: Option<&[String]> = None;
        for check in mode.checks() {
            if let ReadyCheck::Unproven(names) = check {
                // Not an error: listeners come and go with the listener file
                // while the arguments stay (a reload or a restart would be
                // refused until the unit is edited), and a mistyped name
                // only leaves a listener proven, the safe side.
                if let Some(missing) = names.iter().find(|n| !all.contains(&n.as_str())) {
                    let text = format!("{}; nothing to exempt", no_such(check, missing));
                    if generation == 1 {
                        warn!("{text}");
                    } else {
                        debug!("{text}");
                    }
                }
                unproven = Some(names);
            }
        }
        let is_unproven = |name: &str| match unproven {
            None => false,
            Some(names) => names.is_empty() || names.iter().any(|n| n == name),
        };
        let mut targets: Vec<Target> = Vec::new();
        for check in mode.checks() {
            let (names, http): (&[String], Option<&HttpCheck>) = match check {
                ReadyCheck::Accept(names) => (names, None),
                ReadyCheck::Http(h) => (h.listener.as_slice(), Some(h)),
                _ => continue,
            };
            let before = targets.len();
            for listener in listeners {
                let named = names.iter().any(|n| n == listener.name());
                if !names.is_empty() && !named {
                    continue;
                }
                if is_unproven(listener.name()) {
                    if named {
                        return Err(format!(
                            "--ready {mode}: listener {} is named by both {check} and unproven; leave it out of one",
                            listener.name()
                        ));
                    }
                    continue;
                }
                match probe_address(listener) {
                    Ok(Some(address)) => targets.push(Target::new(
                        listener.name().to_owned(),
                        inode_of(listener),
                        address,
                        http.cloned(),
                        false,
                    )),
                    Ok(None) if named => {
                        return Err(format!(
                            "--ready {check}: listener {} is {}, not a stream listener that accepts connections",
                            listener.name(),
                            listener.kind().map_or("unknown".into(), |k| k.to_string())
                        ))
                    }
                    Ok(None) => {}
                    Err(e) => return Err(format!("--ready {check}: {e}")),
                }
            }
            if let Some(missing) = names.iter().find(|n| !all.contains(&n.as_str())) {
                return Err(no_such(check, missing));
            }
            if targets.len() == before {
                return Err(format!(
                    "--ready {check}: the program has no stream listener (TCP or Unix) to probe{}; use notify, delay: or command: instead",
                    if all.is_empty() { String::new() } else { format!(" among {}", all.join(", ")) }
                ));
            }
        }
        // The proof every mode includes: each stream listener that no check
        // above probes, and that is not unproven, must be accepted on by
        // this generation. Without it notify, exec, delay: and command:
        // could hand over to a program that never accepts.
        for listener in listeners {
            if is_unproven(listener.name()) || targets.iter().any(|t| t.name == listener.name()) {
                continue;
            }
            match probe_address(listener) {
                Ok(Some(address)) => targets.push(Target::new(
                    listener.name().to_owned(),
                    inode_of(listener),
                    address,
                    None,
                    true,
                )),
                // Datagram sockets and other descriptors: nothing to accept.
                Ok(None) => {}
                Err(e) => {
                    return Err(format!(
                        "--ready {mode}: every mode proves that the program accepts on each stream listener, and {e}; add +unproven:{} to go without the proof for it",
                        listener.name()
                    ))
                }
            }
        }
        let diag = if targets.is_empty() {
            None
        } else {
            // No fallback to /proc/net/tcp: it lists every socket of the
            // network namespace and took 0.9 s to read with 38,000
            // TIME_WAIT entries left by load; sock_diag looks one up.
            let only_implied = targets.iter().all(|t| t.implied);
            Some(SockDiag::open().map_err(|e| {
                format!(
                    "--ready {mode}: the probes need a sock_diag netlink socket to see which process accepted them, and it was refused ({e}); a unit with RestrictAddressFamilies= must allow AF_NETLINK too{}",
                    if only_implied {
                        format!(" (or go without the proof that every mode includes: --ready {mode}+unproven)")
                    } else {
                        String::new()
                    }
                )
            })?)
        };
        let command = mode.checks().iter().find_map(|c| match c {
            ReadyCheck::Command(text) => Some(CommandCheck::new(text.clone())),
            _ => None,
        });
        Ok(Readiness {
            mode: mode.clone(),
            generation,
            started: Instant::now(),
            program_pid: 0,
            notified: false,
            targets,
            diag,
            command,
            pauses: Pauses::unavailable(),
            exclusive: HashSet::new(),
            exclusive_next: None,
        })
    }

    /// The old generation pauses its program for probes that need it.
    pub(crate) fn allow_pauses(&mut self) {
        self.pauses = Pauses::available();
    }

    /// The old generation's `PAUSED MS`.
    pub(crate) fn on_paused(&mut self, ms: u64, now: Instant) {
        self.pauses.on_paused(ms, now);
    }

    /// The messages for the old generation, in order.
    pub(crate) fn take_messages(&mut self) -> Vec<Message> {
        self.pauses.take_messages()
    }

    /// The program has started with this pid.
    pub(crate) fn begin(&mut self, program_pid: u32, started: Instant) {
        self.program_pid = program_pid;
        self.started = started;
    }

    /// Whether the program sent `READY=1` already.
    pub(crate) fn notified(&self) -> bool {
        self.notified
    }

    /// The program sent `READY=1`.
    pub(crate) fn on_notify(&mut self) {
        self.notified = true;
    }

    fn gates_open(&self, now: Instant) -> bool {
        self.mode.checks().iter().all(|c| match c {
            ReadyCheck::Notify => self.notified,
            ReadyCheck::Delay(d) => now >= self.started + *d,
            _ => true,
        })
    }

    /// Does what can be done now without blocking; true once every check
    /// passed.
    pub(crate) fn step(&mut self, now: Instant) -> bool {
        if !self.gates_open(now) {
            return false;
        }
        let root = std::process::id();
        if let Some(diag) = &mut self.diag {
            let pause = self.pauses.now(now);
            for target in &mut self.targets {
                target.step(now, diag, root, pause);
            }
            self.pause_where_probes_are_lost(now, root);
            if self.targets.iter().any(|t| t.waits_for_pause(now)) {
                self.pauses.want(now);
            } else if !self.targets.iter().any(Target::probing_paused) {
                self.pauses.release();
            }
        }
        if let Some(command) = &mut self.command {
            command.step(now, self.program_pid, self.generation);
        }
        self.targets.iter().all(Target::passed) && self.command.as_ref().map_or(true, |c| c.passed)
    }

    /// After probes were taken by other processes, the listeners whose
    /// next probes wait for the old generation's program to be paused
    /// (where the old generation takes pauses): those that lost
    /// [`LOSSES_BEFORE_PAUSE`] probes, and those this generation waits for
    /// with `EPOLLEXCLUSIVE`.
    fn pause_where_probes_are_lost(&mut self, now: Instant, root: u32) {
        let mut lost = Vec::new();
        for (i, target) in self.targets.iter_mut().enumerate() {
            if target.take_lost() && !target.wants_pause {
                lost.push(i);
            }
        }
        if lost.is_empty() || self.pauses.now(now) == PauseNow::Unavailable {
            return;
        }
        lost.retain(|&i| {
            let target = &mut self.targets[i];
            if target.losses() < LOSSES_BEFORE_PAUSE {
                return true;
            }
            debug!(
                listener = target.name,
                "{} probes of listener {} were taken by another process (the old generation, woken with generation {} and quicker to accept): its probes wait for the old generation's program to be paused",
                target.losses(),
                target.name,
                self.generation
            );
            target.want_pause(now);
            false
        });
        if lost.is_empty() {
            return;
        }
        if self.exclusive_next.map_or(true, |next| now >= next) {
            let began = Instant::now();
            self.exclusive.clear();
            for pid in crate::sys::proc::tree(root).into_iter().skip(1) {
                if let Err(e) = crate::sys::proc::exclusive_epoll_targets(pid, &mut self.exclusive)
                {
                    debug!(pid, "reading the epoll sets of process {pid}: {e}");
                }
            }
            let took = began.elapsed();
            self.exclusive_next = Some(now + EXCLUSIVE_LOOK_MIN.max(took * EXCLUSIVE_LOOK_COST));
        }
        for i in lost {
            let target = &mut self.targets[i];
            if self.exclusive.contains(&target.inode) {
                debug!(
                    listener = target.name,
                    "generation {} waits for listener {} with EPOLLEXCLUSIVE: its probes wait for the old generation's program to be paused",
                    self.generation,
                    target.name
                );
                target.want_pause(now);
            }
        }
    }

    /// The descriptors whose events move a check on.
    pub(crate) fn fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut fds: Vec<BorrowedFd<'_>> = self.targets.iter().filter_map(Target::fd).collect();
        if let Some(fd) = self.command.as_ref().and_then(CommandCheck::fd) {
            fds.push(fd);
        }
        fds
    }

    /// When [`Readiness::step`] should run again at the latest.
    pub(crate) fn next_wake(&self, now: Instant) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        let mut consider = |t: Instant| wake = Some(wake.map_or(t, |w: Instant| w.min(t)));
        if !self.gates_open(now) {
            for check in self.mode.checks() {
                if let ReadyCheck::Delay(d) = check {
                    consider(self.started + *d);
                }
            }
            return wake;
        }
        let awaited = self.pauses.awaited();
        for t in self.targets.iter().filter_map(|t| t.next_wake(awaited)) {
            consider(t);
        }
        if let Some(t) = self.pauses.next_wake(now) {
            consider(t);
        }
        if let Some(t) = self.command.as_ref().and_then(CommandCheck::next_wake) {
            consider(t);
        }
        wake
    }

    /// What is still missing, naming the mode: for the message of a
    /// generation that was not ready in time.
    pub(crate) fn pending(&self, now: Instant) -> String {
        let mut missing = Vec::new();
        for check in self.mode.checks() {
            match check {
                ReadyCheck::Notify if !self.notified => {
                    missing.push("the program did not send READY=1".to_owned())
                }
                ReadyCheck::Delay(d) if now < self.started + *d => {
                    missing.push(format!("the delay of {d:?} had not passed"))
                }
                _ => {}
            }
        }
        let mut hint = "";
        if missing.is_empty() {
            let failed: Vec<&Target> = self.targets.iter().filter(|t| !t.passed()).collect();
            // Bounded: a program with a thousand listeners it does not
            // accept on would otherwise get a status text of 150 kB.
            missing.extend(
                failed
                    .iter()
                    .take(DESCRIBED_MAX)
                    .map(|t| t.describe(self.generation)),
            );
            if failed.len() > DESCRIBED_MAX {
                let names: Vec<&str> = failed.iter().map(|t| t.name.as_str()).collect();
                missing.push(format!(
                    "and {} more listeners ({})",
                    failed.len() - DESCRIBED_MAX,
                    crate::exec::listeners::names_in_brief(&names[DESCRIBED_MAX..])
                ));
            }
            if failed.iter().any(|t| t.implied) {
                hint = " (every mode proves that the new generation accepts on each stream listener; for a program that does not accept on one, add +unproven:NAME and trust it there)";
            }
            if let Some(c) = self.command.as_ref().filter(|c| !c.passed) {
                missing.push(c.describe());
            }
        } else if self.targets.iter().any(|t| !t.implied) || self.command.is_some() {
            missing.push("so no probe or check command was tried".into());
        }
        format!("--ready {}: {}{hint}", self.mode, missing.join("; "))
    }
}

/// The inode of a listener (0 when it cannot be read: matched by nothing).
fn inode_of(listener: &NamedFd) -> u64 {
    rustix::fs::fstat(listener).map_or(0, |s| s.st_ino)
}

/// A `command:` check: one run at a time, as a child process watched
/// through its pidfd, in a process group of its own so that a run that
/// takes too long is killed whole.
struct CommandCheck {
    command: String,
    running: Option<Run>,
    next_run: Instant,
    passed: bool,
    runs: u64,
    last: Option<String>,
}

struct Run {
    child: Child,
    pidfd: OwnedFd,
    deadline: Instant,
}

impl CommandCheck {
    fn new(command: String) -> CommandCheck {
        CommandCheck {
            command,
            running: None,
            next_run: Instant::now(),
            passed: false,
            runs: 0,
            last: None,
        }
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.running.as_ref().map(|r| r.pidfd.as_fd())
    }

    fn next_wake(&self) -> Option<Instant> {
        if self.passed {
            return None;
        }
        Some(self.running.as_ref().map_or(self.next_run, |r| r.deadline))
    }

    fn step(&mut self, now: Instant, pid: u32, generation: u64) {
        if self.passed {
            return;
        }
        if let Some(run) = &mut self.running {
            match run.child.try_wait() {
                Ok(Some(status)) => {
                    self.running = None;
                    self.next_run = now + COMMAND_INTERVAL;
                    if status.success() {
                        self.passed = true;
                    } else {
                        self.last = Some(super::supervise::describe(status));
                    }
                }
                Ok(None) if now >= run.deadline => {
                    self.last = Some(format!("did not finish within {COMMAND_TIMEOUT:?}"));
                    self.kill();
                    self.next_run = now + COMMAND_INTERVAL;
                }
                Ok(None) => {}
                Err(e) => {
                    self.last = Some(format!("waiting for it: {e}"));
                    self.kill();
                    self.next_run = now + COMMAND_INTERVAL;
                }
            }
            return;
        }
        if now < self.next_run {
            return;
        }
        self.runs += 1;
        match self.spawn(pid, generation) {
            Ok(run) => self.running = Some(run),
            Err(e) => {
                self.last = Some(format!("could not be started: {e}"));
                self.next_run = now + COMMAND_INTERVAL;
            }
        }
    }

    fn spawn(&self, pid: u32, generation: u64) -> std::io::Result<Run> {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(&self.command)
            .env("FDSTORE_READY_PID", pid.to_string())
            .env("FDSTORE_READY_GENERATION", generation.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()?;
        let pidfd = Pid::from_raw(child.id() as i32)
            .ok_or_else(|| std::io::Error::other("a child pid of 0"))
            .and_then(|p| pidfd_open(p, PidfdFlags::empty()).map_err(Into::into));
        match pidfd {
            Ok(pidfd) => Ok(Run {
                child,
                pidfd,
                deadline: Instant::now() + COMMAND_TIMEOUT,
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// Kills the run in progress and everything it started.
    fn kill(&mut self) {
        if let Some(mut run) = self.running.take() {
            let group = nix::unistd::Pid::from_raw(run.child.id() as i32);
            if let Err(e) = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL) {
                debug!("killing the check command's process group: {e}");
                let _ = run.child.kill();
            }
            // After SIGKILL the child ends at once; this reaps it.
            if let Err(e) = run.child.wait() {
                warn!("reaping the check command: {e}");
            }
        }
    }

    fn describe(&self) -> String {
        let mut text = format!("the check command {:?} did not exit 0", self.command);
        match (&self.last, self.runs) {
            (Some(last), n) => text.push_str(&format!(" ({n} runs; the last {last})")),
            (None, n) if n > 0 => text.push_str(" (its first run had not finished)"),
            _ => {}
        }
        text
    }
}

impl Drop for CommandCheck {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    fn named(name: &str, fd: impl Into<OwnedFd>) -> NamedFd {
        NamedFd::new(name, fd.into())
    }

    fn plan(mode: &str, listeners: &[NamedFd]) -> Result<Readiness, String> {
        Readiness::new(&mode.parse().unwrap(), listeners, 2)
    }

    /// Steps the accept proof of a listener whose probes this process
    /// takes (to the proof, whose generation is this process's children,
    /// it is another process: the old generation) until it wants a pause
    /// or has lost `give_up` probes; returns the target.
    fn lose_probes(pauses: bool, give_up: u64) -> Target {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let copy = named("web", listener.try_clone().unwrap());
        let mut readiness = plan("accept", std::slice::from_ref(&copy)).unwrap();
        if pauses {
            readiness.allow_pauses();
        }
        // Held open, as a server holds a connection until it read a
        // request: a probe closed before its acceptor is seen is not lost.
        let mut taken = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            readiness.step(Instant::now());
            let target = &readiness.targets[0];
            if target.wants_pause || target.losses() >= give_up {
                break;
            }
            while let Ok((connection, _)) = listener.accept() {
                taken.push(connection);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        readiness.targets.remove(0)
    }

    #[test]
    fn probes_lost_again_and_again_wait_for_a_pause() {
        let target = lose_probes(true, 20);
        assert!(target.wants_pause, "{} probes lost", target.losses());
        assert_eq!(target.losses(), LOSSES_BEFORE_PAUSE);
    }

    #[test]
    fn without_pauses_lost_probes_go_on_unpaused() {
        let target = lose_probes(false, LOSSES_BEFORE_PAUSE + 2);
        assert!(!target.wants_pause);
        assert_eq!(target.losses(), LOSSES_BEFORE_PAUSE + 2);
    }

    #[test]
    fn probes_need_a_stream_listener_and_known_names() {
        let udp = named("dns", std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
        let tcp = named("web", std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        let e = plan("accept", std::slice::from_ref(&udp)).err().unwrap();
        assert!(
            e.contains("no stream listener (TCP or Unix) to probe among dns"),
            "{e}"
        );
        let e = plan("notify+http:dns/health", std::slice::from_ref(&udp))
            .err()
            .unwrap();
        assert!(
            e.contains("listener dns is a UDP socket, not a stream listener"),
            "{e}"
        );
        let both = [udp, tcp];
        let e = plan("accept:api", &both).err().unwrap();
        assert!(
            e.contains("no listener is named \"api\"; the listeners are dns, web"),
            "{e}"
        );
        let r = plan("notify+accept", &both).unwrap();
        assert_eq!(r.targets.len(), 1, "the UDP socket is left out");
        assert_eq!(r.targets[0].name, "web");
        assert!(plan("notify", &[]).unwrap().targets.is_empty());
    }

    #[test]
    fn gates_come_before_probes_and_name_what_is_missing() {
        let tcp = named("web", std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        let mut r = plan("notify+accept", std::slice::from_ref(&tcp)).unwrap();
        r.begin(std::process::id(), Instant::now());
        let now = Instant::now();
        assert!(!r.step(now));
        // No probe before READY=1: nothing to poll, no timer.
        assert!(r.fds().is_empty());
        assert_eq!(r.next_wake(now), None);
        let text = r.pending(now);
        assert!(
            text.starts_with("--ready notify+accept: the program did not send READY=1"),
            "{text}"
        );
        r.on_notify();
        // Nobody accepts: the probe waits in the queue, the check goes on.
        assert!(!r.step(Instant::now()));
        assert!(r.next_wake(Instant::now()).is_some());
        let text = r.pending(Instant::now());
        assert!(
            text.contains("web (127.0.0.1:")
                && text.contains("no probe was accepted by generation 2"),
            "{text}"
        );
        let mut exec = plan("exec", &[]).unwrap();
        assert!(exec.step(Instant::now()));
    }

    /// Issue 13: no mode hands over to a program that does not accept;
    /// `unproven` is the only way to go without the proof.
    #[test]
    fn every_mode_proves_each_stream_listener_unless_unproven() {
        let udp = named("dns", std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
        let web = named("web", std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        let admin = named("admin", std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        let all = [udp, web, admin];
        let proven = |mode: &str| -> Vec<(String, bool)> {
            plan(mode, &all)
                .unwrap_or_else(|e| panic!("{mode}: {e}"))
                .targets
                .iter()
                .map(|t| (t.name.clone(), t.implied))
                .collect()
        };
        let implied = |names: &[&str]| -> Vec<(String, bool)> {
            names.iter().map(|n| (n.to_string(), true)).collect()
        };
        for mode in [
            "notify",
            "exec",
            "delay:1s",
            "command:true",
            "notify+command:true",
        ] {
            assert_eq!(proven(mode), implied(&["web", "admin"]), "{mode}");
        }
        // A check that names a listener proves it; the rest are implied.
        assert_eq!(
            proven("notify+http:web/health"),
            [("web".to_owned(), false), ("admin".to_owned(), true)]
        );
        assert_eq!(
            proven("accept:admin"),
            [("admin".to_owned(), false), ("web".to_owned(), true)]
        );
        assert_eq!(
            proven("accept"),
            [("web".to_owned(), false), ("admin".to_owned(), false)]
        );
        // The opt-out, for every listener or some.
        assert!(proven("notify+unproven").is_empty());
        assert!(proven("exec+unproven").is_empty());
        assert_eq!(proven("notify+unproven:admin"), implied(&["web"]));
        assert_eq!(proven("accept+unproven:admin"), [("web".to_owned(), false)]);
        // Datagram-only: nothing can be proven, nothing is probed.
        assert!(plan("notify", &all[..1]).unwrap().targets.is_empty());
        // A name that is no listener (removed from the listener file, or
        // mistyped) exempts nothing.
        assert_eq!(proven("notify+unproven:api"), implied(&["web", "admin"]));
        let e = plan("accept:web+unproven:web", &all).err().unwrap();
        assert!(
            e.contains("listener web is named by both accept:web and unproven"),
            "{e}"
        );
    }

    #[test]
    fn a_timeout_message_describes_a_few_listeners_and_names_the_rest() {
        let listeners: Vec<NamedFd> = (0..8)
            .map(|i| {
                named(
                    &format!("l{i}"),
                    std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
                )
            })
            .collect();
        let mut r = plan("exec", &listeners).unwrap();
        r.begin(std::process::id(), Instant::now());
        assert!(!r.step(Instant::now()));
        let text = r.pending(Instant::now());
        assert_eq!(
            text.matches("no probe was accepted by generation 2")
                .count(),
            DESCRIBED_MAX,
            "{text}"
        );
        assert!(
            text.contains("; and 3 more listeners (l5, l6, l7)"),
            "{text}"
        );
    }

    #[test]
    fn an_implied_proof_that_fails_names_the_opt_out() {
        let tcp = named("web", std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        let mut r = plan("notify", std::slice::from_ref(&tcp)).unwrap();
        r.begin(std::process::id(), Instant::now());
        assert!(!r.step(Instant::now()));
        // Before READY=1 the message is about READY=1 only.
        assert_eq!(
            r.pending(Instant::now()),
            "--ready notify: the program did not send READY=1"
        );
        r.on_notify();
        // Nobody accepts the probe: READY=1 is not enough.
        assert!(!r.step(Instant::now()));
        let text = r.pending(Instant::now());
        assert!(
            text.starts_with("--ready notify: web (127.0.0.1:")
                && text.contains("no probe was accepted by generation 2")
                && text.ends_with("add +unproven:NAME and trust it there)"),
            "{text}"
        );
        let mut trusted = plan("notify+unproven", std::slice::from_ref(&tcp)).unwrap();
        trusted.on_notify();
        assert!(trusted.step(Instant::now()));
    }
}
