//! Descriptors put into the fd store survive restarts and can be removed.

use crate::support::{answer, free_port, probe, report_lines, wait_for_line, Systemd};

fn service(report: &std::path::Path, store_max: u32, actions: &str) -> String {
    format!(
        "[Service]\nType=notify\nFileDescriptorStoreMax={store_max}\nTimeoutStartSec=20\n\
         ExecStart={} --report {} {actions}\n",
        probe().display(),
        report.display()
    )
}

fn stored_listener_survives_restart_as_the_same_socket(sd: &Systemd) {
    let port = free_port();
    let report = sd.path("report");
    let actions = format!("receive bind-or-store web=tcp:127.0.0.1:{port} serve web ready");
    sd.install(&[("app.service", &service(&report, 4, &actions))]);
    sd.ok(&["start", "app.service"]);
    let created = wait_for_line(&report, "the created listener", |l| {
        l.starts_with("created web ")
    });
    let inode = created.rsplit(' ').next().unwrap().to_owned();
    let first_pid = sd.show("app.service", "MainPID");
    assert_eq!(answer(port), format!("pid {first_pid}"));

    sd.ok(&["restart", "app.service"]);
    let second_pid = sd.show("app.service", "MainPID");
    assert_ne!(first_pid, second_pid);
    let inherited = report_lines(&report, "inherited web ");
    assert_eq!(
        inherited,
        [format!("inherited web {inode}")],
        "same socket (inode) after restart"
    );
    let fds = report_lines(&report, "fd web ");
    assert_eq!(fds.len(), 1, "exactly one descriptor named web: {fds:?}");
    assert_eq!(answer(port), format!("pid {second_pid}"));

    // A plain stop (no restart) flushes the store on 252 and 254 without
    // FileDescriptorStorePreserve=.
    sd.ok(&["stop", "app.service"]);
    sd.ok(&["start", "app.service"]);
    assert_eq!(
        report_lines(&report, "created web ").len(),
        2,
        "re-created after a stop"
    );
}

fn restart_keeps_the_listener_accepting(sd: &Systemd) {
    let port = free_port();
    let report = sd.path("report");
    // The program needs 300 ms to start: during that gap nobody accepts, and
    // clients must be queued on the stored listener instead of refused.
    let actions =
        format!("sleep 300 receive bind-or-store web=tcp:127.0.0.1:{port} serve web ready");
    sd.install(&[("app.service", &service(&report, 4, &actions))]);
    sd.ok(&["start", "app.service"]);
    let first = sd.show("app.service", "MainPID");
    let mut restart = sd.systemctl_command();
    restart.args(["restart", "app.service"]);
    let mut child = restart.spawn().unwrap();
    let mut answers = Vec::new();
    while child.try_wait().unwrap().is_none() {
        answers.push(answer(port));
    }
    assert!(child.wait().unwrap().success());
    answers.push(answer(port));
    let second = sd.show("app.service", "MainPID");
    assert_ne!(first, second);
    for a in &answers {
        assert!(
            a == &format!("pid {first}") || a == &format!("pid {second}"),
            "{a}"
        );
    }
    let by_new = answers
        .iter()
        .filter(|a| **a == format!("pid {second}"))
        .count();
    assert!(
        answers.len() > 2 && by_new >= 2,
        "connections made during the restart were answered by the new generation: {answers:?}"
    );
}

fn removed_descriptor_is_not_passed_again(sd: &Systemd) {
    let port = free_port();
    let report = sd.path("report");
    sd.install(&[(
        "app.service",
        &service(
            &report,
            4,
            &format!("receive bind-or-store web=tcp:127.0.0.1:{port} ready"),
        ),
    )]);
    sd.ok(&["start", "app.service"]);
    wait_for_line(&report, "created", |l| l.starts_with("created web "));

    // The next generation receives it, then removes it from the store. The
    // unit file changes, daemon-reload keeps the store.
    sd.install(&[(
        "app.service",
        &service(&report, 4, "receive remove web ready"),
    )]);
    sd.ok(&["restart", "app.service"]);
    assert_eq!(
        report_lines(&report, "fd web ").len(),
        1,
        "received before removal"
    );
    wait_for_line(&report, "removal", |l| l == "removed web");

    sd.install(&[("app.service", &service(&report, 4, "receive ready"))]);
    sd.ok(&["restart", "app.service"]);
    let received = report_lines(&report, "received ");
    assert_eq!(received.last().unwrap(), "received 0", "{received:?}");
    // The socket is really closed: nothing listens on the port any more.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

fn disabled_store_is_reported_where_the_manager_says_so(sd: &Systemd) {
    let port = free_port();
    let report = sd.path("report");
    let actions = format!("fdstore-max store-result web=tcp:127.0.0.1:{port} receive ready");
    sd.install(&[
        ("nostore.service", &service(&report, 0, &actions)),
        (
            "store.service",
            &service(&sd.path("report2"), 3, "fdstore-max ready"),
        ),
    ]);
    sd.ok(&["start", "nostore.service", "store.service"]);
    let max = wait_for_line(&report, "fdstore-max", |l| l.starts_with("fdstore-max "));
    let store = wait_for_line(&report, "store result", |l| l.starts_with("store "));
    let max_enabled = wait_for_line(&sd.path("report2"), "fdstore-max", |l| {
        l.starts_with("fdstore-max ")
    });
    if sd.version.number() >= 254 {
        // systemd 254 exports $FDSTORE only when the store is enabled, so
        // the library can tell the two apart.
        assert_eq!(max_enabled, "fdstore-max 3");
        assert_eq!(max, "fdstore-max unknown");
    } else {
        // systemd 252 says nothing either way.
        assert_eq!(max_enabled, "fdstore-max unknown");
        assert_eq!(max, "fdstore-max unknown");
    }
    // Either way the message is sent and silently dropped by the manager; the
    // descriptor does not come back after a restart.
    assert_eq!(store, "store ok Sent");
    sd.ok(&["restart", "nostore.service"]);
    let received = report_lines(&report, "received ");
    assert_eq!(received, ["received 0", "received 0"]);
}

on_each_systemd!(
    stored_listener_survives_restart_as_the_same_socket,
    restart_keeps_the_listener_accepting,
    removed_descriptor_is_not_passed_again,
    disabled_store_is_reported_where_the_manager_says_so,
);
