//! fdstore-exec's command line.

use std::process::Command;

fn fdstore_exec(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fdstore-exec"))
        .args(args)
        .output()
        .expect("running fdstore-exec")
}

#[test]
fn version_names_the_program_and_version() {
    let out = fdstore_exec(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("fdstore-exec {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_describes_the_program() {
    let out = fdstore_exec(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("systemctl reload"), "{text}");
    assert!(text.contains("Usage: fdstore-exec"), "{text}");
}

#[test]
fn an_unknown_option_is_a_usage_error() {
    let out = fdstore_exec(&["--no-such-option"]);
    assert_eq!(out.status.code(), Some(64), "EX_USAGE");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-option"));
}

#[test]
fn a_bad_listen_spec_exits_64_quoting_the_bad_part() {
    let out = fdstore_exec(&["--listen", "web=tcp:localhost:80", "--", "/bin/true"]);
    assert_eq!(out.status.code(), Some(64), "EX_USAGE");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"localhost\": not an IP address"), "{err}");
    assert!(err.contains("a valid one: web=tcp:127.0.0.1:8080"), "{err}");
}

#[test]
fn a_bad_readiness_mode_exits_64() {
    let out = fdstore_exec(&["--ready", "eventually", "--", "/bin/true"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("notify, exec, delay:DURATION"));
}

#[test]
fn a_bad_readiness_combination_exits_64_quoting_the_bad_part() {
    for (mode, said) in [
        ("notify+acept", "\"acept\" is not a readiness check"),
        ("http:health", "\"http:health\": the path must start with /"),
        ("http:/health,999", "\"999\" is not an HTTP status"),
        ("notify+notify", "notify is given twice"),
        ("exec+accept", "exec means ready at once"),
    ] {
        let out = fdstore_exec(&["--ready", mode, "--", "/bin/true"]);
        assert_eq!(out.status.code(), Some(64), "{mode}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(said), "{mode}: {err}");
    }
}

#[test]
fn a_probe_without_a_stream_listener_exits_64() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spec = format!("dns=udp:127.0.0.1:{port}");
    let out = fdstore_exec(&["--listen", &spec, "--ready", "accept", "--", "/bin/true"]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "--ready accept: the program has no stream listener (TCP or Unix) to probe among dns"
        ),
        "{err}"
    );
}

#[test]
fn a_program_is_required() {
    let out = fdstore_exec(&["--listen", "web=tcp:127.0.0.1:8080"]);
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn the_same_name_twice_is_refused() {
    let out = fdstore_exec(&[
        "--listen",
        "web=tcp:127.0.0.1:20001",
        "--listen",
        "web=tcp:127.0.0.1:20002",
        "--",
        "/bin/true",
    ]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"web\" is given twice"));
}

#[test]
fn a_bad_listener_file_names_file_and_line() {
    let dir = std::env::temp_dir().join(format!("fdstore-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("listeners");
    std::fs::write(
        &file,
        "# ok\nweb=tcp:127.0.0.1:20003\nadmin=tcp:localhost\n",
    )
    .unwrap();
    let out = fdstore_exec(&["--listen-file", file.to_str().unwrap(), "--", "/bin/true"]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("listeners, line 3"), "{stderr}");
}

#[test]
fn a_missing_listener_file_is_a_usage_error() {
    let out = fdstore_exec(&["--listen-file", "/nonexistent/fdstore", "--", "/bin/true"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/fdstore"));
}

#[test]
fn reload_without_a_target_says_how_to_give_one() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fdstore-exec"))
        .arg("reload")
        .env_remove("MAINPID")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ExecReload="), "{stderr}");
    assert!(stderr.contains("--pid"), "{stderr}");
}

#[test]
fn status_of_a_process_without_control_socket_fails_clearly() {
    // Our own pid: alive, but it is no fdstore-exec.
    let pid = std::process::id().to_string();
    let out = fdstore_exec(&["status", "--pid", &pid]);
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no fdstore control socket"));
}

#[test]
fn a_bad_drain_signal_is_a_usage_error() {
    let out = fdstore_exec(&["--drain-signal", "SIGNOPE", "--", "/bin/true"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SIGNOPE"));
}

#[test]
fn a_signal_given_two_roles_is_a_usage_error_that_says_what_to_do() {
    let out = fdstore_exec(&["--forward-signal", "HUP", "--", "/bin/true"]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SIGHUP is both the --reload-signal and a --forward-signal"),
        "{stderr}"
    );
    assert!(stderr.contains("--reload-signal"), "{stderr}");
}

#[test]
fn a_stop_or_uncatchable_signal_cannot_be_a_reload_or_forwarded_signal() {
    for args in [
        ["--reload-signal", "SIGTERM"],
        ["--reload-signal", "KILL"],
        ["--forward-signal", "SIGINT"],
    ] {
        let out = fdstore_exec(&[args[0], args[1], "--", "/bin/true"]);
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("cannot be a"), "{args:?}: {stderr}");
    }
}
