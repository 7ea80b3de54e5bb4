//! A bound on journal lines that outsiders can cause: a process outside the
//! unit can send the program's notification socket datagrams as fast as it
//! likes, and a line for each would flood the journal.

use std::time::{Duration, Instant};

/// What to do with one occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Log it. `suppressed` occurrences of the window before went unlogged;
    /// `last`: it is the last one logged in this window.
    Log { suppressed: u64, last: bool },
    /// Do not log it.
    Suppress,
}

/// At most `max` logged occurrences per `window`.
#[derive(Debug)]
pub(crate) struct LogLimit {
    max: u32,
    window: Duration,
    started: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl LogLimit {
    /// At most `max` lines per `window`.
    pub(crate) const fn new(max: u32, window: Duration) -> LogLimit {
        LogLimit {
            max,
            window,
            started: None,
            logged: 0,
            suppressed: 0,
        }
    }

    /// Counts one occurrence at `now` and says whether to log it.
    pub(crate) fn check(&mut self, now: Instant) -> Verdict {
        let mut suppressed = 0;
        if self
            .started
            .map_or(true, |s| now.saturating_duration_since(s) >= self.window)
        {
            self.started = Some(now);
            self.logged = 0;
            suppressed = std::mem::take(&mut self.suppressed);
        }
        if self.logged >= self.max {
            self.suppressed += 1;
            return Verdict::Suppress;
        }
        self.logged += 1;
        Verdict::Log {
            suppressed,
            last: self.logged == self.max,
        }
    }

    /// The window.
    pub(crate) fn window(&self) -> Duration {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_per_window_then_the_count_of_the_rest() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let log = |suppressed, last| Verdict::Log { suppressed, last };
        let mut limit = LogLimit::new(3, Duration::from_secs(10));
        assert_eq!(limit.check(t0), log(0, false));
        assert_eq!(limit.check(t0), log(0, false));
        assert_eq!(limit.check(t0), log(0, true));
        for _ in 0..1000 {
            assert_eq!(limit.check(at(9)), Verdict::Suppress);
        }
        assert_eq!(limit.check(at(10)), log(1000, false));
        assert_eq!(limit.check(at(10)), log(0, false));
        // A quiet window reports nothing.
        assert_eq!(limit.check(at(30)), log(0, false));
    }
}
