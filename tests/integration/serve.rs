//! The library for async services under real systemd: `examples/axum.rs`
//! (features `axum`: `fdstore::serve`, the async upgrader, the library's
//! reload client) reloads under load in keep-alive and new-connection modes
//! with no failed request; a broken configuration, a changed address and a
//! renamed listener behave as under fdstore-exec; the fd-store message says
//! what is known; a dropped upgrader costs no CPU; SIGHUP outside a manager
//! keeps its default.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::support::app::{main_pid, wait_gone};
use crate::support::load::{Load, LoadReport, Mode};
use crate::support::{example, free_port, wait_for, Systemd};

fn get(port: u16, path: &str) -> Result<String, String> {
    crate::support::http::get(port, path, Duration::from_secs(30))
}

fn admin(socket: &Path, request: &str) -> Result<String, String> {
    let stream = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    crate::support::http::ask(stream, request)
}

fn assert_no_failures(report: &LoadReport) {
    assert_eq!(
        report.failed(),
        0,
        "{:?} {:?}",
        report.failures,
        report.examples
    );
    assert!(report.ok > 100, "too little traffic to mean anything");
}

/// The configuration file of the axum example.
fn write_config(sd: &Systemd, greeting: &str, listen: &str) {
    let text = format!(
        "greeting={greeting}\nlisten={listen}\nadmin=admin=unix:{}\n",
        sd.path("admin.sock").display()
    );
    std::fs::write(sd.path("app.conf"), text).unwrap();
}

/// Installs app.service running the axum example as its own reload client
/// (the shipped unit's settings), with `store_max` as
/// `FileDescriptorStoreMax=` (none: the line is left out).
fn install_axum(sd: &Systemd, store_max: Option<u32>) {
    let program = example("axum");
    let store = store_max.map_or(String::new(), |n| format!("FileDescriptorStoreMax={n}\n"));
    let service = format!(
        "[Service]\nType=notify\n{store}KillMode=mixed\nTimeoutStartSec=30\n\
         ExecStart={program} --config {config} --drain-timeout 10\n\
         ExecReload={program} reload\n",
        program = program.display(),
        config = sd.path("app.conf").display(),
    );
    sd.install(&[("app.service", &service)]);
}

/// Starts the axum example on a free port; returns it.
fn start_axum(sd: &Systemd) -> u16 {
    let port = free_port();
    write_config(sd, "hello", &format!("http=tcp:127.0.0.1:{port}"));
    install_axum(sd, Some(4));
    sd.ok(&["start", "app.service"]);
    port
}

/// A reload that must succeed; returns the new main process.
fn reload(sd: &Systemd, old: u32) -> u32 {
    sd.ok(&["reload", "app.service"]);
    let main = main_pid(sd);
    assert_ne!(main, old, "MainPID did not change");
    wait_gone(&old.to_string());
    main
}

fn axum_example_reloads_under_load_without_a_failed_request(sd: &Systemd) {
    let port = start_axum(sd);
    let socket = sd.path("admin.sock");
    let mut main = main_pid(sd);
    assert_eq!(
        get(port, "/").unwrap(),
        format!("hello (pid {main}, generation 1)")
    );
    let loads = [
        Load::start(port, Mode::KeepAlive, 2),
        Load::start(port, Mode::NewConnection, 2),
    ];
    for round in 2..=4u64 {
        std::thread::sleep(Duration::from_millis(300));
        main = reload(sd, main);
        assert_eq!(
            get(port, "/").unwrap(),
            format!("hello (pid {main}, generation {round})")
        );
        assert_eq!(admin(&socket, "GET /health").unwrap(), "ok");
    }
    std::thread::sleep(Duration::from_millis(300));
    for (mode, load) in ["keep-alive", "new-connection"].iter().zip(loads) {
        let report = load.stop();
        eprintln!(
            "{mode}: {} ok, {} failed over 3 reloads",
            report.ok,
            report.failed()
        );
        assert_no_failures(&report);
    }
    // The admin API's upgrade: the program's own call, async.
    let answer = admin(&socket, "POST /upgrade").unwrap();
    assert!(
        answer.starts_with("upgraded: generation 5 (pid "),
        "{answer}"
    );
    wait_gone(&main.to_string());
    assert_eq!(sd.unit_processes("app.service"), vec![main_pid(sd)]);
    let journal = sd.journal();
    assert!(journal.contains("the hand-over took"), "{journal}");
    sd.ok(&["stop", "app.service"]);
    assert_eq!(sd.show("app.service", "Result"), "success");
}

/// One response on a keep-alive connection: (status line and headers in
/// lower case, body).
fn response(reader: &mut BufReader<std::net::TcpStream>) -> Result<(String, String), String> {
    let mut head = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return Err(format!("closed after {head:?}")),
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
        let line = line.trim_end().to_ascii_lowercase();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        head.push_str(&line);
        head.push('\n');
    }
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("read body: {e}"))?;
    Ok((head, String::from_utf8_lossy(&body).trim().to_owned()))
}

