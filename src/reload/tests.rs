//! Every rule of the reload state machine, without a service manager.

use super::*;

/// A machine for generation 3 with a 2 s ready timeout, and a clock.
fn machine() -> (Reload<u32>, Instant) {
    (Reload::new(3, 30, Duration::from_secs(2)), Instant::now())
}

fn ready() -> Facts {
    Facts {
        ready: true,
        main: true,
        unsupported: None,
    }
}

/// What the actions are, as words (the payloads checked where they matter).
fn names(actions: &[Action<u32>]) -> Vec<String> {
    actions
        .iter()
        .map(|a| match a {
            Action::MakeRoom => "room".to_owned(),
            Action::NotifyReloading => "RELOADING".to_owned(),
            Action::NotifyReady => "READY".to_owned(),
            Action::UpdateStatus => "status".to_owned(),
            Action::Spawn => "spawn".to_owned(),
            Action::MakeMain { pid } => format!("mainpid {pid}"),
            Action::SendMain { .. } => "MAIN".to_owned(),
            Action::Abandon { pid } => format!("abandon {pid:?}"),
            Action::Answer(c, Answer::Done { pid, .. }) => format!("ok {c} {pid}"),
            Action::Answer(c, Answer::Refused(kind, _)) => format!("err {c} {kind:?}"),
            Action::BeginDrain { successor } => format!("drain {successor}"),
            Action::Pause { for_at_most } => format!("pause {}", for_at_most.as_millis()),
            Action::DeclinePause => "no pause".to_owned(),
            Action::Resume => "resume".to_owned(),
        })
        .collect()
}

fn refusal_text(actions: &[Action<u32>]) -> String {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Answer(_, Answer::Refused(_, text)) => Some(text.clone()),
            _ => None,
        })
        .expect("a refusal")
}

/// Drives a reload by client 7 to "the new generation (pid 40) started".
fn started(m: &mut Reload<u32>, from: Requester<u32>, now: Instant) {
    assert_eq!(
        names(&m.handle(Event::Request(from, ready()), now)),
        ["room"]
    );
    m.handle(Event::Room(Ok(())), now);
    assert_eq!(
        names(&m.handle(Event::Spawned(Ok(Some(40))), now)),
        ["status"]
    );
}

/// ... to "MAINPID= was sent".
fn main_sent(m: &mut Reload<u32>, from: Requester<u32>, now: Instant) {
    started(m, from, now);
    assert_eq!(names(&m.handle(Event::Ready, now)), ["mainpid 40"]);
    assert_eq!(names(&m.handle(Event::MainPidSent, now)), ["MAIN"]);
}

#[test]
fn a_client_reload_runs_to_the_hand_over() {
    let (mut m, t) = machine();
    started(&mut m, Requester::Client(7), t);
    assert_eq!(m.in_progress(), Some((4, Some(40))));
    m.handle(Event::Ready, t);
    let later = t + Duration::from_millis(30);
    let actions = m.handle(Event::MainPidSent, later);
    assert!(
        matches!(actions[..], [Action::SendMain { took }] if took == Duration::from_millis(30))
    );
    let done = m.handle(Event::Done, t + Duration::from_millis(41));
    assert_eq!(names(&done), ["drain 40", "ok 7 40"]);
    let Action::Answer(_, answer) = &done[1] else {
        unreachable!()
    };
    assert_eq!(
        answer.reply(),
        Reply::Ok("generation 4 (pid 40) is serving; the hand-over took 41 ms".into())
    );
    assert_eq!(m.handed_over(), Some(40));
    assert_eq!(m.deadline(), None);
}

#[test]
fn a_signal_reload_says_reloading_first_and_leaves_ready_to_the_new_main_process() {
    let (mut m, t) = machine();
    m.handle(Event::Request(Requester::Signal, ready()), t);
    assert_eq!(
        names(&m.handle(Event::Room(Ok(())), t)),
        ["RELOADING", "spawn"]
    );
    m.handle(Event::Spawned(Ok(Some(40))), t);
    m.handle(Event::Ready, t);
    m.handle(Event::MainPidSent, t);
    assert_eq!(names(&m.handle(Event::Done, t)), ["drain 40"]);
}

