//! The harness runs the version it claims, and what differs between the
//! versions under test.

mod support;

use support::app::{main_pid, start_app};
use support::{environ_var, pidfd_id, Systemd, Version};

/// The manager's own `Version` property names the version asked for, its
/// services see neither `LD_LIBRARY_PATH` nor the unpacked tree's glibc (a
/// plain program of this machine runs), and `systemctl daemon-reexec`
/// re-executes the same version, not the machine's 252.
fn the_manager_is_the_version_asked_for(sd: &Systemd) {
    let expected = format!("{}", sd.version.number());
    let version = sd.ok(&["show", "-p", "Version", "--value"]);
    assert!(
        version.trim().starts_with(&expected),
        "asked for systemd {expected}, the manager says {version:?}"
    );
    let env = sd.path("env");
    sd.install(&[(
        "env.service",
        &format!(
            "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'env > {}'\n",
            env.display()
        ),
    )]);
    sd.ok(&["start", "env.service"]);
    let seen = std::fs::read_to_string(&env).unwrap();
    if sd.version != Version::V254 {
        assert!(!seen.contains("LD_LIBRARY_PATH="), "{seen}");
    }
    let manager = sd.manager_pid();
    sd.ok(&["daemon-reexec"]);
    support::wait_for(
        "the re-executed manager to run",
        std::time::Duration::from_secs(20),
        || {
            let out = sd.systemctl(&["show", "-p", "SystemState", "--value"]);
            (String::from_utf8_lossy(&out.stdout).trim() == "running").then_some(())
        },
    );
    assert_eq!(sd.manager_pid(), manager, "daemon-reexec keeps the pid");
    let version = sd.ok(&["show", "-p", "Version", "--value"]);
    assert!(
        version.trim().starts_with(&expected),
        "after daemon-reexec systemd {expected} became {version:?}"
    );
    std::fs::remove_file(&env).unwrap();
    sd.ok(&["start", "env.service"]);
    assert!(env.exists(), "a service starts after daemon-reexec");
}

/// The hand-over makes the new generation the main process with its pidfd
/// (`MAINPIDFD=1`, the pidfd attached, and `MAINPIDFDID=`) where the manager
/// says it takes one (`$MANAGERPIDFDID`, 258+), and with `MAINPID=` plus
/// `MAINPIDFDID=` elsewhere: 257 checks the id, 252 and 254 ignore it. No
/// version warns about either, and every one says "we are happy".
fn the_main_pid_change_uses_the_pidfd_where_the_manager_takes_it(sd: &Systemd) {
    let (_port, _app) = start_app(sd, "receive serve web ready", "", "");
    let first = main_pid(sd);
    let announced = environ_var(first, "MANAGERPIDFDID").is_some();
    // What each version tells its services (a fact of the versions, which
    // the product does not look at).
    assert_eq!(announced, sd.version.number() >= 258, "$MANAGERPIDFDID");
    for round in 1..=2 {
        let before = main_pid(sd);
        sd.ok(&["reload", "app.service"]);
        let main = main_pid(sd);
        assert_ne!(main, before, "round {round}");
        let id = pidfd_id(main);
        let message = sd.wait_for_journal(&format!("MAINPID={main}"));
        assert!(
            message.contains(&format!("MAINPIDFDID={id}")),
            "round {round}: {message}"
        );
        assert_eq!(
            message.contains("MAINPIDFD=1"),
            announced,
            "round {round}: {message}"
        );
        sd.wait_for_journal(&format!(
            "New main PID {main} belongs to service, we are happy"
        ));
    }
    let journal = sd.journal();
    for warning in [
        "Got extra auxiliary fds",
        "Got MAINPIDFD=1 with",
        "mismatches with received MAINPIDFDID",
        "Failed to parse MAINPIDFDID",
        "not our child",
    ] {
        assert!(!journal.contains(warning), "{warning:?} in\n{journal}");
    }
}

on_each_systemd!(
    the_manager_is_the_version_asked_for,
    the_main_pid_change_uses_the_pidfd_where_the_manager_takes_it,
);
