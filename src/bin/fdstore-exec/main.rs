//! `fdstore-exec`: the `ExecStart=` wrapper that hands listeners over between
//! generations of a program.
//!
//! This file holds only the command line; the work is in the `fdstore`
//! library.

use clap::Parser;

/// Run a network program under systemd so that `systemctl reload` replaces it
/// with a fresh process without refusing, resetting or stalling a connection.
#[derive(Debug, Parser)]
#[command(name = "fdstore-exec", version)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!(
        "fdstore-exec: the hand-over is not implemented in this version yet; only --help and --version work"
    );
    std::process::exit(69); // EX_UNAVAILABLE
}
