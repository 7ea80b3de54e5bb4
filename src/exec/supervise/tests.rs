//! Unit tests of the roles, without a service manager: their transitions,
//! what each polls, when each wakes, how a drain ends, the status text and
//! the rules on the program's notifications and its end.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::super::config::{Mode, Outcome, SignalRoles};
use super::super::relay::RelayMessage;
use super::generation::{describe, outcome_of};
use super::notifications::passed_fields;
use super::role::{
    drain_complete, Barrier, Drain, DrainingState, MainState, Role, SuccessorState, LEFTOVER_CHECK,
    MAX_QUEUED,
};
use super::signals::{signal_use, SignalUse};
use super::sources::Source;
use super::status::{status_text, StatusFacts};
use crate::protocol::control::{ControlConnection, ControlEndpoint};
use crate::protocol::generations::OlderGenerations;
use crate::protocol::handover::{told_to_end, Channel, Message};
use crate::reload::Reload;

fn reload() -> Reload<ControlConnection> {
    Reload::new(2, std::process::id(), Duration::from_secs(5))
}

fn control() -> ControlEndpoint {
    ControlEndpoint::bind().expect("binding a control endpoint")
}

/// A successor of generation 2, and the old generation's end of its channel.
fn successor() -> (SuccessorState, Channel) {
    let (old, new) = Channel::pair().unwrap();
    let state = SuccessorState::new(new, control(), reload(), OlderGenerations::default());
    (state, old)
}

fn message(text: &str) -> RelayMessage {
    RelayMessage {
        sender_pid: Some(std::process::id()),
        text: text.to_owned(),
        fds: Vec::new(),
    }
}

fn control_sources(control: &ControlEndpoint) -> Vec<Source> {
    (0..control.fds().len()).map(Source::Control).collect()
}

// ----- transitions -----

#[test]
fn a_successor_made_main_keeps_its_control_socket_and_counts_its_predecessor() {
    let (mut state, old) = successor();
    let name = state.control.name().to_owned();
    assert!(state.queue(message("WATCHDOG=1\n")));
    assert!(state.queue(message("FDSTORE=1\n")));
    let (main, queued, counted) = state.into_main(2, 41);
    assert_eq!(counted, Ok(()));
    assert_eq!(main.control.name(), name);
    assert_eq!(
        queued.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        ["WATCHDOG=1\n", "FDSTORE=1\n"]
    );
    assert!(main.handover.is_none());
    // Generation 1 drains now, and counts against max-generations.
    assert_eq!(main.older.generations(), [1]);
    assert_eq!(main.last_reload.as_deref(), Some("last reload took 41 ms"));
    // The channel to generation 1 stays, for DONE and to see it go.
    let predecessor = main.predecessor.as_ref().expect("still linked");
    predecessor.send(&Message::Done).unwrap();
    assert_eq!(old.recv().unwrap(), Some(Some(Message::Done)));
}

#[test]
fn a_successor_that_gives_up_hands_back_the_channel_for_a_last_word() {
    let (state, old) = successor();
    let channel = state.give_up();
    channel.send(&Message::Failed("not ready".into())).unwrap();
    drop(channel);
    assert_eq!(
        old.recv().unwrap(),
        Some(Some(Message::Failed("not ready".into())))
    );
    // Nothing of the successor is left holding the channel open.
    assert_eq!(old.recv().unwrap(), Some(None));
}

#[test]
fn a_main_process_that_hands_over_links_to_the_new_generation_and_drains() {
    let mut main = MainState::first(control(), reload());
    let name = main.control.name().to_owned();
    let (ours, theirs) = Channel::pair().unwrap();
    main.handover = Some(ours);
    let now = Instant::now();
    let (mut drain, control) = main.into_draining(now, Duration::from_secs(7));
    assert_eq!(control.name(), name, "the endpoint comes back to be closed");
    assert_eq!(drain.drain, Drain::Running);
    assert_eq!(drain.deadline, now + Duration::from_secs(7));
    // The hand-over channel is now the link newer generations use to end
    // this one early.
    assert!(!told_to_end(&mut drain.successor_link));
    theirs.send(&Message::End).unwrap();
    assert!(told_to_end(&mut drain.successor_link));
}

