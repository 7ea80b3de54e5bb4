//! fdstore-exec's hand-over under real systemd: `systemctl reload` replaces
//! the program by a new generation, under traffic, and every way it can fail
//! leaves the old generation serving.

use crate::support::app::{
    assert_new_main, fdstore_exec, main_pid, reload_command, start_app, unit, wait_gone, App,
};
use crate::support::{
    answer, free_port, probe, report_lines, wait_for, wait_for_line, Systemd, Traffic,
};
use fdstore::protocol::handover::parent_of;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn three_handovers_under_traffic_then_a_graceful_stop(sd: &Systemd) {
    let (port, app) = start_app(sd, "receive serve web ready", "", "");
    let traffic = Traffic::start(port, 4);
    let mut mains = vec![main_pid(sd)];
    for round in 1..=3 {
        std::thread::sleep(Duration::from_millis(150));
        sd.ok(&["reload", "app.service"]);
        let main = assert_new_main(sd, main_pid(sd), &mains, &format!("round {round}"));
        mains.push(main);
        let starts = app.starts();
        assert_eq!(starts.len(), round + 1, "{starts:?}");
        // The old program drained and exited; the new one answers.
        wait_gone(&starts[round - 1]);
        assert_eq!(answer(port), format!("pid {}", starts[round]));
    }
    std::thread::sleep(Duration::from_millis(150));
    let count = traffic.stop();
    assert_eq!(count.failed, 0, "failed requests: {:?}", count.failures);
    assert!(
        count.ok > 20,
        "too little traffic to mean anything: {count:?}"
    );
    assert_eq!(report_lines(&app.report, "stopped").len(), 3);
    let status = sd.show("app.service", "StatusText");
    assert!(
        status.starts_with(&format!(
            "generation 4, pid {}: serving; last reload took ",
            app.starts()[3]
        )),
        "{status}"
    );
    let journal = sd.journal();
    assert!(!journal.contains("not our child"), "{journal}");
    assert!(!journal.contains("Got extra auxiliary fds"), "{journal}");
    // A stop after three hand-overs is as graceful as for the first
    // generation: the program gets SIGTERM through fdstore-exec and drains.
    sd.ok(&["stop", "app.service"]);
    assert_eq!(report_lines(&app.report, "stopped").len(), 4);
    assert_eq!(sd.show("app.service", "ActiveState"), "inactive");
    assert_eq!(sd.show("app.service", "Result"), "success");
}

fn listeners_from_socket_units_and_specs_pass_through_without_leaks(sd: &Systemd) {
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
            &format!(
                "[Service]\nType=notify\nFileDescriptorStoreMax=8\nKillMode=mixed\n\
                 ExecStart={fe} --listen admin=tcp:127.0.0.1:{admin} -- {} --report {} receive serve web serve admin ready\n\
                 ExecReload={fe} reload\n",
                probe().display(),
                report.display(),
                fe = fdstore_exec(),
            ),
        ),
    ]);
    sd.ok(&["start", "app.socket"]);
    sd.ok(&["start", "app.service"]);
    sd.ok(&["reload", "app.service"]);
    sd.ok(&["reload", "app.service"]);
    let inherited = report_lines(&report, "inherited-fds ");
    assert_eq!(inherited.len(), 3);
    for line in &inherited {
        assert_eq!(line, "inherited-fds 0 1 2 3 4", "{inherited:?}");
    }
    let fds = report_lines(&report, "fd ");
    let web_inodes: std::collections::BTreeSet<_> = fds
        .iter()
        .filter(|l| l.starts_with("fd web "))
        .map(|l| l.rsplit(' ').next().unwrap().to_owned())
        .collect();
    assert_eq!(web_inodes.len(), 1, "the same socket every time: {fds:?}");
    assert_eq!(fds.len(), 6, "{fds:?}");
    // Once the two old generations have drained, the last one answers.
    wait_for("two drained generations", Duration::from_secs(20), || {
        (report_lines(&report, "stopped").len() == 2).then_some(())
    });
    let starts = report_lines(&report, "start pid ");
    let last = &starts[2]["start pid ".len()..];
    assert_eq!(answer(web), format!("pid {last}"));
    assert_eq!(answer(admin), format!("pid {last}"));
}

