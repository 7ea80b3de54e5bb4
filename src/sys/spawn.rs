//! Starting a process with descriptors at 3, 4, ...: the one spawn
//! mechanism of the crate, for fdstore-exec's program, fdstore-exec's next
//! generation and the library's next generation.
//!
//! A process starts with one `fork` (a raw `clone`) and one `exec`, with no
//! program of ours in between: everything it needs (the `argv` and `envp`
//! arrays, the descriptors' moves, the room for the variables that name the
//! new process itself) is prepared before the fork, so that the forked side
//! only makes system calls. A process that may have other threads (the
//! library's) must not allocate or take locks between `fork` and `exec`.
//!
//! A failure between `fork` and `exec` (a descriptor that cannot be placed,
//! `exec` itself: the program is missing or not executable) reaches the
//! parent through a close-on-exec pipe, as `std::process::Command` reports
//! it: the pipe's end of file without a word means the `exec` succeeded.

use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use rustix::io::fcntl_dupfd_cloexec;
use rustix::process::{Pid, WaitOptions};

use crate::listen::{LISTEN_FDS, LISTEN_FDS_START, LISTEN_PID, LISTEN_PIDFDID};
use crate::notify::{WATCHDOG_PID, WATCHDOG_USEC};

/// The search path `execvp(3)` uses when `PATH` is not set.
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// A program to start: its path, `argv`, environment and how it relates to
/// us. Like `std::process::Command`, but the new process also gets the
/// variables that name it (`LISTEN_PID`, `LISTEN_PIDFDID`, `WATCHDOG_PID`)
/// filled in with its own identity between `fork` and `exec`, and it can be
/// started detached (our parent's child) without an intermediate process.
///
/// The variables naming the new process follow one rule: `LISTEN_PID` when
/// the environment has `LISTEN_FDS`, `LISTEN_PIDFDID` beside it when our
/// own descriptors came with one (systemd 258+: the kernel's pidfd inode
/// number of the new process; left out if the kernel cannot tell), and
/// `WATCHDOG_PID` when the environment has `WATCHDOG_USEC`. Values of these
/// variables in the given environment are never passed on.
#[derive(Debug)]
pub(crate) struct Spawn {
    program: OsString,
    argv: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    stdin_null: bool,
    kill_with_parent: bool,
    process_group: bool,
}

impl Spawn {
    /// `program` (searched in `PATH` if it has no `/`, as `execvp(3)`
    /// does) with `argv[0]` the program itself and our environment.
    pub(crate) fn new(program: impl AsRef<OsStr>) -> Spawn {
        let program = program.as_ref().to_owned();
        Spawn {
            argv: vec![program.clone()],
            program,
            env: std::env::vars_os().collect(),
            stdin_null: false,
            kill_with_parent: false,
            process_group: false,
        }
    }

    /// Replaces the whole `argv` (the first is `argv[0]`).
    pub(crate) fn argv(&mut self, argv: &[OsString]) -> &mut Spawn {
        self.argv = argv.to_vec();
        self
    }

