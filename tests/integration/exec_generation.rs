//! fdstore-exec runs one generation of a program under real systemd:
//! listeners, environment, readiness, status, stop and crash behaviour.

use crate::support::{answer, free_port, probe, report_lines, wait_for, wait_for_line, Systemd};
use std::path::Path;
use std::time::Duration;

fn fdstore_exec() -> &'static str {
    env!("CARGO_BIN_EXE_fdstore-exec")
}

/// A Type=notify unit that runs the probe under fdstore-exec.
fn unit(extra: &str, exec_options: &str, report: &Path, actions: &str) -> String {
    format!(
        "[Service]\nType=notify\nFileDescriptorStoreMax=8\nTimeoutStartSec=20\n{extra}\
         ExecStart={} {exec_options} -- {} --report {} {actions}\n",
        fdstore_exec(),
        probe().display(),
        report.display()
    )
}

fn program_gets_exactly_its_listeners_from_socket_units_and_specs(sd: &Systemd) {
    let web = free_port();
    let admin = free_port();
    let report = sd.path("report");
    sd.install(&[
        (
            "app.socket",
            &format!("[Socket]\nListenStream=127.0.0.1:{web}\nFileDescriptorName=web\n"),
        ),
        (
            "app.service",
            &unit(
                "",
                &format!("--listen web=tcp:127.0.0.1:{web} --listen admin=tcp:127.0.0.1:{admin}"),
                &report,
                "receive serve web serve admin ready",
            ),
        ),
    ]);
    sd.ok(&["start", "app.socket"]);
    sd.ok(&["start", "app.service"]);
    // LISTEN_PID named the program itself (the library takes nothing
    // otherwise), both names arrived, and nothing but stdio and the two
    // listeners was open when it started.
    let mut fds = report_lines(&report, "fd ");
    fds.sort();
    assert_eq!(fds.len(), 2, "{fds:?}");
    assert!(
        fds[0].starts_with("fd admin ") && fds[0].contains(" tcp-listener "),
        "{fds:?}"
    );
    assert!(
        fds[1].starts_with("fd web ") && fds[1].contains(" tcp-listener "),
        "{fds:?}"
    );
    assert_eq!(
        report_lines(&report, "inherited-fds"),
        ["inherited-fds 0 1 2 3 4"]
    );
    // The wrapper is the unit's main process, the program its child.
    let main_pid = sd.show("app.service", "MainPID");
    let program_pid = wait_for_line(&report, "start", |l| l.starts_with("start pid "))
        ["start pid ".len()..]
        .to_owned();
    assert_ne!(main_pid, program_pid);
    let parent = std::fs::read_to_string(format!("/proc/{program_pid}/stat")).unwrap();
    let ppid = parent
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap();
    assert_eq!(ppid, main_pid);
    assert_eq!(answer(web), format!("pid {program_pid}"));
    assert_eq!(answer(admin), format!("pid {program_pid}"));
}

fn readiness_and_status_come_from_the_program(sd: &Systemd) {
    let report = sd.path("report");
    sd.install(&[(
        "app.service",
        &unit("", "", &report, "sleep 300 status warm ready"),
    )]);
    let started = std::time::Instant::now();
    sd.ok(&["start", "app.service"]);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(300),
        "start returned before the program said READY=1"
    );
    let program_pid = wait_for_line(&report, "start", |l| l.starts_with("start pid "))
        ["start pid ".len()..]
        .to_owned();
    assert_eq!(
        sd.show("app.service", "StatusText"),
        format!("generation 1, pid {program_pid}: warm")
    );
}

fn other_readiness_modes(sd: &Systemd) {
    let report = sd.path("report");
    let flag = sd.path("healthy");
    sd.install(&[
        ("exec.service", &unit("", "--ready exec", &report, "")),
        (
            "delay.service",
            &unit("", "--ready delay:400ms", &report, ""),
        ),
        (
            "command.service",
            &unit(
                "",
                &format!("--ready 'command:test -e {}'", flag.display()),
                &report,
                "",
            ),
        ),
    ]);
    sd.ok(&["start", "exec.service"]);
    assert_eq!(sd.show("exec.service", "ActiveState"), "active");
    let t = std::time::Instant::now();
    sd.ok(&["start", "delay.service"]);
    assert!(t.elapsed() >= std::time::Duration::from_millis(400));
    // The command mode waits until the check passes.
    let mut start = sd.systemctl_command();
    start.args(["start", "command.service"]);
    let mut child = start.spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "ready before the check passed"
    );
    std::fs::write(&flag, "").unwrap();
    assert!(child.wait().unwrap().success());
}