/// The new generation's program cannot be executed (here: not executable):
/// the exec error reaches the new fdstore-exec from its forked child, which
/// says so and exits 126, the old one names the error in its status, and
/// the old generation serves throughout.
fn a_new_version_that_cannot_be_executed_rolls_back(sd: &Systemd) {
    use std::os::unix::fs::PermissionsExt;
    let (port, app) = start_app(sd, "receive serve web ready", "", "");
    let first = main_pid(sd);
    let traffic = Traffic::start(port, 2);
    std::fs::set_permissions(&app.script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = sd.systemctl(&["reload", "app.service"]);
    assert!(!out.status.success(), "the reload must fail");
    let count = traffic.stop();
    assert_eq!(count.failed, 0, "{:?}", count.failures);
    assert_eq!(main_pid(sd), first);
    assert_eq!(app.starts().len(), 1);
    sd.wait_for_journal(&format!(
        "cannot run {}: Permission denied",
        app.script.display()
    ));
    let status = sd.show("app.service", "StatusText");
    assert!(
        status.starts_with("generation 1, pid ")
            && status.contains(&format!(
                "reload failed: cannot run {}: Permission denied",
                app.script.display()
            )),
        "{status}"
    );
    assert_eq!(answer(port), format!("pid {}", app.starts()[0]));
    std::fs::set_permissions(&app.script, std::fs::Permissions::from_mode(0o755)).unwrap();
    sd.ok(&["reload", "app.service"]);
    assert_ne!(main_pid(sd), first);
}

fn a_broken_new_version_rolls_back(sd: &Systemd) {
    let (port, app) = start_app(sd, "receive serve web ready", "", "");
    let first = main_pid(sd);
    let traffic = Traffic::start(port, 2);
    app.version("receive exit 1");
    let out = sd.systemctl(&["reload", "app.service"]);
    assert!(!out.status.success(), "the reload must fail");
    let count = traffic.stop();
    assert_eq!(count.failed, 0, "{:?}", count.failures);
    assert_eq!(main_pid(sd), first);
    let starts = app.starts();
    assert_eq!(starts.len(), 2);
    assert_eq!(answer(port), format!("pid {}", starts[0]));
    let status = sd.show("app.service", "StatusText");
    assert!(
        status.contains("reload failed: app.sh (generation 2, pid ")
            && status.contains("exited with status 1 before it was ready"),
        "{status}"
    );
    assert!(
        status.starts_with(&format!("generation 1, pid {}: serving", starts[0])),
        "{status}"
    );
    // The reload command said why, in the journal.
    sd.wait_for_journal("exited with status 1 before it was ready; generation 1 (pid");
    assert_eq!(sd.show("app.service", "ActiveState"), "active");
    // The next, fixed version takes over.
    app.version("receive serve web ready");
    sd.ok(&["reload", "app.service"]);
    assert_ne!(main_pid(sd), first);
    wait_gone(&starts[0]);
    assert_eq!(answer(port), format!("pid {}", app.starts()[2]));
}

fn a_new_version_that_is_not_ready_in_time_is_killed(sd: &Systemd) {
    let (port, app) = start_app(
        sd,
        "receive serve web ready",
        "--ready-timeout 1s --drain-timeout 1s",
        "",
    );
    let first = main_pid(sd);
    let traffic = Traffic::start(port, 2);
    // It blocks SIGTERM while it sleeps, as a hung program may: the drain
    // it is told to do ends with SIGKILL at the drain timeout.
    app.version("receive sleep 60000 ready");
    let out = sd.systemctl(&["reload", "app.service"]);
    assert!(!out.status.success());
    let count = traffic.stop();
    assert_eq!(count.failed, 0, "{:?}", count.failures);
    assert_eq!(main_pid(sd), first);
    let starts = app.starts();
    assert_eq!(starts.len(), 2);
    assert!(
        sd.show("app.service", "StatusText")
            .contains("(generation 2, pid ")
            && sd
                .show("app.service", "StatusText")
                .contains("was not ready within 1s")
    );
    sd.wait_for_journal("was not ready within 1s (--ready notify: the program did not send READY=1); telling it to drain (SIGTERM, at most 1s)");
    wait_gone(&starts[1]);
    sd.wait_for_journal("generation 2 was killed by SIGKILL (killed after the drain timeout); it never became ready");
    assert_eq!(answer(port), format!("pid {}", starts[0]));
    // Nothing of generation 2 is left: the unit's processes are the
    // wrapper and its program.
    wait_for(
        "generation 2's fdstore-exec to end",
        Duration::from_secs(10),
        || (sd.unit_processes("app.service").len() == 2).then_some(()),
    );
}

fn drain_timeout_ends_with_sigkill(sd: &Systemd) {
    let (port, app) = start_app(
        sd,
        "receive serve web ready ignore-stop",
        "--drain-timeout 1s",
        "",
    );
    let traffic = Traffic::start(port, 2);
    app.version("receive serve web ready");
    sd.ok(&["reload", "app.service"]);
    let starts = app.starts();
    wait_line(&app.report, "ignoring SIGTERM");
    wait_gone(&starts[0]);
    sd.wait_for_journal("did not finish within the drain timeout (1s); killing it");
    sd.wait_for_journal("was killed by SIGKILL (killed after the drain timeout)");
    assert_eq!(answer(port), format!("pid {}", starts[1]));
    // The old program went on accepting after SIGTERM, so SIGKILL can cut
    // the connections it had accepted and not yet answered: at most one per
    // client. Nothing is refused (the listener stays open throughout).
    let count = traffic.stop();
    assert!(count.failed <= 2, "{:?}", count.failures);
    assert!(
        count.failures.iter().all(|f| !f.contains("refused")),
        "{:?}",
        count.failures
    );
}

fn wait_line(report: &Path, text: &str) {
    wait_for_line(report, text, |l| l == text);
}

fn reload_from_another_uid_is_refused(sd: &Systemd) {
    let (_, app) = start_app(sd, "receive serve web ready", "", "");
    let main = main_pid(sd);
    let copy = fdstore_exec_copy_for_nobody();
    let as_nobody = |args: &[&str]| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&copy)
            .args(args)
            .output()
            .unwrap()
    };
    let out = as_nobody(&["reload", "--pid", &main.to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert!(
        stderr.contains("(uid 65534) may not reload this service"),
        "{stderr}"
    );
    assert_eq!(main_pid(sd), main);
    assert_eq!(app.starts().len(), 1);
    // Root (this test) may.
    let out = reload_command(main);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(main_pid(sd), main);
    // And anybody may ask for the status.
    let out = as_nobody(&["status", "--pid", &main_pid(sd).to_string()]);
    let _ = std::fs::remove_file(&copy);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("generation 2, pid "));
}

