//! The bound on generations alive at once, and what a reload does at the
//! bound: one rule for fdstore-exec and the library's upgrader.
//!
//! A generation that handed over drains: it finishes its connections and
//! exits, at its drain timeout at the latest. Clients that keep idle
//! keep-alive connections open (browsers, connection pools) hold every
//! drained generation until that timeout, so reloads in quick succession
//! would pile generations up without a bound, each with its program's
//! memory. The main process therefore keeps a channel to every older
//! generation still draining, oldest first: the hand-over channel to its
//! predecessor, plus those its predecessor had, which each hand-over passes
//! on as descriptors right after the new generation's own channel (see
//! [`Inheritance::older`]). Only the draining process holds the other end
//! of such a channel, so it reads end-of-file once that process is gone,
//! however it ended: a crash or a kill is counted right. A socket pair's
//! peer credentials name the process that created it, the older generation
//! itself, so each holder also opens a pidfd of it (checking the channel is
//! still open afterwards, so the pid was not reused), and a generation
//! counts as gone only once that pidfd says it has exited: its descriptors
//! are closed a moment before the process is gone.
//!
//! Before a reload starts a new generation, `OlderGenerations::make_room`
//! applies the bound: at most [`GenerationBound::max`] generations alive,
//! counting the new one, the serving one and the draining ones. At the bound
//! the reload is refused as busy ([`AtMaxGenerations::Refuse`]), or the
//! oldest draining generations are told to end now
//! ([`AtMaxGenerations::KillOldest`]: their drain signal was sent long ago;
//! each kills what is left of it at once, as at its drain timeout, and says
//! so in the journal) and the reload waits until they are gone.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::str::FromStr;
use std::time::{Duration, Instant};

use rustix::process::{pidfd_open, PidfdFlags};
use tracing::warn;

use super::handover::{Channel, Inheritance, Message};

/// The default bound: the serving generation, a new one, and two still
/// draining.
pub const DEFAULT_MAX_GENERATIONS: u32 = 4;

/// A hand-over needs two generations alive at once.
pub const MIN_GENERATIONS: u32 = 2;

/// How long a reload waits for the older generations it told to end.
pub const END_TIMEOUT: Duration = Duration::from_secs(5);

/// What a reload does when starting a new generation would exceed the bound
/// (`--at-max-generations`, [`UpgradeOptions::at_max_generations`](crate::UpgradeOptions::at_max_generations)).
///
/// ```
/// use fdstore::AtMaxGenerations;
/// assert_eq!("kill-oldest".parse(), Ok(AtMaxGenerations::KillOldest));
/// assert_eq!(AtMaxGenerations::Refuse.to_string(), "refuse");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtMaxGenerations {
    /// Refuse the reload as busy (`fdstore-exec reload` exits 75), naming
    /// the generations alive; the serving one keeps serving.
    Refuse,
    /// End the oldest draining generations early (what is left of each is
    /// killed, as at its drain timeout, with a journal line), then reload.
    KillOldest,
}

impl AtMaxGenerations {
    /// The values `--at-max-generations` takes.
    pub const VALUES: [&'static str; 2] = ["refuse", "kill-oldest"];
}

impl FromStr for AtMaxGenerations {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "refuse" => Ok(AtMaxGenerations::Refuse),
            "kill-oldest" => Ok(AtMaxGenerations::KillOldest),
            _ => Err(format!(
                "{s:?} is not a choice at the bound on generations; use refuse or kill-oldest"
            )),
        }
    }
}

impl fmt::Display for AtMaxGenerations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AtMaxGenerations::Refuse => "refuse",
            AtMaxGenerations::KillOldest => "kill-oldest",
        })
    }
}

