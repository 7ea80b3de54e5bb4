//! The new generation's side of pausing the old one for a probe (see
//! [`crate::protocol::handover::Message::Pause`]): asked for, granted for a
//! time, released. The old side bounds and ends every pause whatever this
//! side does; this side only asks when a probe needs it and says when it
//! is done, so that the old program is stopped no longer than a probe takes.

use std::time::{Duration, Instant};

use crate::protocol::handover::Message;

/// How long an answer to `PAUSE` is awaited; without one the probes go on
/// unpaused.
const ANSWER_WAIT: Duration = Duration::from_secs(1);
/// A grant with less than this left is not used for a new probe: it would
/// end before the probe is accepted.
const LEAST_USEFUL: Duration = Duration::from_millis(2);

/// Where the pauses stand, for the probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PauseNow {
    /// No pause can be had: probe unpaused.
    Unavailable,
    /// One is asked for or may be: wait.
    Pending,
    /// The old program is stopped: probe now.
    Granted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Unavailable,
    Idle,
    Asked { since: Instant },
    Granted { until: Instant },
}

/// The pauses of one generation's readiness checks.
#[derive(Debug)]
pub(crate) struct Pauses {
    state: State,
    /// Messages for the old generation, sent by the event loop.
    outbox: Vec<Message>,
}

impl Pauses {
    /// No pauses: the first generation, or an old generation that does not
    /// take them.
    pub(crate) fn unavailable() -> Pauses {
        Pauses {
            state: State::Unavailable,
            outbox: Vec::new(),
        }
    }

    /// The old generation takes `PAUSE`.
    pub(crate) fn available() -> Pauses {
        Pauses {
            state: State::Idle,
            outbox: Vec::new(),
        }
    }

    /// Where the pauses stand at `now` (a grant that ran out, or an answer
    /// that never came, is seen here).
    pub(crate) fn now(&mut self, now: Instant) -> PauseNow {
        match self.state {
            State::Unavailable => PauseNow::Unavailable,
            State::Idle => PauseNow::Pending,
            State::Asked { since } if now >= since + ANSWER_WAIT => {
                self.state = State::Unavailable;
                PauseNow::Unavailable
            }
            State::Asked { .. } => PauseNow::Pending,
            State::Granted { until } if now >= until => {
                // The old side continued its program by itself.
                self.state = State::Idle;
                PauseNow::Pending
            }
            // Too little left for a probe: its end is awaited, then another
            // is asked for.
            State::Granted { until } if now + LEAST_USEFUL >= until => PauseNow::Pending,
            State::Granted { .. } => PauseNow::Granted,
        }
    }

    /// A probe waits for a pause: ask, unless asked or granted already.
    pub(crate) fn want(&mut self, now: Instant) {
        if self.state == State::Idle {
            self.outbox.push(Message::Pause);
            self.state = State::Asked { since: now };
        }
    }

    /// No probe needs the pause any more: let the old program go on.
    pub(crate) fn release(&mut self) {
        if let State::Granted { .. } = self.state {
            self.outbox.push(Message::Resume);
            self.state = State::Idle;
        }
    }

    /// The old generation's `PAUSED MS`, received at `now`: granted for
    /// `ms` (0: declined, and no more are asked for).
    pub(crate) fn on_paused(&mut self, ms: u64, now: Instant) {
        match self.state {
            State::Asked { .. } if ms > 0 => {
                self.state = State::Granted {
                    until: now + Duration::from_millis(ms),
                }
            }
            State::Asked { .. } => self.state = State::Unavailable,
            // Late (after ANSWER_WAIT) or unasked: it is not wanted.
            _ if ms > 0 => self.outbox.push(Message::Resume),
            _ => {}
        }
    }

    /// When [`Pauses::now`] changes by itself, after `now`.
    pub(crate) fn next_wake(&self, now: Instant) -> Option<Instant> {
        match self.state {
            State::Asked { since } => Some(since + ANSWER_WAIT),
            State::Granted { until } if now + LEAST_USEFUL >= until => Some(until),
            State::Granted { until } => Some(until - LEAST_USEFUL),
            _ => None,
        }
    }

    /// Whether an answer or the end of a pause is awaited: probes that wait
    /// for a pause need no wake of their own then.
    pub(crate) fn awaited(&self) -> bool {
        matches!(self.state, State::Asked { .. } | State::Granted { .. })
    }

    /// The messages to send to the old generation, in order.
    pub(crate) fn take_messages(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.outbox)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_is_asked_once_granted_used_and_released() {
        let t = Instant::now();
        let mut p = Pauses::available();
        assert_eq!(p.now(t), PauseNow::Pending);
        p.want(t);
        p.want(t);
        assert_eq!(p.take_messages(), vec![Message::Pause], "asked once");
        assert_eq!(p.now(t), PauseNow::Pending);
        assert!(p.awaited());
        p.on_paused(50, t);
        assert_eq!(p.now(t), PauseNow::Granted);
        assert_eq!(p.next_wake(t), Some(t + Duration::from_millis(48)));
        p.want(t);
        assert!(p.take_messages().is_empty(), "granted: nothing to ask");
        p.release();
        p.release();
        assert_eq!(p.take_messages(), vec![Message::Resume], "released once");
        assert_eq!(p.now(t), PauseNow::Pending);
    }

    #[test]
    fn a_grant_that_runs_out_is_not_used_and_may_be_asked_again() {
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        let mut p = Pauses::available();
        p.want(t);
        p.on_paused(10, t);
        assert_eq!(p.now(ms(7)), PauseNow::Granted);
        // Too little left: not used, not asked again before its end.
        assert_eq!(p.now(ms(8)), PauseNow::Pending);
        assert_eq!(p.next_wake(ms(8)), Some(ms(10)));
        assert!(p.awaited());
        p.want(ms(9));
        assert_eq!(p.take_messages(), vec![Message::Pause]);
        // Over: the old side ended it (no RESUME), and another may be asked.
        assert_eq!(p.now(ms(10)), PauseNow::Pending);
        assert!(!p.awaited());
        p.release();
        p.want(ms(10));
        assert_eq!(p.take_messages(), vec![Message::Pause]);
    }

    #[test]
    fn a_refusal_or_silence_ends_the_pauses() {
        let t = Instant::now();
        let mut p = Pauses::available();
        p.want(t);
        p.on_paused(0, t);
        assert_eq!(p.now(t), PauseNow::Unavailable);
        p.want(t);
        assert_eq!(p.take_messages(), vec![Message::Pause], "never asked again");

        let mut q = Pauses::available();
        q.want(t);
        assert_eq!(q.next_wake(t), Some(t + ANSWER_WAIT));
        assert_eq!(q.now(t + ANSWER_WAIT), PauseNow::Unavailable);
        q.take_messages();
        // A grant that comes too late is handed back at once.
        q.on_paused(50, t + ANSWER_WAIT);
        assert_eq!(q.take_messages(), vec![Message::Resume]);
        assert_eq!(q.now(t + ANSWER_WAIT), PauseNow::Unavailable);
    }

    #[test]
    fn without_a_pausing_old_generation_nothing_is_asked() {
        let t = Instant::now();
        let mut p = Pauses::unavailable();
        assert_eq!(p.now(t), PauseNow::Unavailable);
        p.want(t);
        p.on_paused(50, t);
        assert_eq!(p.take_messages(), vec![Message::Resume]);
        assert_eq!(p.next_wake(t), None);
    }
}
