//! Hardening (issue 14): hostile environments, files and programs.
//!
//! The first tests run fdstore-exec and the library (through the probe)
//! directly, with environments and files a careless or hostile set-up could
//! give them; the `on_each_systemd!` scenarios run under real systemd.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::app::fdstore_exec;
use support::probe;
use support::systemd::run_with_timeout;

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
