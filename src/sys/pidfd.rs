//! The pidfd identity of a process, as `LISTEN_PIDFDID`, `MAINPIDFDID=` and
//! `$MANAGERPIDFDID` carry it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::process::{getpid, pidfd_open, Pid, PidfdFlags};

/// The magic number of pidfs, the file system of pidfds since Linux 6.9.
/// Before it, every pidfd was the same anonymous inode, so its inode number
/// identified nothing.
const PIDFS_MAGIC: u64 = 0x5049_4446;

/// The inode number of a pidfd of the calling process: what systemd 259+
/// puts into `LISTEN_PIDFDID` for the process the descriptors are meant for,
/// and what `sd_listen_fds()` compares it with. `None` when the kernel has
/// no pidfs (or on a 32-bit system, where the inode number is not the whole
/// identity), in which case nobody can check the variable.
///
/// It makes only system calls (`getpid`, `pidfd_open`, `fstatfs`, `fstat`,
/// `close`) and allocates nothing, so a child may call it between `fork`
/// and `exec`.
pub(crate) fn own_pidfd_id() -> Option<u64> {
    pidfd_id(pidfd_open(getpid(), PidfdFlags::empty()).ok()?.as_fd())
}

/// The inode number of `pidfd`, which identifies its process for the
/// current boot: `None` without pidfs (or on a 32-bit system). System calls
/// only, no allocation.
pub(crate) fn pidfd_id(pidfd: BorrowedFd<'_>) -> Option<u64> {
    if usize::BITS < 64 {
        return None;
    }
    let fs = rustix::fs::fstatfs(pidfd).ok()?;
    if fs.f_type as u64 != PIDFS_MAGIC {
        return None;
    }
    Some(rustix::fs::fstat(pidfd).ok()?.st_ino)
}

/// A pidfd (close-on-exec) of process `pid`: `ESRCH` if there is none.
pub(crate) fn open(pid: u32) -> io::Result<OwnedFd> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
    Ok(pidfd_open(pid, PidfdFlags::empty())?)
}

/// Whether the process of `pidfd` has exited (a pidfd becomes readable
/// then), without waiting.
pub(crate) fn has_exited(pidfd: BorrowedFd<'_>) -> bool {
    super::poll::readable_now(pidfd)
}

#[cfg(test)]
mod tests {
    use super::own_pidfd_id;
    use std::os::fd::AsFd;

    #[test]
    fn the_id_is_that_of_any_pidfd_of_the_process_and_only_of_it() {
        let Some(own) = own_pidfd_id() else {
            panic!("this kernel has no pidfs (Linux 6.9+); the tests need one");
        };
        assert_eq!(own_pidfd_id(), Some(own), "stable within the process");
        let child = std::process::Command::new("/bin/sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let pid = rustix::process::Pid::from_child(&child);
        let theirs = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
            .and_then(|fd| rustix::fs::fstat(&fd))
            .unwrap()
            .st_ino;
        let fd = super::open(child.id()).unwrap();
        assert_eq!(super::pidfd_id(fd.as_fd()), Some(theirs));
        assert!(!super::has_exited(fd.as_fd()));
        let mut child = child;
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(super::has_exited(fd.as_fd()));
        assert_ne!(theirs, own);
    }
}
