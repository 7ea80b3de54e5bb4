use super::{candidates, write_decimal, Spawn};
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::OwnedFd;

#[test]
fn decimal_digits_without_allocation() {
    for (n, text) in [
        (0, "0"),
        (7, "7"),
        (4194304, "4194304"),
        (u32::MAX.into(), "4294967295"),
        (u64::MAX, "18446744073709551615"),
    ] {
        let mut buf = [0xffu8; 21];
        write_decimal(&mut buf, n);
        let end = buf.iter().position(|&b| b == 0).unwrap();
        assert_eq!(&buf[..end], text.as_bytes());
    }
}

#[test]
fn a_program_is_searched_in_path_as_execvp_does() {
    let path = OsStr::new("/usr/local/bin::/bin");
    assert_eq!(
        candidates(OsStr::new("sh"), path),
        ["/usr/local/bin/sh", "./sh", "/bin/sh"].map(OsString::from)
    );
    assert_eq!(
        candidates(OsStr::new("./run/app"), path),
        [OsString::from("./run/app")]
    );
}

/// A close-on-exec pipe (a program spawned by a concurrent test must not
/// inherit the write end).
fn pipe() -> (std::fs::File, OwnedFd) {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    (std::fs::File::from(read), write)
}

/// Runs `script` under /bin/sh with a pipe at descriptor 3 and returns
/// what it wrote there and the child's pid.
fn run(command: &mut Spawn) -> (String, u32) {
    let (mut read, write) = pipe();
    let mut child = command.spawn(&[write]).unwrap();
    let mut out = String::new();
    read.read_to_string(&mut out).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {out}");
    (out, child.id())
}

fn sh(script: &str) -> Spawn {
    let mut command = Spawn::new("/bin/sh");
    command.args(["-c", script]);
    command
}

#[test]
fn the_child_names_itself_gets_its_descriptors_and_no_blocked_signal() {
    // Signals blocked in the spawning thread (as fdstore-exec blocks them
    // for its signalfd) are not blocked in the program.
    let mut blocked = nix::sys::signal::SigSet::empty();
    blocked.add(nix::sys::signal::Signal::SIGUSR1);
    let previous = blocked
        .thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)
        .unwrap();
    let mut command = sh(
        "echo \"$LISTEN_PID $$ $LISTEN_FDS ${WATCHDOG_PID-none} $OTHER\" >&3; \
         grep ^SigBlk: /proc/self/status >&3; \
         grep ^SigIgn: /proc/self/status >&3",
    );
    command
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", "1")
        .env_remove("WATCHDOG_USEC")
        .env("WATCHDOG_PID", "1")
        .env("OTHER", "kept");
    let (out, pid) = run(&mut command);
    previous.thread_set_mask().unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("{pid} {pid} 1 none kept"), "{out}");
    assert_eq!(lines[1], "SigBlk:\t0000000000000000", "{out}");
    // SIGPIPE is ignored in Rust programs, not in the programs they start.
    let ignored = u64::from_str_radix(lines[2].trim_start_matches("SigIgn:").trim(), 16).unwrap();
    assert_eq!(ignored & (1 << (libc::SIGPIPE - 1)), 0, "{out}");
}

#[test]
fn without_listen_fds_no_listen_pid_and_with_watchdog_usec_a_watchdog_pid() {
    let mut command = sh("echo \"${LISTEN_PID-none} $WATCHDOG_PID $$\" >&3");
    command
        .env_remove("LISTEN_FDS")
        .env("LISTEN_PID", "1")
        .env("WATCHDOG_USEC", "1000000");
    let (out, pid) = run(&mut command);
    assert_eq!(out.trim(), format!("none {pid} {pid}"));
}

#[test]
fn a_process_group_of_its_own_and_stdin_from_dev_null() {
    let mut command = sh("read -r stat < /proc/$$/stat; echo \"$$ $stat\" >&3; cat >&3");
    command.process_group().kill_with_parent().stdin_null();
    let (out, pid) = run(&mut command);
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(fields[0], pid.to_string());
    // pid (comm) state ppid pgrp
    assert_eq!(fields[5], pid.to_string(), "{out}");
    assert_eq!(fields.len(), 1 + 52, "nothing from standard input: {out}");
}

#[test]
fn a_missing_program_is_an_exec_error_naming_it() {
    let none: [OwnedFd; 0] = [];
    let error = Spawn::new("/nonexistent/app").spawn(&none).unwrap_err();
    assert_eq!(
        error.exec_error().map(std::io::Error::kind),
        Some(std::io::ErrorKind::NotFound)
    );
    assert!(
        error
            .to_string()
            .starts_with("cannot run /nonexistent/app: "),
        "{error}"
    );
    let mut command = Spawn::new("fdstore-test-no-such-program");
    command.env("PATH", "/nonexistent:/bin");
    let error = command.spawn(&none).unwrap_err();
    assert_eq!(
        error.exec_error().map(std::io::Error::kind),
        Some(std::io::ErrorKind::NotFound)
    );
    let error = Spawn::new("/nonexistent/app")
        .spawn_detached(&none)
        .unwrap_err();
    assert!(error.exec_error().is_some(), "{error}");
}

#[test]
fn a_file_that_is_not_executable_is_an_exec_error() {
    let dir = std::env::temp_dir().join(format!("fdstore-spawn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("not-executable");
    std::fs::write(&file, "#!/bin/sh\n").unwrap();
    let none: [OwnedFd; 0] = [];
    let error = Spawn::new(&file).spawn(&none).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        error.exec_error().map(std::io::Error::kind),
        Some(std::io::ErrorKind::PermissionDenied),
        "{error}"
    );
}

#[test]
fn a_program_in_path_is_found() {
    let mut command = Spawn::new("sh");
    command
        .args(["-c", "echo found >&3"])
        .env("PATH", "/nonexistent::/bin");
    assert_eq!(run(&mut command).0, "found\n");
}

#[test]
fn a_detached_process_is_our_parents_child_not_ours() {
    let (mut read, write) = pipe();
    let mut command = sh("echo \"$$ $PPID $LISTEN_PID\" >&3");
    command.env("LISTEN_FDS", "1");
    let pid = command.spawn_detached(&[write]).unwrap();
    let mut out = String::new();
    read.read_to_string(&mut out).unwrap();
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(fields[0], pid.to_string(), "{out}");
    assert_eq!(fields[2], pid.to_string(), "{out}");
    assert_ne!(fields[1], std::process::id().to_string(), "{out}");
    // Our parent's child from the start: made by one clone, with no
    // intermediate process that exits and leaves it to a subreaper.
    assert_eq!(
        fields[1],
        rustix::process::getppid()
            .map_or(0, |p| p.as_raw_nonzero().get())
            .to_string(),
        "{out}"
    );
    // Not ours to reap.
    let reaped = rustix::process::waitpid(
        rustix::process::Pid::from_raw(pid as i32),
        rustix::process::WaitOptions::NOHANG,
    );
    assert!(
        matches!(reaped, Err(rustix::io::Errno::CHILD)),
        "{reaped:?}"
    );
}

#[test]
fn a_file_without_a_shebang_line_runs_under_the_shell_as_with_execvp() {
    let dir = std::env::temp_dir().join(format!("fdstore-spawn-sh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("script");
    std::fs::write(&file, "echo \"$0 $1 $2\" >&3\n").unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut command = Spawn::new(&file);
    command.args(["one", "two"]);
    let (out, _) = run(&mut command);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out, format!("{} one two\n", file.display()));
}