#[test]
fn the_pid_comes_from_hello_when_the_spawn_does_not_know_it() {
    let (mut m, t) = machine();
    m.handle(Event::Request(Requester::Client(1), ready()), t);
    m.handle(Event::Room(Ok(())), t);
    m.handle(Event::Spawned(Ok(None)), t);
    assert_eq!(m.in_progress(), Some((4, None)));
    m.handle(Event::Hello(55), t);
    assert_eq!(names(&m.handle(Event::Ready, t)), ["mainpid 55"]);
}

#[test]
fn ready_before_hello_fails_the_reload() {
    let (mut m, t) = machine();
    m.handle(Event::Request(Requester::Client(1), ready()), t);
    m.handle(Event::Room(Ok(())), t);
    m.handle(Event::Spawned(Ok(None)), t);
    let actions = m.handle(Event::Ready, t);
    assert_eq!(names(&actions), ["abandon None", "status", "err 1 Failed"]);
    assert!(refusal_text(&actions).contains("readiness before its pid"));
}

#[test]
fn refusals_come_in_order_unsupported_stopping_handed_over_busy_starting() {
    let unsupported = Facts {
        ready: false,
        main: false,
        unsupported: Some("--mode=restart".into()),
    };
    // Unsupported beats everything.
    let (mut m, t) = machine();
    m.handle(Event::Stop, t);
    let a = m.handle(Event::Request(Requester::Client(1), unsupported.clone()), t);
    assert_eq!(names(&a), ["err 1 Unsupported"]);
    // Stopping beats busy and starting.
    let a = m.handle(Event::Request(Requester::Client(1), Facts::default()), t);
    assert_eq!(names(&a), ["err 1 Stopping"]);
    // Handed over beats not ready.
    let (mut m, t) = machine();
    main_sent(&mut m, Requester::Client(1), t);
    m.handle(Event::Done, t);
    let a = m.handle(Event::Request(Requester::Client(2), Facts::default()), t);
    assert_eq!(names(&a), ["err 2 Unsupported"]);
    assert!(refusal_text(&a).contains("handed over to pid 40"));
    // A signal to a process that handed over: not the main process, the
    // manager does not wait for its READY=1.
    assert!(m
        .handle(Event::Request(Requester::Signal, ready()), t)
        .is_empty());
    // Busy beats not ready.
    let (mut m, t) = machine();
    started(&mut m, Requester::Client(1), t);
    let a = m.handle(
        Event::Request(Requester::Client(2), Facts::default()),
        t + Duration::from_millis(5),
    );
    assert_eq!(names(&a), ["err 2 Busy"]);
    assert!(refusal_text(&a).contains("generation 4 starting for 5 ms"));
    // Not the main process beats not ready.
    let (mut m, t) = machine();
    let a = m.handle(Event::Request(Requester::Client(2), Facts::default()), t);
    assert_eq!(names(&a), ["err 2 Busy"]);
    assert!(refusal_text(&a).contains("generation 3 is not the main process (yet)"));
    assert!(m
        .handle(Event::Request(Requester::Signal, Facts::default()), t)
        .is_empty());
    // Not ready.
    let not_ready = Facts {
        main: true,
        ..Facts::default()
    };
    let a = m.handle(Event::Request(Requester::Client(2), not_ready), t);
    assert_eq!(names(&a), ["err 2 Busy"]);
    assert!(refusal_text(&a).contains("generation 3 is still starting"));
    // Last, the bound on generations.
    let (mut m, t) = machine();
    m.handle(Event::Request(Requester::Client(2), ready()), t);
    let a = m.handle(Event::Room(Err("at max-generations 2".into())), t);
    assert_eq!(names(&a), ["err 2 Busy"]);
    assert_eq!(refusal_text(&a), "at max-generations 2");
    assert_eq!(m.in_progress(), None);
}