fn keep_alive(port: u16) -> BufReader<std::net::TcpStream> {
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    BufReader::new(stream)
}

fn the_drain_closes_connections_as_fdstore_7_says(sd: &Systemd) {
    let port = start_axum(sd);
    let first = main_pid(sd);
    let gen1 = format!("hello (pid {first}, generation 1)");
    let request = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    // A keep-alive connection in use, one left idle, one slow request.
    let mut used = keep_alive(port);
    used.get_mut().write_all(request.as_bytes()).unwrap();
    let (head, body) = response(&mut used).unwrap();
    assert!(!head.contains("connection: close"), "{head}");
    assert_eq!(body, gen1);
    let mut idle = keep_alive(port);
    idle.get_mut().write_all(request.as_bytes()).unwrap();
    response(&mut idle).unwrap();
    let slow = std::thread::spawn(move || get(port, "/slow"));
    std::thread::sleep(Duration::from_millis(300));
    sd.ok(&["reload", "app.service"]);
    // The next response on a keep-alive connection comes from the old
    // generation and says Connection: close.
    used.get_mut().write_all(request.as_bytes()).unwrap();
    let (head, body) = response(&mut used).unwrap();
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(body, gen1);
    // The request in flight is finished by the old generation.
    assert_eq!(slow.join().unwrap().unwrap(), gen1);
    // The idle connection is closed after the grace period (1 s): end of
    // file, not a reset.
    let mut rest = Vec::new();
    assert_eq!(idle.read_to_end(&mut rest).unwrap(), 0);
    wait_gone(&first.to_string());
    assert!(get(port, "/").unwrap().ends_with("generation 2)"));
}

