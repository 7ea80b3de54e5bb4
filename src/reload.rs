//! The old main process's half of a reload, as a state machine free of I/O.
//!
//! fdstore-exec's poll loop (`exec/supervise/`) and the library's upgrade
//! thread (`upgrade/worker.rs`) both drive this one machine: they turn what
//! they see (a control request, a SIGHUP, a message on the hand-over
//! channel, the deadline, a stop signal) into an [`Event`], and carry out
//! the [`Action`]s it returns, in order. Every rule of a reload lives here,
//! once, and is unit-tested without a service manager:
//!
//! - **refusal order**: a reload the configuration does not do
//!   (`--mode=restart`) is refused as unsupported; then, in this order, one
//!   while the unit stops (stopping), one after this process handed over
//!   (unsupported: ask the new main process), one while a reload is in
//!   progress (busy), one before this process is the main process (busy),
//!   one while this generation is still starting (busy),
//!   and last one at the bound on generations (busy, from
//!   [`Action::MakeRoom`]);
//! - **deadlines**: the new generation gets its ready timeout plus
//!   [`HANDOVER_MARGIN`] from the start of the reload to be ready, and then
//!   [`MAIN_DONE_TIMEOUT`] after `MAIN` to say `DONE`;
//! - **before `MAINPID=`** every failure (the deadline, the new generation
//!   failing or going away, a stop) abandons the new generation
//!   ([`Action::Abandon`]) and the old one keeps serving;
//! - **after `MAINPID=`** the service manager follows the new process as
//!   the unit's main process: nothing may kill it any more. A failure then
//!   (the deadline, the channel closing before `DONE`) is reported to the
//!   requester, and the old generation drains ([`Action::BeginDrain`]), as
//!   after a completed hand-over: it is no longer the main process, and a
//!   control client must ask the new one;
//! - **a SIGHUP** (`Type=notify-reload`) starts a reload with `RELOADING=1`;
//!   refused, or failed before `MAINPID=`, it is answered with `READY=1`
//!   (the manager waits for that); completed, the new main process's
//!   `READY=1` answers it. A SIGHUP while a reload is in progress is refused
//!   silently: a `READY=1` then would end the manager's reload state before
//!   the reload under way finishes, which answers it; so is one to a process
//!   that handed over (the manager waits for the main process, not it);
//! - **a stop** during a reload refuses it as "stopping" and sends no
//!   `READY=1`;
//! - **pauses** (fdstore-exec only, [`Reload::pausing`]): while the new
//!   generation is starting, its `PAUSE` stops this generation's program
//!   for at most [`PAUSE_MAX`], at most [`PAUSES_MAX`] times and
//!   [`PAUSE_TOTAL`] in all per reload; anything else is declined. A pause
//!   ends at `RESUME`, at its end, and before anything that moves the
//!   reload on (the new generation ready, failed or gone, a stop), so
//!   that a program is never left stopped and is running when it is told
//!   to drain.

use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use crate::protocol::control::{busy_text, still_starting_text, Refusal, Reply};
use crate::protocol::handover::{Channel, Message, PAUSES_MAX, PAUSE_MAX, PAUSE_TOTAL};

/// Time a new generation gets beyond its ready timeout to finish the
/// hand-over: its own start (an exec of fdstore-exec or the program), the
/// `MAINPID=` change with its [`BARRIER_TIMEOUT`], and `DONE`.
pub(crate) const HANDOVER_MARGIN: Duration = Duration::from_secs(10);

/// How long the old main process waits for the manager to process
/// `MAINPID=` (`BARRIER=1`).
pub(crate) const BARRIER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the old main process waits for `DONE` after it sent `MAIN`. By
/// then the manager follows the new process, so when the new one stalls the
/// old one does not stay on as a second main process: it reports the reload
/// as failed and drains.
pub(crate) const MAIN_DONE_TIMEOUT: Duration = Duration::from_secs(5);

