//! Listeners reach programs that take them with a current libsystemd's
//! `sd_listen_fds()`, in every generation, and every process listeners are
//! passed to finds `LISTEN_PIDFDID` naming itself, or no such variable when
//! the manager does not set it.
//!
//! systemd 259+ sets `LISTEN_PIDFDID` (the inode number of a pidfd of the
//! process the descriptors are meant for) next to `LISTEN_PID`, and its
//! `sd_listen_fds()` takes nothing when the variable names another process.
//! The program here is a small Python script that loads sid's
//! `libsystemd.so.0` (262, which runs on Debian 12's glibc) and calls its
//! `sd_listen_fds()` and `sd_notify()`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::app::{fdstore_exec, wait_gone};
use crate::support::{
    answer, assert_names_itself, free_port, pidfd_id, report_lines, wait_for, wait_for_line,
    Systemd, Traffic, Version,
};

/// Takes its listeners with libsystemd's `sd_listen_fds(0)`, reports what it
/// got, and answers `pid PID` on fd 3 once it said `READY=1` (through
/// libsystemd too). A program that gets no listener exits with status 3.
const PROGRAM: &str = r#"
import ctypes, os, signal, socket, struct, sys
lib = ctypes.CDLL(sys.argv[1])
report = open(sys.argv[2], "a", buffering=1)
pidfdid = os.environ.get("LISTEN_PIDFDID", "-")
n = lib.sd_listen_fds(0)
report.write(f"listen pid {os.getpid()} n {n} pidfdid {pidfdid}\n")
if n != 1:
    lib.sd_notify(0, f"STATUS=sd_listen_fds() returned {n}".encode())
    sys.exit(3)
# A graceful stop: SIGTERM is only looked at between connections, and an
# accept() waits at most 50 ms (the listener is shared with the other
# generation, which may take the connection this one woke up for).
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
listener = socket.socket(fileno=3)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 50000))
lib.sd_notify(0, b"READY=1")
while signal.SIGTERM not in signal.sigpending():
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        continue
    # Held until the client closes (at most a second), as request-response
    # servers do: fdstore-exec's readiness probe, which every mode includes,
    # must see who accepted it. The probe may be gone before the answer
    # (ENOTCONN, EPIPE, ECONNRESET), as any client may: not a reason to die.
    try:
        conn.sendall(f"pid {os.getpid()}\n".encode())
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(1)
        conn.recv(64)
    except OSError:
        pass
    conn.close()
"#;

/// sid's libsystemd (262), whatever manager runs.
fn current_libsystemd() -> PathBuf {
    Version::V262
        .root()
        .join("usr/lib/x86_64-linux-gnu/libsystemd.so.0")
}

fn script(sd: &Systemd) -> PathBuf {
    let path = sd.path("listen.py");
    std::fs::write(&path, PROGRAM).unwrap();
    path
}

fn python_command(script: &Path, report: &Path) -> String {
    format!(
        "/usr/bin/python3 {} {} {}",
        script.display(),
        current_libsystemd().display(),
        report.display()
    )
}

/// `listen pid PID n N pidfdid ID` lines: (pid, n, LISTEN_PIDFDID or "-").
fn listens(report: &Path) -> Vec<(u32, i64, String)> {
    report_lines(report, "listen pid ")
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (
                f[2].parse().unwrap(),
                f[4].parse().unwrap(),
                f[6].to_owned(),
            )
        })
        .collect()
}

/// Whether this manager sets `LISTEN_PIDFDID`, from a program it starts
/// itself with a socket unit's listener (the control).
fn manager_sets_pidfdid(sd: &Systemd, script: &Path) -> bool {
    let port = free_port();
    let report = sd.path("direct-report");
    sd.install(&[
        (
            "direct.socket",
            &format!("[Socket]\nListenStream=127.0.0.1:{port}\n"),
        ),
        (
            "direct.service",
            &format!(
                "[Service]\nType=notify\nTimeoutStartSec=20\nExecStart={}\n",
                python_command(script, &sd.path("direct-report"))
            ),
        ),
    ]);
    sd.ok(&["start", "direct.socket", "direct.service"]);
    let line = wait_for_line(&report, "the direct program", |l| {
        l.starts_with("listen pid ")
    });
    let (pid, n, pidfdid) = listens(&report).remove(0);
    assert_eq!(n, 1, "started by the manager itself: {line}");
    let sets = pidfdid != "-";
    assert_names_itself(pid, sets, "a program the manager started");
    if sd.version.number() >= 259 {
        assert!(sets, "systemd {} sets LISTEN_PIDFDID", sd.version.number());
    }
    sd.ok(&["stop", "direct.service", "direct.socket"]);
    sets
}

fn a_libsystemd_program_receives_its_listeners_in_every_generation(sd: &Systemd) {
    let script = script(sd);
    let sets = manager_sets_pidfdid(sd, &script);
    let port = free_port();
    let report = sd.path("report");
    sd.install(&[
        (
            "app.socket",
            &format!("[Socket]\nListenStream=127.0.0.1:{port}\nFileDescriptorName=web\n"),
        ),
        (
            "app.service",
            &format!(
                "[Service]\nType=notify\nFileDescriptorStoreMax=8\nTimeoutStartSec=20\n\
                 KillMode=mixed\nExecStart={fe} -- {}\nExecReload={fe} reload\n",
                python_command(&script, &report),
                fe = fdstore_exec(),
            ),
        ),
    ]);
    sd.ok(&["start", "app.socket"]);
    let out = sd.systemctl(&["start", "app.service"]);
    let generations = listens(&report);
    assert!(
        out.status.success(),
        "the first generation did not start: {generations:?}\n{}",
        sd.journal_tail(30)
    );
    let traffic = Traffic::start(port, 2);
    for round in 1..=4 {
        let main: u32 = sd.show("app.service", "MainPID").parse().unwrap();
        // Both the fdstore-exec the listeners were passed to (the manager
        // in generation 1, the previous fdstore-exec afterwards) and its
        // program.
        assert_names_itself(main, sets, &format!("fdstore-exec of generation {round}"));
        let generations = listens(&report);
        assert_eq!(generations.len(), round, "{generations:?}");
        let (pid, n, pidfdid) = generations[round - 1].clone();
        assert_eq!(n, 1, "generation {round}: sd_listen_fds() returned {n}");
        assert_names_itself(pid, sets, &format!("the program of generation {round}"));
        if sets {
            assert_eq!(pidfdid, pidfd_id(pid).to_string());
        }
        if round > 1 {
            wait_gone(&generations[round - 2].0.to_string());
        }
        assert_eq!(answer(port), format!("pid {pid}"));
        if round < 4 {
            let out = sd.systemctl(&["reload", "app.service"]);
            assert!(
                out.status.success(),
                "reload {round} failed: {:?}\n{}",
                listens(&report),
                sd.show("app.service", "StatusText")
            );
        }
    }
    let count = traffic.stop();
    assert_eq!(count.failed, 0, "{:?}", count.failures);
    sd.ok(&["stop", "app.service"]);
    wait_for("the service to stop", Duration::from_secs(20), || {
        (sd.show("app.service", "ActiveState") == "inactive").then_some(())
    });
}

on_each_systemd!(a_libsystemd_program_receives_its_listeners_in_every_generation);
