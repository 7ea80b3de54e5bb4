//! Taking ownership of inherited descriptors and setting their flags.

use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

#[cfg(test)]
use rustix::io::fcntl_getfd;
use rustix::io::{fcntl_setfd, FdFlags};

/// Takes ownership of descriptor `raw`, which was inherited across `exec`
/// under the `LISTEN_FDS` protocol, after checking that it is open, and marks
/// it close-on-exec.
///
/// Fails with `EBADF` when the descriptor is not open, without taking
/// anything.
///
/// # Safety
///
/// The caller promises that nothing else in this process owns `raw`: no
/// `OwnedFd`, `File`, socket or other object wraps it, and nobody will close
/// it behind the returned `OwnedFd`'s back.
///
/// See [`fcntl(2)`](https://man7.org/linux/man-pages/man2/fcntl.2.html).
unsafe fn take_inherited(raw: RawFd) -> io::Result<OwnedFd> {
    if raw < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: the borrow lives only for the `fcntl` call below, which merely
    // sets the descriptor's flags; if `raw` is not open the kernel answers
    // EBADF and nothing is touched.
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    // Close-on-exec is the only descriptor flag, so it is set without
    // reading the flags first: one call per descriptor, not two (a reload
    // with a thousand listeners takes them in two processes).
    fcntl_setfd(borrowed, FdFlags::CLOEXEC)?;
    // SAFETY: `raw` is open (F_SETFD succeeded) and the caller guarantees that
    // nothing else owns it, so the new `OwnedFd` is its sole owner.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// The inherited descriptor numbers taken so far in this process.
static TAKEN: std::sync::Mutex<std::collections::BTreeSet<RawFd>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Takes ownership of inherited descriptor `raw` (see [`take_inherited`]),
/// once per process: a number taken before is refused (`EBADF`), also after
/// the descriptor taken then was closed and the number reused by another
/// descriptor. Every inherited descriptor in the crate is taken here (the
/// `LISTEN_FDS` range, the hand-over channel and the channels after it), so
/// nothing else in the crate can own it; the crate takes them first thing,
/// before it opens any descriptor of its own.
pub(crate) fn take_inherited_once(raw: RawFd) -> io::Result<OwnedFd> {
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    if taken.contains(&raw) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("inherited descriptor {raw} was taken already"),
        ));
    }
    // SAFETY: `raw` was never taken in this process (checked above, under
    // the lock), and only this function takes inherited descriptors.
    let fd = unsafe { take_inherited(raw) }?;
    taken.insert(raw);
    Ok(fd)
}

/// Whether the descriptor is marked close-on-exec.
#[cfg(test)]
pub(crate) fn is_cloexec(fd: impl std::os::fd::AsFd) -> io::Result<bool> {
    Ok(fcntl_getfd(fd.as_fd())?.contains(FdFlags::CLOEXEC))
}

/// Marks a descriptor close-on-exec, or clears the mark (for a descriptor that
/// is about to be handed to a child on purpose).
#[cfg(test)]
pub(crate) fn set_cloexec(fd: impl std::os::fd::AsFd, cloexec: bool) -> io::Result<()> {
    let fd = fd.as_fd();
    let mut flags = fcntl_getfd(fd)?;
    flags.set(FdFlags::CLOEXEC, cloexec);
    fcntl_setfd(fd, flags)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    #[test]
    fn take_inherited_rejects_a_closed_descriptor() {
        // Far above anything the test process opens, so no other test thread
        // can have it open.
        let raw = 900_000;
        // SAFETY: nothing in this process owns descriptor 900000.
        let err = unsafe { take_inherited(raw) }.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    }

    #[test]
    fn take_inherited_rejects_negative_numbers() {
        // SAFETY: a negative number can never be owned.
        assert!(unsafe { take_inherited(-1) }.is_err());
    }

    #[test]
    fn take_inherited_sets_close_on_exec() {
        let file = std::fs::File::open("/dev/null").unwrap();
        set_cloexec(&file, false).unwrap();
        assert!(!is_cloexec(&file).unwrap());
        let raw = file.into_raw_fd();
        // SAFETY: ownership was released by `into_raw_fd`.
        let owned = unsafe { take_inherited(raw) }.unwrap();
        assert!(is_cloexec(&owned).unwrap());
    }
}