#[test]
fn a_refused_signal_is_answered_with_reloading_and_ready() {
    let (mut m, t) = machine();
    let not_ready = Facts {
        main: true,
        ..Facts::default()
    };
    let a = m.handle(Event::Request(Requester::Signal, not_ready), t);
    assert_eq!(names(&a), ["RELOADING", "READY"]);
    assert!(m.take_outcome().unwrap().contains("still starting"));
    assert_eq!(m.take_outcome(), None);
    m.handle(Event::Request(Requester::Signal, ready()), t);
    let a = m.handle(Event::Room(Err("at the bound".into())), t);
    assert_eq!(names(&a), ["RELOADING", "READY"]);
}

#[test]
fn a_signal_during_a_reload_is_refused_silently() {
    // READY=1 now would end the manager's reload state before the reload
    // under way completes.
    for stage in 0..3 {
        let (mut m, t) = machine();
        started(&mut m, Requester::Signal, t);
        if stage > 0 {
            m.handle(Event::Ready, t);
        }
        if stage > 1 {
            m.handle(Event::MainPidSent, t);
        }
        let a = m.handle(Event::Request(Requester::Signal, ready()), t);
        assert!(a.is_empty(), "stage {stage}: {:?}", names(&a));
        assert!(m.in_progress().is_some());
    }
}

#[test]
fn the_deadline_is_the_ready_timeout_and_the_margin() {
    let (mut m, t) = machine();
    started(&mut m, Requester::Client(1), t);
    let deadline = t + Duration::from_secs(2) + HANDOVER_MARGIN;
    assert_eq!(m.deadline(), Some(deadline));
    assert!(m
        .handle(Event::Tick, deadline - Duration::from_millis(1))
        .is_empty());
    let a = m.handle(Event::Tick, deadline);
    assert_eq!(names(&a), ["abandon Some(40)", "status", "err 1 Failed"]);
    assert!(refusal_text(&a).contains("did not complete the hand-over within 12s"));
    assert!(refusal_text(&a).ends_with("generation 3 (pid 30) keeps serving"));
    assert!(m.take_outcome().unwrap().starts_with("reload failed: "));
    assert_eq!(m.deadline(), None);
}

#[test]
fn the_deadline_while_sending_mainpid_abandons_the_new_generation() {
    let (mut m, t) = machine();
    started(&mut m, Requester::Signal, t);
    m.handle(Event::Ready, t);
    let a = m.handle(Event::Tick, t + Duration::from_secs(20));
    assert_eq!(names(&a), ["abandon Some(40)", "status", "READY"]);
    // The late confirmation changes nothing.
    assert!(m.handle(Event::MainPidSent, t).is_empty());
}

#[test]
fn the_deadline_after_mainpid_does_not_kill_the_new_main_process() {
    // From MAIN on, DONE is due within MAIN_DONE_TIMEOUT.
    let (mut m, t) = machine();
    let sent = t + Duration::from_secs(1);
    started(&mut m, Requester::Client(1), t);
    m.handle(Event::Ready, t);
    m.handle(Event::MainPidSent, sent);
    assert_eq!(m.deadline(), Some(sent + MAIN_DONE_TIMEOUT));
    assert!(m
        .handle(
            Event::Tick,
            sent + MAIN_DONE_TIMEOUT - Duration::from_millis(1)
        )
        .is_empty());
    let a = m.handle(Event::Tick, sent + MAIN_DONE_TIMEOUT);
    assert_eq!(names(&a), ["drain 40", "err 1 Failed"]);
    let text = refusal_text(&a);
    assert!(text.contains("generation 4 (pid 40) was made the main process but did not confirm the hand-over within 5s"), "{text}");
    assert!(
        text.contains("follows pid 40 now, so generation 3 (pid 30) drains"),
        "{text}"
    );
    assert_eq!(m.handed_over(), Some(40));
    // A signal: no READY=1 from the old process, which is not the main one.
    let (mut m, t) = machine();
    main_sent(&mut m, Requester::Signal, t);
    assert_eq!(
        names(&m.handle(Event::Tick, t + Duration::from_secs(12))),
        ["drain 40"]
    );
}