/// A copy of fdstore-exec that user nobody may run (the build tree may not
/// be readable to it).
fn fdstore_exec_copy_for_nobody() -> PathBuf {
    // One copy per call: the four managers' runs of this test are
    // threads of one process, and each removes its copy when done.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let copy = std::env::temp_dir().join(format!("fdstore-exec-{}-{call}", std::process::id()));
    std::fs::copy(fdstore_exec(), &copy).unwrap();
    std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    copy
}

fn a_second_reload_during_one_is_refused(sd: &Systemd) {
    let (port, app) = start_app(sd, "receive serve web ready", "", "");
    let traffic = Traffic::start(port, 2);
    let main = main_pid(sd);
    let gate = sd.path("gate");
    app.version(&format!("receive serve web await {} ready", gate.display()));
    let first = std::thread::spawn(move || reload_command(main));
    wait_for("generation 2 to start", Duration::from_secs(20), || {
        (app.starts().len() == 2).then_some(())
    });
    let second = reload_command(main);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(75), "{stderr}");
    assert!(
        stderr.contains("a reload is already in progress"),
        "{stderr}"
    );
    std::fs::write(&gate, "").unwrap();
    let first = first.join().unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(stdout.starts_with("generation 2 (pid "), "{stdout}");
    assert_ne!(main_pid(sd), main);
    let count = traffic.stop();
    assert_eq!(count.failed, 0, "{:?}", count.failures);
}