/// Who asked for a reload. `C` is a driver's way to answer (a control
/// connection, a caller's channel).
#[derive(Debug)]
pub(crate) enum Requester<C> {
    /// The reload signal (`Type=notify-reload`): answered with
    /// `RELOADING=1` and `READY=1`.
    Signal,
    /// A control client or a caller, answered with an [`Answer`].
    Client(C),
}

/// What the driver knows when a request arrives.
#[derive(Debug, Clone, Default)]
pub(crate) struct Facts {
    /// This generation's program (or the library's service) is ready.
    pub(crate) ready: bool,
    /// This process is the unit's main process (a new generation answers
    /// its control socket before it is).
    pub(crate) main: bool,
    /// Why this process does not reload by hand-over at all, if it does not.
    pub(crate) unsupported: Option<String>,
}

/// What happened.
#[derive(Debug)]
pub(crate) enum Event<C> {
    /// A reload was asked for.
    Request(Requester<C>, Facts),
    /// The outcome of [`Action::MakeRoom`].
    Room(Result<(), String>),
    /// The outcome of [`Action::Spawn`]: the new process's pid when the
    /// driver knows it already (otherwise its `HELLO` says it).
    Spawned(Result<Option<u32>, String>),
    /// The new generation's `HELLO PID`.
    Hello(u32),
    /// The new generation's `READY`.
    Ready,
    /// The driver sent `MAINPID=` after [`Action::MakeMain`], and the manager
    /// is not stopping the unit.
    MainPidSent,
    /// The driver could not send `MAINPID=` (the reason says why).
    MainPidRefused(String),
    /// The new generation's `DONE`: it told the manager it is ready.
    Done,
    /// The new generation's `FAILED REASON`.
    Failed(String),
    /// The hand-over channel closed (the new process is gone).
    Gone,
    /// The hand-over channel failed.
    Broken(String),
    /// Time passed (the driver wakes at [`Reload::deadline`]).
    Tick,
    /// The unit is stopping.
    Stop,
    /// This generation cannot go on with a reload (its program exited).
    Abort(String),
    /// The new generation's `PAUSE`: it asks for this generation's program
    /// to be stopped for a probe.
    PauseAsked,
    /// The new generation's `RESUME`.
    ResumeAsked,
}

/// The answer to a [`Requester::Client`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The new generation serves.
    Done {
        /// Its process.
        pid: u32,
        /// Its number.
        generation: u64,
        /// How long the hand-over took.
        took: Duration,
        /// What to tell a control client.
        text: String,
    },
    /// The reload was refused or failed.
    Refused(Refusal, String),
}

impl Answer {
    /// The control socket's reply.
    pub(crate) fn reply(&self) -> Reply {
        match self {
            Answer::Done { text, .. } => Reply::Ok(text.clone()),
            Answer::Refused(kind, text) => Reply::Err(*kind, text.clone()),
        }
    }
}

/// What the driver must do.
#[derive(Debug)]
pub(crate) enum Action<C> {
    /// Apply the bound on generations (it may tell the oldest draining ones
    /// to end), then report [`Event::Room`].
    MakeRoom,
    /// Send `RELOADING=1`.
    NotifyReloading,
    /// Send `READY=1` with the status.
    NotifyReady,
    /// Send the status (a reload started or ended; see
    /// [`Reload::in_progress`] and [`Reload::last_outcome`]).
    UpdateStatus,
    /// Start the next generation, then report [`Event::Spawned`].
    Spawn,
    /// Make `pid` the main process (`MAINPID=`, `BARRIER=1`), then report
    /// [`Event::MainPidSent`] or [`Event::MainPidRefused`].
    MakeMain {
        /// The new process.
        pid: u32,
    },
    /// Send `MAIN MILLISECONDS` to the new generation (report
    /// [`Event::Broken`] when that fails).
    SendMain {
        /// How long the hand-over has taken so far.
        took: Duration,
    },
    /// The new generation must stop: close the hand-over channel (kill the
    /// process where it does not watch the channel).
    Abandon {
        /// The new process, when known.
        pid: Option<u32>,
    },
    /// Answer the requester.
    Answer(C, Answer),
    /// This generation handed over to `successor`: close the control socket,
    /// keep the channel as the link to the newer generations, drain.
    BeginDrain {
        /// The new main process.
        successor: u32,
    },
    /// Stop this generation's program (if it is not already) and tell the
    /// new generation `PAUSED` with the time: the machine ends the pause
    /// ([`Action::Resume`]) within it, woken by [`Reload::deadline`]. When
    /// the program cannot be stopped, say `PAUSED 0` and report
    /// [`Event::ResumeAsked`].
    Pause {
        /// The longest the pause lasts from now.
        for_at_most: Duration,
    },
    /// Tell the new generation `PAUSED 0`: no pause.
    DeclinePause,
    /// Continue this generation's program.
    Resume,
}