    /// Adds arguments after those given so far.
    pub(crate) fn args<I, S>(&mut self, args: I) -> &mut Spawn
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.argv
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets `name` to `value` in the new process's environment.
    pub(crate) fn env(&mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Spawn {
        let name = name.as_ref();
        self.env_remove(name);
        self.env.push((name.to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Removes `name` from the new process's environment.
    pub(crate) fn env_remove(&mut self, name: impl AsRef<OsStr>) -> &mut Spawn {
        let name = name.as_ref();
        self.env.retain(|(n, _)| n != name);
        self
    }

    /// Standard input from `/dev/null` instead of ours.
    pub(crate) fn stdin_null(&mut self) -> &mut Spawn {
        self.stdin_null = true;
        self
    }

    /// The new process is killed (SIGKILL) when the calling thread's
    /// process ends, however it ends (`PR_SET_PDEATHSIG`, kept across
    /// `exec`). A program whose fdstore-exec died must not serve on
    /// unsupervised: the manager restarts the unit and the listeners pass
    /// to a new program, and a generation that was starting during a
    /// hand-over would otherwise be left behind. Call [`Spawn::spawn`] from
    /// the thread that also waits for the child (fdstore-exec has only
    /// one). Only for [`Spawn::spawn`].
    pub(crate) fn kill_with_parent(&mut self) -> &mut Spawn {
        self.kill_with_parent = true;
        self
    }

    /// The new process leads a process group of its own, numbered by its
    /// pid. Only for [`Spawn::spawn`].
    pub(crate) fn process_group(&mut self) -> &mut Spawn {
        self.process_group = true;
        self
    }

    /// Starts the program as our child with `fds` at 3, 4, ... (in order,
    /// without close-on-exec; every other descriptor of ours stays
    /// close-on-exec) and no signal blocked. Returns once it has exec'ed.
    pub(crate) fn spawn<F: AsFd>(&self, fds: &[F]) -> Result<Child, SpawnError> {
        let prepared = self.prepare(fds, Mode::Attached)?;
        let pid = prepared.run()?;
        Ok(Child {
            pid: Pid::from_raw(pid as i32).expect("a child's pid is positive"),
            status: None,
        })
    }

    /// Starts the program *detached*, as our parent's child (the service
    /// manager's, for a unit's main process, so that the manager
    /// supervises it once it becomes the main process), with `fds` at 3,
    /// 4, ... as for [`Spawn::spawn`]: one `clone` with `CLONE_PARENT`
    /// makes it our parent's child from the start, with no intermediate
    /// process. The init of a pid namespace (pid 1 of a container) cannot:
    /// its parent is outside the namespace, and a process it left behind
    /// would end with it anyway; that is an error of step
    /// [`Step::Fork`] saying so. Returns the program's pid once it has
    /// exec'ed.
    pub(crate) fn spawn_detached<F: AsFd>(&self, fds: &[F]) -> Result<u32, SpawnError> {
        debug_assert!(
            !self.kill_with_parent && !self.process_group,
            "a detached process is our parent's, not tied to us"
        );
        let prepared = self.prepare(fds, Mode::Detached)?;
        prepared.run()
    }

    /// Everything the forked side needs, allocated now.
    fn prepare<F: AsFd>(&self, fds: &[F], mode: Mode) -> Result<Prepared, SpawnError> {
        let fail = |step, error| SpawnError::new(&self.program, step, error);
        let c = |s: &OsStr| {
            CString::new(s.as_bytes()).map_err(|_| {
                fail(
                    Step::Prepare,
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{s:?} contains a NUL byte"),
                    ),
                )
            })
        };
        let has = |name: &str| {
            self.env
                .iter()
                .any(|(n, _)| n.as_os_str() == OsStr::new(name))
        };
        let listen_pid = has(LISTEN_FDS);
        let named = |name: &str, wanted: bool, digits: usize| {
            let mut entry = Vec::new();
            if wanted {
                entry.extend_from_slice(name.as_bytes());
                entry.push(b'=');
                // Room for the digits of any value and the NUL.
                entry.resize(name.len() + 1 + digits + 1, 0);
            }
            Slot {
                start: name.len() + 1,
                entry,
            }
        };
        let mut env = Vec::with_capacity(self.env.len() + 3);
        for (name, value) in &self.env {
            if [LISTEN_PID, LISTEN_PIDFDID, WATCHDOG_PID]
                .map(OsStr::new)
                .contains(&name.as_os_str())
            {
                continue;
            }
            let mut entry = name.clone();
            entry.push("=");
            entry.push(value);
            env.push(c(&entry)?);
        }
        let path = self
            .env
            .iter()
            .find(|(n, _)| n.as_os_str() == OsStr::new("PATH"))
            .map_or(OsStr::new(DEFAULT_PATH), |(_, v)| v.as_os_str());
        let candidates = candidates(&self.program, path)
            .iter()
            .map(|p| c(p))
            .collect::<Result<Vec<_>, _>>()?;
        let argv = self
            .argv
            .iter()
            .map(|a| c(a))
            .collect::<Result<Vec<_>, _>>()?;
        let places = Places::new(fds).map_err(|e| fail(Step::Prepare, e))?;
        let first_free = places.first_free;
        let above = |fd: OwnedFd| fcntl_dupfd_cloexec(&fd, first_free).map_err(io::Error::from);
        let (report_read, report_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| fail(Step::Prepare, e.into()))?;
        // Above the target range: moving the descriptors down must not
        // overwrite the report pipe or the new standard input.
        let report_write = above(report_write).map_err(|e| fail(Step::Prepare, e))?;
        let stdin = if self.stdin_null {
            let null = rustix::fs::open(
                "/dev/null",
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| fail(Step::Prepare, e.into()))?;
            Some(above(null).map_err(|e| fail(Step::Prepare, e))?)
        } else {
            None
        };
        Ok(Prepared {
            program: self.program.clone(),
            candidates,
            argv,
            env,
            listen_pid: named(LISTEN_PID, listen_pid, 10),
            listen_pidfd_id: named(
                LISTEN_PIDFDID,
                listen_pid && crate::listen::pidfd_id_given(),
                20,
            ),
            watchdog_pid: named(WATCHDOG_PID, has(WATCHDOG_USEC), 10),
            places,
            stdin,
            report_read,
            report_write: Some(report_write),
            mode,
            kill_with_parent: self.kill_with_parent.then(rustix::process::getpid),
            process_group: self.process_group,
        })
    }
}

/// The paths to try, in order, as `execvp(3)` would: the program itself if
/// it names a path, else the program in each directory of `path`.
fn candidates(program: &OsStr, path: &OsStr) -> Vec<OsString> {
    if program.as_bytes().contains(&b'/') || program.is_empty() {
        return vec![program.to_owned()];
    }
    path.as_bytes()
        .split(|&b| b == b':')
        .map(|dir| {
            let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
            let mut full = dir.to_vec();
            full.push(b'/');
            full.extend_from_slice(program.as_bytes());
            OsString::from_vec(full)
        })
        .collect()
}

/// Whether the new process is our child or our parent's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Attached,
    Detached,
}

/// Where the setting up of a new process failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Before the fork, in this process.
    Prepare,
    /// `fork` (`clone`) itself.
    Fork,
    /// Placing the descriptors, the standard input or the signal mask.
    Descriptors,
    /// `setpgid`.
    ProcessGroup,
    /// `PR_SET_PDEATHSIG`, or we ended before it took effect.
    ParentDeathSignal,
    /// `exec`: the program is missing or cannot be run.
    Exec,
}

impl Step {
    fn code(self) -> u32 {
        match self {
            Step::Prepare => 1,
            Step::Fork => 2,
            Step::Descriptors => 3,
            Step::ProcessGroup => 4,
            Step::ParentDeathSignal => 5,
            Step::Exec => 6,
        }
    }