#[test]
fn the_new_main_process_going_away_drains_the_old_one() {
    let (mut m, t) = machine();
    main_sent(&mut m, Requester::Client(1), t);
    let a = m.handle(Event::Gone, t);
    assert_eq!(names(&a), ["drain 40", "err 1 Failed"]);
    assert!(refusal_text(&a).contains("exited right after becoming the main process"));
    let (mut m, t) = machine();
    main_sent(&mut m, Requester::Client(1), t);
    let a = m.handle(Event::Broken("reset".into()), t);
    assert_eq!(names(&a), ["drain 40", "err 1 Failed"]);
}

#[test]
fn failures_before_mainpid_abandon_the_new_generation() {
    for (event, text) in [
        (
            Event::Failed("app exited with status 1".into()),
            "app exited with status 1",
        ),
        (
            Event::Gone,
            "generation 4 (pid 40) exited before it was ready",
        ),
        (
            Event::Broken("garbage".into()),
            "the hand-over channel failed: garbage",
        ),
        (
            Event::Abort("the serving generation 3 exited".into()),
            "serving generation 3 exited",
        ),
        (Event::Done, "said DONE before it was made the main process"),
        (Event::MainPidRefused("has parent 1".into()), "has parent 1"),
    ] {
        let (mut m, t) = machine();
        started(&mut m, Requester::Client(9), t);
        if matches!(event, Event::MainPidRefused(_)) {
            m.handle(Event::Ready, t);
        }
        let a = m.handle(event, t);
        assert_eq!(
            names(&a),
            ["abandon Some(40)", "status", "err 9 Failed"],
            "{text}"
        );
        assert!(refusal_text(&a).contains(text), "{}", refusal_text(&a));
        assert_eq!(m.in_progress(), None);
        // And the next reload may start.
        assert_eq!(
            names(&m.handle(Event::Request(Requester::Client(2), ready()), t)),
            ["room"]
        );
    }
}

#[test]
fn a_failed_signal_reload_says_ready() {
    let (mut m, t) = machine();
    started(&mut m, Requester::Signal, t);
    assert_eq!(
        names(&m.handle(Event::Gone, t)),
        ["abandon Some(40)", "status", "READY"]
    );
}

#[test]
fn a_spawn_failure_has_nothing_to_abandon() {
    let (mut m, t) = machine();
    m.handle(Event::Request(Requester::Client(1), ready()), t);
    m.handle(Event::Room(Ok(())), t);
    let a = m.handle(Event::Spawned(Err("ENOENT".into())), t);
    assert_eq!(names(&a), ["status", "err 1 Failed"]);
    assert!(refusal_text(&a).contains("could not start generation 4: ENOENT"));
}

#[test]
fn a_stop_during_a_reload_abandons_it_without_ready() {
    for stage in 0..2 {
        let (mut m, t) = machine();
        started(&mut m, Requester::Client(1), t);
        if stage > 0 {
            m.handle(Event::Ready, t);
        }
        assert_eq!(
            names(&m.handle(Event::Stop, t)),
            ["abandon Some(40)", "err 1 Stopping"]
        );
        // A stop racing MAINPID=: the manager ignored it; no MAIN.
        assert!(m.handle(Event::MainPidSent, t).is_empty());
        let (mut m, t) = machine();
        started(&mut m, Requester::Signal, t);
        if stage > 0 {
            m.handle(Event::Ready, t);
        }
        assert_eq!(names(&m.handle(Event::Stop, t)), ["abandon Some(40)"]);
    }
}

#[test]
fn a_stop_after_mainpid_leaves_the_new_main_process_to_the_manager() {
    let (mut m, t) = machine();
    main_sent(&mut m, Requester::Client(1), t);
    assert_eq!(names(&m.handle(Event::Stop, t)), ["err 1 Stopping"]);
    let (mut m, t) = machine();
    main_sent(&mut m, Requester::Signal, t);
    assert!(m.handle(Event::Stop, t).is_empty());
}

