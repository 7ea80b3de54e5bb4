//! The thin system-call layer: the only place in the crate with `unsafe`.
//!
//! Everything above this module works with io-safe types (`OwnedFd`,
//! `BorrowedFd`); this module turns the raw descriptor numbers that the
//! `LISTEN_FDS` protocol hands us into owned descriptors, and answers
//! questions about what a descriptor is.

pub(crate) mod fd;
pub(crate) mod path;
pub(crate) mod pidfd;
pub(crate) mod poll;
pub(crate) mod proc;
pub(crate) mod process_group;
pub(crate) mod signals;
pub(crate) mod sock_diag;
pub(crate) mod socket;
pub(crate) mod spawn;
