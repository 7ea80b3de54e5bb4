//! Property tests ("fuzz targets") for every parser of outside input: the
//! listener spec, the listener file, the `LISTEN_*` environment, the
//! hand-over environment and channel messages, and the control protocol.
//!
//! They run with `cargo test` (a modest number of cases, so CI runs them on
//! every build). The properties: no input makes a parser panic; what a
//! formatter writes parses back to the same value; an error names the bad
//! part of the input.

use proptest::prelude::*;

use crate::exec::parse_listen_file;
use crate::listen::{parse_environment, Environment};
use crate::protocol::control::{Refusal, Reply, Request};
use crate::protocol::handover::{Inheritance, Message};
use crate::spec::ListenerSpec;

/// 256 cases per property, or `PROPTEST_CASES` for a longer run.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Spec-like text: mostly well-formed pieces, with junk mixed in, so that
/// both the success and the error paths are reached.
fn spec_text() -> impl Strategy<Value = String> {
    let name = prop_oneof!["[a-z][a-z0-9_.-]{0,10}", ".{0,6}", Just(String::new())];
    let kind = prop_oneof![
        Just("tcp"),
        Just("udp"),
        Just("unix"),
        Just("unix-dgram"),
        Just("sctp"),
        Just(""),
    ];
    let address = prop_oneof![
        (0u8..=255, 0u8..=255, any::<u16>()).prop_map(|(a, b, p)| format!("127.{a}.{b}.1:{p}")),
        any::<u16>().prop_map(|p| format!("[::1]:{p}")),
        any::<u16>().prop_map(|p| format!("[::]:{p}")),
        "/[a-z/._-]{1,40}",
        "@[a-z/._-]{1,20}",
        "[a-z0-9:.\\[\\]@/]{0,20}",
        ".{0,20}",
    ];
    let option = prop_oneof![
        (1u32..100_000).prop_map(|n| format!("backlog={n}")),
        Just("reuseport".to_owned()),
        Just("v6only".to_owned()),
        Just("freebind".to_owned()),
        Just("nonblocking".to_owned()),
        (0u32..0o10000).prop_map(|m| format!("mode={m:04o}")),
        Just("owner=root".to_owned()),
        Just("group=0".to_owned()),
        "[a-z]{1,8}(=[a-z0-9]{0,4})?",
    ];
    (name, kind, address, proptest::collection::vec(option, 0..4)).prop_map(
        |(name, kind, address, options)| {
            let mut text = format!("{name}={kind}:{address}");
            for option in options {
                text.push(',');
                text.push_str(&option);
            }
            text
        },
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_spec_never_panics_round_trips_and_names_its_bad_part(
        text in prop_oneof![spec_text(), ".{0,60}"]
    ) {
        match ListenerSpec::parse(&text) {
            Ok(spec) => {
                let canonical = spec.to_string();
                let again = ListenerSpec::parse(&canonical);
                prop_assert_eq!(again.as_ref(), Ok(&spec), "{}", canonical);
            }
            Err(e) => {
                prop_assert_eq!(&e.input, &text);
                prop_assert!(
                    text.contains(&e.part),
                    "the error's part {:?} is not in {:?}", e.part, text
                );
                prop_assert!(!e.problem.is_empty());
                // The example it offers is itself valid.
                prop_assert!(ListenerSpec::parse(e.example).is_ok(), "{}", e.example);
            }
        }
    }

    #[test]
    fn a_listener_file_never_panics_and_an_error_names_the_first_bad_line(
        lines in proptest::collection::vec(
            prop_oneof![
                spec_text(),
                Just(String::new()),
                "#.{0,20}",
                "[ \t]{1,3}",
                ".{0,30}",
            ],
            0..12,
        )
    ) {
        let text = lines.join("\n");
        let first_bad = text.lines().enumerate().find_map(|(i, line)| {
            let line = line.trim();
            (!line.is_empty() && !line.starts_with('#') && ListenerSpec::parse(line).is_err())
                .then_some(i + 1)
        });
        match parse_listen_file(&text) {
            Ok(specs) => {
                prop_assert_eq!(first_bad, None);
                // Written back one per line, the file parses to the same specs.
                let written: Vec<String> = specs.iter().map(ToString::to_string).collect();
                let again = parse_listen_file(&format!("# written\n{}\n", written.join("\n")));
                prop_assert_eq!(again.as_ref().ok(), Some(&specs));
            }
            Err((line, problem)) => {
                prop_assert_eq!(Some(line), first_bad, "{}", problem);
                let bad = text.lines().nth(line - 1).unwrap().trim();
                prop_assert!(problem.contains(&format!("{bad:?}")), "{} / {}", bad, problem);
            }
        }
    }

    #[test]
    fn the_listen_environment_never_panics(
        pid in prop_oneof![Just("42".to_owned()), ".{0,12}"],
        pidfdid in proptest::option::of(prop_oneof![Just("7".to_owned()), ".{0,12}"]),
        fds in proptest::option::of(prop_oneof!["[0-9]{1,12}", ".{0,12}"]),
        names in proptest::option::of(".{0,40}"),
    ) {
        let env = Environment {
            listen_pid: Some(&pid),
            listen_pidfdid: pidfdid.as_deref(),
            listen_fds: fds.as_deref(),
            listen_fdnames: names.as_deref(),
        };
        if let Ok(got) = parse_environment(&env, 42, || Some(7)) {
            // Never more names than LISTEN_FDS announced.
            let announced: usize = fds.as_deref().and_then(|n| n.trim().parse().ok()).unwrap_or(0);
            prop_assert!(got.len() <= announced);
        }
    }

    #[test]
    fn listen_fdnames_round_trip(names in proptest::collection::vec("[a-zA-Z0-9_.-]{0,8}", 1..20)) {
        let joined = names.join(":");
        let count = names.len().to_string();
        let env = Environment {
            listen_pid: Some("42"),
            listen_pidfdid: None,
            listen_fds: Some(&count),
            listen_fdnames: Some(&joined),
        };
        prop_assert_eq!(parse_environment(&env, 42, || None).unwrap(), names);
    }

    #[test]
    fn the_handover_environment_round_trips_and_never_panics(
        fd in 3i32..100_000,
        generation in any::<u64>(),
        older in proptest::collection::vec(any::<u64>(), 0..5),
        managed in proptest::collection::vec("[a-zA-Z0-9_.-]{1,8}", 0..10),
        junk in ".{0,60}",
    ) {
        let inheritance = Inheritance { fd, generation, older, managed };
        prop_assert_eq!(Inheritance::parse(&inheritance.to_env()), Ok(inheritance));
        if let Err(e) = Inheritance::parse(&junk) {
            prop_assert!(e.contains("FDSTORE_EXEC_HANDOVER"), "{}", e);
            prop_assert!(e.contains(&format!("{junk:?}")), "{}", e);
        }
    }

    #[test]
    fn channel_messages_round_trip_and_never_panic(
        pid in any::<u32>(),
        ms in any::<u64>(),
        reason in ".{0,60}",
        junk in ".{0,60}",
    ) {
        for message in [
            Message::Hello(pid),
            Message::Ready,
            Message::Failed(reason.clone()),
            Message::Main(ms),
            Message::Done,
            Message::End,
            Message::Pause,
            Message::Paused(ms),
            Message::Resume,
        ] {
            prop_assert_eq!(Message::parse(&message.to_text()), Some(message));
        }
        let _ = Message::parse(&junk);
    }

    #[test]
    fn control_packets_round_trip_and_never_panic(
        // Replies are trimmed (a trailing newline is allowed): a text
        // without surrounding white space comes back as it was sent.
        text in ".{0,60}".prop_filter("no surrounding white space", |t| t.trim() == t),
        junk in ".{0,60}",
    ) {
        let _ = Request::parse(&junk);
        let _ = Reply::parse(&junk);
        prop_assert_eq!(Request::parse("RELOAD\n"), Some(Request::Reload));
        let ok = Reply::Ok(text.clone());
        prop_assert_eq!(Reply::parse(&ok.to_text()), Some(ok));
        for kind in Refusal::ALL {
            let err = Reply::Err(kind, text.clone());
            prop_assert_eq!(Reply::parse(&err.to_text()), Some(err));
        }
    }
}