#[test]
fn a_stop_while_preparing_refuses_the_reload() {
    let (mut m, t) = machine();
    m.handle(Event::Request(Requester::Client(1), ready()), t);
    assert_eq!(names(&m.handle(Event::Stop, t)), ["err 1 Stopping"]);
    // A failure reported to a client while stopping says stopping.
    let (mut m, t) = machine();
    started(&mut m, Requester::Client(1), t);
    m.stopping = true;
    assert_eq!(
        names(&m.handle(Event::Gone, t)),
        ["abandon Some(40)", "status", "err 1 Stopping"]
    );
}

#[test]
fn late_and_unexpected_events_change_nothing() {
    let (mut m, t) = machine();
    for event in [
        Event::Hello(1),
        Event::Ready,
        Event::MainPidSent,
        Event::MainPidRefused("x".into()),
        Event::Done,
        Event::Failed("x".into()),
        Event::Gone,
        Event::Broken("x".into()),
        Event::Tick,
        Event::Abort("x".into()),
        Event::Room(Ok(())),
        Event::Spawned(Ok(Some(1))),
    ] {
        assert!(m.handle(event, t).is_empty());
    }
    assert_eq!(m.in_progress(), None);
    // A second READY while MAINPID= is being sent is no second MAINPID=.
    started(&mut m, Requester::Client(1), t);
    m.handle(Event::Ready, t);
    assert!(m.handle(Event::Ready, t).is_empty());
}

#[test]
fn messages_on_the_channel_become_events() {
    let (old, new) = Channel::pair().unwrap();
    assert!(successor_events::<u32>(&old).is_empty());
    for m in [
        Message::Hello(5),
        Message::Ready,
        Message::End,
        Message::Failed("x".into()),
        Message::Done,
        Message::Pause,
        Message::Paused(50),
        Message::Resume,
    ] {
        new.send(&m).unwrap();
    }
    drop(new);
    let events: Vec<String> = successor_events::<u32>(&old)
        .iter()
        .map(|e| format!("{e:?}"))
        .collect();
    assert_eq!(
        events,
        [
            "Hello(5)",
            "Ready",
            "Failed(\"x\")",
            "Done",
            "PauseAsked",
            "ResumeAsked",
            "Gone"
        ]
    );
}

// ----- pauses for the new generation's probes -----

fn pausing() -> (Reload<u32>, Instant) {
    let (m, t) = machine();
    (m.pausing(), t)
}

#[test]
fn a_pause_is_granted_only_to_a_starting_generation_of_a_pausing_driver() {
    let (mut m, t) = pausing();
    assert_eq!(
        names(&m.handle(Event::PauseAsked, t)),
        ["no pause"],
        "no reload"
    );
    started(&mut m, Requester::Client(7), t);
    assert_eq!(names(&m.handle(Event::PauseAsked, t)), ["pause 50"]);
    assert_eq!(m.deadline(), Some(t + PAUSE_MAX), "woken at its end");
    // Asked again: what is left of the same pause.
    let later = t + Duration::from_millis(20);
    assert_eq!(names(&m.handle(Event::PauseAsked, later)), ["pause 30"]);
    assert_eq!(names(&m.handle(Event::ResumeAsked, later)), ["resume"]);
    assert_eq!(names(&m.handle(Event::ResumeAsked, later)), [] as [&str; 0]);
    assert_eq!(
        m.deadline(),
        Some(t + Duration::from_secs(2) + HANDOVER_MARGIN)
    );

    let (mut library, t) = machine();
    started(&mut library, Requester::Client(7), t);
    assert_eq!(names(&library.handle(Event::PauseAsked, t)), ["no pause"]);

    // Once ready, the new generation is past its probes.
    let (mut m, t) = pausing();
    started(&mut m, Requester::Client(7), t);
    m.handle(Event::Ready, t);
    assert_eq!(names(&m.handle(Event::PauseAsked, t)), ["no pause"]);
}

