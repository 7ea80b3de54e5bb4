//! The fdstore library's in-process upgrades (`fdstore::Upgrader`) under
//! real systemd: both example servers (std and tokio) hand over under HTTP
//! load with no failed request, stay the manager's own children, roll back a
//! broken version, upgrade on the program's own call, and end a generation
//! that does not drain by its deadline.

use std::time::Duration;

use crate::support::app::{assert_new_main, fdstore_exec, main_pid, wait_gone};
use crate::support::load::{Load, Mode};
use crate::support::{
    assert_names_itself, environ_var, example, fd_targets, free_port, settle, wait_for, Systemd,
};

/// One `GET path` on a new connection: the response body, or what failed.
fn get(port: u16, path: &str) -> Result<String, String> {
    crate::support::http::get(port, path, Duration::from_secs(60))
}

/// Asserts that the load saw no failed request.
fn assert_no_failures(report: &crate::support::load::LoadReport) {
    assert_eq!(
        report.failed(),
        0,
        "{:?} {:?}",
        report.failures,
        report.examples
    );
}

/// The unit's new main process, after asserting that it replaced `old` and
/// is the manager's own child.
fn new_main(sd: &Systemd, old: u32) -> u32 {
    assert_new_main(sd, main_pid(sd), &[old], "the upgrade")
}

/// Which example, and how its listener arrives.
#[derive(Clone, Copy)]
enum Example {
    /// upgrade_std, listener created by the program and kept in the fd store.
    Std,
    /// upgrade_tokio, listener from a socket unit.
    Tokio,
}

/// Installs and starts app.service running the example; returns the port.
fn start(sd: &Systemd, which: Example, drain_timeout: &str) -> u16 {
    let port = free_port();
    let config = sd.path("app.conf");
    std::fs::write(&config, "hello\n").unwrap();
    let (name, socket) = match which {
        Example::Std => ("upgrade_std", None),
        Example::Tokio => (
            "upgrade_tokio",
            Some(format!(
                "[Socket]\nListenStream=127.0.0.1:{port}\nFileDescriptorName=http\nBacklog=1024\n"
            )),
        ),
    };
    let requires = if socket.is_some() {
        "[Unit]\nRequires=app.socket\nAfter=app.socket\n"
    } else {
        ""
    };
    let service = format!(
        "{requires}[Service]\nType=notify\nFileDescriptorStoreMax=4\nKillMode=mixed\nTimeoutStartSec=30\n\
         ExecStart={} --listen http=tcp:127.0.0.1:{port} --config {} --drain-timeout {drain_timeout}\n\
         ExecReload={} reload\n",
        example(name).display(),
        config.display(),
        fdstore_exec(),
    );
    let mut units = vec![("app.service".to_owned(), service)];
    if let Some(socket) = socket {
        units.push(("app.socket".to_owned(), socket));
    }
    let units: Vec<(&str, &str)> = units
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    sd.install(&units);
    sd.ok(&["start", "app.service"]);
    port
}

