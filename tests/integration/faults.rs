//! Fault injection under real systemd and traffic: what happens when a
//! generation, or fdstore-exec itself, dies at the worst moment, when
//! reloads come back to back, and when the unit or the program gets its
//! listeners wrong. The README's fault table lists each scenario, its
//! outcome and the test that shows it (the ones not here are in
//! exec_handover.rs).

use std::time::Duration;

use crate::support::app::{main_pid, reload_command, start_app, unit, wait_gone, App};
use crate::support::{
    answer, fd_count, fd_targets, free_port, proc_status, report_lines, settle, wait_for, Systemd,
    Traffic,
};
use rustix::process::{kill_process, Pid, Signal};

/// Restart after a crash, quickly, as a production unit would.
const RESTART: &str = "Restart=on-failure\nRestartSec=100ms\n";

fn kill(pid: u32, signal: Signal) {
    kill_process(Pid::from_raw(pid as i32).unwrap(), signal).unwrap();
}

/// The failures a test accepts where one is inherent: connections that a
/// killed process had accepted and not yet answered, at most one per client
/// thread. A refused connection is never acceptable: the listener stays open
/// (socket unit or fd store) and new connections queue in its backlog.
fn assert_only_in_flight_lost(count: &crate::support::TrafficCount, clients: u64) {
    println!(
        "{} requests answered, {} failed: {:?}",
        count.ok, count.failed, count.failures
    );
    assert!(
        count.failed <= clients,
        "more failures than connections in flight: {:?}",
        count.failures
    );
    assert!(
        count.failures.iter().all(|f| !f.contains("refused")),
        "a connection was refused: {:?}",
        count.failures
    );
    assert!(count.ok > 20, "too little traffic to mean anything");
}

/// The unit serves again after a restart: active, one generation (wrapper +
/// program), answering.
fn wait_until_restarted(sd: &Systemd, app: &App, port: u16, starts_before: usize) {
    wait_for("the restart", Duration::from_secs(20), || {
        (sd.show("app.service", "NRestarts") == "1"
            && sd.show("app.service", "ActiveState") == "active"
            && app.starts().len() > starts_before)
            .then_some(())
    });
    let last = app.starts().last().unwrap().clone();
    wait_for("one generation", Duration::from_secs(20), || {
        (sd.unit_processes("app.service").len() == 2).then_some(())
    });
    assert_eq!(answer(port), format!("pid {last}"));
}

fn new_generation_exits_right_after_becoming_main(sd: &Systemd) {
    let (port, app) = start_app(sd, "receive serve web ready", "", RESTART);
    let traffic = Traffic::start(port, 2);
    // Serves, reports ready, becomes the main process, then exits 3 (once:
    // the restart runs the same version, which then keeps serving).
    let flag = sd.path("crashed-once");
    app.version(&format!(
        "receive serve web ready sleep 300 exit-once {} 3",
        flag.display()
    ));
    sd.ok(&["reload", "app.service"]);
    let crashed = app.starts()[1].clone();
    wait_gone(&crashed);
    wait_until_restarted(sd, &app, port, 2);
    let count = traffic.stop();
    assert_only_in_flight_lost(&count, 2);
    let journal = sd.journal();
    assert!(
        journal.contains(&format!("(pid {crashed}) exited with status 3")),
        "{journal}"
    );
    // The same listener throughout.
    let inodes: std::collections::BTreeSet<String> = report_lines(&app.report, "fd web ")
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().to_owned())
        .collect();
    assert_eq!(inodes.len(), 1, "{inodes:?}");
}

fn fdstore_exec_sigkilled_while_serving(sd: &Systemd) {
    let (port, app) = start_app(sd, "receive serve web ready", "", RESTART);
    let traffic = Traffic::start(port, 2);
    std::thread::sleep(Duration::from_millis(200));
    let program = app.starts()[0].clone();
    kill(main_pid(sd), Signal::KILL);
    // The program goes with it (it must not serve on unsupervised), and the
    // restart gets the same listener from the fd store.
    wait_gone(&program);
    wait_until_restarted(sd, &app, port, 1);
    let count = traffic.stop();
    assert_only_in_flight_lost(&count, 2);
}

