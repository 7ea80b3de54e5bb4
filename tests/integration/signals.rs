//! Which signals reload and which reach the program: `--reload-signal` and
//! `--forward-signal` under real systemd, with the signals sent the way an
//! operator does (`systemctl kill --kill-whom=main`, `systemctl reload`).

use std::time::Duration;

use crate::support::app::{fdstore_exec, main_pid, wait_gone};
use crate::support::{free_port, report_lines, wait_for, Systemd};

/// A program that records the signals it gets (`got SIG PID`), started
/// with `--ready exec+unproven` since a shell cannot send READY=1 and this
/// one never accepts on its listener (the accept proof would refuse it).
fn install(sd: &Systemd, options: &str, extra: &str) -> std::path::PathBuf {
    let report = sd.path("report");
    let script = sd.path("signals.sh");
    let traps: String = ["HUP", "USR1", "USR2", "WINCH", "TTIN"]
        .iter()
        .map(|s| format!("trap 'echo \"got {s} $$\" >> {}' {s}\n", report.display()))
        .collect();
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n{traps}trap 'exit 0' TERM\necho \"start $$\" >> {r}\n\
             while :; do sleep 1 & wait $!; done\n",
            r = report.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let port = free_port();
    sd.install(&[(
        "app.service",
        &format!(
            "[Service]\nType=notify\nFileDescriptorStoreMax=4\nTimeoutStartSec=20\nKillMode=mixed\n{extra}\
             ExecStart={fe} --listen web=tcp:127.0.0.1:{port} --ready exec+unproven --drain-timeout 5s {options} -- {}\n\
             ExecReload={fe} reload\n",
            script.display(),
            fe = fdstore_exec(),
        ),
    )]);
    sd.ok(&["start", "app.service"]);
    report
}

/// The pids that started, in order.
fn starts(report: &std::path::Path) -> Vec<String> {
    report_lines(report, "start ")
        .iter()
        .map(|l| l["start ".len()..].to_owned())
        .collect()
}

fn kill_main(sd: &Systemd, signal: &str) {
    sd.ok(&[
        "kill",
        "--kill-whom=main",
        &format!("--signal={signal}"),
        "app.service",
    ]);
}

/// Waits until `pid` reported `got SIGNAL`.
fn wait_got(report: &std::path::Path, signal: &str, pid: &str) {
    let line = format!("got {signal} {pid}");
    wait_for(&line, Duration::from_secs(10), || {
        report_lines(report, "got ").contains(&line).then_some(())
    });
}

/// Waits until a new generation's program started and the old one is gone.
fn wait_handed_over(sd: &Systemd, report: &std::path::Path, before: usize, old_main: u32) {
    wait_for("a new generation", Duration::from_secs(20), || {
        (starts(report).len() > before && main_pid(sd) != old_main).then_some(())
    });
    wait_gone(&old_main.to_string());
    sd.wait_for_property("app.service", "ActiveState", "active");
}

fn sighup_reloads_and_usr1_usr2_reach_the_program_by_default(sd: &Systemd) {
    let report = install(sd, "", "");
    let first = wait_for("the program", Duration::from_secs(10), || {
        starts(&report).pop()
    });
    kill_main(sd, "SIGUSR1");
    wait_got(&report, "USR1", &first);
    kill_main(sd, "SIGUSR2");
    wait_got(&report, "USR2", &first);
    let old = main_pid(sd);
    kill_main(sd, "SIGHUP");
    wait_handed_over(sd, &report, 1, old);
    assert!(
        report_lines(&report, "got HUP").is_empty(),
        "SIGHUP reloads; the program must not see it"
    );
    sd.ok(&["stop", "app.service"]);
}

fn with_no_reload_signal_sighup_and_chosen_signals_reach_the_program(sd: &Systemd) {
    let report = install(
        sd,
        "--reload-signal none --forward-signal SIGWINCH --forward-signal TTIN",
        "",
    );
    let first = wait_for("the program", Duration::from_secs(10), || {
        starts(&report).pop()
    });
    for signal in ["HUP", "WINCH", "TTIN", "USR1"] {
        kill_main(sd, &format!("SIG{signal}"));
        wait_got(&report, signal, &first);
    }
    // No hand-over happened; `systemctl reload` (ExecReload=fdstore-exec
    // reload) still does one.
    assert_eq!(starts(&report), std::slice::from_ref(&first));
    let old = main_pid(sd);
    sd.ok(&["reload", "app.service"]);
    wait_handed_over(sd, &report, 1, old);
    let second = starts(&report).pop().unwrap();
    kill_main(sd, "SIGHUP");
    wait_got(&report, "HUP", &second);
    sd.ok(&["stop", "app.service"]);
    assert_eq!(sd.show("app.service", "Result"), "success");
}

fn another_reload_signal_reloads_and_frees_sighup(sd: &Systemd) {
    // Type=notify-reload (253+) sends ReloadSignal= for `systemctl reload`;
    // 252 has no Type=notify-reload, so there the signal is sent by hand.
    let notify_reload = sd.version.number() >= 253;
    let extra = if notify_reload {
        "ReloadSignal=SIGUSR2\n"
    } else {
        ""
    };
    let report = install(sd, "--reload-signal SIGUSR2", extra);
    if notify_reload {
        // Replace Type=notify and the ExecReload= with systemd's own
        // reload by signal.
        let unit = std::fs::read_to_string(sd.dir().join("units/app.service"))
            .map(|u| {
                u.replace("Type=notify\n", "Type=notify-reload\n")
                    .lines()
                    .filter(|l| !l.starts_with("ExecReload="))
                    .map(|l| format!("{l}\n"))
                    .collect::<String>()
            })
            .unwrap();
        sd.install(&[("app.service", &unit)]);
        sd.ok(&["restart", "app.service"]);
    }
    let generations = if notify_reload { 2 } else { 1 };
    let first = wait_for("the program", Duration::from_secs(10), || {
        let s = starts(&report);
        (s.len() == generations).then(|| s[generations - 1].clone())
    });
    kill_main(sd, "SIGHUP");
    wait_got(&report, "HUP", &first);
    let before = starts(&report).len();
    let old = main_pid(sd);
    if notify_reload {
        sd.ok(&["reload", "app.service"]);
    } else {
        kill_main(sd, "SIGUSR2");
    }
    wait_handed_over(sd, &report, before, old);
    assert!(
        report_lines(&report, "got USR2").is_empty(),
        "SIGUSR2 reloads; the program must not see it"
    );
    sd.ok(&["stop", "app.service"]);
}

on_each_systemd!(
    sighup_reloads_and_usr1_usr2_reach_the_program_by_default,
    with_no_reload_signal_sighup_and_chosen_signals_reach_the_program,
    another_reload_signal_reloads_and_frees_sighup,
);
