//! A generation that handed over (or failed as a successor): it lets its
//! program drain, kills what is left at the drain timeout, and exits once
//! nothing of the program is left.

use std::time::Instant;

use tracing::{info, warn};

use super::super::config::Outcome;
use super::generation::describe;
use super::role::{drain_complete, Drain, DrainingState};
use super::shared::Shared;
use crate::protocol::handover::told_to_end;

impl DrainingState {
    /// Kills the program's processes, once.
    fn kill_now(&mut self, shared: &mut Shared<'_>, early: bool) {
        if self.kill(early) {
            shared.generation.kill_all();
        }
    }

    /// The drain deadline, and the end of the drain.
    pub(super) fn check_timers(
        &mut self,
        shared: &mut Shared<'_>,
        now: Instant,
    ) -> Option<Outcome> {
        if self.timed_out(now) {
            let g = &shared.generation;
            let survivors = g.processes();
            let listed: Vec<String> = survivors.iter().map(|m| m.to_string()).collect();
            warn!(
                pid = g.pid(),
                survivors = listed.len(),
                "generation {} did not finish within the drain timeout ({:?}); killing its processes: {}",
                g.number,
                shared.config.drain_timeout,
                listed.join(", ")
            );
            self.kill_now(shared, false);
        }
        if shared.generation.exited.is_some() {
            return self.complete(shared);
        }
        None
    }

    /// A newer generation wrote on the channel to this one.
    pub(super) fn on_successor_link(&mut self, shared: &mut Shared<'_>) {
        if !told_to_end(&mut self.successor_link) || self.drain != Drain::Running {
            return;
        }
        warn!(
            pid = shared.generation.pid(),
            "generation {} ends early, {} ms into its drain: a newer generation needs room within max-generations {}; killing it",
            shared.generation.number,
            self.drained_for(Instant::now()).as_millis(),
            shared.config.generations.max()
        );
        self.kill_now(shared, true);
    }

    /// The program exited: the drain is complete unless processes it
    /// started still run. Workers whose master exited still serve: the
    /// hand-over is not complete until they are gone (or killed at the
    /// deadline).
    pub(super) fn on_program_exit(&self, shared: &Shared<'_>) -> Option<Outcome> {
        let left = shared.generation.processes();
        let g = &shared.generation;
        if drain_complete(g.exited.is_some(), left.len()) {
            return self.completed(shared);
        }
        if left.is_empty() {
            return None;
        }
        let killed = self.drain != Drain::Running;
        let listed: Vec<String> = left.iter().map(|m| m.to_string()).collect();
        info!(
            pid = g.pid(),
            "the program of generation {} {}{}, but {} of its processes still run ({}); waiting for them {}",
            g.number,
            g.exited.map(describe).unwrap_or_default(),
            if killed { " (killed after the drain timeout)" } else { "" },
            listed.len(),
            listed.join(", "),
            if killed { "to die" } else { "until the drain deadline" }
        );
        None
    }

    /// The end of a drain: once the program exited and no process of its
    /// group is left, the hand-over is complete.
    fn complete(&self, shared: &Shared<'_>) -> Option<Outcome> {
        let g = &shared.generation;
        if !drain_complete(g.exited.is_some(), g.processes().len()) {
            return None;
        }
        self.completed(shared)
    }

    /// The drain is complete (the program exited and nothing of its group
    /// is left): the generation's end, logged.
    fn completed(&self, shared: &Shared<'_>) -> Option<Outcome> {
        let g = &shared.generation;
        let status = g.exited?;
        info!(
            pid = g.pid(),
            took = ?g.started.elapsed(),
            "generation {} {}{}",
            g.number,
            describe(status),
            self.ending(g.ready)
        );
        Some(Outcome::Exit(0))
    }
}