/// How far the new generation got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Started; waiting for its `READY`.
    Starting,
    /// Ready; the driver is sending `MAINPID=`.
    Promoting,
    /// `MAINPID=` was sent: the manager follows it. Waiting for `DONE`.
    Main,
}

#[derive(Debug)]
enum State<C> {
    Idle,
    /// Making room and starting the new generation.
    Preparing {
        from: Requester<C>,
        started: Instant,
    },
    Running {
        from: Requester<C>,
        started: Instant,
        deadline: Instant,
        pid: Option<u32>,
        stage: Stage,
    },
    /// This generation handed over; it drains.
    HandedOver {
        successor: u32,
    },
}

/// The reloads of one generation, seen from it as the main process.
#[derive(Debug)]
pub(crate) struct Reload<C> {
    generation: u64,
    /// The process that serves for this generation (named in a reply).
    serving_pid: u32,
    ready_timeout: Duration,
    state: State<C>,
    stopping: bool,
    last_outcome: Option<String>,
    /// Whether the driver can pause its program ([`Reload::pausing`]).
    pausing: bool,
    /// The pauses of the reload in progress.
    pauses: Pauses,
}

/// The pauses of this generation's program for one new generation.
#[derive(Debug, Default, Clone, Copy)]
struct Pauses {
    /// The pause in progress: since when, and its end at the latest.
    current: Option<(Instant, Instant)>,
    /// How many were granted.
    count: u32,
    /// Their time, those that ended.
    total: Duration,
}

impl<C> Reload<C> {
    /// For `generation`, served by `serving_pid`, whose successors get
    /// `ready_timeout` to be ready.
    pub(crate) fn new(generation: u64, serving_pid: u32, ready_timeout: Duration) -> Reload<C> {
        Reload {
            generation,
            serving_pid,
            ready_timeout,
            state: State::Idle,
            stopping: false,
            last_outcome: None,
            pausing: false,
            pauses: Pauses::default(),
        }
    }

    /// The driver can stop its program for a new generation's probes
    /// (`PAUSE`); without this every `PAUSE` is declined.
    pub(crate) fn pausing(mut self) -> Reload<C> {
        self.pausing = true;
        self
    }

