//! The one wait for readable descriptors.
//!
//! See [`poll(2)`](https://man7.org/linux/man-pages/man2/poll.2.html).

use std::io;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags};

/// Waits until one of `fds` is readable (or at end of file, or in error),
/// at most `timeout` (`None`: without limit); returns which are. An
/// interrupted wait (`EINTR`) returns none readable.
pub(crate) fn wait_readable(
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
) -> io::Result<Vec<bool>> {
    let mut polled: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    // A timeout too large for a timespec is no limit.
    let timeout = timeout.and_then(|t| rustix::time::Timespec::try_from(t).ok());
    match poll(&mut polled, timeout.as_ref()) {
        Ok(_) => Ok(polled.iter().map(|p| !p.revents().is_empty()).collect()),
        Err(rustix::io::Errno::INTR) => Ok(vec![false; fds.len()]),
        Err(e) => Err(e.into()),
    }
}

/// Whether `fd` is readable now, without waiting.
pub(crate) fn readable_now(fd: BorrowedFd<'_>) -> bool {
    wait_readable(&[fd], Some(Duration::ZERO)).is_ok_and(|r| r[0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_pipe_is_readable_once_written_and_at_its_end() {
        // Close-on-exec: other tests of this process spawn programs, and a
        // child holding the write end would keep the pipe from its end.
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        assert!(!readable_now(read.as_fd()));
        let both = [read.as_fd(), write.as_fd()];
        assert_eq!(
            wait_readable(&both, Some(Duration::from_millis(1))).unwrap(),
            [false, false]
        );
        rustix::io::write(&write, b"x").unwrap();
        assert_eq!(wait_readable(&both, None).unwrap(), [true, false]);
        let mut buf = [0u8; 1];
        rustix::io::read(&read, &mut buf).unwrap();
        drop(write);
        // Without a limit: a child forked by another test between our pipe()
        // and its exec holds the write end for that short while.
        assert_eq!(wait_readable(&[read.as_fd()], None).unwrap(), [true]);
    }
}