#[test]
fn a_main_process_without_a_reload_drains_with_no_link() {
    let main = MainState::first(control(), reload());
    let (drain, _) = main.into_draining(Instant::now(), Duration::from_secs(1));
    assert!(drain.successor_link.is_none());
    assert!(Role::Draining(drain).sources().is_empty());
}

#[test]
fn a_successor_queues_a_bounded_number_of_notifications() {
    let (mut state, _old) = successor();
    for _ in 0..MAX_QUEUED {
        assert!(state.queue(message("WATCHDOG=1\n")));
    }
    assert!(!state.queue(message("WATCHDOG=1\n")));
    let (_, queued, _) = state.into_main(2, 1);
    assert_eq!(queued.len(), MAX_QUEUED);
}

// ----- what each role polls -----

#[test]
fn a_successor_polls_its_control_socket_and_its_predecessor() {
    let (state, _old) = successor();
    let mut expected = control_sources(&state.control);
    expected.push(Source::Predecessor);
    assert!(!expected.is_empty());
    assert_eq!(Role::Successor(state).sources(), expected);
}

#[test]
fn a_main_process_polls_the_new_generation_only_during_a_reload() {
    let mut main = MainState::first(control(), reload());
    let idle = control_sources(&main.control);
    let (ours, _theirs) = Channel::pair().unwrap();
    let (before, _older) = Channel::pair().unwrap();
    main.handover = Some(ours);
    main.predecessor = Some(before);
    let role = Role::Main(main);
    let mut expected = idle.clone();
    expected.extend([Source::Successor, Source::Predecessor]);
    assert_eq!(role.sources(), expected);
    let Role::Main(mut main) = role else {
        unreachable!()
    };
    main.handover = None;
    main.predecessor = None;
    assert_eq!(Role::Main(main).sources(), idle);
}

#[test]
fn a_main_process_polls_every_older_generation_to_let_go_of_it_when_it_ends() {
    let mut main = MainState::first(control(), reload());
    let idle = control_sources(&main.control);
    let (two, _theirs_two) = Channel::pair().unwrap();
    let (three, _theirs_three) = Channel::pair().unwrap();
    main.older.push(2, two);
    main.older.push(3, three);
    let mut expected = idle;
    expected.extend([Source::Older(0), Source::Older(1)]);
    assert_eq!(Role::Main(main).sources(), expected);
}

#[test]
fn a_main_process_polls_the_manager_s_barrier_and_wakes_at_its_deadline() {
    let mut main = MainState::first(control(), reload());
    let idle = control_sources(&main.control);
    let (read_end, _write_end) = rustix::pipe::pipe().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    main.barrier = Some(Barrier {
        read_end,
        pid: 1,
        deadline,
    });
    let role = Role::Main(main);
    let mut expected = idle;
    expected.push(Source::Barrier);
    assert_eq!(role.sources(), expected);
    assert_eq!(role.next_wake(Instant::now(), false), Some(deadline));
}

#[test]
fn a_draining_generation_polls_only_its_link_to_newer_ones() {
    let (ours, _theirs) = Channel::pair().unwrap();
    let mut drain = DrainingState::new(Instant::now(), Duration::from_secs(1));
    drain.successor_link = Some(ours);
    let role = Role::Draining(drain);
    assert_eq!(role.sources(), [Source::SuccessorLink]);
    assert!(role.control().is_none());
}

// ----- when each role wakes -----