    /// When the reload in progress fails unless it completed, or the pause
    /// in progress ends: wake then and report [`Event::Tick`].
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let reload = match &self.state {
            State::Preparing { started, .. } => {
                Some(*started + self.ready_timeout + HANDOVER_MARGIN)
            }
            State::Running { deadline, .. } => Some(*deadline),
            _ => None,
        };
        match (reload, self.pauses.current) {
            (Some(d), Some((_, end))) => Some(d.min(end)),
            (d, pause) => d.or(pause.map(|(_, end)| end)),
        }
    }

    /// The reload in progress: the new generation's number and, once known,
    /// its pid.
    pub(crate) fn in_progress(&self) -> Option<(u64, Option<u32>)> {
        match &self.state {
            State::Preparing { .. } => Some((self.generation + 1, None)),
            State::Running { pid, .. } => Some((self.generation + 1, *pid)),
            _ => None,
        }
    }

    /// Whether this generation handed over, and to whom.
    #[cfg(test)]
    pub(crate) fn handed_over(&self) -> Option<u32> {
        match self.state {
            State::HandedOver { successor } => Some(successor),
            _ => None,
        }
    }

    /// Whether the unit is stopping ([`Event::Stop`] arrived).
    pub(crate) fn stopping(&self) -> bool {
        self.stopping
    }

    /// The last reload's outcome, once, for the status (`reload failed:
    /// ...`): each [`Action::UpdateStatus`] and [`Action::NotifyReady`] may
    /// bring a new one.
    pub(crate) fn take_outcome(&mut self) -> Option<String> {
        self.last_outcome.take()
    }

    /// Takes one event at `now`; returns what to do, in order.
    pub(crate) fn handle(&mut self, event: Event<C>, now: Instant) -> Vec<Action<C>> {
        let mut actions = Vec::new();
        if self.pauses.current.is_some_and(|(_, end)| now >= end) {
            actions.extend(self.end_pause(now));
        }
        match event {
            Event::PauseAsked => {
                actions.push(self.pause(now));
                return actions;
            }
            Event::ResumeAsked => {
                actions.extend(self.end_pause(now));
                return actions;
            }
            _ => {}
        }
        let rest = self.handle_reload(event, now);
        // Whatever moved the reload on past the start of the new generation
        // (it is ready, it failed, a stop) ends the pause first: the
        // program runs again before it is told anything, to drain in
        // particular.
        if !self.starting() {
            actions.extend(self.end_pause(now));
            self.summarize_pauses();
        }
        actions.extend(rest);
        actions
    }

    /// Whether a new generation is starting (and may ask for pauses).
    fn starting(&self) -> bool {
        matches!(
            self.state,
            State::Running {
                stage: Stage::Starting,
                ..
            }
        )
    }

    /// The answer to `PAUSE`.
    fn pause(&mut self, now: Instant) -> Action<C> {
        if !self.pausing || !self.starting() {
            return Action::DeclinePause;
        }
        if let Some((_, end)) = self.pauses.current {
            // Asked again: the pause in progress, not a longer one.
            return Action::Pause {
                for_at_most: end.saturating_duration_since(now),
            };
        }
        let left = PAUSE_TOTAL.saturating_sub(self.pauses.total);
        if self.pauses.count >= PAUSES_MAX || left.is_zero() {
            debug!(
                "declined a pause: {} pauses, {} ms, granted already",
                self.pauses.count,
                self.pauses.total.as_millis()
            );
            return Action::DeclinePause;
        }
        let length = PAUSE_MAX.min(left);
        self.pauses.count += 1;
        self.pauses.current = Some((now, now + length));
        Action::Pause {
            for_at_most: length,
        }
    }

    /// Ends the pause in progress, if any.
    fn end_pause(&mut self, now: Instant) -> Option<Action<C>> {
        let (since, end) = self.pauses.current.take()?;
        self.pauses.total += now.min(end).saturating_duration_since(since);
        Some(Action::Resume)
    }

    /// Once the new generation is past its start: what its pauses took, in
    /// the journal, and a clean slate for the next reload.
    fn summarize_pauses(&mut self) {
        let pauses = std::mem::take(&mut self.pauses);
        if pauses.count > 0 {
            let ms = pauses.total.as_secs_f64() * 1000.0;
            info!(
                pauses = pauses.count,
                ms,
                "paused the program of generation {} for the proof of generation {} {} time{}, {ms:.1} ms in all",
                self.generation,
                self.generation + 1,
                pauses.count,
                if pauses.count == 1 { "" } else { "s" },
            );
        }
    }

    fn handle_reload(&mut self, event: Event<C>, now: Instant) -> Vec<Action<C>> {
        let next = self.generation + 1;
        let state = std::mem::replace(&mut self.state, State::Idle);
        match (event, state) {
            (Event::Request(from, facts), state) => self.request(from, facts, state, now),
            (Event::Room(Ok(())), State::Preparing { from, started }) => {
                let mut actions = Vec::new();
                if matches!(from, Requester::Signal) {
                    actions.push(Action::NotifyReloading);
                }
                actions.push(Action::Spawn);
                self.state = State::Preparing { from, started };
                actions
            }
            (Event::Room(Err(text)), State::Preparing { from, .. }) => {
                self.refuse(from, Refusal::Busy, text, false)
            }
            (Event::Spawned(Ok(pid)), State::Preparing { from, started }) => {
                info!(pid, "starting generation {next}");
                self.state = State::Running {
                    from,
                    started,
                    deadline: started + self.ready_timeout + HANDOVER_MARGIN,
                    pid,
                    stage: Stage::Starting,
                };
                vec![Action::UpdateStatus]
            }
            (Event::Spawned(Err(e)), State::Preparing { from, started }) => self.failed(
                from,
                started,
                None,
                format!("could not start generation {next}: {e}"),
                now,
            ),
            (
                Event::Hello(hello),
                State::Running {
                    from,
                    started,
                    deadline,
                    pid,
                    stage,
                },
            ) => {
                self.state = State::Running {
                    from,
                    started,
                    deadline,
                    pid: pid.or(Some(hello)),
                    stage,
                };
                Vec::new()
            }
            (
                Event::Ready,
                State::Running {
                    from,
                    started,
                    pid: None,
                    ..
                },
            ) => self.failed(
                from,
                started,
                Some(None),
                format!("generation {next} reported readiness before its pid"),
                now,
            ),
            (
                Event::Ready,
                State::Running {
                    from,
                    started,
                    deadline,
                    pid: Some(pid),
                    stage: Stage::Starting,
                },
            ) => {
                self.state = State::Running {
                    from,
                    started,
                    deadline,
                    pid: Some(pid),
                    stage: Stage::Promoting,
                };
                vec![Action::MakeMain { pid }]
            }
            (
                Event::MainPidSent,
                State::Running {
                    from,
                    started,
                    pid: Some(pid),
                    stage: Stage::Promoting,
                    ..
                },
            ) => {
                info!(pid, "generation {next} is the main process now");
                self.state = State::Running {
                    from,
                    started,
                    deadline: now + MAIN_DONE_TIMEOUT,
                    pid: Some(pid),
                    stage: Stage::Main,
                };
                vec![Action::SendMain {
                    took: now.saturating_duration_since(started),
                }]
            }
            (
                Event::MainPidRefused(reason),
                State::Running {
                    from,
                    started,
                    pid,
                    stage: Stage::Promoting,
                    ..
                },
            ) => self.failed(from, started, Some(pid), reason, now),
            (
                Event::Done,
                State::Running {
                    from,
                    started,
                    pid: Some(pid),
                    stage: Stage::Main,
                    ..
                },
            ) => {
                let took = now.saturating_duration_since(started);
                let text = format!(
                    "generation {next} (pid {pid}) is serving; the hand-over took {} ms",
                    took.as_millis()
                );
                info!(?took, "{text}; draining generation {}", self.generation);
                self.state = State::HandedOver { successor: pid };
                // Draining first: once the requester hears OK, the old
                // generation no longer takes new work.
                let mut actions = vec![Action::BeginDrain { successor: pid }];
                if let Requester::Client(c) = from {
                    actions.push(Action::Answer(
                        c,
                        Answer::Done {
                            pid,
                            generation: next,
                            took,
                            text,
                        },
                    ));
                }
                // A SIGHUP is answered by the new main process's READY=1.
                actions
            }
            (
                event @ (Event::Failed(_)
                | Event::Gone
                | Event::Broken(_)
                | Event::Tick
                | Event::Abort(_)
                | Event::Done),
                State::Running {
                    from,
                    started,
                    deadline,
                    pid,
                    stage,
                },
            ) => {
                let passed = now >= deadline;
                let shown = pid.map_or("unknown".into(), |p| p.to_string());
                let reason = match event {
                    Event::Failed(reason) | Event::Abort(reason) => reason,
                    Event::Broken(e) => format!("the hand-over channel failed: {e}"),
                    Event::Gone if stage == Stage::Main => format!("generation {next} (pid {shown}) exited right after becoming the main process"),
                    Event::Gone => format!("generation {next} (pid {shown}) exited before it was ready"),
                    Event::Tick if passed && stage == Stage::Main => format!(
                        "generation {next} (pid {shown}) was made the main process but did not confirm the hand-over within {MAIN_DONE_TIMEOUT:?}"
                    ),
                    Event::Tick if passed => format!(
                        "generation {next} (pid {shown}) did not complete the hand-over within {:?} (its ready timeout {:?} and {:?} more)",
                        self.ready_timeout + HANDOVER_MARGIN, self.ready_timeout, HANDOVER_MARGIN
                    ),
                    Event::Done => format!("generation {next} said DONE before it was made the main process"),
                    // Not yet.
                    _ => {
                        self.state = State::Running {
                            from,
                            started,
                            deadline,
                            pid,
                            stage,
                        };
                        return Vec::new();
                    }
                };
                match (stage, pid) {
                    (Stage::Main, Some(pid)) => {
                        self.failed_after_main(from, started, pid, reason, now)
                    }
                    _ => self.failed(from, started, Some(pid), reason, now),
                }
            }
            (Event::Stop, state) => self.stop(state),
            // Anything else does not concern the state it finds (a late
            // message, MainPidSent after a stop abandoned the reload).
            (_, state) => {
                self.state = state;
                Vec::new()
            }
        }
    }

    fn request(
        &mut self,
        from: Requester<C>,
        facts: Facts,
        state: State<C>,
        now: Instant,
    ) -> Vec<Action<C>> {
        let n = self.generation;
        let refusal = if let Some(text) = facts.unsupported {
            Some((Refusal::Unsupported, text, false))
        } else if self.stopping {
            Some((Refusal::Stopping, "the unit is stopping".to_owned(), false))
        } else if let State::HandedOver { successor } = state {
            let Reply::Err(kind, text) = Reply::handed_over(successor) else {
                unreachable!("handed_over is a refusal")
            };
            // Not the main process: the manager does not wait for it.
            Some((kind, text, true))
        } else if let State::Preparing { started, .. } | State::Running { started, .. } = &state {
            Some((
                Refusal::Busy,
                busy_text(n + 1, now.saturating_duration_since(*started)),
                true,
            ))
        } else if !facts.main {
            let text =
                format!("generation {n} is not the main process (yet); ask the main process");
            // The manager does not wait for a signal to it.
            Some((Refusal::Busy, text, true))
        } else if !facts.ready {
            Some((Refusal::Busy, still_starting_text(n), false))
        } else {
            None
        };
        match refusal {
            Some((kind, text, silent)) => {
                self.state = state;
                self.refuse(from, kind, text, silent)
            }
            None => {
                self.state = State::Preparing { from, started: now };
                vec![Action::MakeRoom]
            }
        }
    }

    /// `silent`: a signal is not answered (a reload in progress answers it,
    /// or this process is no longer the main process).
    fn refuse(
        &mut self,
        from: Requester<C>,
        kind: Refusal,
        text: String,
        silent: bool,
    ) -> Vec<Action<C>> {
        warn!("reload refused: {text}");
        match from {
            Requester::Client(c) => vec![Action::Answer(c, Answer::Refused(kind, text))],
            Requester::Signal if silent => Vec::new(),
            Requester::Signal => {
                // Type=notify-reload waits for RELOADING=1 and READY=1.
                self.last_outcome = Some(format!("reload refused: {text}"));
                vec![Action::NotifyReloading, Action::NotifyReady]
            }
        }
    }

    /// A failure before `MAINPID=`: the new generation is abandoned, this
    /// one keeps serving.
    /// `started_one`: the new process was started (its pid, once known).
    fn failed(
        &mut self,
        from: Requester<C>,
        started: Instant,
        started_one: Option<Option<u32>>,
        reason: String,
        now: Instant,
    ) -> Vec<Action<C>> {
        let n = self.generation;
        error!(
            "reload failed after {} ms: {reason}; generation {n} keeps serving",
            now.saturating_duration_since(started).as_millis()
        );
        self.state = State::Idle;
        self.last_outcome = Some(format!("reload failed: {reason}"));
        let mut actions = Vec::new();
        if let Some(pid) = started_one {
            actions.push(Action::Abandon { pid });
        }
        actions.push(Action::UpdateStatus);
        match from {
            Requester::Client(c) => {
                let kind = if self.stopping {
                    Refusal::Stopping
                } else {
                    Refusal::Failed
                };
                actions.push(Action::Answer(
                    c,
                    Answer::Refused(
                        kind,
                        format!(
                            "{reason}; generation {n} (pid {}) keeps serving",
                            self.serving_pid
                        ),
                    ),
                ));
            }
            Requester::Signal if !self.stopping => actions.push(Action::NotifyReady),
            Requester::Signal => {}
        }
        actions
    }

    /// A failure after `MAINPID=`: the manager follows `pid` as the main
    /// process, so it is not killed; this generation drains.
    fn failed_after_main(
        &mut self,
        from: Requester<C>,
        started: Instant,
        pid: u32,
        reason: String,
        now: Instant,
    ) -> Vec<Action<C>> {
        let n = self.generation;
        let text = format!(
            "{reason}; the service manager follows pid {pid} now, so generation {n} (pid {}) drains; see the journal of pid {pid}",
            self.serving_pid
        );
        error!(
            "reload failed after {} ms: {text}",
            now.saturating_duration_since(started).as_millis()
        );
        self.state = State::HandedOver { successor: pid };
        let mut actions = vec![Action::BeginDrain { successor: pid }];
        // A signal: the manager now waits for the new main process.
        if let Requester::Client(c) = from {
            actions.push(Action::Answer(c, Answer::Refused(Refusal::Failed, text)));
        }
        actions
    }

    fn stop(&mut self, state: State<C>) -> Vec<Action<C>> {
        self.stopping = true;
        let text = "the unit is stopping".to_owned();
        match state {
            State::Preparing { from, .. } => self.refuse_stopping(from, text, Vec::new()),
            State::Running {
                from,
                pid,
                stage: Stage::Starting | Stage::Promoting,
                ..
            } => {
                warn!("reload abandoned: {text}");
                self.refuse_stopping(from, text, vec![Action::Abandon { pid }])
            }
            // The manager follows the new main process; stopping the unit
            // stops it. Nothing to kill here.
            State::Running { from, .. } => self.refuse_stopping(from, text, Vec::new()),
            state => {
                self.state = state;
                Vec::new()
            }
        }
    }

    fn refuse_stopping(
        &mut self,
        from: Requester<C>,
        text: String,
        mut actions: Vec<Action<C>>,
    ) -> Vec<Action<C>> {
        self.state = State::Idle;
        // No READY=1 for a signal: the manager is stopping the unit.
        if let Requester::Client(c) = from {
            actions.push(Action::Answer(c, Answer::Refused(Refusal::Stopping, text)));
        }
        actions
    }
}

/// The events in what the new generation sent on the hand-over channel
/// (all pending messages; the channel's end or failure last).
pub(crate) fn successor_events<C>(channel: &Channel) -> Vec<Event<C>> {
    let mut events = Vec::new();
    loop {
        let event = match channel.recv() {
            Ok(None) => return events,
            Ok(Some(Some(Message::Hello(pid)))) => Event::Hello(pid),
            Ok(Some(Some(Message::Ready))) => Event::Ready,
            Ok(Some(Some(Message::Failed(reason)))) => Event::Failed(reason),
            Ok(Some(Some(Message::Done))) => Event::Done,
            Ok(Some(Some(Message::Pause))) => Event::PauseAsked,
            Ok(Some(Some(Message::Resume))) => Event::ResumeAsked,
            Ok(Some(Some(other @ (Message::Main(_) | Message::End | Message::Paused(_))))) => {
                debug!(?other, "unexpected message from the new generation");
                continue;
            }
            Ok(Some(None)) => {
                events.push(Event::Gone);
                return events;
            }
            Err(e) => {
                events.push(Event::Broken(e.to_string()));
                return events;
            }
        };
        events.push(event);
    }
}

#[cfg(test)]
mod tests;
