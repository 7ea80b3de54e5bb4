//! Hardening (issue 14): hostile environments, files and programs.
//!
//! The first tests run fdstore-exec and the library (through the probe)
//! directly, with environments and files a careless or hostile set-up could
//! give them; the `on_each_systemd!` scenarios run under real systemd.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::app::{alive, fdstore_exec, main_pid, unit, wait_gone, App};
use crate::support::systemd::run_with_timeout;
use crate::support::{answer, free_port, probe, report_lines, wait_for, Systemd};

/// `sh -c SCRIPT` with the fdstore-exec and probe paths as `$FE` and `$PROBE`.
fn shell(script: &str) -> Command {
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(script)
        .env("FE", fdstore_exec())
        .env("PROBE", probe())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM");
    command
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("fdstore-hardening-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Point 10: with fd 3 closed and `LISTEN_FDS=1`, the descriptor fdstore-exec
/// creates first (its signalfd) used to land on 3 and reach the program as a
/// listener. The inherited descriptors are now taken before any is created,
/// so the closed one is reported.
#[test]
fn a_closed_announced_descriptor_is_an_error_not_one_of_ours() {
    let dir = scratch("fd3");
    let report = dir.join("report");
    let out = run_with_timeout(
        shell(&format!(
            "exec 3<&-; export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$FE\" --ready exec -- \"$PROBE\" --report {} receive",
            report.display()
        )),
        Duration::from_secs(20),
    );
    let received = std::fs::read_to_string(&report).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !received.contains("fd unknown 3"),
        "the program received one of fdstore-exec's descriptors as a listener:\n{received}"
    );
    assert_eq!(out.status.code(), Some(78), "EX_CONFIG; {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("fd 3 (named \"unknown\")"), "{err}");
    assert!(err.contains("is not open"), "{err}");
}

/// Point 11: a huge `LISTEN_FDS` without `LISTEN_FDNAMES` made a name for
/// every descriptor and aborted on allocation (exit 134).
#[test]
fn a_huge_listen_fds_is_a_clear_error_in_fdstore_exec() {
    let out = run_with_timeout(
        shell("export LISTEN_PID=$$ LISTEN_FDS=2000000000; exec \"$FE\" -- /bin/true"),
        Duration::from_secs(20),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(78), "EX_CONFIG; {err}");
    assert!(
        err.contains("LISTEN_FDS=\"2000000000\" is invalid"),
        "{err}"
    );
    assert!(err.contains("hard RLIMIT_NOFILE"), "{err}");
}

#[test]
fn a_huge_listen_fds_is_a_clear_error_in_the_library() {
    let dir = scratch("huge");
    let out = run_with_timeout(
        shell(&format!(
            "export LISTEN_PID=$$ LISTEN_FDS=2000000000; exec \"$PROBE\" --report {} receive",
            dir.join("report").display()
        )),
        Duration::from_secs(20),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let err = stderr(&out);
    // The probe panics on the error ListenFds::from_env returns (101); an
    // allocation failure aborts (134).
    assert_eq!(out.status.code(), Some(101), "{err}");
    assert!(err.contains("hard RLIMIT_NOFILE"), "{err}");
}

/// Point 16: `--listen-file /dev/zero` read forever, growing, with SIGTERM
/// blocked. Devices and FIFOs are refused at once, a big file by its size.
#[test]
fn a_listener_file_that_is_a_device_fifo_or_too_big_is_refused_at_once() {
    let dir = scratch("listen-file");
    let fifo = dir.join("fifo");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let big = dir.join("big");
    std::fs::write(&big, "#".repeat(2 << 20)).unwrap();
    for (file, expected) in [
        (Path::new("/dev/zero"), "is a device"),
        (fifo.as_path(), "is a FIFO"),
        (big.as_path(), "larger than 1048576 bytes"),
    ] {
        let mut command = Command::new(fdstore_exec());
        command
            .arg("--listen-file")
            .arg(file)
            .args(["--", "/bin/true"]);
        let out = run_with_timeout(command, Duration::from_secs(20));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(64), "{}: {err}", file.display());
        assert!(err.contains(expected), "{}: {err}", file.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Point 5 with a real second user: `nobody` owns the socket's directory
/// and, in a tight loop, replaces the socket by a symlink to a root-owned
/// 0600 file as soon as it appears (and removes its symlink again, so that
/// the next start gets as far as `bind()`), while root's fdstore-exec starts
/// over and over with `mode=0666,owner=nobody`. Path-based chmod/chown
/// changed the unrelated file (here within 230 starts); now such a start
/// fails, saying the socket was replaced.
const ATTACKER: &str = "import os, stat, sys
d, v = sys.argv[1], sys.argv[2]
s = d + '/api.sock'
while True:
    try:
        m = os.lstat(s).st_mode
    except OSError:
        continue
    try:
        if stat.S_ISSOCK(m):
            os.symlink(v, d + '/tmp')
            os.rename(d + '/tmp', s)
        elif stat.S_ISLNK(m):
            os.unlink(s)
    except OSError:
        pass
";

#[test]
fn another_user_swapping_symlinks_into_the_socket_directory_never_reaches_an_unrelated_file() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let base = scratch("symlink-race");
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let victim = base.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let script = base.join("attacker.py");
    std::fs::write(&script, ATTACKER).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let dir = base.join("run");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let socket = dir.join("api.sock");
    let mut attacker = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
        ])
        .arg(&script)
        .arg(&dir)
        .arg(&victim)
        .spawn()
        .expect("setpriv and python3 are needed (util-linux, python3)");
    std::thread::sleep(Duration::from_millis(300));
    assert!(attacker.try_wait().unwrap().is_none(), "the attacker died");
    let spec = format!("api=unix:{},mode=0666,owner=nobody", socket.display());
    let mut replaced = 0;
    let mut starts = 0;
    while starts < 2000 && replaced < 3 {
        starts += 1;
        let mut command = Command::new(fdstore_exec());
        command
            .args(["--listen", &spec, "--ready", "exec", "--", "/bin/true"])
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM");
        let out = run_with_timeout(command, Duration::from_secs(20));
        if stderr(&out).contains("another user replaced it") {
            replaced += 1;
        }
        let meta = std::fs::metadata(&victim).unwrap();
        if meta.mode() & 0o7777 != 0o600 || meta.uid() != 0 {
            let _ = attacker.kill();
            let _ = attacker.wait();
            panic!(
                "start {starts}: the unrelated file became mode {:o}, owner {}",
                meta.mode() & 0o7777,
                meta.uid()
            );
        }
    }
    let _ = attacker.kill();
    let _ = attacker.wait();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(
        replaced >= 3,
        "in {starts} starts the attacker replaced the socket between bind and chmod only {replaced} times: the test proves too little"
    );
    let _ = std::fs::remove_dir_all(&base);
}

/// A worker that takes the listener at fd 3, ignores SIGTERM and answers
/// every connection with `pid PID`; it reports `worker PID` first.
const WORKER: &str = "import os, signal, socket, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
listener = socket.socket(fileno=3)
with open(sys.argv[1], 'a') as report:
    report.write('worker %d\\n' % os.getpid())
while True:
    connection, _ = listener.accept()
    connection.sendall(b'pid %d\\n' % os.getpid())
    connection.close()
";

/// Point 7: a program whose master exits on SIGTERM while its worker
/// ignores it. The old fdstore-exec used to exit "hand-over complete" with
/// the worker still serving; after 3 reloads 3 old workers answered most
/// requests. The drain now waits for the program's whole process group and
/// kills what is left at the deadline, naming it in the journal.
fn a_drain_ends_workers_that_outlive_their_master(sd: &Systemd) {
    let port = free_port();
    let report = sd.path("report");
    let worker = sd.path("worker.py");
    std::fs::write(&worker, WORKER).unwrap();
    let master = sd.path("master.sh");
    std::fs::write(
        &master,
        format!(
            "#!/bin/sh\n/usr/bin/python3 {} {} &\ntrap 'exit 0' TERM\nwait\n",
            worker.display(),
            report.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&master, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    sd.install(&[(
        "app.service",
        &format!(
            "[Service]\nType=notify\nFileDescriptorStoreMax=8\nKillMode=mixed\n\
             ExecStart={} --listen web=tcp:127.0.0.1:{port} --ready exec+unproven --drain-timeout 1s -- {}\n\
             ExecReload={} reload\n",
            fdstore_exec(),
            master.display(),
            fdstore_exec(),
        ),
    )]);
    sd.ok(&["start", "app.service"]);
    let workers = |n: usize| {
        wait_for(&format!("worker {n}"), Duration::from_secs(20), || {
            let lines = report_lines(&report, "worker ");
            (lines.len() >= n).then(|| {
                lines
                    .iter()
                    .map(|l| l["worker ".len()..].to_owned())
                    .collect::<Vec<_>>()
            })
        })
    };
    workers(1);
    for round in 1..=3 {
        let before = main_pid(sd);
        sd.ok(&["reload", "app.service"]);
        assert_ne!(main_pid(sd), before, "round {round}: no hand-over");
        workers(round + 1);
    }
    let all = workers(4);
    let (old, newest) = all.split_at(3);
    for pid in old {
        wait_for(
            &format!("old worker {pid} to be killed"),
            Duration::from_secs(20),
            || (!alive(pid)).then_some(()),
        );
    }
    for _ in 0..30 {
        assert_eq!(answer(port), format!("pid {}", newest[0]));
    }
    let journal = sd.journal();
    for pid in old {
        assert!(
            journal.contains(&format!("{pid} (python3)")),
            "the journal must name the killed worker {pid}:\n{journal}"
        );
    }
    assert!(
        journal.contains("did not finish within the drain timeout (1s); killing its processes: "),
        "{journal}"
    );
    assert!(
        journal.contains("still run ("),
        "the old fdstore-exec must say it waits for the worker:\n{journal}"
    );
    sd.ok(&["stop", "app.service"]);
}

/// Point 6: a listener removed from the listener file, with a second
/// reload overlapping the first one's drain. The generation that retired it
/// used to remove it from the fd store only when its predecessor was gone,
/// by which time it was no longer the main process: the manager dropped
/// `FDSTOREREMOVE`, the log claimed success, the port kept accepting
/// connections nobody answered, and a restart brought the listener back.
fn a_removed_listener_is_released_when_a_second_reload_overlaps_the_drain(sd: &Systemd) {
    let (web, removed) = (free_port(), free_port());
    let app = App::new(sd);
    let file = sd.path("listeners");
    std::fs::write(
        &file,
        format!("web=tcp:127.0.0.1:{web}\nold=tcp:127.0.0.1:{removed}\n"),
    )
    .unwrap();
    // Ignoring SIGTERM, every old generation drains for the full 3 s.
    app.version("receive serve web ready ignore-stop");
    sd.install(&[(
        "app.service",
        &unit(
            &app,
            // The program never accepts on old, which the later
            // generations and the restart no longer have (a name that is
            // no listener exempts nothing).
            &format!(
                "--listen-file {} --drain-timeout 3s --ready notify+unproven:old",
                file.display()
            ),
            // The program ignores SIGTERM: the restart at the end kills it.
            "TimeoutStopSec=2\n",
        ),
    )]);
    sd.ok(&["start", "app.service"]);
    assert!(std::net::TcpStream::connect(("127.0.0.1", removed)).is_ok());
    std::fs::write(&file, format!("web=tcp:127.0.0.1:{web}\n")).unwrap();
    sd.ok(&["reload", "app.service"]);
    // Generation 1 still drains when generation 3 takes over.
    sd.ok(&["reload", "app.service"]);
    let starts = app.starts();
    assert_eq!(starts.len(), 3, "{starts:?}");
    wait_gone(&starts[0]);
    wait_gone(&starts[1]);
    wait_for(
        &format!("port {removed} to refuse connections"),
        Duration::from_secs(10),
        || {
            std::net::TcpStream::connect(("127.0.0.1", removed))
                .is_err()
                .then_some(())
        },
    );
    assert_eq!(answer(web), format!("pid {}", starts[2]));
    let journal = sd.journal();
    assert!(
        !journal.contains("reception only permitted for main PID"),
        "a notification went to the manager from a process that was not the main one:\n{journal}"
    );
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
    assert!(after_restart[0].starts_with("fd web "), "{after_restart:?}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", removed)).is_err());
}

/// A careless program: it answers `pid PID` on the listener at fd 3 and,
/// on SIGTERM, shuts the listener down (`shutdown(2)`) before exiting.
// The Python programs here write their answer and close before reading
// anything, so no probe can tell who accepted it (the socket is gone from
// every process before it can be looked up): their units say
// `--ready exec+unproven`, as fdstore(7) READINESS tells such programs to.
const SHUTS_DOWN: &str = "import os, signal, socket, sys, time
listener = socket.socket(fileno=3)
def stop(*_):
    try:
        listener.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
with open(sys.argv[1], 'a') as report:
    report.write('serving %d\\n' % os.getpid())
while True:
    try:
        connection, _ = listener.accept()
    except OSError:
        # A dead listener (EINVAL): a sturdy server keeps running.
        time.sleep(0.05)
        continue
    connection.sendall(b'pid %d\\n' % os.getpid())
    connection.close()
";

/// Point 14: a program that shuts its listener down while draining kills
/// the shared socket for the next generation. That cannot be undone; the
/// new main process reports it (journal and status) once the old
/// generation is gone, and a restart creates the listener again instead of
/// taking the dead one back from the fd store.
fn a_listener_shut_down_by_the_old_program_is_reported_and_a_restart_recreates_it(sd: &Systemd) {
    let port = free_port();
    let report = sd.path("report");
    let program = sd.path("shuts_down.py");
    std::fs::write(&program, SHUTS_DOWN).unwrap();
    sd.install(&[(
        "app.service",
        &format!(
            "[Service]\nType=notify\nFileDescriptorStoreMax=8\nKillMode=mixed\n\
             ExecStart={fe} --listen web=tcp:127.0.0.1:{port} --ready exec+unproven -- /usr/bin/python3 {} {}\n\
             ExecReload={fe} reload\n",
            program.display(),
            report.display(),
            fe = fdstore_exec(),
        ),
    )]);
    sd.ok(&["start", "app.service"]);
    let serving = |n: usize| {
        wait_for(&format!("program {n}"), Duration::from_secs(20), || {
            let lines = report_lines(&report, "serving ");
            (lines.len() >= n).then(|| lines[n - 1]["serving ".len()..].to_owned())
        })
    };
    let first = serving(1);
    assert_eq!(answer(port), format!("pid {first}"));
    sd.ok(&["reload", "app.service"]);
    serving(2);
    wait_gone(&first);
    sd.wait_for_journal("no longer listen: the old generation's program shut them down");
    let status = sd.show("app.service", "StatusText");
    assert!(
        status.contains("listener(s) web shut down by the old program: restart the unit"),
        "{status}"
    );
    // What the hazard is: the shared socket is dead.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    // The fix the report names works.
    sd.ok(&["restart", "app.service"]);
    let third = serving(3);
    assert_eq!(answer(port), format!("pid {third}"));
    // The manager dropped the dead socket from the fd store itself (it
    // watches stored listeners for POLLHUP); fdstore-exec replaces one it
    // would still get back (listeners::no_longer_listening).
}

on_each_systemd!(
    a_listener_shut_down_by_the_old_program_is_reported_and_a_restart_recreates_it,
    a_drain_ends_workers_that_outlive_their_master,
    a_removed_listener_is_released_when_a_second_reload_overlaps_the_drain,
);

/// pid 1 of a container (the init of its pid namespace) cannot start a
/// new generation as its parent's child, and whatever it leaves behind
/// ends with it: a reload by SIGHUP fails at once, saying so, and the old
/// generation keeps serving. (Through the intermediate process of earlier
/// versions the new generation became pid 1's own child, and the reload
/// hung until the readiness timeout, 90 s.)
#[test]
fn pid_1_of_a_container_refuses_a_reload_and_keeps_serving() {
    let dir = scratch("pid1");
    let log = dir.join("stderr");
    let port = free_port();
    let mut unshare = Killed(
        shell(&format!(
            "exec unshare --pid --fork --kill-child -- \"$FE\" --listen web=tcp:127.0.0.1:{port} \
         -- \"$PROBE\" --report {} receive serve web ready 2>{}",
            dir.join("report").display(),
            log.display()
        ))
        .spawn()
        .expect("unshare is needed (Debian package util-linux)"),
    );
    let before = wait_for("the program to answer", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| answer(port))
    });
    // fdstore-exec: unshare's child, pid 1 inside.
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", unshare.0.id())).unwrap();
    let init = children.split_whitespace().next().expect("unshare's child");
    assert!(
        std::fs::read_to_string(format!("/proc/{init}/status"))
            .unwrap()
            .lines()
            .any(|l| l.starts_with("NSpid:") && l.trim_end().ends_with("\t1")),
        "fdstore-exec is not pid 1 in its namespace"
    );
    // The program answers before fdstore-exec has its READY=1 and its
    // accept proof: a SIGHUP before that is refused as "still starting"
    // (once in six runs under load), and the test would wait in vain.
    wait_for(
        "fdstore-exec to see its program ready",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("generation 1 is ready")
                .then_some(())
        },
    );
    let hup = Command::new("kill").args(["-HUP", init]).status().unwrap();
    assert!(hup.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let said = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("could not start generation") {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reload did not fail within 20 s; fdstore-exec said:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(300));
    let after = answer(port);
    let alive_after = alive(init);
    let _ = Command::new("kill").args(["-TERM", init]).status();
    let status = unshare.0.wait().unwrap();
    let said = std::fs::read_to_string(&log).unwrap_or(said);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        said.contains("init of its pid namespace") && said.contains("needs a service manager"),
        "{said}"
    );
    assert!(alive_after, "fdstore-exec ended:\n{said}");
    assert_eq!(after, before, "the old program no longer serves:\n{said}");
    assert!(status.success(), "{status:?}:\n{said}");
}

/// A child killed (with everything in its pid namespace, by `unshare
/// --kill-child`) when the test ends, passed or not: left running, it would
/// hold the test's output open.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
