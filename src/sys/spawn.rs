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
/// The descriptors are first duplicated above the target range in the parent,
/// so that moving them down in the child never overwrites one still to be
/// moved.
pub(crate) fn pass_fds<F: AsFd>(command: &mut Command, fds: &[F]) -> io::Result<()> {
    let first_free = LISTEN_FDS_START + fds.len() as i32;
    let sources: Vec<OwnedFd> = fds
        .iter()
        .map(|fd| fcntl_dupfd_cloexec(fd.as_fd(), first_free))
        .collect::<Result<_, _>>()?;
    let pairs: Vec<(i32, i32)> = sources
        .iter()
        .enumerate()
        .map(|(i, fd)| (fd.as_raw_fd(), LISTEN_FDS_START + i as i32))
        .collect();
    let hook = move || -> io::Result<()> {
        // Keeps the duplicates open until the command is dropped.
        let _keep = &sources;
        for &(from, to) in &pairs {
            // SAFETY: dup2 is async-signal-safe; both numbers are valid in the
            // child (`from` was inherited across fork, `to` is replaced).
            if unsafe { libc::dup2(from, to) } < 0 {
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