fn a_stop_during_a_reload_stops_both_generations_cleanly(sd: &Systemd) {
    let (_, app) = start_app(sd, "receive serve web ready", "", "");
    app.version(&format!(
        "receive serve web await {} ready",
        sd.path("never").display()
    ));
    sd.ok(&["reload", "--no-block", "app.service"]);
    wait_for("generation 2 to start", Duration::from_secs(20), || {
        (app.starts().len() == 2).then_some(())
    });
    sd.ok(&["stop", "app.service"]);
    let starts = app.starts();
    wait_gone(&starts[0]);
    wait_gone(&starts[1]);
    assert_eq!(sd.show("app.service", "ActiveState"), "inactive");
    assert_eq!(sd.show("app.service", "Result"), "success");
    // Generation 1 drained gracefully.
    assert_eq!(report_lines(&app.report, "stopped").len(), 1);
}

fn reload_by_signal(sd: &Systemd) {
    // systemd 253+ has Type=notify-reload (SIGHUP, RELOADING=1, READY=1);
    // on 252 the same protocol is driven by a SIGHUP sent by hand.
    let port = free_port();
    let app = App::new(sd);
    app.version("receive serve web ready");
    let (kind, extra) = if sd.version.has_notify_reload() {
        ("notify-reload", "")
    } else {
        ("notify", "")
    };
    let text = unit(&app, &format!("--listen web=tcp:127.0.0.1:{port}"), extra)
        .replace("Type=notify\n", &format!("Type={kind}\n"))
        .lines()
        .filter(|l| !l.starts_with("ExecReload="))
        .collect::<Vec<_>>()
        .join("\n");
    sd.install(&[("app.service", &text)]);
    sd.ok(&["start", "app.service"]);
    let first = main_pid(sd);
    if sd.version.has_notify_reload() {
        sd.ok(&["reload", "app.service"]);
    } else {
        sd.ok(&["kill", "--kill-who=main", "--signal=SIGHUP", "app.service"]);
        wait_for("a new main process", Duration::from_secs(20), || {
            (main_pid(sd) != first).then_some(())
        });
    }
    let second = main_pid(sd);
    assert_ne!(second, first);
    sd.wait_for_property("app.service", "ActiveState", "active");
    // The reload completes at the new main's READY=1, before the old program
    // has drained: until it is gone, either may answer.
    wait_gone(&app.starts()[0]);
    assert_eq!(answer(port), format!("pid {}", app.starts()[1]));
    // A broken version: the reload ends (no hang), the old one serves.
    app.version("receive exit 3");
    if sd.version.has_notify_reload() {
        // There is no negative answer to SIGHUP: the reload "succeeds",
        // STATUS= tells the truth.
        sd.ok(&["reload", "app.service"]);
    } else {
        sd.ok(&["kill", "--kill-who=main", "--signal=SIGHUP", "app.service"]);
        sd.wait_for_journal("exited with status 3 before it was ready");
    }
    sd.wait_for_property("app.service", "ActiveState", "active");
    assert_eq!(main_pid(sd), second);
    assert!(sd
        .show("app.service", "StatusText")
        .contains("reload failed"));
    assert!(!sd.journal().contains("not our child"));
}

/// `nonblocking` sets O_NONBLOCK on a listener fdstore-exec creates, and on
/// one a later generation receives whose spec gained it (the flag belongs to
/// the socket's open file description, so the old generation sees it too);
/// a spec without it leaves it as it is.
fn the_nonblocking_option_sets_o_nonblock_on_created_and_passed_listeners(sd: &Systemd) {
    let (web, admin) = (free_port(), free_port());
    let app = App::new(sd);
    let file = sd.path("listeners");
    std::fs::write(
        &file,
        format!("web=tcp:127.0.0.1:{web},nonblocking\nadmin=tcp:127.0.0.1:{admin}\n"),
    )
    .unwrap();
    // `flags` before `serve`, which makes a listener non-blocking itself;
    // admin is never served (so never made non-blocking by the program),
    // hence unproven.
    app.version("receive flags web flags admin serve web ready");
    sd.install(&[(
        "app.service",
        &unit(
            &app,
            &format!(
                "--listen-file {} --ready notify+unproven:admin",
                file.display()
            ),
            "",
        ),
    )]);
    sd.ok(&["start", "app.service"]);
    assert_eq!(
        report_lines(&app.report, "flags "),
        ["flags web nonblocking", "flags admin blocking"]
    );
    std::fs::write(
        &file,
        format!("web=tcp:127.0.0.1:{web}\nadmin=tcp:127.0.0.1:{admin},nonblocking\n"),
    )
    .unwrap();
    sd.ok(&["reload", "app.service"]);
    assert_eq!(
        report_lines(&app.report, "flags ")[2..],
        ["flags web nonblocking", "flags admin nonblocking"]
    );
}