fn fdstore_exec_sigkilled_during_a_hand_over(sd: &Systemd) {
    let (port, app) = start_app(sd, "receive serve web ready", "", RESTART);
    let traffic = Traffic::start(port, 2);
    let gate = sd.path("gate");
    app.version(&format!("receive serve web await {} ready", gate.display()));
    let main = main_pid(sd);
    let reload = std::thread::spawn(move || reload_command(main));
    wait_for("generation 2 to start", Duration::from_secs(20), || {
        (app.starts().len() == 2).then_some(())
    });
    kill(main, Signal::KILL);
    // The reload fails and says so; nothing of either generation is left
    // over; the restart (the new version, the gate open) serves.
    let out = reload.join().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("fdstore-exec reload:"),
        "the reload client must say why: {stderr}"
    );
    std::fs::write(&gate, "").unwrap();
    let starts = app.starts();
    wait_gone(&starts[0]);
    wait_gone(&starts[1]);
    wait_until_restarted(sd, &app, port, 2);
    let count = traffic.stop();
    assert_only_in_flight_lost(&count, 2);
}

fn new_generation_sigkilled_during_a_hand_over(sd: &Systemd) {
    let (port, app) = start_app(sd, "receive serve web ready", "", "");
    let traffic = Traffic::start(port, 2);
    let first = main_pid(sd);
    let gate = sd.path("gate");
    app.version(&format!("receive serve web await {} ready", gate.display()));
    let reload = std::thread::spawn(move || reload_command(first));
    wait_for("generation 2 to start", Duration::from_secs(20), || {
        (app.starts().len() == 2).then_some(())
    });
    let successor = sd
        .unit_processes("app.service")
        .into_iter()
        .find(|&p| {
            p != first
                && std::fs::read_link(format!("/proc/{p}/exe"))
                    .is_ok_and(|e| e.ends_with("fdstore-exec"))
        })
        .expect("the new generation's fdstore-exec");
    kill(successor, Signal::KILL);
    let out = reload.join().unwrap();
    assert!(!out.status.success());
    // Its program goes too: it must not serve unsupervised.
    let orphan = app.starts()[1].clone();
    wait_gone(&orphan);
    std::fs::write(&gate, "").unwrap();
    assert_eq!(main_pid(sd), first);
    assert_eq!(sd.unit_processes("app.service").len(), 2);
    assert_eq!(answer(port), format!("pid {}", app.starts()[0]));
    assert!(sd
        .show("app.service", "StatusText")
        .contains("reload failed"));
    // The new program was already accepting (it serves before it is ready,
    // as many programs do): what it had accepted dies with it.
    let count = traffic.stop();
    assert_only_in_flight_lost(&count, 2);
}

/// Zombie processes whose parent is `parent`.
fn zombies_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            proc_status(pid, "State:").is_some_and(|s| s.starts_with('Z'))
                && proc_status(pid, "PPid:").and_then(|p| p.parse().ok()) == Some(parent)
        })
        .collect()
}

/// What must stay flat across many reloads.
#[derive(Debug, PartialEq)]
struct Footprint {
    wrapper_fds: usize,
    unit_processes: usize,
    fd_store: String,
}

fn footprint(sd: &Systemd) -> (Footprint, u64, usize) {
    wait_for("one generation", Duration::from_secs(20), || {
        (sd.unit_processes("app.service").len() == 2).then_some(())
    });
    let main = main_pid(sd);
    let rss_kib = proc_status(main, "VmRSS:")
        .and_then(|v| v.parse().ok())
        .unwrap();
    // The manager briefly holds each systemctl's bus connection, and the
    // main process holds a draining generation's channel and pidfd until its
    // poll loop sees that generation end (just after its processes left the
    // cgroup): the least of a few samples is what each keeps.
    let least_of_samples = |pid: u32| {
        (0..5)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(50));
                fd_count(pid)
            })
            .min()
            .unwrap()
    };
    let manager_fds = least_of_samples(sd.manager_pid() as u32);
    (
        Footprint {
            wrapper_fds: least_of_samples(main),
            unit_processes: sd.unit_processes("app.service").len(),
            fd_store: sd.show("app.service", "NFileDescriptorStore"),
        },
        rss_kib,
        manager_fds,
    )
}