/// At most this many generations alive at once, and what a reload does at
/// the bound.
///
/// ```
/// use fdstore::protocol::GenerationBound;
/// use fdstore::AtMaxGenerations;
/// let bound = GenerationBound::new(3, AtMaxGenerations::Refuse)?;
/// assert_eq!(bound.max(), 3);
/// assert!(GenerationBound::new(1, AtMaxGenerations::Refuse).is_err());
/// # Ok::<(), String>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerationBound {
    max: u32,
    at_max: AtMaxGenerations,
}

impl Default for GenerationBound {
    fn default() -> Self {
        GenerationBound {
            max: DEFAULT_MAX_GENERATIONS,
            at_max: AtMaxGenerations::KillOldest,
        }
    }
}

impl GenerationBound {
    /// The bound; fails, naming the fix, below [`MIN_GENERATIONS`].
    pub fn new(max: u32, at_max: AtMaxGenerations) -> Result<GenerationBound, String> {
        check_max(max)?;
        Ok(GenerationBound { max, at_max })
    }

    /// How many generations may be alive at once, the starting one included.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// What a reload does at the bound.
    pub fn at_max(&self) -> AtMaxGenerations {
        self.at_max
    }
}

/// Fails for a bound that would not allow a hand-over.
pub fn check_max(max: u32) -> Result<(), String> {
    if max < MIN_GENERATIONS {
        return Err(format!(
            "max-generations {max} leaves no room for a hand-over, which needs the serving generation and the new one: use {MIN_GENERATIONS} or more"
        ));
    }
    Ok(())
}

/// An older generation that was draining when last looked at.
#[derive(Debug)]
struct Older {
    generation: u64,
    channel: Channel,
    /// A pidfd of its process, when it could be opened safely.
    pidfd: Option<OwnedFd>,
}

impl Older {
    fn new(generation: u64, channel: Channel) -> Older {
        let pidfd = rustix::net::sockopt::socket_peercred(&channel)
            .ok()
            // Never this process itself (a pair it made: only in tests).
            .filter(|cred| cred.pid != rustix::process::getpid())
            .and_then(|cred| pidfd_open(cred.pid, PidfdFlags::empty()).ok())
            // Opened while the channel was open: the pid was still the
            // generation's, not a reused one.
            .filter(|_| !closed(&channel));
        Older {
            generation,
            channel,
            pidfd,
        }
    }

    /// Whether its process is gone: it exited (its pidfd says so), or, with
    /// no pidfd, its end of the channel is closed.
    fn gone(&self) -> bool {
        match &self.pidfd {
            Some(pidfd) => crate::sys::poll::readable_now(pidfd.as_fd()),
            None => closed(&self.channel),
        }
    }

    /// What becomes readable when it is gone.
    fn watch(&self) -> BorrowedFd<'_> {
        match &self.pidfd {
            Some(pidfd) => pidfd.as_fd(),
            None => self.channel.as_fd(),
        }
    }
}

/// The older generations still draining, seen from the main process (or
/// from a new generation, which inherited them): oldest first.
#[derive(Debug, Default)]
pub(crate) struct OlderGenerations {
    list: Vec<Older>,
}

impl OlderGenerations {
    /// Takes the channels a new generation inherited after its hand-over
    /// channel (see [`Inheritance::older`]).
    pub(crate) fn inherit(inheritance: &Inheritance) -> Result<OlderGenerations, String> {
        let mut list = Vec::with_capacity(inheritance.older.len());
        for (i, &generation) in inheritance.older.iter().enumerate() {
            let raw = inheritance.fd + 1 + i as i32;
            // The previous generation placed these channels right after the
            // hand-over channel on purpose, one per generation listed.
            let fd = crate::sys::fd::take_inherited_once(raw)
                .map_err(|e| format!("the channel to generation {generation} (fd {raw}): {e}"))?;
            list.push(Older::new(generation, Channel::from_fd(fd)));
        }
        Ok(OlderGenerations { list })
    }

    /// Adds the newest draining generation: the predecessor, once this
    /// process is the main one (`channel` is a duplicate of the hand-over
    /// channel to it).
    pub(crate) fn push(&mut self, generation: u64, channel: Channel) {
        self.list.push(Older::new(generation, channel));
    }

