//! Which listeners a generation has: received ones, created ones, and ones
//! that were removed from the configuration.

use std::collections::{HashMap, HashSet};
use tracing::{info, warn};

use super::config::{fail, ExecError};
use super::limits::{ensure_descriptor_room, needed_for};
use super::listen_file::read_listen_file;
use crate::fd_store::{fd_store_too_small, store};
use crate::kind::FdKind;
use crate::listen::{ListenFds, NamedFd};
use crate::notify::Notifier;
use crate::protocol::sysexits;
use crate::spec::ListenerSpec;

/// The listeners of one generation.
#[derive(Debug, Default)]
pub(crate) struct ListenerSet {
    /// What the program gets, in order.
    pub(crate) active: Vec<NamedFd>,
    /// Names created from specs (`--listen`, `--listen-file`), which the
    /// next generation may retire.
    pub(crate) managed: Vec<String>,
    /// Names created by this generation that are not yet in the fd store
    /// (a new generation may store only once it is the main process).
    pub(crate) unstored: Vec<String>,
    /// Listeners the configuration no longer names: kept open until this
    /// generation is the main process, then closed and removed from the fd
    /// store (only the main process may remove them).
    pub(crate) retired: Vec<NamedFd>,
}

/// All specs: `--listen` ones, then the listener file's. Duplicate names are
/// an error.
pub(crate) fn all_specs(
    listen: &[ListenerSpec],
    listen_file: Option<&std::path::Path>,
) -> Result<Vec<ListenerSpec>, ExecError> {
    let mut specs = listen.to_vec();
    if let Some(path) = listen_file {
        specs.extend(read_listen_file(path).map_err(|e| fail(sysexits::USAGE, e))?);
    }
    // A set, not a scan per spec: a listener file may name thousands.
    let mut seen = HashSet::with_capacity(specs.len());
    for spec in &specs {
        if !seen.insert(spec.name()) {
            return Err(fail(
                sysexits::USAGE,
                format!(
                    "the listener name {:?} is given twice (in --listen or the listener file); give every listener its own name",
                    spec.name()
                ),
            ));
        }
    }
    Ok(specs)
}