fn not_ready_in_time_fails_the_start(sd: &Systemd) {
    let report = sd.path("report");
    sd.install(&[(
        "app.service",
        &unit("", "--ready-timeout 500ms", &report, "status never-ready"),
    )]);
    let out = sd.systemctl(&["start", "app.service"]);
    assert!(!out.status.success());
    sd.wait_for_journal("was not ready within 500ms");
    assert_eq!(sd.show("app.service", "ActiveState"), "failed");
}

fn exit_before_ready_fails_the_start_with_the_programs_status(sd: &Systemd) {
    let report = sd.path("report");
    sd.install(&[("app.service", &unit("", "", &report, "exit 3"))]);
    let out = sd.systemctl(&["start", "app.service"]);
    assert!(!out.status.success());
    sd.wait_for_journal("exited with status 3 before it was ready");
    assert_eq!(sd.show("app.service", "ExecMainStatus"), "3");
}

fn missing_program_is_reported(sd: &Systemd) {
    sd.install(&[(
        "app.service",
        &format!(
            "[Service]\nType=notify\nTimeoutStartSec=20\nExecStart={} -- /nonexistent/app --flag\n",
            fdstore_exec()
        ),
    )]);
    assert!(!sd.systemctl(&["start", "app.service"]).status.success());
    sd.wait_for_journal("cannot run /nonexistent/app");
    assert_eq!(sd.show("app.service", "ExecMainStatus"), "127");
}

fn stop_is_graceful(sd: &Systemd) {
    let report = sd.path("report");
    sd.install(&[(
        "app.service",
        &unit("KillMode=mixed\n", "", &report, "ready"),
    )]);
    sd.ok(&["start", "app.service"]);
    sd.ok(&["stop", "app.service"]);
    // The program got the forwarded SIGTERM and finished on its own.
    wait_for_line(&report, "a clean stop", |l| l == "stopped");
    assert_eq!(sd.show("app.service", "Result"), "success");
    assert_eq!(sd.show("app.service", "ActiveState"), "inactive");
}

fn crash_restarts_with_the_same_listener_and_no_refused_client(sd: &Systemd) {
    let port = free_port();
    let report = sd.path("report");
    // Every generation serves and waits; the test crashes the first one.
    let script = sd.path("app.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec {} --report {} receive serve web ready\n",
            probe().display(),
            report.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    sd.install(&[(
        "app.service",
        &format!(
            "[Service]\nType=notify\nFileDescriptorStoreMax=8\nTimeoutStartSec=20\n\
             Restart=on-failure\nRestartSec=300ms\n\
             ExecStart={} --listen web=tcp:127.0.0.1:{port} -- {}\n",
            fdstore_exec(),
            script.display()
        ),
    )]);
    sd.ok(&["start", "app.service"]);
    let first = report_lines(&report, "fd web ");
    assert_eq!(first.len(), 1);
    let inode = first[0].rsplit(' ').next().unwrap().to_owned();
    let program = wait_for_line(&report, "start", |l| l.starts_with("start pid "))
        ["start pid ".len()..]
        .to_owned();
    // Crash the program: fdstore-exec must end the same way.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(program.parse().unwrap()).unwrap(),
        // Not SIGSEGV: Rust's runtime handles a SIGSEGV sent by kill(2) and
        // carries on.
        rustix::process::Signal::ABORT,
    )
    .unwrap();
    // Once the program is gone, and during the 300 ms before the restart, a
    // client is queued, not refused.
    wait_for(
        &format!("pid {program} to end"),
        Duration::from_secs(10),
        || (!std::path::Path::new(&format!("/proc/{program}")).exists()).then_some(()),
    );
    let queued = std::thread::spawn(move || answer(port));
    sd.wait_for_journal("was killed by SIGABRT while serving");
    let line = queued.join().unwrap();
    assert!(
        line.starts_with("pid ") && line != format!("pid {program}"),
        "{line}"
    );
    let fds = report_lines(&report, "fd web ");
    assert_eq!(fds.len(), 2, "{fds:?}");
    assert!(
        fds[1].ends_with(&format!(" {inode}")),
        "same socket after restart: {fds:?}"
    );
    // The new program may answer before its READY=1 was relayed.
    sd.wait_for_property("app.service", "ActiveState", "active");
    assert_eq!(sd.show("app.service", "NRestarts"), "1");
    // fdstore-exec itself ended by the program's signal, for Restart= to see.
    assert!(
        sd.journal()
            .contains("Main process exited, code=killed, status=6/ABRT"),
        "the wrapper must die by the same signal"
    );
}

on_each_systemd!(
    program_gets_exactly_its_listeners_from_socket_units_and_specs,
    readiness_and_status_come_from_the_program,
    other_readiness_modes,
    not_ready_in_time_fails_the_start,
    exit_before_ready_fails_the_start_with_the_programs_status,
    missing_program_is_reported,
    stop_is_graceful,
    crash_restarts_with_the_same_listener_and_no_refused_client,
);