#[test]
fn a_pause_ends_by_itself_at_its_end() {
    let (mut m, t) = pausing();
    started(&mut m, Requester::Client(7), t);
    m.handle(Event::PauseAsked, t);
    assert_eq!(
        names(&m.handle(Event::Tick, t + Duration::from_millis(49))),
        [] as [&str; 0]
    );
    assert_eq!(names(&m.handle(Event::Tick, t + PAUSE_MAX)), ["resume"]);
    // Any event past the end ends it, before what the event does.
    m.handle(Event::PauseAsked, t + PAUSE_MAX);
    let late = t + Duration::from_millis(200);
    assert_eq!(
        names(&m.handle(Event::Ready, late)),
        ["resume", "mainpid 40"]
    );
}

#[test]
fn whatever_moves_the_reload_on_continues_the_program_first() {
    let ready = |m: &mut Reload<u32>, t| m.handle(Event::Ready, t);
    let failed = |m: &mut Reload<u32>, t| m.handle(Event::Failed("no".into()), t);
    let gone = |m: &mut Reload<u32>, t| m.handle(Event::Gone, t);
    let stop = |m: &mut Reload<u32>, t| m.handle(Event::Stop, t);
    let timeout =
        |m: &mut Reload<u32>, t: Instant| m.handle(Event::Tick, t + Duration::from_secs(60));
    let abort = |m: &mut Reload<u32>, t| m.handle(Event::Abort("exited".into()), t);
    type Step = fn(&mut Reload<u32>, Instant) -> Vec<Action<u32>>;
    let cases: [(&str, Step); 6] = [
        ("ready", ready),
        ("failed", failed),
        ("gone", gone),
        ("stop", stop),
        ("timeout", timeout),
        ("abort", abort),
    ];
    for (what, step) in cases {
        let (mut m, t) = pausing();
        started(&mut m, Requester::Client(7), t);
        m.handle(Event::PauseAsked, t);
        let actions = names(&step(&mut m, t + Duration::from_millis(10)));
        assert_eq!(
            actions.first().map(String::as_str),
            Some("resume"),
            "{what}: {actions:?}"
        );
        assert_eq!(
            actions.iter().filter(|a| *a == "resume").count(),
            1,
            "{what}"
        );
        if let Some(abandon) = actions.iter().position(|a| a.starts_with("abandon")) {
            assert!(abandon > 0, "{what}: continued before it is abandoned");
        }
        assert_eq!(m.pauses.current, None, "{what}");
        assert_eq!(
            m.pauses.count, 0,
            "{what}: a clean slate for the next reload"
        );
    }
}

#[test]
fn pauses_are_bounded_in_number_and_in_time() {
    let (mut m, t) = pausing();
    started(&mut m, Requester::Client(7), t);
    let mut now = t;
    let mut granted = Duration::ZERO;
    let mut count = 0;
    loop {
        let actions = m.handle(Event::PauseAsked, now);
        match actions[..] {
            [Action::Pause { for_at_most }] => {
                assert!(for_at_most <= PAUSE_MAX);
                count += 1;
                granted += for_at_most;
            }
            [Action::DeclinePause] => break,
            _ => panic!("{:?}", names(&actions)),
        }
        // Each pause runs to its end.
        now += PAUSE_MAX;
        m.handle(Event::Tick, now);
    }
    assert!(count <= PAUSES_MAX);
    assert_eq!(granted, PAUSE_TOTAL, "the whole time, and no more");
    // Short pauses: the count bounds them.
    let (mut m, t) = pausing();
    started(&mut m, Requester::Client(7), t);
    let mut now = t;
    for _ in 0..PAUSES_MAX {
        assert_eq!(names(&m.handle(Event::PauseAsked, now)), ["pause 50"]);
        now += Duration::from_millis(1);
        assert_eq!(names(&m.handle(Event::ResumeAsked, now)), ["resume"]);
    }
    assert_eq!(names(&m.handle(Event::PauseAsked, now)), ["no pause"]);
    // The next reload starts afresh.
    m.handle(Event::Failed("no".into()), now);
    started(&mut m, Requester::Client(8), now);
    assert_eq!(names(&m.handle(Event::PauseAsked, now)), ["pause 50"]);
}