/// Sorts the descriptors `received` through `LISTEN_FDS` and creates the
/// listeners in `specs` that were not passed.
///
/// `previously_managed` lists the names the previous generation created from
/// specs (empty for the first generation). `is_main` says whether new
/// listeners may be put into the fd store at once.
pub(crate) fn gather(
    specs: &[ListenerSpec],
    received: ListenFds,
    previously_managed: &[String],
    is_main: bool,
    notifier: &Notifier,
) -> Result<ListenerSet, ExecError> {
    check_fd_store_room(specs, notifier)?;
    // Room for the received listeners and those still to be created.
    ensure_descriptor_room(needed_for(received.len() + specs.len()))?;
    let mut set = ListenerSet {
        managed: specs.iter().map(|s| s.name().to_owned()).collect(),
        ..ListenerSet::default()
    };
    // Lookups by name, each once per listener: with thousands of listeners,
    // scanning the specs for every descriptor (and in every comparison of
    // the sort) cost tens of milliseconds per reload.
    let positions = spec_positions(specs);
    let previously_managed: HashSet<&str> = previously_managed.iter().map(String::as_str).collect();
    let mut received_names = Vec::with_capacity(received.len());
    for fd in received {
        let spec = positions.get(fd.name()).map(|&i| &specs[i]);
        match spec {
            Some(spec) if is_main && no_longer_listening(&fd) => {
                // A program shut it down (shutdown(2)) while draining: the
                // socket is dead for everyone. The main process may replace
                // it: out of the fd store, and created again below.
                warn!(
                    name = fd.name(),
                    "the listener {:?} from the fd store no longer listens (a program shut it down); creating {spec} again",
                    fd.name()
                );
                if let Err(e) = notifier.remove_fds(fd.name()) {
                    warn!(
                        name = fd.name(),
                        "removing the dead listener from the fd store: {e}"
                    );
                }
                continue;
            }
            Some(spec) => {
                // Set, never cleared: the flag is shared with the other
                // generations, and a draining program may rely on it.
                if spec.options().nonblocking {
                    if let Err(e) = spec.make_nonblocking(&fd) {
                        warn!(name = fd.name(), "{e}");
                    }
                }
                if let Some(problem) = spec.mismatch(&fd) {
                    if !is_main {
                        return Err(fail(
                            sysexits::USAGE,
                            format!(
                                "the listener {:?} cannot become {spec}: {problem}. A listener keeps its address across a reload; give the new address a new name (the old one is closed after the reload), or restart the unit",
                                fd.name()
                            ),
                        ));
                    }
                    warn!(
                        name = fd.name(),
                        "the descriptor systemd passed as {:?} does not match --listen {spec}: {problem}; using the descriptor",
                        fd.name()
                    );
                }
            }
            None if previously_managed.contains(fd.name()) => {
                info!(
                    name = fd.name(),
                    "listener removed from the configuration; it is closed and removed from the fd store once this generation is the main process"
                );
                set.retired.push(fd);
                continue;
            }
            None => {}
        }
        received_names.push(fd.name().to_owned());
        set.active.push(fd);
    }
    log_received(&received_names);
    let have: HashSet<String> = received_names.into_iter().collect();
    for spec in specs {
        if have.contains(spec.name()) {
            continue;
        }
        let fd = spec
            .bind()
            .map_err(|e| fail(sysexits::UNAVAILABLE, e.to_string()))?;
        if is_main {
            store(notifier, &fd);
        } else {
            info!(listener = %spec, "created listener; it goes into the fd store once this generation is the main process");
            set.unstored.push(spec.name().to_owned());
        }
        set.active.push(fd);
    }
    put_in_order(&mut set.active, &positions);
    Ok(set)
}

/// The most names one journal entry lists (the entry stays small however
/// many listeners a unit has).
const NAMES_LOGGED: usize = 16;

/// One journal entry for all received listeners, not one each: a thousand
/// entries per reload cost the journal (and the hand-over, which waits on
/// it) far more than the descriptors themselves, and can run into
/// journald's rate limit, which then drops the entries that matter.
fn log_received(names: &[String]) {
    if names.is_empty() {
        return;
    }
    let list = names_in_brief(names);
    info!(count = names.len(), names = %list, "received {} listener(s): {list}", names.len());
}

/// The first [`NAMES_LOGGED`] names, then how many more.
pub(crate) fn names_in_brief<S: AsRef<str>>(names: &[S]) -> String {
    let shown = names
        .iter()
        .take(NAMES_LOGGED)
        .map(AsRef::as_ref)
        .collect::<Vec<&str>>()
        .join(", ");
    match names.len().saturating_sub(NAMES_LOGGED) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// Each spec's position by name.
fn spec_positions(specs: &[ListenerSpec]) -> HashMap<&str, usize> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name(), i))
        .collect()
}

/// Puts the listeners into the one order the program sees in every
/// generation, whatever order systemd passed them in (it hands the fd store
/// back in an order of its own after a restart): first the names of `specs`
/// in their order (`--listen`, then the listener file), then every other
/// name (socket units, fd-store entries) sorted by name. Descriptors sharing
/// a name (a socket unit with several addresses) keep systemd's order, which
/// is the unit's. Programs that take listeners by number rely on this.
fn put_in_order(active: &mut [NamedFd], positions: &HashMap<&str, usize>) {
    // A stable sort: descriptors sharing a name keep systemd's order.
    active.sort_by(|a, b| order_key(a.name(), positions).cmp(&order_key(b.name(), positions)));
}

/// Where a name goes: spec names by position (`positions`, from
/// [`spec_positions`]), then the rest by name.
fn order_key<'a>(name: &'a str, positions: &HashMap<&str, usize>) -> (usize, &'a str) {
    match positions.get(name) {
        Some(&i) => (i, ""),
        None => (positions.len(), name),
    }
}