#[test]
fn a_draining_generation_wakes_at_its_deadline_until_it_killed_its_program() {
    let now = Instant::now();
    let mut drain = DrainingState::new(now, Duration::from_secs(3));
    let deadline = now + Duration::from_secs(3);
    assert_eq!(drain.next_wake(now, false), Some(deadline));
    // Once the program exited: soon, to see whether its leftovers are gone.
    assert_eq!(drain.next_wake(now, true), Some(now + LEFTOVER_CHECK));
    assert!(!drain.timed_out(now));
    assert!(drain.timed_out(deadline));
    assert!(drain.kill(false));
    assert!(!drain.timed_out(deadline), "killed once");
    assert_eq!(drain.next_wake(now, false), None);
    assert_eq!(drain.next_wake(now, true), Some(now + LEFTOVER_CHECK));
}

#[test]
fn a_short_drain_wakes_at_its_deadline_before_the_leftover_check() {
    let now = Instant::now();
    let drain = DrainingState::new(now, Duration::from_millis(10));
    assert_eq!(
        drain.next_wake(now, true),
        Some(now + Duration::from_millis(10))
    );
}

#[test]
fn an_idle_main_process_or_successor_without_clients_sets_no_timer() {
    let now = Instant::now();
    let main = Role::Main(MainState::first(control(), reload()));
    assert_eq!(main.next_wake(now, false), None);
    let (state, _old) = successor();
    assert_eq!(Role::Successor(state).next_wake(now, false), None);
}

#[test]
fn a_draining_role_wakes_as_its_drain_says() {
    let now = Instant::now();
    let role = Role::Draining(DrainingState::new(now, Duration::from_secs(2)));
    assert_eq!(
        role.next_wake(now, false),
        Some(now + Duration::from_secs(2))
    );
    let role = Role::Draining(DrainingState::killed(now));
    assert_eq!(role.next_wake(now, false), None);
}

// ----- how a drain ends -----

#[test]
fn a_drain_is_killed_once_and_says_why() {
    let now = Instant::now();
    let mut drain = DrainingState::new(now, Duration::from_secs(1));
    assert_eq!(drain.ending(true), "; its hand-over is complete");
    assert!(drain.kill(true));
    assert!(!drain.kill(false), "already killed");
    assert_eq!(drain.drain, Drain::EndedEarly);
    assert_eq!(
        drain.ending(true),
        " (ended early for a newer generation); its hand-over is complete"
    );
    let never_ready = DrainingState::killed(now);
    assert_eq!(never_ready.drain, Drain::Killed);
    assert_eq!(
        never_ready.ending(false),
        " (killed after the drain timeout); it never became ready, and the reload did not hand over to it"
    );
}

#[test]
fn a_drain_is_complete_once_the_program_and_all_its_processes_are_gone() {
    assert!(!drain_complete(false, 0));
    assert!(!drain_complete(true, 1));
    assert!(drain_complete(true, 0));
}

#[test]
fn a_drain_counts_its_time_from_its_start() {
    let now = Instant::now();
    let drain = DrainingState::new(now, Duration::from_secs(10));
    assert_eq!(
        drain.drained_for(now + Duration::from_millis(1500)),
        Duration::from_millis(1500)
    );
    assert_eq!(drain.drained_for(now), Duration::ZERO);
}

// ----- the status text -----

fn facts() -> StatusFacts<'static> {
    StatusFacts {
        generation: 3,
        pid: 1234,
        draining: false,
        program_status: None,
        ready: false,
        reloading: None,
        last_reload: None,
        older: "",
    }
}

#[test]
fn the_status_says_how_the_program_is() {
    assert_eq!(status_text(&facts()), "generation 3, pid 1234: starting");
    let ready = StatusFacts {
        ready: true,
        ..facts()
    };
    assert_eq!(status_text(&ready), "generation 3, pid 1234: serving");
    let own = StatusFacts {
        program_status: Some("42 clients"),
        ..ready
    };
    assert_eq!(status_text(&own), "generation 3, pid 1234: 42 clients");
    let draining = StatusFacts {
        draining: true,
        ..own
    };
    assert_eq!(status_text(&draining), "generation 3, pid 1234: draining");
}