fn the_listener_file_adds_and_removes_listeners_at_reload(sd: &Systemd) {
    let (web, admin, moved) = (free_port(), free_port(), free_port());
    let app = App::new(sd);
    let file = sd.path("listeners");
    std::fs::write(&file, format!("# listeners\nweb=tcp:127.0.0.1:{web}\n")).unwrap();
    app.version("receive serve web ready");
    sd.install(&[(
        "app.service",
        &unit(&app, &format!("--listen-file {}", file.display()), ""),
    )]);
    sd.ok(&["start", "app.service"]);
    // Added: the next generation has it, without a restart.
    std::fs::write(
        &file,
        format!("web=tcp:127.0.0.1:{web}\nadmin=tcp:127.0.0.1:{admin}\n"),
    )
    .unwrap();
    app.version("receive serve web serve admin ready");
    sd.ok(&["reload", "app.service"]);
    let second = app.starts()[1].clone();
    wait_gone(&app.starts()[0]);
    assert_eq!(answer(admin), format!("pid {second}"));
    // An address cannot change under the same name: the reload fails and
    // says what to do.
    std::fs::write(
        &file,
        format!("web=tcp:127.0.0.1:{web}\nadmin=tcp:127.0.0.1:{moved}\n"),
    )
    .unwrap();
    let out = sd.systemctl(&["reload", "app.service"]);
    assert!(!out.status.success());
    let status = sd.show("app.service", "StatusText");
    assert!(
        status.contains("the listener \"admin\" cannot become admin=tcp:127.0.0.1:")
            && status.contains("give the new address a new name"),
        "{status}"
    );
    // Removed: the next generation does not get it, and once the old
    // generation is gone it is closed and out of the fd store.
    std::fs::write(&file, format!("admin=tcp:127.0.0.1:{admin}\n")).unwrap();
    app.version("receive serve admin ready");
    sd.ok(&["reload", "app.service"]);
    let starts = app.starts();
    let third = starts.last().unwrap().clone();
    wait_gone(&second);
    sd.wait_for_journal("closed a removed listener and removed it from the fd store");
    // The old generation's fdstore-exec holds its copy until it exits,
    // just after its program: the port closes then.
    wait_for(
        &format!("port {web} to refuse connections"),
        Duration::from_secs(10),
        || {
            std::net::TcpStream::connect(("127.0.0.1", web))
                .is_err()
                .then_some(())
        },
    );
    assert_eq!(answer(admin), format!("pid {third}"));
    // A restart passes only what is left in the store.
    sd.ok(&["restart", "app.service"]);
    let restarted = format!("start pid {}", app.starts().last().unwrap());
    let after_restart: Vec<String> = std::fs::read_to_string(&app.report)
        .unwrap()
        .lines()
        .skip_while(|l| *l != restarted)
        .filter(|l| l.starts_with("fd "))
        .map(str::to_owned)
        .collect();
    assert_eq!(after_restart.len(), 1, "{after_restart:?}");
    assert!(
        after_restart[0].starts_with("fd admin "),
        "{after_restart:?}"
    );
}

fn restart_mode_keeps_listeners_across_systemctl_restart(sd: &Systemd) {
    let port = free_port();
    let app = App::new(sd);
    app.version("receive serve web ready");
    sd.install(&[(
        "app.service",
        &unit(
            &app,
            &format!("--mode=restart --listen web=tcp:127.0.0.1:{port}"),
            "",
        ),
    )]);
    sd.ok(&["start", "app.service"]);
    let main = main_pid(sd);
    let out = reload_command(main);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("--mode=restart"), "{stderr}");
    let traffic = Traffic::start(port, 2);
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(100));
        sd.ok(&["restart", "app.service"]);
    }
    std::thread::sleep(Duration::from_millis(100));
    let count = traffic.stop();
    assert_eq!(count.failed, 0, "{:?}", count.failures);
    assert_eq!(count.answers.len(), 4, "{:?}", count.answers);
    let inodes: std::collections::BTreeSet<String> = report_lines(&app.report, "fd web ")
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().to_owned())
        .collect();
    assert_eq!(inodes.len(), 1, "the same socket across restarts");
}

