//! # fdstore: zero-downtime reloads for systemd services
//!
//! The building blocks that fdstore-exec is made of, for Rust services that
//! want them in-process:
//!
//! - [`ListenFds`]: receive descriptors passed with `LISTEN_FDS`,
//!   `LISTEN_FDNAMES` and `LISTEN_PID` (socket units, the fd store, or the
//!   previous generation), and look them up by name as typed sockets.
//! - [`Notifier`]: tell the service manager about readiness, status, reloads and
//!   the main process, and put descriptors into the unit's fd store.
//! - [`ListenerSpec`]: describe a listener as `NAME=KIND:ADDRESS[,OPTION]...` and
//!   create it.
//! - [`Upgrader`]: in-process graceful upgrades, the hand-over fdstore-exec
//!   does for wrapped programs done by the service itself (listeners by
//!   name, readiness, `fdstore-exec reload` / SIGHUP / a call to upgrade,
//!   and a [`Drain`] handle). With the `tokio` feature it also returns tokio
//!   sockets.
//! - `Upgrader::ready_async` and `Upgrader::upgrade_async` (feature
//!   `tokio`): the same for async code; the upgrader is cheap to clone.
//! - `serve` (features `hyper`, `axum`): serve a hyper service or an axum
//!   `Router` on fdstore listeners and drain as `fdstore(7)` prescribes, in
//!   one call (see `examples/axum.rs`).
//! - [`reload()`] and [`client`]: the `fdstore-exec reload` client in the
//!   library, so that a service is its own `ExecReload=` command.
//!
//! ```no_run
//! use fdstore::{FdPoll, ListenFds, ListenerSpec, Notifier, Notification, UnsetEnv};
//! use std::os::fd::AsFd;
//!
//! let notifier = Notifier::from_env()?;
//! let mut fds = ListenFds::from_env(UnsetEnv::Yes)?;
//! // Inherited from systemd if it passed one named "web", created otherwise
//! // and put into the fd store so it survives restarts.
//! let web = if fds.contains("web") {
//!     fds.tcp_listener("web")?
//! } else {
//!     let spec: ListenerSpec = "web=tcp:[::]:8080".parse()?;
//!     let fd = spec.bind()?;
//!     notifier.store_fds("web", &[fd.as_fd()], FdPoll::Watch)?;
//!     std::net::TcpListener::from(fd.into_fd())
//! };
//! notifier.notify(&[Notification::Ready, Notification::Status("serving")])?;
//! # drop(web);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]
// `unsafe` lives in src/sys/ only (allowed there), wrapped in safe functions.
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod bind;
pub mod client;
mod duration;
// The supervisor behind the `fdstore-exec` command: public for the binary and
// the integration tests only, not part of the library's API.
#[doc(hidden)]
pub mod exec;
mod fd_store;
mod kind;
mod listen;
mod name;
mod notify;
// The wire protocol of fdstore(7) that fdstore-exec and the library share:
// public for the binary and the integration tests only, not part of the
// library's API.
#[doc(hidden)]
pub mod protocol;
mod reload;
mod signal;
mod spec;
#[allow(unsafe_code)]
mod sys;
mod upgrade;

#[cfg(test)]
mod proptests;
#[cfg(feature = "hyper")]
#[cfg_attr(docsrs, doc(cfg(feature = "hyper")))]
pub mod serve;

pub use bind::{BindError, DEFAULT_BACKLOG};
pub use client::{reload, reload_status};
pub use duration::parse_duration;
pub use kind::{FdKind, WrongKind};
pub use listen::{ListenError, ListenFds, NamedFd, UnsetEnv, LISTEN_FDS_START, UNKNOWN_NAME};
pub use name::{check_fd_name, FD_NAME_MAX};
pub use notify::{
    monotonic_usec, Delivery, FdPoll, Notification, Notifier, NotifyError, MAX_FDS_PER_MESSAGE,
};
pub use protocol::AtMaxGenerations;
pub use signal::parse_signal;
pub use spec::{Endpoint, ListenerSpec, Options, SpecError, Transport};
pub use upgrade::{
    Drain, DrainNotice, DrainReason, Notified, UpgradeError, UpgradeErrorKind, UpgradeOptions,
    Upgraded, Upgrader,
};