    fn from_code(code: u32) -> Option<Step> {
        [
            Step::Prepare,
            Step::Fork,
            Step::Descriptors,
            Step::ProcessGroup,
            Step::ParentDeathSignal,
            Step::Exec,
        ]
        .into_iter()
        .find(|s| s.code() == code)
    }
}

/// A process could not be started: which program, at which step, why.
#[derive(Debug)]
pub(crate) struct SpawnError {
    program: OsString,
    step: Step,
    error: io::Error,
}

impl SpawnError {
    fn new(program: &OsStr, step: Step, error: io::Error) -> SpawnError {
        SpawnError {
            program: program.to_owned(),
            step,
            error,
        }
    }

    /// The error of `exec` itself (the program is missing, not executable,
    /// ...), if that is where it failed.
    pub(crate) fn exec_error(&self) -> Option<&io::Error> {
        (self.step == Step::Exec).then_some(&self.error)
    }
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let program = std::path::Path::new(&self.program).display();
        let error = &self.error;
        match self.step {
            Step::Exec => write!(f, "cannot run {program}: {error}"),
            Step::Prepare => write!(f, "starting {program}: {error}"),
            Step::Fork => write!(f, "starting {program}: fork: {error}"),
            Step::Descriptors => write!(
                f,
                "starting {program}: placing its descriptors and signal mask: {error}"
            ),
            Step::ProcessGroup => {
                write!(f, "starting {program}: its own process group: {error}")
            }
            Step::ParentDeathSignal => write!(
                f,
                "starting {program}: tying it to this process (PR_SET_PDEATHSIG): {error}"
            ),
        }
    }
}

impl std::error::Error for SpawnError {}

impl From<SpawnError> for io::Error {
    fn from(e: SpawnError) -> io::Error {
        io::Error::new(e.error.kind(), e.to_string())
    }
}

/// A started child process (see [`Spawn::spawn`]): like
/// `std::process::Child`, without its pipes.
#[derive(Debug)]
pub(crate) struct Child {
    pid: Pid,
    /// Once reaped; the pid may then belong to another process.
    status: Option<ExitStatus>,
}

impl Child {
    /// Its pid.
    pub(crate) fn id(&self) -> u32 {
        self.pid.as_raw_nonzero().get() as u32
    }