fn a_broken_configuration_fails_the_reload_with_the_clients_status(sd: &Systemd) {
    let port = start_axum(sd);
    let first = main_pid(sd);
    let load = Load::start(port, Mode::KeepAlive, 2);
    write_config(sd, "broken", &format!("http=tcp:127.0.0.1:{port}"));
    let out = sd.systemctl(&["reload", "app.service"]);
    assert!(!out.status.success(), "the reload must fail");
    sd.wait_for_journal("exited before it was ready; generation 1 keeps serving");
    // The reload command itself, as ExecReload= runs it: the statuses of
    // `fdstore-exec reload`.
    let client = std::process::Command::new(example("axum"))
        .arg("reload")
        .env("MAINPID", first.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&client.stderr);
    assert_eq!(client.status.code(), Some(69), "{stderr}");
    assert!(
        stderr.contains("axum reload: generation 2 (pid "),
        "{stderr}"
    );
    let status = std::process::Command::new(example("axum"))
        .arg("status")
        .env("MAINPID", first.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{status:?}");
    assert!(
        stdout.starts_with(&format!("generation 1, pid {first}: serving")),
        "{stdout}"
    );
    let nobody = std::process::Command::new(example("axum"))
        .arg("reload")
        .env_remove("MAINPID")
        .output()
        .unwrap();
    assert_eq!(nobody.status.code(), Some(64), "{nobody:?}");
    assert_eq!(main_pid(sd), first);
    assert_no_failures(&load.stop());
    // Fixed: the next reload succeeds.
    write_config(sd, "fixed", &format!("http=tcp:127.0.0.1:{port}"));
    let main = reload(sd, first);
    assert_eq!(
        get(port, "/").unwrap(),
        format!("fixed (pid {main}, generation 2)")
    );
}

fn a_changed_address_fails_the_reload(sd: &Systemd) {
    let port = start_axum(sd);
    let first = main_pid(sd);
    let other = free_port();
    write_config(sd, "moved", &format!("http=tcp:127.0.0.1:{other}"));
    let out = sd.systemctl(&["reload", "app.service"]);
    assert!(!out.status.success(), "the reload must fail");
    sd.wait_for_journal("the listener \"http\" cannot become http=tcp:127.0.0.1:");
    assert_eq!(main_pid(sd), first);
    assert_eq!(
        get(port, "/").unwrap(),
        format!("hello (pid {first}, generation 1)")
    );
    assert!(get(other, "/").is_err(), "nothing listens on the new port");
}

fn a_renamed_listener_is_retired(sd: &Systemd) {
    let port = start_axum(sd);
    let first = main_pid(sd);
    let other = free_port();
    write_config(sd, "renamed", &format!("web=tcp:127.0.0.1:{other}"));
    let main = reload(sd, first);
    assert_eq!(
        get(other, "/").unwrap(),
        format!("renamed (pid {main}, generation 2)")
    );
    // Closed by both generations (the old one is gone) and out of the fd
    // store: refused.
    let refused = std::net::TcpStream::connect(("127.0.0.1", port));
    assert!(
        refused.is_err(),
        "the retired listener still accepts connections"
    );
    sd.wait_for_journal("listener \"http\" is no longer asked for");
    // A restart gets the fd store back: only the new listener comes back.
    sd.ok(&["restart", "app.service"]);
    assert!(get(other, "/").unwrap().starts_with("renamed (pid "));
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

fn the_fd_store_message_says_what_is_known(sd: &Systemd) {
    let port = free_port();
    write_config(sd, "hello", &format!("http=tcp:127.0.0.1:{port}"));
    // No FileDescriptorStoreMax=: the store keeps nothing; only 254+ says.
    install_axum(sd, None);
    sd.ok(&["start", "app.service"]);
    sd.wait_for_journal("listener sent to the fd store, which may keep nothing");
    sd.ok(&["stop", "app.service"]);
    // One slot for two listeners: 254+ exports $FDSTORE=1, and the start
    // fails naming the setting; 252 does not say, and the start goes on.
    install_axum(sd, Some(1));
    let out = sd.systemctl(&["start", "app.service"]);
    if sd.version.number() >= 254 {
        assert!(!out.status.success(), "the start must fail");
        sd.wait_for_journal("FileDescriptorStoreMax=1 is too small");
    } else {
        assert!(out.status.success(), "{out:?}");
    }
}

fn a_dropped_upgrader_uses_no_cpu_and_still_upgrades(sd: &Systemd) {
    let port = free_port();
    let service = format!(
        "[Service]\nType=notify\nFileDescriptorStoreMax=4\nKillMode=mixed\nTimeoutStartSec=30\n\
         ExecStart={} http=tcp:127.0.0.1:{port}\nExecReload={} reload\n",
        example("upgrade_minimal").display(),
        crate::support::app::fdstore_exec(),
    );
    sd.install(&[("app.service", &service)]);
    sd.ok(&["start", "app.service"]);
    let first = main_pid(sd);
    assert!(get(port, "/").unwrap().contains("generation 1)"));
    // Idle for two seconds: a few clock ticks of polling, not ~140 (the
    // upgrade thread spinning on a closed wake-up pipe).
    let before = cpu_ticks(first);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(first) - before;
    eprintln!("idle for 2 s after dropping the upgrader: {used} clock ticks of CPU");
    assert!(
        used < 20,
        "pid {first} used {used} ticks of CPU in 2 s while idle"
    );
    let main = reload(sd, first);
    assert_eq!(
        get(port, "/").unwrap(),
        format!("minimal (pid {main}, generation 2)")
    );
}

/// User plus system time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = stat.rsplit_once(") ").unwrap().1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); the name (field 2) is cut off, and the
    // state is field 3.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

on_each_systemd!(
    axum_example_reloads_under_load_without_a_failed_request,
    the_drain_closes_connections_as_fdstore_7_says,
    a_broken_configuration_fails_the_reload_with_the_clients_status,
    a_changed_address_fails_the_reload,
    a_renamed_listener_is_retired,
    the_fd_store_message_says_what_is_known,
    a_dropped_upgrader_uses_no_cpu_and_still_upgrades,
);

/// Outside a service manager SIGHUP means the terminal went away: the
/// program ends by it (its default) instead of starting a copy of itself.
#[test]
fn sighup_outside_a_manager_keeps_its_default() {
    let port = free_port();
    let mut child = std::process::Command::new(example("upgrade_minimal"))
        .arg(format!("http=tcp:127.0.0.1:{port}"))
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .spawn()
        .unwrap();
    wait_for("the program to serve", Duration::from_secs(20), || {
        get(port, "/").ok()
    });
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    let status = wait_for("the program to end", Duration::from_secs(10), || {
        child.try_wait().unwrap()
    });
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGHUP), "{status:?}");
    assert!(
        get(port, "/").is_err(),
        "a copy of the program still serves"
    );
}

/// The axum example needs at most 15 lines of fdstore glue, and every line
/// that names fdstore is counted.
#[test]
fn the_axum_example_has_at_most_15_lines_of_glue() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/axum.rs"))
            .unwrap();
    let code: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect();
    let glue = code.iter().filter(|l| l.ends_with("// fdstore")).count();
    assert!(glue <= 15, "{glue} lines of glue");
    for line in &code {
        assert!(
            !line.contains("fdstore") || line.ends_with("// fdstore"),
            "uncounted glue: {line}"
        );
    }
    assert!(
        text.contains(&format!("`// fdstore`, {glue} of them")),
        "the header states another count than {glue}"
    );
}

/// Every unit file an example's header names exists in `units/`.
#[test]
fn example_headers_name_units_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, _) in text.match_indices("units/") {
            let name: String = text[i + "units/".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "-_.@{},".contains(*c))
                .collect();
            let name = name.trim_end_matches(['.', ',']);
            for unit in expand(name) {
                assert!(
                    root.join("units").join(&unit).exists(),
                    "{} names units/{unit}, which does not exist",
                    path.display()
                );
            }
        }
    }
}

/// `a.{socket,service}` as the two names.
fn expand(name: &str) -> Vec<String> {
    match name.split_once('{') {
        Some((stem, rest)) => rest
            .trim_end_matches('}')
            .split(',')
            .map(|ext| format!("{stem}{ext}"))
            .collect(),
        None => vec![name.to_owned()],
    }
}