fn hands_over_under_traffic(sd: &Systemd, which: Example) {
    let port = start(sd, which, "10s");
    let first = main_pid(sd);
    assert!(get(port, "/").unwrap().contains("generation 1)"));
    let loads = [
        Load::start(port, Mode::NewConnection, 2),
        Load::start(port, Mode::KeepAlive, 2),
    ];
    let mut mains = vec![first];
    // Listeners from a socket unit come with LISTEN_PIDFDID on 259+; every
    // later generation must get one naming itself (or none, like the first).
    let pidfd_id = environ_var(first, "LISTEN_PIDFDID").is_some();
    let announced = environ_var(first, "MANAGERPIDFDID").is_some();
    if matches!(which, Example::Tokio) && sd.version.number() >= 259 {
        assert!(
            pidfd_id,
            "systemd {} sets LISTEN_PIDFDID",
            sd.version.number()
        );
    }
    for round in 2..=4u64 {
        std::thread::sleep(Duration::from_millis(300));
        sd.ok(&["reload", "app.service"]);
        let main = new_main(sd, *mains.last().unwrap());
        assert_names_itself(main, pidfd_id, &format!("generation {round}"));
        assert!(!mains.contains(&main), "round {round}: a pid came back");
        // The old generation drains and exits by itself.
        wait_gone(&mains.last().unwrap().to_string());
        mains.push(main);
        let body = get(port, "/").unwrap();
        assert!(
            body.contains(&format!("(pid {main}, generation {round})")),
            "round {round}: {body}"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    for load in loads {
        let report = load.stop();
        assert_no_failures(&report);
        assert!(report.ok > 100, "too little traffic to mean anything");
    }
    let journal = sd.journal();
    assert!(!journal.contains("not our child"), "{journal}");
    assert!(journal.contains("the hand-over took"), "{journal}");
    // The main-PID change as fdstore-exec makes it (one shared function):
    // the pidfd where the manager says it takes one, no warning anywhere.
    assert!(!journal.contains("Got extra auxiliary fds"), "{journal}");
    assert_eq!(journal.contains("MAINPIDFD=1"), announced, "{journal}");
    // One process left: the last generation.
    assert_eq!(sd.unit_processes("app.service"), vec![mains[3]]);
    sd.ok(&["stop", "app.service"]);
    assert_eq!(sd.show("app.service", "Result"), "success");
}

fn std_example_hands_over_under_traffic(sd: &Systemd) {
    hands_over_under_traffic(sd, Example::Std);
}

fn tokio_example_hands_over_under_traffic(sd: &Systemd) {
    hands_over_under_traffic(sd, Example::Tokio);
}

fn a_broken_new_version_rolls_back(sd: &Systemd) {
    let port = start(sd, Example::Std, "10s");
    let first = main_pid(sd);
    let load = Load::start(port, Mode::NewConnection, 2);
    std::fs::write(sd.path("app.conf"), "broken\n").unwrap();
    let out = sd.systemctl(&["reload", "app.service"]);
    assert!(!out.status.success(), "the reload must fail");
    sd.wait_for_journal("exited before it was ready; generation 1 keeps serving");
    assert_eq!(main_pid(sd), first);
    assert!(sd
        .show("app.service", "StatusText")
        .contains("reload failed: generation 2 (pid "));
    assert_eq!(sd.show("app.service", "ActiveState"), "active");
    // Fixed: the next reload succeeds, also when the program asks for it.
    std::fs::write(sd.path("app.conf"), "fixed\n").unwrap();
    let answer = get(port, "/upgrade").unwrap();
    assert!(
        answer.starts_with("upgraded: generation 2 (pid "),
        "{answer}"
    );
    new_main(sd, first);
    wait_gone(&first.to_string());
    assert!(get(port, "/").unwrap().starts_with("fixed (pid "));
    assert_no_failures(&load.stop());
}

fn a_second_upgrade_during_one_is_refused(sd: &Systemd) {
    let port = start(sd, Example::Std, "10s");
    let main = main_pid(sd);
    // The new version takes two seconds to be ready.
    std::fs::write(sd.path("app.conf"), "slow-start\n").unwrap();
    let first = std::thread::spawn(move || get(port, "/upgrade"));
    wait_for(
        "the new generation to start",
        Duration::from_secs(20),
        || (sd.unit_processes("app.service").len() == 2).then_some(()),
    );
    let second = std::process::Command::new(fdstore_exec())
        .args(["reload", "--pid", &main.to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(75), "{stderr}");
    assert!(
        stderr.contains("a reload is already in progress"),
        "{stderr}"
    );
    let first = first.join().unwrap().unwrap();
    assert!(first.starts_with("upgraded: generation 2"), "{first}");
}

fn the_drain_deadline_ends_the_old_generation(sd: &Systemd) {
    let port = start(sd, Example::Std, "1s");
    let old = main_pid(sd);
    // A request the old generation cannot finish within its deadline.
    let slow = std::thread::spawn(move || get(port, "/slow"));
    std::thread::sleep(Duration::from_millis(300));
    sd.ok(&["reload", "app.service"]);
    let new = main_pid(sd);
    assert_ne!(new, old);
    wait_gone(&old.to_string());
    sd.wait_for_journal("generation 1 did not finish draining within 1s; exiting");
    assert!(slow.join().unwrap().is_err(), "the slow request was cut");
    assert!(get(port, "/").unwrap().contains("generation 2)"));
}

/// Once the old generation is gone, the new one lets go of all it held of
/// it (the channel and the pidfd it counted it by, within the bound on
/// generations): it holds what the first generation held, not one entry
/// more per generation until the next upgrade.
fn a_drained_generation_is_let_go_of(sd: &Systemd) {
    let port = start(sd, Example::Std, "5s");
    let first = main_pid(sd);
    let held = fd_targets(first);
    sd.ok(&["reload", "app.service"]);
    let new = new_main(sd, first);
    wait_gone(&first.to_string());
    let now = settle(
        Duration::from_secs(10),
        || fd_targets(new),
        |fds| fds.len() == held.len(),
    );
    assert_eq!(
        now.len(),
        held.len(),
        "generation 2 holds {now:?}; generation 1 held {held:?}"
    );
    assert!(get(port, "/").unwrap().contains("generation 2)"));
}

fn reload_by_signal(sd: &Systemd) {
    // 253+: Type=notify-reload sends SIGHUP and waits for RELOADING=1, then
    // READY=1 (from the new main process). On 252 the same SIGHUP is sent by
    // hand.
    let port = start(sd, Example::Std, "10s");
    let first = main_pid(sd);
    let load = Load::start(port, Mode::NewConnection, 2);
    if sd.version.has_notify_reload() {
        let text = std::fs::read_to_string(sd.dir().join("units/app.service")).unwrap();
        let text = text
            .replace("Type=notify\n", "Type=notify-reload\n")
            .lines()
            .filter(|l| !l.starts_with("ExecReload="))
            .collect::<Vec<_>>()
            .join("\n");
        sd.install(&[("app.service", &text)]);
        assert_eq!(sd.show("app.service", "Type"), "notify-reload");
        sd.ok(&["reload", "app.service"]);
    } else {
        sd.ok(&["kill", "--kill-who=main", "--signal=SIGHUP", "app.service"]);
        wait_for("a new main process", Duration::from_secs(20), || {
            (main_pid(sd) != first).then_some(())
        });
    }
    new_main(sd, first);
    sd.wait_for_property("app.service", "ActiveState", "active");
    wait_gone(&first.to_string());
    assert!(get(port, "/").unwrap().contains("generation 2)"));
    assert_no_failures(&load.stop());
    assert!(!sd.journal().contains("not our child"));
}

/// A SIGHUP while a reload by SIGHUP is in progress must not answer the
/// manager: `READY=1` then would end the unit's reload state while the new
/// generation is still starting (the library used to send `RELOADING=1`
/// and `READY=1` for it; fdstore-exec stayed silent).
fn a_sighup_during_a_reload_leaves_the_reload_state_alone(sd: &Systemd) {
    let port = start(sd, Example::Std, "10s");
    let first = main_pid(sd);
    // The new version takes two seconds to be ready.
    std::fs::write(sd.path("app.conf"), "slow-start\n").unwrap();
    let hup = ["kill", "--kill-who=main", "--signal=SIGHUP", "app.service"];
    sd.ok(&hup);
    wait_for(
        "the new generation to start",
        Duration::from_secs(20),
        || (sd.unit_processes("app.service").len() == 2).then_some(()),
    );
    // RELOADING=1 from the first SIGHUP.
    sd.wait_for_property("app.service", "ActiveState", "reloading");
    sd.ok(&hup);
    sd.wait_for_journal("reload refused: a reload is already in progress");
    // Until the new generation is the main process, the unit is reloading.
    while main_pid(sd) == first {
        let state = sd.show("app.service", "ActiveState");
        if main_pid(sd) != first {
            break;
        }
        assert_eq!(
            state, "reloading",
            "a second SIGHUP ended the reload state early"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    new_main(sd, first);
    sd.wait_for_property("app.service", "ActiveState", "active");
    // A connection the old generation accepted before its drain notice may
    // still get its answer.
    wait_for("generation 2 to answer", Duration::from_secs(20), || {
        get(port, "/")
            .ok()
            .filter(|b| b.contains("generation 2)"))
            .map(|_| ())
    });
}

on_each_systemd!(
    a_drained_generation_is_let_go_of,
    reload_by_signal,
    a_sighup_during_a_reload_leaves_the_reload_state_alone,
    std_example_hands_over_under_traffic,
    tokio_example_hands_over_under_traffic,
    a_broken_new_version_rolls_back,
    a_second_upgrade_during_one_is_refused,
    the_drain_deadline_ends_the_old_generation,
);