fn a_crash_after_a_hand_over_restarts_with_the_same_listener(sd: &Systemd) {
    let (port, app) = start_app(
        sd,
        "receive serve web ready",
        "",
        "Restart=on-failure\nRestartSec=300ms\n",
    );
    sd.ok(&["reload", "app.service"]);
    let crashed = app.starts()[1].clone();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(crashed.parse().unwrap()).unwrap(),
        rustix::process::Signal::ABORT,
    )
    .unwrap();
    wait_gone(&crashed);
    // Queued during the restart, answered by the next start.
    let line = answer(port);
    assert!(
        line.starts_with("pid ") && line != format!("pid {crashed}"),
        "{line}"
    );
    sd.wait_for_property("app.service", "ActiveState", "active");
    assert_eq!(sd.show("app.service", "NRestarts"), "1");
    assert!(sd
        .journal()
        .contains("Main process exited, code=killed, status=6/ABRT"));
}

fn an_upgraded_fdstore_exec_takes_over_at_the_next_reload(sd: &Systemd) {
    use std::os::unix::fs::MetadataExt;
    let port = free_port();
    let app = App::new(sd);
    app.version("receive serve web ready");
    let installed = sd.path("fdstore-exec");
    let install = |path: &Path| {
        let tmp = path.with_extension("dpkg-new");
        std::fs::copy(fdstore_exec(), &tmp).unwrap();
        std::fs::rename(&tmp, path).unwrap();
        std::fs::metadata(path).unwrap().ino()
    };
    install(&installed);
    let text = unit(&app, &format!("--listen web=tcp:127.0.0.1:{port}"), "")
        .replace(fdstore_exec(), installed.to_str().unwrap());
    sd.install(&[("app.service", &text)]);
    sd.ok(&["start", "app.service"]);
    // Replaced the way a package manager does: a new file renamed over it.
    let upgraded = install(&installed);
    sd.ok(&["reload", "app.service"]);
    let main = main_pid(sd);
    let exe = std::fs::read_link(format!("/proc/{main}/exe")).unwrap();
    assert_eq!(exe, installed, "the new main runs the file on disk");
    assert_eq!(
        std::fs::metadata(format!("/proc/{main}/exe"))
            .unwrap()
            .ino(),
        upgraded
    );
}