fn a_hundred_reloads_back_to_back_leak_nothing(sd: &Systemd) {
    let (port, app) = start_app(sd, "receive serve web ready", "", "");
    let traffic = Traffic::start(port, 2);
    for _ in 0..5 {
        sd.ok(&["reload", "app.service"]);
    }
    let (before, rss_before, manager_before) = footprint(sd);
    for _ in 0..95 {
        sd.ok(&["reload", "app.service"]);
    }
    let (after, rss_after, manager_after) = footprint(sd);
    let count = traffic.stop();
    assert_eq!(count.failed, 0, "{:?}", count.failures);
    assert_eq!(app.starts().len(), 101);
    assert_eq!(
        before,
        after,
        "the main process's descriptors now: {:?}",
        fd_targets(main_pid(sd))
    );
    assert_eq!(after.unit_processes, 2);
    assert_eq!(after.fd_store, "1");
    // Every generation's program started with the same descriptors. (Its
    // count while serving varies with the connections it has open.)
    let inherited: std::collections::BTreeSet<String> = report_lines(&app.report, "inherited-fds ")
        .into_iter()
        .collect();
    assert_eq!(inherited.len(), 1, "{inherited:?}");
    // A new process each time, so its memory must not grow at all beyond
    // noise (allocator, journal buffers).
    assert!(
        rss_after <= rss_before + 256,
        "fdstore-exec RSS grew from {rss_before} to {rss_after} KiB"
    );
    // The manager holds the same descriptors (no pidfds, fd-store entries or
    // notification descriptors left behind), give or take its own journal
    // and bus connections.
    assert!(
        manager_after <= manager_before + 2,
        "the manager's descriptors grew from {manager_before} to {manager_after}"
    );
    assert_eq!(zombies_of(sd.manager_pid() as u32), Vec::<u32>::new());
    assert_eq!(zombies_of(main_pid(sd)), Vec::<u32>::new());
}

/// Once a draining generation is gone, the main process lets go of all it
/// held of it (the channel and the pidfd it counted it by, within
/// max-generations): it holds what the first generation held, not one
/// entry more per generation until the next reload.
fn what_a_generation_held_of_a_drained_one_is_let_go(sd: &Systemd) {
    let (port, _app) = start_app(sd, "receive serve web ready", "", "");
    let first = main_pid(sd);
    let held = fd_targets(first);
    for reload in 1..=2 {
        sd.ok(&["reload", "app.service"]);
        wait_for("the old generation to end", Duration::from_secs(20), || {
            (sd.unit_processes("app.service").len() == 2).then_some(())
        });
        let main = main_pid(sd);
        assert_ne!(main, first);
        // The main process sees the old generation end through its poll
        // loop, a moment after its processes left the cgroup.
        let now = settle(
            Duration::from_secs(10),
            || fd_targets(main),
            |fds| fds.len() == held.len(),
        );
        assert_eq!(
            now.len(),
            held.len(),
            "after reload {reload}, the main process holds {now:?}; the first generation held {held:?}"
        );
    }
    assert!(answer(port).starts_with("pid "));
}

fn fd_store_too_small(sd: &Systemd) {
    let (web, admin) = (free_port(), free_port());
    let app = App::new(sd);
    app.version("receive serve web serve admin ready");
    let text = unit(
        &app,
        &format!("--listen web=tcp:127.0.0.1:{web} --listen admin=tcp:127.0.0.1:{admin}"),
        "",
    )
    .replace("FileDescriptorStoreMax=8", "FileDescriptorStoreMax=1");
    sd.install(&[("app.service", &text)]);
    if sd.version.number() >= 254 {
        // 254+ tells the service its FileDescriptorStoreMax= ($FDSTORE):
        // fdstore-exec refuses to start with listeners that would not
        // survive a restart, and says what to change.
        let out = sd.systemctl(&["start", "app.service"]);
        assert!(!out.status.success());
        sd.wait_for_journal(
                "FileDescriptorStoreMax=1 is too small: the 2 listener(s) created from specs (web, admin)",
            );
        assert_eq!(sd.show("app.service", "ExecMainStatus"), "78");
        assert!(app.starts().is_empty(), "the program must not start");
    } else {
        // 252 does not say: the start succeeds, and the manager drops what
        // does not fit (logging it). Hand-overs work, since listeners pass
        // from generation to generation directly.
        sd.ok(&["start", "app.service"]);
        let traffic = Traffic::start(web, 2);
        sd.ok(&["reload", "app.service"]);
        let count = traffic.stop();
        assert_eq!(count.failed, 0, "{:?}", count.failures);
        assert_eq!(sd.show("app.service", "NFileDescriptorStore"), "1");
        wait_gone(&app.starts()[0]);
        assert_eq!(answer(admin), format!("pid {}", app.starts()[1]));
    }
}

