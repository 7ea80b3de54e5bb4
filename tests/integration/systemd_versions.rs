//! The harness runs the version it claims, and what differs between the
//! versions under test.

use std::time::Duration;

use crate::support::app::{assert_new_main, main_pid, start_app, wait_gone};
use crate::support::{
    answer, environ_var, pidfd_id, report_lines, wait_for, Systemd, Traffic, Version,
};

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
    crate::support::wait_for(
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

/// `systemctl daemon-reexec` (what a systemd package upgrade does) between
/// hand-overs: the unit stays supervised by the re-executed manager, the
/// next reload hands over to a new main process that is its child, and a
/// stop afterwards is graceful (the program drains on SIGTERM; nothing is
/// killed).
fn daemon_reexec_between_hand_overs_keeps_the_unit_supervised(sd: &Systemd) {
    let (port, app) = start_app(sd, "receive serve web ready", "", "");
    let traffic = Traffic::start(port, 2);
    let mut mains = vec![main_pid(sd)];
    for round in 1..=3 {
        sd.ok(&["reload", "app.service"]);
        let main = assert_new_main(sd, main_pid(sd), &mains, &format!("round {round}"));
        mains.push(main);
        wait_gone(&app.starts()[round - 1]);
        if round < 3 {
            sd.ok(&["daemon-reexec"]);
            wait_for("the re-executed manager", Duration::from_secs(20), || {
                let out = sd.systemctl(&["show", "-p", "SystemState", "--value"]);
                (String::from_utf8_lossy(&out.stdout).trim() == "running").then_some(())
            });
            assert_eq!(
                main_pid(sd),
                main,
                "round {round}: the manager lost the main PID"
            );
            assert_eq!(sd.show("app.service", "ActiveState"), "active");
        }
    }
    let count = traffic.stop();
    assert_eq!(count.failed, 0, "{:?}", count.failures);
    assert_eq!(answer(port), format!("pid {}", app.starts()[3]));
    sd.ok(&["stop", "app.service"]);
    assert_eq!(sd.show("app.service", "ActiveState"), "inactive");
    assert_eq!(sd.show("app.service", "Result"), "success");
    // Every generation drained on SIGTERM: three after their hand-over, the
    // last at the stop.
    assert_eq!(report_lines(&app.report, "stopped").len(), 4);
    let journal = sd.journal();
    for bad in [
        "SIGKILL",
        "Killing process",
        "not our child",
        "Supervising process",
    ] {
        assert!(!journal.contains(bad), "{bad:?} in\n{journal}");
    }
}

/// The inode of the listener named web in each generation's report.
fn web_inodes(report: &std::path::Path) -> Vec<String> {
    report_lines(report, "fd web ")
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().to_owned())
        .collect()
}

/// `FileDescriptorStorePreserve=yes` (254+) keeps fdstore-exec's listener
/// across `systemctl stop` and `start` while the unit stays loaded, as it
/// does when something references it (here a target that wants it, as
/// `multi-user.target` does for an enabled unit). The catch: 254 and 257
/// unload a unit nothing references right after the stop, and its store
/// with it; 262 keeps it. 252 does not know the setting: it always closes
/// the store at a stop.
fn the_fd_store_is_preserved_across_stop_while_the_unit_is_loaded(sd: &Systemd) {
    let n = sd.version.number();
    let preserve = if n >= 254 {
        "FileDescriptorStorePreserve=yes\n"
    } else {
        ""
    };
    let (port, app) = start_app(sd, "receive serve web ready", "", preserve);
    // Referenced: a target wants it, so it stays loaded after a stop.
    sd.install(&[("keep.target", "[Unit]\nWants=app.service\n")]);
    sd.ok(&["start", "keep.target"]);
    sd.ok(&["stop", "app.service"]);
    if n >= 254 {
        assert_eq!(sd.show("app.service", "NFileDescriptorStore"), "1");
    }
    sd.ok(&["start", "app.service"]);
    assert_eq!(answer(port), format!("pid {}", app.starts()[1]));
    let inodes = web_inodes(&app.report);
    assert_eq!(inodes.len(), 2, "{inodes:?}");
    assert_eq!(
        inodes[0] == inodes[1],
        n >= 254,
        "kept across the stop: {inodes:?}"
    );
    // Unreferenced: nothing wants it once the target is gone.
    sd.ok(&["stop", "keep.target"]);
    std::fs::remove_file(sd.dir().join("units/keep.target")).unwrap();
    sd.ok(&["daemon-reload"]);
    sd.ok(&["stop", "app.service"]);
    sd.ok(&["start", "app.service"]);
    let inodes = web_inodes(&app.report);
    assert_eq!(inodes.len(), 3, "{inodes:?}");
    assert_eq!(
        inodes[1] == inodes[2],
        n >= 262,
        "an unreferenced unit keeps its store across a stop only on 262: {inodes:?}"
    );
}

on_each_systemd!(
    daemon_reexec_between_hand_overs_keeps_the_unit_supervised,
    the_fd_store_is_preserved_across_stop_while_the_unit_is_loaded,
    the_manager_is_the_version_asked_for,
    the_main_pid_change_uses_the_pidfd_where_the_manager_takes_it,
);