    /// Sends it SIGKILL, unless it has been reaped already.
    pub(crate) fn kill(&mut self) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        Ok(rustix::process::kill_process(
            self.pid,
            rustix::process::Signal::KILL,
        )?)
    }

    /// Its exit status if it has exited (reaping it), without waiting.
    pub(crate) fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = reap(self.pid, WaitOptions::NOHANG)?;
        }
        Ok(self.status)
    }

    /// Waits for it to exit, and reaps it.
    pub(crate) fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.status {
                return Ok(status);
            }
            self.status = reap(self.pid, WaitOptions::empty())?;
        }
    }
}

/// `waitpid` on `pid`, again on EINTR.
fn reap(pid: Pid, options: WaitOptions) -> io::Result<Option<ExitStatus>> {
    loop {
        match rustix::process::waitpid(Some(pid), options) {
            Ok(found) => return Ok(found.map(|(_, s)| ExitStatus::from_raw(s.as_raw()))),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Where each descriptor goes.
#[derive(Debug)]
struct Places {
    /// (from, to); from == to: already in place.
    pairs: Vec<(RawFd, RawFd)>,
    /// Duplicates of the descriptors not yet in place, above the target
    /// range (kept open until the child has them).
    _copies: Vec<OwnedFd>,
    /// The first descriptor number above the target range.
    first_free: RawFd,
}

impl Places {
    /// A descriptor that is not yet at its place is first duplicated above
    /// the target range, so that moving it down in the child never
    /// overwrites one still to be moved. One already at its place
    /// (fdstore-exec receives its listeners at 3, 4, ... and passes them on
    /// in that order) is left there: the child only clears its
    /// close-on-exec flag, which saves two system calls per descriptor (a
    /// thousand listeners: two thousand per process started).
    fn new<F: AsFd>(fds: &[F]) -> io::Result<Places> {
        let first_free = LISTEN_FDS_START + fds.len() as RawFd;
        let mut copies = Vec::new();
        let mut pairs = Vec::with_capacity(fds.len());
        for (i, fd) in fds.iter().enumerate() {
            let to = LISTEN_FDS_START + i as RawFd;
            if fd.as_fd().as_raw_fd() == to {
                pairs.push((to, to));
            } else {
                let copy = fcntl_dupfd_cloexec(fd.as_fd(), first_free)?;
                pairs.push((copy.as_raw_fd(), to));
                copies.push(copy);
            }
        }
        Ok(Places {
            pairs,
            _copies: copies,
            first_free,
        })
    }
}

/// A variable naming the new process: `NAME=` and room for the digits.
#[derive(Debug)]
struct Slot {
    /// Where the digits go.
    start: usize,
    /// Empty when the process does not get the variable.
    entry: Vec<u8>,
}

/// What the forked side reads: all allocated before the fork.
#[derive(Debug)]
struct Prepared {
    program: OsString,
    candidates: Vec<CString>,
    argv: Vec<CString>,
    env: Vec<CString>,
    listen_pid: Slot,
    listen_pidfd_id: Slot,
    watchdog_pid: Slot,
    places: Places,
    stdin: Option<OwnedFd>,
    report_read: OwnedFd,
    /// Taken (closed) in the parent after the fork.
    report_write: Option<OwnedFd>,
    mode: Mode,
    /// Our pid, when the child is to die with us.
    kill_with_parent: Option<Pid>,
    process_group: bool,
}

/// A report on the pipe: a failed step and its errno.
const REPORT_LEN: usize = 8;

impl Prepared {
    /// Forks, and in the parent waits for the report: the new process's
    /// pid once it has exec'ed, or what failed.
    fn run(mut self) -> Result<u32, SpawnError> {
        let mut argv: Vec<*const libc::c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = self.env.iter().map(|e| e.as_ptr()).collect();
        for slot in [&self.listen_pid, &self.watchdog_pid] {
            if !slot.entry.is_empty() {
                envp.push(slot.entry.as_ptr().cast());
            }
        }
        // Last, so that the child can drop it by ending the array there.
        let pidfd_id_index = (!self.listen_pidfd_id.entry.is_empty()).then(|| {
            envp.push(self.listen_pidfd_id.entry.as_ptr().cast());
            envp.len() - 1
        });
        envp.push(std::ptr::null());
        // For a file without `#!` line: `/bin/sh FILE ARGS...`, FILE filled
        // in by the child.
        let mut script: Vec<*const libc::c_char> = Vec::with_capacity(argv.len() + 1);
        script.push(SHELL.as_ptr());
        script.push(std::ptr::null());
        script.extend(argv.iter().skip(1));
        let fail = |step, error| SpawnError::new(&self.program, step, error);
        let forked = match self.mode {
            Mode::Attached => fork(),
            Mode::Detached => fork_as_sibling(),
        };
        let pid = match forked {
            Err(e) => return Err(fail(Step::Fork, e)),
            Ok(0) => self.child(&argv, &mut script, &mut envp, pidfd_id_index),
            Ok(pid) => pid,
        };
        // Our copy of the write end: end of file once the child has exec'ed
        // or exited.
        drop(self.report_write.take());
        if let Some((step, errno)) = read_report(&self.report_read) {
            // A failed child of ours exits at once; a failed sibling is our
            // parent's to reap.
            if self.mode == Mode::Attached {
                let child = Pid::from_raw(pid).expect("fork returned a positive pid");
                let _ = reap(child, WaitOptions::empty());
            }
            return Err(fail(step, io::Error::from_raw_os_error(errno)));
        }
        Ok(pid as u32)
    }

    /// The forked side: only system calls on what `prepare` and `run`
    /// made, then `exec`; never returns.
    fn child(
        &mut self,
        argv: &[*const libc::c_char],
        script: &mut [*const libc::c_char],
        envp: &mut [*const libc::c_char],
        pidfd_id_index: Option<usize>,
    ) -> ! {
        let report = self.report_write.as_ref().map_or(-1, |w| w.as_raw_fd());
        if let Err(errno) = self.set_up() {
            fail_in_child(report, errno.0, errno.1)
        }
        let own = rustix::process::getpid().as_raw_nonzero().get() as u64;
        for slot in [&mut self.listen_pid, &mut self.watchdog_pid] {
            if !slot.entry.is_empty() {
                write_decimal(&mut slot.entry[slot.start..], own);
            }
        }
        if let Some(index) = pidfd_id_index {
            match super::pidfd::own_pidfd_id() {
                Some(id) => write_decimal(
                    &mut self.listen_pidfd_id.entry[self.listen_pidfd_id.start..],
                    id,
                ),
                None => envp[index] = std::ptr::null(),
            }
        }
        let errno = exec(&self.candidates, argv, script, envp);
        fail_in_child(report, Step::Exec, errno)
    }

    /// Descriptors, signals, process group, parent-death signal.
    fn set_up(&self) -> Result<(), (Step, i32)> {
        let errno = |step| move |e: io::Error| (step, e.raw_os_error().unwrap_or(0));
        if let Some(null) = &self.stdin {
            dup2(null.as_raw_fd(), 0).map_err(errno(Step::Descriptors))?;
        }
        for &(from, to) in &self.places.pairs {
            if from == to {
                clear_cloexec(to)
            } else {
                dup2(from, to)
            }
            .map_err(errno(Step::Descriptors))?;
        }
        // The caller may block signals (for a signalfd), and Rust
        // programs ignore SIGPIPE: the program starts with neither.
        default_signals().map_err(errno(Step::Descriptors))?;
        if self.process_group {
            rustix::process::setpgid(None, None)
                .map_err(|e| (Step::ProcessGroup, e.raw_os_error()))?;
        }
        if let Some(parent) = self.kill_with_parent {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(|e| (Step::ParentDeathSignal, e.raw_os_error()))?;
            // The parent may have died between fork and prctl: then nobody
            // would send the signal.
            if rustix::process::getppid() != Some(parent) {
                return Err((Step::ParentDeathSignal, libc::ESRCH));
            }
        }
        Ok(())
    }
}

/// Reads the pipe until end of file: the failed step and its errno, if
/// the child reported one before it ended.
fn read_report(pipe: &OwnedFd) -> Option<(Step, i32)> {
    let mut buf = [0u8; REPORT_LEN];
    let mut len = 0;
    while len < buf.len() {
        match rustix::io::read(pipe, &mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => break,
        }
    }
    if len < REPORT_LEN {
        return None;
    }
    let kind = u32::from_ne_bytes(buf[..4].try_into().expect("4 bytes"));
    let value = i32::from_ne_bytes(buf[4..].try_into().expect("4 bytes"));
    Step::from_code(kind).map(|step| (step, value))
}

/// `fork()` as a raw `clone` with only SIGCHLD: without the C library's
/// atfork handlers, which could deadlock on locks that other threads of the
/// parent held at the fork. Returns 0 in the child. The child must only
/// make system calls until it `exec`s or exits.
fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: clone with SIGCHLD and no other flag creates a copy of this
    // process with only the calling thread, sharing nothing; both sides go
    // on from here. Every caller makes only system calls in the child.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pid as libc::pid_t)
}

/// `fork()` as [`fork`] does it, but the new process is our parent's child
/// (`CLONE_PARENT`): its end is signalled to our parent, and it is our
/// parent's to reap. The kernel refuses it (`EINVAL`) to the init of a pid
/// namespace, which gets an error saying why.
fn fork_as_sibling() -> io::Result<libc::pid_t> {
    // SAFETY: as in `fork`: a copy of this process with only the calling
    // thread, sharing nothing; CLONE_PARENT changes only whose child it is
    // (and so who is signalled at its end, with our own exit signal).
    // Every caller makes only system calls in the child.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EINVAL) {
            return Err(io::Error::other(
                "this process is the init of its pid namespace (pid 1 of a container), \
                 whose children end with it: a hand-over needs a service manager such as \
                 systemd as the main process's parent, to adopt the new generation",
            ));
        }
        return Err(error);
    }
    Ok(pid as libc::pid_t)
}