#[test]
fn the_status_names_a_reload_in_progress_over_the_last_outcome() {
    let last = StatusFacts {
        ready: true,
        last_reload: Some("last reload took 41 ms"),
        older: "; generation 2 draining",
        ..facts()
    };
    assert_eq!(
        status_text(&last),
        "generation 3, pid 1234: serving; last reload took 41 ms; generation 2 draining"
    );
    let reloading = StatusFacts {
        reloading: Some(4),
        ..last
    };
    assert_eq!(
        status_text(&reloading),
        "generation 3, pid 1234: serving; reloading (generation 4 starting); generation 2 draining"
    );
}

// ----- the program's notifications and its end -----

#[test]
fn only_the_fields_about_the_unit_pass_to_the_manager() {
    let (passed, dropped) = passed_fields(
        "READY=1\nSTATUS=ok\nWATCHDOG=1\nMAINPID=1\nFDSTORE=1\nFDNAME=web\nRELOADING=1\nERRNO=5",
    );
    assert_eq!(passed, "WATCHDOG=1\nFDSTORE=1\nFDNAME=web\nERRNO=5\n");
    assert_eq!(dropped, ["MAINPID", "RELOADING"]);
    let (passed, dropped) = passed_fields("READY=1\nSTATUS=starting");
    assert!(passed.is_empty() && dropped.is_empty());
}

fn exited(code: i32) -> ExitStatus {
    ExitStatus::from_raw(code << 8)
}

fn killed(signal: Signal) -> ExitStatus {
    ExitStatus::from_raw(signal as i32)
}

#[test]
fn fdstore_exec_ends_as_its_program_did() {
    assert_eq!(outcome_of(exited(3), false, true), Outcome::Exit(3));
    assert_eq!(outcome_of(exited(0), false, true), Outcome::Exit(0));
    assert_eq!(
        outcome_of(killed(Signal::SIGSEGV), false, true),
        Outcome::Signal(Signal::SIGSEGV)
    );
    // A clean exit after a stop signal, even before readiness, is clean.
    assert_eq!(outcome_of(exited(0), true, false), Outcome::Exit(0));
}

#[test]
fn a_clean_exit_before_readiness_is_a_failure() {
    assert_eq!(outcome_of(exited(0), false, false), Outcome::Exit(1));
}

#[test]
fn the_program_s_end_is_described_in_words() {
    assert_eq!(describe(exited(3)), "exited with status 3");
    assert_eq!(describe(killed(Signal::SIGKILL)), "was killed by SIGKILL");
}

// ----- signals -----

#[test]
fn the_reload_signal_reloads_by_hand_over_only_in_handover_mode() {
    let roles = SignalRoles::default();
    assert_eq!(
        signal_use(Mode::Handover, &roles, Signal::SIGHUP),
        SignalUse::Reload
    );
    // No hand-over to start: the program gets it.
    assert_eq!(
        signal_use(Mode::Restart, &roles, Signal::SIGHUP),
        SignalUse::Forward
    );
    let other = SignalRoles::new(Some(Signal::SIGUSR2), &[]).unwrap();
    assert_eq!(
        signal_use(Mode::Handover, &other, Signal::SIGUSR2),
        SignalUse::Reload
    );
    assert_eq!(
        signal_use(Mode::Handover, &other, Signal::SIGHUP),
        SignalUse::Forward
    );
}

#[test]
fn stop_signals_stop_and_the_rest_is_passed_on() {
    let roles = SignalRoles::default();
    for mode in [Mode::Handover, Mode::Restart] {
        for stop in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT] {
            assert_eq!(signal_use(mode, &roles, stop), SignalUse::Stop);
        }
        assert_eq!(
            signal_use(mode, &roles, Signal::SIGUSR1),
            SignalUse::Forward
        );
    }
}
