//! Room for descriptors: many listeners need more than the default soft
//! limit of 1,024 open files.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use tracing::info;

use super::config::{fail, ExecError};
use crate::protocol::sysexits;

/// Descriptors a generation needs for `listeners` listeners: each is held
/// once and duplicated once while the program starts, plus stdio and the
/// wrapper's own sockets.
pub(crate) fn needed_for(listeners: usize) -> u64 {
    2 * listeners as u64 + 64
}

/// Raises the soft `RLIMIT_NOFILE` to `needed` when it is lower (the program
/// inherits it, as it must to receive that many listeners). Fails, naming
/// `LimitNOFILE=`, when the hard limit is lower.
pub(crate) fn ensure_descriptor_room(needed: u64) -> Result<(), ExecError> {
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    if soft >= needed {
        return Ok(());
    }
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if hard < needed {
        return Err(fail(
            sysexits::CONFIG,
            format!(
                "these listeners need about {needed} open descriptors but the hard limit is {hard}; raise LimitNOFILE= in the unit"
            ),
        ));
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(needed),
            maximum: limit.maximum,
        },
    )
    .map_err(|e| {
        fail(
            sysexits::OSERR,
            format!("raising RLIMIT_NOFILE to {needed}: {e}"),
        )
    })?;
    info!(
        from = soft,
        to = needed,
        "raised the soft open-files limit for the listeners"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thousand_listeners_need_more_than_the_default_soft_limit() {
        assert!(needed_for(1000) > 1024);
        assert!(needed_for(10) < 1024);
    }

    #[test]
    fn a_limit_already_high_enough_is_left_alone() {
        let before = getrlimit(Resource::Nofile);
        ensure_descriptor_room(1).unwrap();
        assert_eq!(getrlimit(Resource::Nofile).current, before.current);
    }
}
