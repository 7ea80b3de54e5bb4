//! The integration tests: one test binary, so that the harness in
//! `support/` compiles once. Each module was a test binary of its own
//! before; its tests now share one process with all the others (two at a
//! time by default), which is why nothing here changes the process's
//! environment, signal dispositions or working directory, the files and
//! sockets a test creates carry its module's name as well as the pid (and a
//! counter or the systemd version where one module has several), every
//! manager is the test's own (`support::Systemd::start`), ports come from one
//! allocator (`support::free_port`), and descriptors are close-on-exec (std's
//! default): a program one test spawns must not inherit another test's pipe
//! or socket.
//!
//! Run one module with `cargo test --all-features --test integration --
//! --test-threads=2 MODULE::` (for instance `faults::`).

// First, so that `on_each_systemd!` is in scope in the modules below.
#[macro_use]
mod support;

mod cli;
mod exec_generation;
mod exec_handover;
mod faults;
mod fd_store;
mod generated;
mod generations;
mod hardening;
mod libsystemd;
mod listener_order;
mod notify;
mod package_upgrade;
mod readiness;
mod security;
mod serve;
mod servers;
mod signals;
mod socket_activation;
mod systemd_versions;
mod units;
mod upgrade;
