//! Notifications from the library reach a real manager.

use crate::support::{probe, wait_for_line, Systemd};

fn unit(report: &std::path::Path, extra: &str, actions: &str) -> String {
    format!(
        "[Service]\nType=notify\n{extra}ExecStart={} --report {} {actions}\n",
        probe().display(),
        report.display()
    )
}

fn ready_and_status_are_visible(sd: &Systemd) {
    let report = sd.path("report");
    sd.install(&[(
        "app.service",
        &unit(
            &report,
            "TimeoutStartSec=20\n",
            "status warming-up status serving-generation-1 ready",
        ),
    )]);
    // `systemctl start` of a Type=notify service returns only after READY=1.
    sd.ok(&["start", "app.service"]);
    assert_eq!(sd.show("app.service", "ActiveState"), "active");
    assert_eq!(sd.show("app.service", "SubState"), "running");
    assert_eq!(sd.show("app.service", "StatusText"), "serving-generation-1");
}

fn without_ready_the_start_times_out(sd: &Systemd) {
    let report = sd.path("report");
    sd.install(&[(
        "slow.service",
        &unit(&report, "TimeoutStartSec=1\n", "status never-ready"),
    )]);
    let out = sd.systemctl(&["start", "slow.service"]);
    assert!(
        !out.status.success(),
        "a service that never says READY=1 must fail to start"
    );
    assert_eq!(sd.show("slow.service", "Result"), "timeout");
}

fn barrier_waits_for_the_manager_and_times_out_when_it_does_not_answer(sd: &Systemd) {
    use rustix::process::Signal;
    let report = sd.path("report");
    let go = sd.path("go");
    let go_again = sd.path("go-again");
    let actions = format!(
        "ready await {} status before-barrier barrier 10000 await {} barrier 300",
        go.display(),
        go_again.display()
    );
    sd.install(&[(
        "app.service",
        &unit(&report, "TimeoutStartSec=20\n", &actions),
    )]);
    sd.ok(&["start", "app.service"]);

    // With the manager frozen, the barrier must not return.
    sd.signal_manager(Signal::STOP);
    std::fs::write(&go, "").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let early = std::fs::read_to_string(&report).unwrap();
    sd.signal_manager(Signal::CONT);
    assert!(
        !early.contains("barrier"),
        "the barrier returned while the manager was stopped:\n{early}"
    );
    // Once the manager runs again it processes the status, then the barrier.
    wait_for_line(&report, "the barrier", |l| l == "barrier ok");
    assert_eq!(sd.show("app.service", "StatusText"), "before-barrier");

    // A barrier the manager does not answer in time is an error, not a hang.
    sd.signal_manager(Signal::STOP);
    std::fs::write(&go_again, "").unwrap();
    let line = wait_for_line(&report, "the second barrier's outcome", |l| {
        l.starts_with("barrier error")
    });
    sd.signal_manager(Signal::CONT);
    assert!(
        line.contains("did not confirm the notification barrier within 300ms"),
        "{line}"
    );
}

on_each_systemd!(
    ready_and_status_are_visible,
    without_ready_the_start_times_out,
    barrier_waits_for_the_manager_and_times_out_when_it_does_not_answer,
);
