//! Putting created listeners into the unit's fd store: shared by
//! fdstore-exec and the library's [`Upgrader`](crate::Upgrader).

use std::os::fd::AsFd;

use tracing::{info, warn};

use crate::listen::NamedFd;
use crate::notify::{FdPoll, Notifier};

/// The log line for a listener sent to a store the manager did not describe.
pub(crate) const FD_STORE_UNKNOWN: &str = "listener sent to the fd store, which may keep nothing: the manager did not export $FDSTORE. On systemd 254 and later that means the unit has no fd store (FileDescriptorStoreMax=0) and the listener will not survive a crash or restart; before 254 the manager never says, so it cannot be known. Set FileDescriptorStoreMax= to at least the number of listeners in the unit's [Service] section";

/// The error text for a fd store smaller than the listeners that go into it.
pub(crate) fn fd_store_too_small(max: usize, names: &[&str]) -> String {
    let n = names.len();
    format!(
        "FileDescriptorStoreMax={max} is too small: the {n} listener(s) created from specs ({}) are kept in the unit's fd store so that they outlive a crash or restart; set FileDescriptorStoreMax={n} or more in the unit's [Service] section (plus what the program stores itself)",
        names.join(", ")
    )
}

/// Puts a listener into the fd store, logging the outcome: what is known
/// about whether the manager keeps it (the manager answers nothing).
pub(crate) fn store(notifier: &Notifier, fd: &NamedFd) {
    match notifier.store_fds(fd.name(), &[fd.as_fd()], FdPoll::Watch) {
        Ok(_) => match notifier.fd_store_max() {
            Some(max) => info!(
                name = fd.name(),
                "listener sent to the fd store (FileDescriptorStoreMax={max})"
            ),
            None => warn!(name = fd.name(), "{}", FD_STORE_UNKNOWN),
        },
        Err(e) => warn!(
            name = fd.name(),
            "could not put the listener into the fd store ({e}); it will not survive a restart"
        ),
    }
}