/// Whether a descriptor that should be a listener is a stream socket that no
/// longer listens: `shutdown(2)` on a listening socket ends listening for
/// every process that shares it (`SO_ACCEPTCONN` reads 0 from then on).
pub(crate) fn no_longer_listening(fd: &NamedFd) -> bool {
    // Nearly every listener still listens, and one question says so; the
    // kind (four or five) is asked of the rest. A new main process checks
    // every listener after each reload.
    if crate::sys::socket::is_listening(fd).unwrap_or(false) {
        return false;
    }
    matches!(
        fd.kind(),
        Ok(FdKind::TcpStream | FdKind::UnixStream | FdKind::UnixSeqpacket)
    )
}

/// The names of `listeners` that no longer listen (see
/// [`no_longer_listening`]).
pub(crate) fn dead_listeners(listeners: &[NamedFd]) -> Vec<&str> {
    listeners
        .iter()
        .filter(|fd| no_longer_listening(fd))
        .map(NamedFd::name)
        .collect()
}

/// Fails when the manager said (`$FDSTORE`, systemd 254+) that the unit's fd
/// store cannot hold every listener created from `specs`: they would not
/// survive a crash or restart. Older managers do not say; they drop what
/// does not fit and log "Too many file descriptors stored".
fn check_fd_store_room(specs: &[ListenerSpec], notifier: &Notifier) -> Result<(), ExecError> {
    match notifier.fd_store_max() {
        Some(max) if max < specs.len() => {
            let names: Vec<&str> = specs.iter().map(|s| s.name()).collect();
            Err(fail(sysexits::CONFIG, fd_store_too_small(max, &names)))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::{
        dead_listeners, fd_store_too_small, names_in_brief, no_longer_listening, order_key,
        spec_positions,
    };
    use crate::listen::NamedFd;
    use crate::spec::ListenerSpec;

    #[test]
    fn a_shut_down_listener_is_dead_for_every_copy() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let copy = NamedFd::new("web", listener.try_clone().unwrap().into());
        let other = NamedFd::new(
            "api",
            std::net::TcpListener::bind("127.0.0.1:0").unwrap().into(),
        );
        assert!(!no_longer_listening(&copy));
        rustix::net::shutdown(&listener, rustix::net::Shutdown::Both).unwrap();
        assert!(no_longer_listening(&copy));
        assert_eq!(dead_listeners(&[copy, other]), ["web"]);
    }

    #[test]
    fn specs_come_first_in_their_order_then_other_names_sorted() {
        let specs: Vec<ListenerSpec> = ["beta=tcp:127.0.0.1:1", "alpha=tcp:127.0.0.1:2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let positions = spec_positions(&specs);
        let mut names = vec!["zeta", "alpha", "gamma", "beta", "zeta"];
        names.sort_by_key(|n| order_key(n, &positions));
        assert_eq!(names, ["beta", "alpha", "gamma", "zeta", "zeta"]);
    }

    #[test]
    fn received_listeners_are_logged_in_one_bounded_entry() {
        let few: Vec<String> = ["http", "admin"].map(String::from).to_vec();
        assert_eq!(names_in_brief(&few), "http, admin");
        let many: Vec<String> = (0..1000).map(|i| format!("l{i}")).collect();
        let text = names_in_brief(&many);
        assert!(text.starts_with("l0, l1, "), "{text}");
        assert!(text.ends_with("l15 and 984 more"), "{text}");
        assert!(!text.contains("l16"), "{text}");
    }

    #[test]
    fn too_small_fd_store_names_the_setting_the_listeners_and_the_fix() {
        let text = fd_store_too_small(1, &["web", "admin"]);
        assert!(
            text.starts_with("FileDescriptorStoreMax=1 is too small"),
            "{text}"
        );
        assert!(text.contains("(web, admin)"), "{text}");
        assert!(
            text.contains("set FileDescriptorStoreMax=2 or more"),
            "{text}"
        );
    }
}
