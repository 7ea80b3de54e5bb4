//! Signal dispositions. For the library's upgrader: SIGHUP (reload, as
//! `Type=notify-reload` sends it), SIGTERM and SIGINT (stop) turned into
//! bytes on a pipe that the upgrade thread polls. For fdstore-exec: the
//! default disposition back, to end the way its program ended.
//!
//! See [`sigaction(2)`](https://man7.org/linux/man-pages/man2/sigaction.2.html).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use rustix::pipe::{pipe_with, PipeFlags};

/// The pipe's write end, for the handler (-1: none).
static WRITE_END: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(signal: libc::c_int) {
    let fd = WRITE_END.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = signal as u8;
        // SAFETY: write is async-signal-safe; the buffer is one byte on our
        // stack; a full pipe (EAGAIN) just drops a repeated signal. errno is
        // saved and restored so the interrupted code does not see ours.
        unsafe {
            let saved = *libc::__errno_location();
            libc::write(fd, (&byte as *const u8).cast(), 1);
            *libc::__errno_location() = saved;
        }
    }
}

/// The read end of the signal pipe. Installs the handlers once per process:
/// SIGTERM and SIGINT always, SIGHUP only `under_manager` (a service
/// manager sends it to reload; outside one it means the terminal closed, and
/// keeps its default, which ends the program).
pub(crate) fn install(under_manager: bool) -> io::Result<OwnedFd> {
    if WRITE_END.load(Ordering::SeqCst) >= 0 {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the signal handlers are already installed: create one Upgrader per process",
        ));
    }
    let (read_end, write_end) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    // The write end lives as long as the process: the handler may run at any
    // time.
    WRITE_END.store(write_end.as_raw_fd(), Ordering::SeqCst);
    std::mem::forget(write_end);
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    let hup = under_manager.then_some(Signal::SIGHUP);
    for signal in [Signal::SIGTERM, Signal::SIGINT].into_iter().chain(hup) {
        // SAFETY: the handler only makes async-signal-safe calls (an atomic
        // load, write, errno) and touches no other state.
        unsafe { sigaction(signal, &action) }.map_err(io::Error::from)?;
    }
    Ok(read_end)
}

/// Restores the default disposition of `signal` (no handler of ours runs
/// for it any more).
pub(crate) fn restore_default(signal: Signal) -> io::Result<()> {
    // SAFETY: the default disposition installs no handler code.
    unsafe { nix::sys::signal::signal(signal, SigHandler::SigDfl) }
        .map(drop)
        .map_err(io::Error::from)
}

/// The signals that arrived, in order.
pub(crate) fn read(read_end: &OwnedFd) -> Vec<Signal> {
    let mut buf = [0u8; 64];
    let mut signals = Vec::new();
    while let Ok(n) = rustix::io::read(read_end, &mut buf) {
        if n == 0 {
            break;
        }
        signals.extend(
            buf[..n]
                .iter()
                .filter_map(|&b| Signal::try_from(i32::from(b)).ok()),
        );
    }
    signals
}