    /// Forgets the generations that are gone, closing what was held of
    /// them (their channel and pidfd); returns whether there were any.
    pub(crate) fn prune(&mut self) -> bool {
        let before = self.list.len();
        self.list.retain(|o| !o.gone());
        self.list.len() != before
    }

    /// What becomes readable when one of them is gone (in their order): a
    /// main process polls these to let go of a generation as soon as it
    /// ends, rather than at the next reload.
    pub(crate) fn watches(&self) -> Vec<BorrowedFd<'_>> {
        self.list.iter().map(Older::watch).collect()
    }

    /// How many older generations are still alive.
    pub(crate) fn alive(&self) -> usize {
        self.list.iter().filter(|o| !o.gone()).count()
    }

    /// For status texts: `"; 2 older generations draining"`, or nothing.
    pub(crate) fn status_suffix(&self) -> String {
        match self.alive() {
            0 => String::new(),
            1 => "; 1 older generation draining".into(),
            n => format!("; {n} older generations draining"),
        }
    }

    /// Their generation numbers, oldest first, for [`Inheritance::older`].
    pub(crate) fn generations(&self) -> Vec<u64> {
        self.list.iter().map(|o| o.generation).collect()
    }

    /// Their channels, in the order of [`generations`](Self::generations),
    /// to pass on to the next generation.
    pub(crate) fn channels(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.list.iter().map(|o| o.channel.as_fd())
    }

    /// Applies `bound` before generation `serving` starts a new one: `Ok`
    /// when there is room (after ending the oldest ones, with
    /// [`AtMaxGenerations::KillOldest`]), else the reason to refuse the
    /// reload as busy.
    pub(crate) fn make_room(&mut self, bound: GenerationBound, serving: u64) -> Result<(), String> {
        self.make_room_within(bound, serving, END_TIMEOUT)
    }

    fn make_room_within(
        &mut self,
        bound: GenerationBound,
        serving: u64,
        timeout: Duration,
    ) -> Result<(), String> {
        let Some(making) = self.begin_room(bound, serving, timeout, Instant::now())? else {
            return Ok(());
        };
        loop {
            if let Some(made) = self.room_made(&making, Instant::now()) {
                return made;
            }
            let left = making.deadline.saturating_duration_since(Instant::now());
            let _ = crate::sys::poll::wait_readable(&self.ending(&making), Some(left));
        }
    }

    /// Applies `bound` before generation `serving` starts a new one, without
    /// waiting: `Ok(None)` when there is room, `Ok(Some(_))` when the oldest
    /// ones were told to end (with [`AtMaxGenerations::KillOldest`]) and have
    /// until `now + timeout` to be gone (see [`room_made`](Self::room_made)),
    /// else the reason to refuse the reload as busy.
    pub(crate) fn begin_room(
        &mut self,
        bound: GenerationBound,
        serving: u64,
        timeout: Duration,
        now: Instant,
    ) -> Result<Option<MakingRoom>, String> {
        self.prune();
        let max = bound.max as usize;
        // The serving generation, the draining ones and the new one.
        let excess = (self.list.len() + 2).saturating_sub(max);
        if excess == 0 {
            return Ok(None);
        }
        if bound.at_max == AtMaxGenerations::Refuse {
            return Err(format!(
                "{} generations are alive ({serving} serving, {} draining), the most max-generations {max} allows with a new one; \
                 try again once a draining generation has finished (by its drain timeout at the latest), \
                 or choose at-max-generations kill-oldest",
                self.list.len() + 1,
                list_generations(&self.generations()),
            ));
        }
        let ending: Vec<u64> = self.list[..excess].iter().map(|o| o.generation).collect();
        for older in &self.list[..excess] {
            warn!(
                "ending generation {} early: {} generations are alive ({serving} serving, {} draining), \
                 and max-generations {max} needs room for generation {} (at-max-generations kill-oldest)",
                older.generation,
                self.list.len() + 1,
                list_generations(&self.generations()),
                serving + 1
            );
            // A failed send means it is gone already.
            let _ = older.channel.send(&Message::End);
        }
        Ok(Some(MakingRoom {
            ending,
            deadline: now + timeout,
            timeout,
            max,
        }))
    }

    /// Whether the room `making` waits for is made at `now`: `Ok` once the
    /// generations told to end are gone, `Err` once its deadline passed,
    /// `None` while it waits.
    pub(crate) fn room_made(
        &mut self,
        making: &MakingRoom,
        now: Instant,
    ) -> Option<Result<(), String>> {
        self.prune();
        let late: Vec<u64> = self
            .generations()
            .into_iter()
            .filter(|g| making.ending.contains(g))
            .collect();
        if late.is_empty() {
            return Some(Ok(()));
        }
        (now >= making.deadline).then(|| {
            Err(format!(
                "{} did not end within {:?} of being told to, and max-generations {} leaves no room for another; try again",
                named_generations(&late),
                making.timeout,
                making.max
            ))
        })
    }

    /// What becomes readable when a generation `making` waits for is gone.
    pub(crate) fn ending(&self, making: &MakingRoom) -> Vec<BorrowedFd<'_>> {
        self.list
            .iter()
            .filter(|o| making.ending.contains(&o.generation))
            .map(|o| o.watch())
            .collect()
    }
}