/// 254 and later only: 252 does not tell the service its store size (see
/// fd_store_too_small).
fn fd_store_too_small_for_a_listener_added_at_reload(sd: &Systemd) {
    let (web, admin) = (free_port(), free_port());
    let app = App::new(sd);
    let file = sd.path("listeners");
    std::fs::write(&file, format!("web=tcp:127.0.0.1:{web}\n")).unwrap();
    app.version("receive serve web ready");
    let text = unit(&app, &format!("--listen-file {}", file.display()), "")
        .replace("FileDescriptorStoreMax=8", "FileDescriptorStoreMax=1");
    sd.install(&[("app.service", &text)]);
    sd.ok(&["start", "app.service"]);
    let first = main_pid(sd);
    let traffic = Traffic::start(web, 2);
    std::fs::write(
        &file,
        format!("web=tcp:127.0.0.1:{web}\nadmin=tcp:127.0.0.1:{admin}\n"),
    )
    .unwrap();
    let out = sd.systemctl(&["reload", "app.service"]);
    assert!(!out.status.success());
    let count = traffic.stop();
    assert_eq!(count.failed, 0, "{:?}", count.failures);
    assert_eq!(main_pid(sd), first);
    assert!(
        sd.show("app.service", "StatusText")
            .contains("FileDescriptorStoreMax=1 is too small"),
        "{}",
        sd.show("app.service", "StatusText")
    );
    assert_eq!(answer(web), format!("pid {}", app.starts()[0]));
}

fn the_program_closes_a_listener_it_was_given(sd: &Systemd) {
    let (web, admin) = (free_port(), free_port());
    let app = App::new(sd);
    app.version("receive serve web close admin ready");
    // A program that closes a listener does not accept on it, which the
    // accept proof of every --ready mode would refuse: admin is exempted.
    sd.install(&[(
        "app.service",
        &unit(
            &app,
            &format!(
                "--listen web=tcp:127.0.0.1:{web} --listen admin=tcp:127.0.0.1:{admin} --ready notify+unproven:admin"
            ),
            "",
        ),
    )]);
    sd.ok(&["start", "app.service"]);
    let traffic = Traffic::start(web, 2);
    // fdstore-exec (and the fd store) still hold the listener: a connection
    // is accepted into its backlog and waits; it is not refused.
    let waiting = std::thread::spawn(move || answer(admin));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!waiting.is_finished(), "nobody serves admin yet");
    // The next generation gets it, and answers the connection that waited.
    app.version("receive serve web serve admin ready");
    sd.ok(&["reload", "app.service"]);
    let second = app.starts()[1].clone();
    assert_eq!(waiting.join().unwrap(), format!("pid {second}"));
    let count = traffic.stop();
    assert_eq!(count.failed, 0, "{:?}", count.failures);
    let admin_inodes: std::collections::BTreeSet<String> = report_lines(&app.report, "fd admin ")
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().to_owned())
        .collect();
    assert_eq!(admin_inodes.len(), 1, "the same socket: {admin_inodes:?}");
}

fn a_listener_that_cannot_be_bound_at_reload(sd: &Systemd) {
    let (web, extra) = (free_port(), free_port());
    let app = App::new(sd);
    let file = sd.path("listeners");
    std::fs::write(&file, format!("web=tcp:127.0.0.1:{web}\n")).unwrap();
    app.version("receive serve web ready");
    sd.install(&[(
        "app.service",
        &unit(&app, &format!("--listen-file {}", file.display()), ""),
    )]);
    sd.ok(&["start", "app.service"]);
    let first = main_pid(sd);
    let traffic = Traffic::start(web, 2);
    // Another process holds the new listener's address.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", extra)).unwrap();
    std::fs::write(
        &file,
        format!("web=tcp:127.0.0.1:{web}\nextra=tcp:127.0.0.1:{extra}\n"),
    )
    .unwrap();
    app.version("receive serve web serve extra ready");
    let out = sd.systemctl(&["reload", "app.service"]);
    assert!(!out.status.success());
    assert_eq!(main_pid(sd), first);
    let status = sd.show("app.service", "StatusText");
    assert!(
        status.contains("reload failed") && status.contains(&format!("127.0.0.1:{extra}")),
        "{status}"
    );
    assert_eq!(answer(web), format!("pid {}", app.starts()[0]));
    // Once the address is free, the same reload succeeds.
    drop(squatter);
    sd.ok(&["reload", "app.service"]);
    let count = traffic.stop();
    assert_eq!(count.failed, 0, "{:?}", count.failures);
    let last = app.starts().last().unwrap().clone();
    assert_eq!(answer(extra), format!("pid {last}"));
}

on_each_systemd!(
    new_generation_exits_right_after_becoming_main,
    fdstore_exec_sigkilled_while_serving,
    fdstore_exec_sigkilled_during_a_hand_over,
    new_generation_sigkilled_during_a_hand_over,
    a_hundred_reloads_back_to_back_leak_nothing,
    what_a_generation_held_of_a_drained_one_is_let_go,
    fd_store_too_small,
    the_program_closes_a_listener_it_was_given,
    a_listener_that_cannot_be_bound_at_reload,
);

on_each_systemd!(from_254: fd_store_too_small_for_a_listener_added_at_reload);