/// `dup2(from, to)`: `to` without close-on-exec.
fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup2 only replaces descriptor `to` with a copy of `from`; in
    // the forked child, whose descriptors are its own, `to` is a number of
    // the target range (or 0) that nothing of the child's uses any more.
    if unsafe { libc::dup2(from, to) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Clears close-on-exec on descriptor `fd`.
fn clear_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_SETFD only changes the descriptor's flags; an invalid
    // number is an error, not undefined behaviour.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// No signal blocked, SIGPIPE at its default action.
fn default_signals() -> io::Result<()> {
    // SAFETY: sigprocmask and signal are system calls; `empty` is a valid,
    // initialised set on the stack.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::signal(libc::SIGPIPE, libc::SIG_DFL) == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The shell that runs a file without a `#!` line, as `execvp(3)` does.
const SHELL: &std::ffi::CStr = c"/bin/sh";

/// Tries each candidate path as `execvp(3)` does: on to the next one when
/// it does not exist (or a directory on the way does not), remembering a
/// permission error; a file the kernel cannot execute (no `#!` line) runs
/// under `/bin/sh`, with `script` (`/bin/sh`, a slot for the file, then
/// `argv[1..]`). Returns the errno to report (only on failure).
fn exec(
    candidates: &[CString],
    argv: &[*const libc::c_char],
    script: &mut [*const libc::c_char],
    envp: &[*const libc::c_char],
) -> i32 {
    let mut denied = false;
    let mut last = libc::ENOENT;
    for path in candidates {
        // SAFETY: `path` is NUL-terminated; `argv` and `envp` are arrays of
        // pointers into NUL-terminated strings that outlive the call, each
        // ending with a null pointer. On success, execve does not return.
        unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        let mut errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
        if errno == libc::ENOEXEC {
            script[1] = path.as_ptr();
            // SAFETY: as above; `script` ends with argv's null pointer.
            unsafe { libc::execve(SHELL.as_ptr(), script.as_ptr(), envp.as_ptr()) };
            errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
        }
        match errno {
            libc::EACCES => denied = true,
            libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
            _ => return errno,
        }
        last = errno;
    }
    if denied {
        libc::EACCES
    } else {
        last
    }
}

/// Writes a report (8 bytes: atomic on a pipe).
fn write_report(fd: RawFd, kind: u32, value: i32) {
    let mut bytes = [0u8; REPORT_LEN];
    bytes[..4].copy_from_slice(&kind.to_ne_bytes());
    bytes[4..].copy_from_slice(&value.to_ne_bytes());
    // SAFETY: write from a buffer on our stack; an invalid descriptor is an
    // error, which there is nobody left to tell.
    unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
}

/// Reports `step`'s failure and ends the forked process.
fn fail_in_child(report: RawFd, step: Step, errno: i32) -> ! {
    write_report(report, step.code(), errno);
    exit_now(127)
}

/// Ends the forked process without running anything of the parent's (no
/// atexit handlers, no buffers flushed).
fn exit_now(status: i32) -> ! {
    // SAFETY: _exit is a system call that ends the process.
    unsafe { libc::_exit(status) }
}

/// Writes `n` in decimal followed by a NUL into `out` (which has room for
/// its digits and the NUL), without allocating.
fn write_decimal(out: &mut [u8], mut n: u64) {
    let mut digits = [0u8; 20];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        out[i] = digits[len - 1 - i];
    }
    out[len] = 0;
}

#[cfg(test)]
mod tests;
