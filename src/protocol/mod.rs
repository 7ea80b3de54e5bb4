//! The one definition of the wire protocol of `fdstore(7)` PROTOCOL, which
//! fdstore-exec and the library ([`Upgrader`](crate::Upgrader),
//! [`reload()`](crate::reload)) both speak: the control socket's requests,
//! replies and refusals ([`control`]), the private channel between two
//! generations and the environment that describes it ([`handover`]), the
//! bound on generations alive ([`generations`]) and the exit statuses
//! ([`sysexits`]). Nothing here depends on the `fdstore-exec` supervisor.

pub mod control;
pub mod generations;
pub mod handover;
pub mod sysexits;

pub use generations::{
    check_max as check_max_generations, AtMaxGenerations, GenerationBound, DEFAULT_MAX_GENERATIONS,
    END_TIMEOUT, MIN_GENERATIONS,
};
