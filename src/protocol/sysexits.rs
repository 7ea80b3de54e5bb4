//! sysexits(3) statuses: the exit statuses of fdstore-exec and of the
//! library's reload client, and the statuses that refusals on the control
//! socket carry (fdstore(7) EXIT STATUS).

/// Bad command line or configuration.
pub const USAGE: i32 = 64;
/// A needed resource (a port, a path, the new generation) is unavailable.
pub const UNAVAILABLE: i32 = 69;
/// An operating-system error.
pub const OSERR: i32 = 71;
/// Busy: try again later (a reload in progress).
pub const TEMPFAIL: i32 = 75;
/// The other side broke the protocol (not a request; not our socket).
pub const PROTOCOL: i32 = 76;
/// Not allowed.
pub const NOPERM: i32 = 77;
/// Configuration of the environment is wrong.
pub const CONFIG: i32 = 78;

/// The program could not be executed (as a shell reports it).
pub const NOT_EXECUTABLE: i32 = 126;
/// The program was not found (as a shell reports it).
pub const NOT_FOUND: i32 = 127;