fn notifications_from_outside_the_unit_are_ignored(sd: &Systemd) {
    start_app(sd, "receive serve web status genuine ready", "", "");
    // The program's notification socket is an abstract name, which anyone
    // can read in /proc/net/unix.
    let main = main_pid(sd);
    let prefix = format!("@fdstore-exec/{main}/");
    let net = std::fs::read_to_string("/proc/net/unix").unwrap();
    let address = net
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .find(|a| a.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {prefix}* in /proc/net/unix"))
        .to_owned();
    let intruder = fdstore::Notifier::connect(&address).unwrap();
    intruder.status("forged").unwrap();
    sd.wait_for_journal("ignored a notification from a process outside this unit");
    let status = sd.show("app.service", "StatusText");
    assert!(
        status.contains("genuine") && !status.contains("forged"),
        "{status}"
    );
}

/// A reload execs fdstore-exec once (the new generation) and then the
/// program: no intermediate process or trampoline is exec'ed (each exec of
/// fdstore-exec costs about 0.8 ms of CPU on the loaded machine the reload
/// runs on). strace follows everything the main process starts, also the
/// new generation once it is re-parented to the manager.
fn a_reload_execs_fdstore_exec_once_and_then_the_program(sd: &Systemd) {
    let (port, app) = start_app(sd, "receive serve web ready", "", "");
    let main = main_pid(sd);
    // One file per process (`-ff`): LOG.PID, so that no call is split.
    let log = sd.path("execs");
    let mut strace = std::process::Command::new("strace")
        .args(["-ff", "-qq", "-s", "4096", "-o"])
        .arg(&log)
        .args(["-e", "trace=execve,fork,vfork,clone,clone3"])
        .args(["-p", &main.to_string()])
        .spawn()
        .expect("strace is needed (Debian package strace)");
    wait_for("strace to attach", Duration::from_secs(10), || {
        crate::support::proc_status(main, "TracerPid:")
            .is_some_and(|t| t.trim() != "0")
            .then_some(())
    });
    sd.ok(&["reload", "app.service"]);
    let new_main = main_pid(sd);
    let starts = app.starts();
    assert_eq!(starts.len(), 2, "{starts:?}");
    wait_gone(&starts[0]);
    assert_eq!(answer(port), format!("pid {}", starts[1]));
    // SIGTERM: strace detaches and writes out what it saw.
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &strace.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    strace.wait().unwrap();
    let traced = traced_processes(&log);
    let all: String = traced
        .iter()
        .map(|(pid, calls)| format!("== {pid}\n{calls}"))
        .collect();
    let execs = all
        .lines()
        .filter(|l| l.starts_with("execve("))
        .collect::<Vec<_>>();
    let ours = execs
        .iter()
        .filter(|l| l.starts_with(&format!("execve(\"{}\"", fdstore_exec())))
        .count();
    assert_eq!(ours, 1, "fdstore-exec exec'ed {ours} times:\n{all}");
    assert!(
        !all.contains("\"__spawn\"") && !all.contains("\"__exec\""),
        "{all}"
    );
    let program = execs
        .iter()
        .filter(|l| l.starts_with(&format!("execve(\"{}\"", app.script.display())))
        .count();
    assert_eq!(program, 1, "{all}");
    // The old main process starts the new one itself, with one clone and
    // no intermediate process: the only process it makes.
    assert_eq!(
        processes_made(&traced, main),
        vec![new_main],
        "the old main process must start the new one directly:\n{all}"
    );
    assert_eq!(
        parent_of(new_main).map(|p| p as i32),
        Some(sd.manager_pid()),
        "the new main process must be the manager's own child"
    );
}

/// What `strace -ff -o LOG` wrote: each traced process's pid and its calls.
fn traced_processes(log: &Path) -> Vec<(u32, String)> {
    let dir = log.parent().unwrap();
    let prefix = format!("{}.", log.file_name().unwrap().to_string_lossy());
    let mut traced: Vec<(u32, String)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix(&prefix)?.parse().ok()?;
            Some((pid, std::fs::read_to_string(entry.path()).unwrap()))
        })
        .collect();
    traced.sort();
    traced
}

/// The processes (not threads) that process `pid` made, by the pids its
/// `fork`, `vfork`, `clone` and `clone3` calls returned.
fn processes_made(traced: &[(u32, String)], pid: u32) -> Vec<u32> {
    let calls = traced
        .iter()
        .find(|(p, _)| *p == pid)
        .map_or("", |(_, calls)| calls.as_str());
    calls
        .lines()
        .filter(|l| {
            ["fork(", "vfork(", "clone(", "clone3("]
                .iter()
                .any(|call| l.starts_with(call))
                && !l.contains("CLONE_THREAD")
        })
        .filter_map(|l| l.rsplit_once(" = ")?.1.trim().parse().ok())
        .collect()
}

on_each_systemd!(
    a_reload_execs_fdstore_exec_once_and_then_the_program,
    notifications_from_outside_the_unit_are_ignored,
    an_upgraded_fdstore_exec_takes_over_at_the_next_reload,
    the_listener_file_adds_and_removes_listeners_at_reload,
    the_nonblocking_option_sets_o_nonblock_on_created_and_passed_listeners,
    restart_mode_keeps_listeners_across_systemctl_restart,
    a_crash_after_a_hand_over_restarts_with_the_same_listener,
    three_handovers_under_traffic_then_a_graceful_stop,
    listeners_from_socket_units_and_specs_pass_through_without_leaks,
    a_broken_new_version_rolls_back,
    a_new_version_that_cannot_be_executed_rolls_back,
    a_new_version_that_is_not_ready_in_time_is_killed,
    drain_timeout_ends_with_sigkill,
    reload_from_another_uid_is_refused,
    a_second_reload_during_one_is_refused,
    a_stop_during_a_reload_stops_both_generations_cleanly,
    reload_by_signal,
);
