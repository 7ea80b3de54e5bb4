//! Placing descriptors at 3, 4, ... in a child process.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::io::fcntl_dupfd_cloexec;

use crate::listen::LISTEN_FDS_START;

/// Arranges for `fds` to appear as descriptors 3, 4, ... (in order, without
/// close-on-exec) in the process `command` starts, and for that process to
/// start with no signal blocked (the caller may block signals for a
/// signalfd). Every other descriptor of ours stays close-on-exec.
///
/// A descriptor that is not yet at its place is first duplicated above the
/// target range in the parent, so that moving it down in the child never
/// overwrites one still to be moved. One already at its place (fdstore-exec
/// receives its listeners at 3, 4, ... and passes them on in that order)
/// is left there: the child only clears its close-on-exec flag, which
/// saves two system calls per descriptor (a thousand listeners: two
/// thousand per process started).
pub(crate) fn pass_fds<F: AsFd>(command: &mut Command, fds: &[F]) -> io::Result<()> {
    let first_free = LISTEN_FDS_START + fds.len() as i32;
    let mut sources: Vec<OwnedFd> = Vec::new();
    // (from, to); from == to: already in place.
    let mut pairs: Vec<(i32, i32)> = Vec::with_capacity(fds.len());
    for (i, fd) in fds.iter().enumerate() {
        let to = LISTEN_FDS_START + i as i32;
        if fd.as_fd().as_raw_fd() == to {
            pairs.push((to, to));
        } else {
            let copy = fcntl_dupfd_cloexec(fd.as_fd(), first_free)?;
            pairs.push((copy.as_raw_fd(), to));
            sources.push(copy);
        }
    }
    let hook = move || -> io::Result<()> {
        // Keeps the duplicates open until the command is dropped.
        let _keep = &sources;
        for &(from, to) in &pairs {
            // SAFETY: fcntl(F_SETFD) and dup2 are async-signal-safe; both
            // numbers are valid in the child (`from` was inherited across
            // fork, `to` is replaced or, when equal, is `from` itself).
            let result = unsafe {
                if from == to {
                    libc::fcntl(to, libc::F_SETFD, 0)
                } else {
                    libc::dup2(from, to)
                }
            };
            if result < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: sigprocmask is async-signal-safe and `empty` is a valid,
        // initialised set on the stack.
        unsafe {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec and only makes
    // async-signal-safe system calls on integers captured before the fork;
    // it neither allocates nor takes locks.
    unsafe {
        command.pre_exec(hook);
    }
    Ok(())
}

/// Arranges for the process `command` starts to be killed (SIGKILL) when the
/// calling thread's process ends, however it ends (`PR_SET_PDEATHSIG`, kept
/// across `exec`). A program whose fdstore-exec died must not serve on
/// unsupervised: the manager restarts the unit and the listeners pass to a
/// new program, and a generation that was starting during a hand-over would
/// otherwise be left behind. Call it from the thread that also waits for the
/// child (fdstore-exec has only one).
pub(crate) fn kill_with_parent(command: &mut Command) {
    let parent = rustix::process::getpid();
    let hook = move || -> io::Result<()> {
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
        // The parent may have died between fork and prctl: then nobody would
        // send the signal.
        if rustix::process::getppid() != Some(parent) {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec and makes only raw system
    // calls (prctl, getppid) on a value captured before the fork; it neither
    // allocates nor takes locks.
    unsafe {
        command.pre_exec(hook);
    }
}

/// A program to start as a *detached* process: not our child but our
/// parent's (the service manager's, for a unit's main process), so that the
/// manager supervises it as its own child once it becomes the main process.
///
/// Everything the new process needs is prepared here, before any fork, so
/// that the forked side only makes system calls: a process that may have
/// other threads must not allocate or take locks between `fork` and `exec`.
pub(crate) struct DetachedCommand {
    program: std::ffi::CString,
    args: Vec<std::ffi::CString>,
    env: Vec<std::ffi::CString>,
    /// `LISTEN_PID=` followed by room for the digits, which the new process
    /// fills in with its own pid before `exec`.
    listen_pid: Vec<u8>,
    /// `LISTEN_PIDFDID=` followed by room for the digits, which the new
    /// process fills in with its own pidfd's inode number before `exec`
    /// (or leaves out of the environment if the kernel cannot tell).
    listen_pidfd_id: Vec<u8>,
}

const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";
const LISTEN_PIDFDID_PREFIX: &[u8] = b"LISTEN_PIDFDID=";

/// Which of the variables naming the new process itself it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ListenIdentity {
    /// `LISTEN_PID`.
    pub(crate) pid: bool,
    /// `LISTEN_PIDFDID` (only with `pid`).
    pub(crate) pidfd_id: bool,
}

impl DetachedCommand {
    /// `program` with `args` (the first is `argv[0]`) and exactly the
    /// environment `env` (`NAME=VALUE`), plus `LISTEN_PID` set to the new
    /// process's pid and `LISTEN_PIDFDID` to its pidfd's inode number, as
    /// `identity` asks.
    pub(crate) fn new(
        program: &std::path::Path,
        args: &[std::ffi::OsString],
        env: &[std::ffi::OsString],
        identity: ListenIdentity,
    ) -> io::Result<DetachedCommand> {
        use std::os::unix::ffi::OsStrExt;
        let c = |s: &std::ffi::OsStr| {
            std::ffi::CString::new(s.as_bytes()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{s:?} contains a NUL byte"),
                )
            })
        };
        // Room for the digits of any value (at most 10 for a pid, 20 for a
        // 64-bit inode number) and the NUL.
        let entry = |wanted: bool, prefix: &[u8], digits: usize| {
            let mut entry = Vec::new();
            if wanted {
                entry.extend_from_slice(prefix);
                entry.resize(prefix.len() + digits + 1, 0);
            }
            entry
        };
        Ok(DetachedCommand {
            program: c(program.as_os_str())?,
            args: args.iter().map(|a| c(a)).collect::<Result<_, _>>()?,
            env: env.iter().map(|e| c(e)).collect::<Result<_, _>>()?,
            listen_pid: entry(identity.pid, LISTEN_PID_PREFIX, 10),
            listen_pidfd_id: entry(identity.pid && identity.pidfd_id, LISTEN_PIDFDID_PREFIX, 20),
        })
    }

    /// Starts the program with `fds` at 3, 4, ... through a short-lived
    /// intermediate process, which exits as soon as the program has been
    /// forked and is reaped here, so that the program is re-parented to our
    /// parent (the child subreaper). Returns the program's pid. An `exec`
    /// failure is reported as the error.
    pub(crate) fn spawn<F: AsFd>(mut self, fds: &[F]) -> io::Result<u32> {
        // The intermediate tells us the program's pid through this pipe.
        let (pid_read, pid_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let pid_write_raw = pid_write.as_raw_fd();
        // A vehicle for the first fork: std's Command forks safely and
        // reports a failure of ours (or of exec) through its own pipe.
        let mut vehicle = Command::new("/proc/self/exe");
        vehicle.stdin(std::process::Stdio::inherit());
        pass_fds(&mut vehicle, fds)?;
        let mut argv: Vec<*const libc::c_char> = self.args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = self.env.iter().map(|e| e.as_ptr()).collect();
        if !self.listen_pid.is_empty() {
            envp.push(self.listen_pid.as_ptr().cast());
        }
        // Last, so that the child can drop it by ending the array there.
        let pidfd_id_slot = (!self.listen_pidfd_id.is_empty()).then(|| {
            envp.push(self.listen_pidfd_id.as_ptr().cast());
            envp.len() - 1
        });
        envp.push(std::ptr::null());
        let (argv, mut envp) = (Pointers(argv), Pointers(envp));
        let hook = move || -> io::Result<()> {
            // SAFETY: a raw clone with only SIGCHLD is fork() without the C
            // library's atfork handlers, which could deadlock on locks that
            // other threads of the parent held at the first fork. Both sides
            // then only make system calls.
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
            if pid > 0 {
                // The intermediate: tell the parent the program's pid, done.
                let bytes = (pid as u32).to_ne_bytes();
                // SAFETY: write from a buffer on our stack to a descriptor
                // that is open (the pipe's write end, inherited); _exit ends
                // the process without running anything of the parent's (no
                // atexit handlers, no buffers flushed).
                unsafe {
                    libc::write(pid_write_raw, bytes.as_ptr().cast(), bytes.len());
                    libc::_exit(0)
                };
            }
            if !self.listen_pid.is_empty() {
                // SAFETY: getpid cannot fail.
                let own = unsafe { libc::getpid() } as u32;
                write_decimal(&mut self.listen_pid[LISTEN_PID_PREFIX.len()..], own.into());
            }
            if let Some(slot) = pidfd_id_slot {
                match super::pidfd::own_pidfd_id() {
                    Some(id) => {
                        write_decimal(&mut self.listen_pidfd_id[LISTEN_PIDFDID_PREFIX.len()..], id)
                    }
                    None => envp.0[slot] = std::ptr::null(),
                }
            }
            // SAFETY: every pointer is into a NUL-terminated string owned by
            // this closure, and both arrays end with a null pointer.
            unsafe { libc::execve(self.program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            Err(io::Error::last_os_error())
        };
        // SAFETY: the hook runs between fork and exec and makes only system
        // calls on data prepared before the fork; it neither allocates nor
        // takes locks (write_decimal writes into a buffer it is given,
        // own_pidfd_id only makes system calls).
        unsafe {
            vehicle.pre_exec(hook);
        }
        let mut intermediate = vehicle.spawn()?;
        drop(vehicle);
        drop(pid_write);
        let status = intermediate.wait()?;
        let mut bytes = [0u8; 4];
        let n = rustix::io::read(&pid_read, &mut bytes)?;
        if !status.success() || n != bytes.len() {
            return Err(io::Error::other(format!(
                "the intermediate process failed ({status})"
            )));
        }
        Ok(u32::from_ne_bytes(bytes))
    }
}

/// `argv`/`envp` arrays for `execve`: pointers into strings that the same
/// closure owns.
struct Pointers(Vec<*const libc::c_char>);

impl Pointers {
    /// The array (a method, so that closures capture the whole wrapper).
    fn as_ptr(&self) -> *const *const libc::c_char {
        self.0.as_ptr()
    }
}

// SAFETY: the pointers refer to heap buffers (CStrings, the LISTEN_PID and
// LISTEN_PIDFDID entries)
// moved into the same closure, which outlive them and are only read, in the
// forked child; std requires pre_exec closures to be Send + Sync although it
// never runs them on another thread.
unsafe impl Send for Pointers {}
// SAFETY: as for Send: nothing writes through these pointers.
unsafe impl Sync for Pointers {}

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
mod tests {
    use super::write_decimal;

    #[test]
    fn decimal_digits_without_allocation() {
        for (n, text) in [
            (0, "0"),
            (7, "7"),
            (4194304, "4194304"),
            (u32::MAX.into(), "4294967295"),
            (u64::MAX, "18446744073709551615"),
        ] {
            let mut buf = [0xffu8; 21];
            write_decimal(&mut buf, n);
            let end = buf.iter().position(|&b| b == 0).unwrap();
            assert_eq!(&buf[..end], text.as_bytes());
        }
    }
}