/// Room being made within max-generations: the generations told to end,
/// and until when they may take (see [`OlderGenerations::begin_room`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MakingRoom {
    ending: Vec<u64>,
    /// When the reload is refused unless they are gone.
    pub(crate) deadline: Instant,
    timeout: Duration,
    max: usize,
}

/// Whether the other end of `channel` is closed. Draining generations send
/// nothing on it, so reading consumes nothing that matters.
fn closed(channel: &Channel) -> bool {
    loop {
        match channel.recv() {
            Ok(None) => return false,
            Ok(Some(None)) | Err(_) => return true,
            Ok(Some(Some(_))) => continue,
        }
    }
}

/// "generation 3" / "generations 2 and 3".
fn named_generations(generations: &[u64]) -> String {
    let noun = if generations.len() == 1 {
        "generation"
    } else {
        "generations"
    };
    format!("{noun} {}", list_generations(generations))
}

/// "3" / "2 and 3" / "2, 3 and 4" / "none".
fn list_generations(generations: &[u64]) -> String {
    match generations {
        [] => "none".into(),
        [one] => one.to_string(),
        [init @ .., last] => {
            let init: Vec<String> = init.iter().map(u64::to_string).collect();
            format!("{} and {last}", init.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn olders(n: u64) -> (OlderGenerations, Vec<Channel>) {
        let mut o = OlderGenerations::default();
        let mut far = Vec::new();
        for g in 1..=n {
            let (near, other) = Channel::pair().unwrap();
            o.push(g, near);
            far.push(other);
        }
        (o, far)
    }

    #[test]
    fn a_generation_that_ended_is_let_go_of_when_its_watch_says_so() {
        let (mut o, mut theirs) = olders(2);
        assert!(!o.prune(), "nothing ended yet");
        // The first one's end of the channel closes: it is gone.
        theirs.remove(0);
        let readable = crate::sys::poll::wait_readable(&o.watches(), None).unwrap();
        assert_eq!(readable, [true, false]);
        assert!(o.prune());
        assert_eq!(o.generations(), [2]);
        assert_eq!(o.watches().len(), 1);
        assert!(!o.prune());
    }

    #[test]
    fn below_the_bound_there_is_room() {
        let (mut o, _far) = olders(2);
        let bound = GenerationBound::new(4, AtMaxGenerations::Refuse).unwrap();
        assert_eq!(o.make_room(bound, 3), Ok(()));
        assert_eq!(o.alive(), 2);
    }

    #[test]
    fn at_the_bound_refuse_names_the_count_and_the_fix() {
        let (mut o, _far) = olders(2);
        let bound = GenerationBound::new(3, AtMaxGenerations::Refuse).unwrap();
        let e = o.make_room(bound, 3).unwrap_err();
        assert!(
            e.contains("3 generations are alive (3 serving, 1 and 2 draining)"),
            "{e}"
        );
        assert!(e.contains("kill-oldest"), "{e}");
        assert_eq!(o.alive(), 2);
    }

    #[test]
    fn generations_that_are_gone_do_not_count() {
        let (mut o, mut far) = olders(3);
        far.remove(0);
        far.remove(0);
        let bound = GenerationBound::new(3, AtMaxGenerations::Refuse).unwrap();
        assert_eq!(o.make_room(bound, 4), Ok(()));
        assert_eq!(o.generations(), [3]);
    }

    #[test]
    fn kill_oldest_tells_the_oldest_and_waits_for_them() {
        let (mut o, far) = olders(3);
        let bound = GenerationBound::new(3, AtMaxGenerations::KillOldest).unwrap();
        // Generations 1 and 2 end when told; 3 keeps draining.
        let mut far = far.into_iter();
        let enders: Vec<_> = far
            .by_ref()
            .take(2)
            .map(|c| {
                std::thread::spawn(move || loop {
                    let _ = crate::sys::poll::wait_readable(&[c.as_fd()], None);
                    if let Ok(Some(Some(Message::End))) = c.recv() {
                        return;
                    }
                })
            })
            .collect();
        let _third = far.next().unwrap();
        assert_eq!(o.make_room(bound, 4), Ok(()));
        assert_eq!(o.generations(), [3]);
        for e in enders {
            e.join().unwrap();
        }
    }

    #[test]
    fn kill_oldest_refuses_when_the_oldest_does_not_end() {
        let (mut o, _far) = olders(2);
        let bound = GenerationBound::new(2, AtMaxGenerations::KillOldest).unwrap();
        let e = o
            .make_room_within(bound, 3, Duration::from_millis(20))
            .unwrap_err();
        assert!(e.contains("generations 1 and 2 did not end"), "{e}");
    }

    #[test]
    fn making_room_without_waiting_reports_each_step() {
        let (mut o, mut far) = olders(3);
        let bound = GenerationBound::new(3, AtMaxGenerations::KillOldest).unwrap();
        let now = Instant::now();
        let timeout = Duration::from_secs(5);
        let making = o
            .begin_room(bound, 4, timeout, now)
            .unwrap()
            .expect("two generations must end");
        assert_eq!(making.deadline, now + timeout);
        // Both were told, and what says they are gone is watched.
        for c in &far[..2] {
            assert_eq!(c.recv().unwrap(), Some(Some(Message::End)));
        }
        assert_eq!(o.ending(&making).len(), 2);
        assert_eq!(o.room_made(&making, now), None);
        // Generation 1 ends; 2 does not before the deadline.
        far.remove(0);
        assert_eq!(o.room_made(&making, now), None);
        let late = o.room_made(&making, now + timeout).unwrap().unwrap_err();
        assert!(
            late.contains("generation 2 did not end within 5s"),
            "{late}"
        );
        far.remove(0);
        assert_eq!(o.room_made(&making, now), Some(Ok(())));
        assert_eq!(o.generations(), [3]);
        // Room now: nothing to wait for.
        assert_eq!(o.begin_room(bound, 4, timeout, now), Ok(None));
    }

    #[test]
    fn bounds_below_two_and_unknown_choices_are_refused() {
        assert!(GenerationBound::new(1, AtMaxGenerations::Refuse)
            .unwrap_err()
            .contains("use 2 or more"));
        assert!("kill".parse::<AtMaxGenerations>().is_err());
        for v in AtMaxGenerations::VALUES {
            assert_eq!(v.parse::<AtMaxGenerations>().unwrap().to_string(), v);
        }
    }
}
