//! Readiness that proves the new generation serves, under real systemd and
//! traffic: `--ready accept`, `http:`, `notify+accept` with a real gunicorn
//! whose workers accept after the arbiter's `READY=1`, and `command:` checks
//! that know which program they check and never block fdstore-exec.
//!
//! Every new version here says `READY=1` (or would pass a check over the
//! shared listener) while it does not serve: the old generation answers
//! those. Only a proof that the new generation accepts may hand over, and
//! every mode includes it unless `unproven` says otherwise.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::app::{fdstore_exec, main_pid, start_app, unit, wait_gone, App};
use crate::support::load::{Load, Mode};
use crate::support::{answer, example, free_port, report_lines, wait_for, Systemd, Traffic};

/// The "last reload took N ms" of the unit's status text.
fn last_reload_ms(sd: &Systemd) -> u64 {
    let status = sd.show("app.service", "StatusText");
    let Some((_, rest)) = status.split_once("last reload took ") else {
        panic!("no hand-over time in {status:?}");
    };
    rest.split(' ').next().unwrap().parse().unwrap()
}

/// Runs `systemctl reload app.service`; returns whether it succeeded and
/// how long it took.
fn reload(sd: &Systemd) -> (bool, Duration) {
    let t = Instant::now();
    let out = sd.systemctl(&["reload", "app.service"]);
    (out.status.success(), t.elapsed())
}

/// The old main process's journal line about a failed reload that
/// contains `needle` (the reason names the mode).
fn failed_reload_line(sd: &Systemd, needle: &str) -> String {
    wait_for(
        &format!("a failed reload with {needle:?} in the journal"),
        Duration::from_secs(20),
        || {
            sd.journal()
                .lines()
                .rev()
                .find(|l| l.contains("reload failed after") && l.contains(needle))
                .map(str::to_owned)
        },
    )
}

// ----- accept, with the probe program -----

fn accept_refuses_a_new_version_that_never_accepts(sd: &Systemd) {
    let (port, app) = start_app(
        sd,
        "receive serve web",
        "--ready accept --ready-timeout 2s",
        "",
    );
    let first = main_pid(sd);
    let traffic = Traffic::start(port, 4);
    // Says READY=1 and never accepts: `notify` would hand over to it.
    app.version("receive ready");
    let (ok, took) = reload(sd);
    assert!(!ok, "the reload must fail");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let line = failed_reload_line(sd, "generation 2");
    assert!(
        line.contains("was not ready within 2s (--ready accept: web (127.0.0.1:"),
        "{line}"
    );
    assert!(
        line.contains("no probe was accepted by generation 2"),
        "{line}"
    );
    // The old generation took the probes, and was never counted.
    assert!(
        line.contains("accepted by another process (the old generation)"),
        "{line}"
    );
    assert_eq!(main_pid(sd), first);
    std::thread::sleep(Duration::from_millis(200));
    let count = traffic.stop();
    assert_eq!(count.failed, 0, "{:?}", count.failures);
    let starts = app.starts();
    assert_eq!(starts.len(), 2);
    wait_gone(&starts[1]);
    assert_eq!(count.answers, [format!("pid {}", starts[0])].into());
    assert_eq!(answer(port), format!("pid {}", starts[0]));
    let status = sd.show("app.service", "StatusText");
    assert!(
        status.contains("reload failed: ") && status.contains("--ready accept"),
        "{status}"
    );
}

fn accept_waits_for_a_new_version_that_accepts_late(sd: &Systemd) {
    let (port, app) = start_app(
        sd,
        "receive serve web",
        "--ready accept --ready-timeout 20s",
        "",
    );
    let first = main_pid(sd);
    let traffic = Traffic::start(port, 4);
    app.version("receive ready sleep 2000 serve web");
    let (ok, took) = reload(sd);
    assert!(ok, "the reload must succeed");
    assert!(took >= Duration::from_secs(2), "handed over after {took:?}");
    assert!(
        last_reload_ms(sd) >= 2000,
        "{}",
        sd.show("app.service", "StatusText")
    );
    assert_ne!(main_pid(sd), first);
    let starts = app.starts();
    wait_gone(&starts[0]);
    std::thread::sleep(Duration::from_millis(200));
    let count = traffic.stop();
    assert_eq!(count.failed, 0, "{:?}", count.failures);
    assert!(
        count.answers.contains(&format!("pid {}", starts[1])),
        "{count:?}"
    );
    assert_eq!(answer(port), format!("pid {}", starts[1]));
}

fn accept_probes_tcp_v4_v6_unix_and_abstract_listeners(sd: &Systemd) {
    let port = free_port();
    let v6 = free_port();
    let path = sd.path("api.sock");
    let abstract_name = format!("fdstore-test-{}-{port}", std::process::id());
    let app = App::new(sd);
    let all = "receive serve web serve v6 serve-unix api serve-unix admin";
    app.version(all);
    sd.install(&[(
        "app.service",
        &unit(
            &app,
            &format!(
                "--listen web=tcp:127.0.0.1:{port} --listen v6=tcp:[::1]:{v6} \
                 --listen api=unix:{} --listen admin=unix:@{abstract_name} \
                 --ready accept --ready-timeout 2s",
                path.display()
            ),
            "",
        ),
    )]);
    sd.ok(&["start", "app.service"]);
    let traffic = Traffic::start(port, 2);
    // A version that forgets its abstract listener.
    app.version("receive ready serve web serve v6 serve-unix api");
    let (ok, _) = reload(sd);
    assert!(!ok);
    let line = failed_reload_line(sd, "generation 2");
    assert!(
        line.contains(&format!(
            "admin (@{abstract_name}): no probe was accepted by generation 2"
        )),
        "{line}"
    );
    for proven in ["web (", "v6 (", "api ("] {
        assert!(!line.contains(proven), "{proven} was proven: {line}");
    }
    // The one that serves all four takes over.
    app.version(all);
    let (ok, _) = reload(sd);
    assert!(ok);
    let starts = app.starts();
    assert_eq!(starts.len(), 3);
    std::thread::sleep(Duration::from_millis(200));
    let count = traffic.stop();
    assert_eq!(count.failed, 0, "{:?}", count.failures);
    wait_gone(&starts[0]);
    assert_eq!(answer(port), format!("pid {}", starts[2]));
    // The Unix listeners are the new program's too.
    let mut line = String::new();
    use std::io::BufRead;
    let stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
    std::io::BufReader::new(stream)
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), format!("pid {}", starts[2]));
}

/// Hardened units restrict socket families: the probes' sock_diag socket
/// needs AF_NETLINK, and the start says so rather than hanging.
fn accept_under_restricted_address_families_says_what_to_allow(sd: &Systemd) {
    let app = App::new(sd);
    app.version("receive serve web");
    let options = format!("--listen web=tcp:127.0.0.1:{} --ready accept", free_port());
    sd.install(&[(
        "app.service",
        &unit(
            &app,
            &options,
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n",
        ),
    )]);
    let out = sd.systemctl(&["start", "app.service"]);
    assert!(!out.status.success(), "the start must fail");
    sd.wait_for_journal("a unit with RestrictAddressFamilies= must allow AF_NETLINK too");
    // The default mode probes too, and names its opt-out.
    let default = format!("--listen web=tcp:127.0.0.1:{}", free_port());
    sd.install(&[(
        "app.service",
        &unit(
            &app,
            &default,
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n",
        ),
    )]);
    sd.ok(&["reset-failed", "app.service"]);
    assert!(!sd.systemctl(&["start", "app.service"]).status.success());
    sd.wait_for_journal(
        "must allow AF_NETLINK too (or go without the proof that every mode includes: --ready notify+unproven)",
    );
    sd.install(&[(
        "app.service",
        &unit(
            &app,
            &options,
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK\n",
        ),
    )]);
    sd.ok(&["reset-failed", "app.service"]);
    sd.ok(&["start", "app.service"]);
    sd.ok(&["reload", "app.service"]);
    // The refused start never ran the program.
    assert_eq!(app.starts().len(), 2);
}

// ----- the accept proof every mode includes -----

/// Issue 13: `notify`, `exec`, `delay:` and `command:` trusted the program;
/// a new version that said READY=1 (or outlived the delay, or passed the
/// command) and never accepted took over, the old one drained, and every
/// request after stalled. Failed before: each of these reloads succeeded.
fn every_mode_refuses_a_new_version_that_never_accepts(sd: &Systemd) {
    for mode in ["notify", "exec", "delay:200ms", "command:true"] {
        let (port, app) = start_app(
            sd,
            "receive serve web ready",
            &format!("--ready {mode} --ready-timeout 2s"),
            "",
        );
        let first = main_pid(sd);
        let traffic = Traffic::start(port, 4);
        app.version("receive ready");
        let (ok, took) = reload(sd);
        assert!(!ok, "--ready {mode}: the reload must fail");
        assert!(took < Duration::from_secs(10), "{took:?}");
        let line = failed_reload_line(sd, &format!("(--ready {mode}: web (127.0.0.1:{port})"));
        assert!(
            line.contains("was not ready within 2s")
                && line.contains("no probe was accepted by generation 2")
                && line.contains("add +unproven:NAME and trust it there"),
            "{line}"
        );
        assert_eq!(main_pid(sd), first, "--ready {mode}");
        std::thread::sleep(Duration::from_millis(200));
        let count = traffic.stop();
        assert_eq!(count.failed, 0, "--ready {mode}: {:?}", count.failures);
        let starts = app.starts();
        assert_eq!(starts.len(), 2, "--ready {mode}");
        assert_eq!(answer(port), format!("pid {}", starts[0]), "--ready {mode}");
        sd.ok(&["stop", "app.service"]);
        std::fs::remove_file(&app.report).unwrap();
    }
}

/// The first generation is held to the same proof, and `unproven:NAME` is
/// the named way out for a listener the program does not accept on;
/// `unproven` alone gives up the proof, as documented.
fn unproven_is_the_only_way_to_go_without_the_proof(sd: &Systemd) {
    let app = App::new(sd);
    app.version("receive serve web ready");
    let install = |ready: &str| {
        let options = format!(
            "--listen web=tcp:127.0.0.1:{} --listen spare=tcp:127.0.0.1:{} --ready {ready} --ready-timeout 2s",
            free_port(),
            free_port()
        );
        sd.install(&[("app.service", &unit(&app, &options, ""))]);
    };
    // Accepts on web only: not ready, so the start fails.
    install("notify");
    let out = sd.systemctl(&["start", "app.service"]);
    assert!(!out.status.success(), "the start must fail");
    sd.wait_for_journal("(--ready notify: spare (127.0.0.1:");
    sd.ok(&["reset-failed", "app.service"]);
    // The operator says spare is not accepted on: web is still proven.
    install("notify+unproven:spare");
    sd.ok(&["start", "app.service"]);
    app.version("receive ready");
    let (ok, _) = reload(sd);
    assert!(!ok, "web is still proven");
    failed_reload_line(sd, "(--ready notify+unproven:spare: web (127.0.0.1:");
    sd.ok(&["stop", "app.service"]);
    // unproven: the program is trusted, and a version that never accepts
    // takes over: what the opt-out gives up.
    app.version("receive serve web ready");
    install("notify+unproven");
    sd.ok(&["start", "app.service"]);
    let before = main_pid(sd);
    app.version("receive ready");
    let (ok, _) = reload(sd);
    assert!(ok, "unproven trusts READY=1");
    assert_ne!(
        main_pid(sd),
        before,
        "the version that never accepts took over"
    );
}

// ----- http:, with the example HTTP server -----

/// app.service running hello_http under fdstore-exec with `options`; the
/// script holds the server's own options, so that a test can deploy a new
/// version.
struct HttpApp {
    port: u16,
    script: PathBuf,
    config: PathBuf,
}

impl HttpApp {
    fn start(sd: &Systemd, options: &str) -> HttpApp {
        let app = HttpApp {
            port: free_port(),
            script: sd.path("app.sh"),
            config: sd.path("hello.conf"),
        };
        std::fs::write(&app.config, "hello\n").unwrap();
        app.version("");
        sd.install(&[(
            "app.service",
            &format!(
                "[Service]\nType=notify\nFileDescriptorStoreMax=8\nTimeoutStartSec=20\nKillMode=mixed\n\
                 ExecStart={fe} --listen http=tcp:127.0.0.1:{} {options} -- {}\n\
                 ExecReload={fe} reload\n",
                app.port,
                app.script.display(),
                fe = fdstore_exec(),
            ),
        )]);
        sd.ok(&["start", "app.service"]);
        app
    }

    fn version(&self, server_options: &str) {
        write_script(
            &self.script,
            &format!(
                "exec {} --config {} {server_options}",
                example("hello_http").display(),
                self.config.display()
            ),
        );
    }
}

fn write_script(path: &Path, body: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn http_refuses_versions_that_do_not_accept_or_answer_badly(sd: &Systemd) {
    let app = HttpApp::start(sd, "--ready http:/health --ready-timeout 2s");
    let first = main_pid(sd);
    let load = Load::start(app.port, Mode::NewConnection, 2);
    app.version("--never-accept");
    let (ok, _) = reload(sd);
    assert!(!ok);
    let line = failed_reload_line(sd, "generation 2");
    assert!(
        line.contains("(--ready http:/health: http (127.0.0.1:")
            && line.contains("no probe was answered as expected by generation 2"),
        "{line}"
    );
    // Accepts, but is not healthy: its own answer is judged.
    app.version("--health-status 503");
    let (ok, _) = reload(sd);
    assert!(!ok);
    let line = failed_reload_line(sd, "status 503");
    assert!(
        line.contains("GET /health was answered with status 503, not a 2xx status"),
        "{line}"
    );
    assert_eq!(main_pid(sd), first);
    let report = load.stop();
    assert_eq!(report.failed(), 0, "{:?}", report.examples);
    // The unhealthy version served real clients while it was checked (it
    // accepts on the shared listener); once refused, it is gone.
    let after = Load::start(app.port, Mode::NewConnection, 1);
    std::thread::sleep(Duration::from_millis(300));
    let after = after.stop();
    assert_eq!(after.failed(), 0, "{:?}", after.examples);
    assert_eq!(
        after.bodies.len(),
        1,
        "only the first version serves: {:?}",
        after.bodies
    );
    assert!(report.bodies.is_superset(&after.bodies));
}

fn http_waits_for_a_version_that_accepts_late(sd: &Systemd) {
    let app = HttpApp::start(sd, "--ready http:/health,200 --ready-timeout 20s");
    let first = main_pid(sd);
    let load = Load::start(app.port, Mode::NewConnection, 2);
    std::thread::sleep(Duration::from_millis(200));
    app.version("--accept-after 2000");
    let (ok, took) = reload(sd);
    assert!(ok);
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(last_reload_ms(sd) >= 2000);
    assert_ne!(main_pid(sd), first);
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    assert_eq!(report.failed(), 0, "{:?}", report.examples);
    assert_eq!(
        report.bodies.len(),
        2,
        "both versions served: {:?}",
        report.bodies
    );
}

// ----- notify+accept, with a real gunicorn -----

/// app.service: gunicorn (sync workers) under fdstore-exec
/// `--ready notify+accept`; the application module is rewritten for each
/// version. The arbiter says READY=1 before its workers import it.
struct Gunicorn {
    port: u16,
    module: PathBuf,
}

impl Gunicorn {
    fn start(sd: &Systemd) -> Gunicorn {
        let dir = sd.path("gunicorn-app");
        std::fs::create_dir_all(&dir).unwrap();
        let app = Gunicorn {
            port: free_port(),
            module: dir.join("app.py"),
        };
        app.version("");
        sd.install(&[(
            "app.service",
            &format!(
                "[Service]\nType=notify\nFileDescriptorStoreMax=8\nTimeoutStartSec=30\nKillMode=mixed\n\
                 ExecStart={fe} --listen http=tcp:127.0.0.1:{} --ready notify+accept --ready-timeout 15s \
                 -- /usr/bin/python3 -m gunicorn --workers 2 --chdir {} --graceful-timeout 10 app:application\n\
                 ExecReload={fe} reload\n",
                app.port,
                dir.display(),
                fe = fdstore_exec(),
            ),
        )]);
        sd.ok(&["start", "app.service"]);
        app
    }

    /// A new application module; `prelude` runs when a worker imports it.
    fn version(&self, prelude: &str) {
        let text = format!(
            "import os, time\n{prelude}\n\
             def application(environ, start_response):\n\
             \x20   body = ('hello from arbiter %d\\n' % os.getppid()).encode()\n\
             \x20   start_response('200 OK', [('Content-Type', 'text/plain'), ('Content-Length', str(len(body)))])\n\
             \x20   return [body]\n"
        );
        let tmp = self.module.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.module).unwrap();
        // No stale bytecode of the previous version.
        let _ = std::fs::remove_dir_all(self.module.with_file_name("__pycache__"));
    }
}

fn gunicorn_is_judged_by_its_workers_not_by_its_arbiter(sd: &Systemd) {
    let app = Gunicorn::start(sd);
    let first = main_pid(sd);
    let load = Load::start(app.port, Mode::NewConnection, 2);
    std::thread::sleep(Duration::from_millis(300));
    // Workers that take 2 s to load the application: the arbiter's early
    // READY=1 does not hand over.
    app.version("time.sleep(2)");
    let (ok, took) = reload(sd);
    assert!(ok, "{}", sd.journal_tail(30));
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(last_reload_ms(sd) >= 2000);
    let second = main_pid(sd);
    assert_ne!(second, first);
    // A broken application: the arbiter says READY=1, its workers fail to
    // boot, and gunicorn gives up: the reload fails, the old one serves.
    app.version("raise RuntimeError('a broken release')");
    let (ok, _) = reload(sd);
    assert!(!ok, "a broken application must not take over");
    let line = failed_reload_line(sd, "generation 3");
    assert!(line.contains("before it was ready"), "{line}");
    assert_eq!(main_pid(sd), second);
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    assert_eq!(report.failed(), 0, "{:?}", report.examples);
    assert!(report.ok > 20, "{report:?}");
    assert_eq!(sd.show("app.service", "ActiveState"), "active");
    sd.ok(&["stop", "app.service"]);
    assert_eq!(sd.show("app.service", "Result"), "success");
}

// ----- command: -----

fn command_checks_know_the_program_and_its_generation(sd: &Systemd) {
    let seen = sd.path("checked");
    let (_port, app) = start_app(
        sd,
        "receive serve web ready",
        &format!(
            "--ready 'notify+command:echo \"$FDSTORE_READY_PID $FDSTORE_READY_GENERATION\" >> {}'",
            seen.display()
        ),
        "",
    );
    sd.ok(&["reload", "app.service"]);
    sd.ok(&["reload", "app.service"]);
    let starts = app.starts();
    let lines: Vec<String> = std::fs::read_to_string(&seen)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let expected: Vec<String> = starts
        .iter()
        .enumerate()
        .map(|(i, pid)| format!("{pid} {}", i + 1))
        .collect();
    assert_eq!(lines, expected);
}

/// Issue 14, point 15: a check command that takes long must not hold up
/// fdstore-exec: a stop during it is as quick as any other.
fn a_stop_during_a_slow_check_command_is_prompt(sd: &Systemd) {
    let marker = sd.path("check-running");
    let app = App::new(sd);
    app.version("receive serve web");
    sd.install(&[(
        "app.service",
        &unit(
            &app,
            &format!(
                "--listen web=tcp:127.0.0.1:{} --ready 'command:touch {}; sleep 20'",
                free_port(),
                marker.display()
            ),
            "",
        ),
    )]);
    sd.ok(&["start", "--no-block", "app.service"]);
    wait_for("the check command to run", Duration::from_secs(20), || {
        marker.exists().then_some(())
    });
    // The check can start before the program has set up its SIGTERM
    // handling (on a loaded machine it did): a stop then kills it before it
    // can say "stopped".
    wait_for(
        "the program to wait for SIGTERM",
        Duration::from_secs(20),
        || (!report_lines(&app.report, "waiting").is_empty()).then_some(()),
    );
    let t = Instant::now();
    sd.ok(&["stop", "app.service"]);
    let took = t.elapsed();
    // Before, the loop sat in the check for up to 5 s.
    assert!(took < Duration::from_secs(3), "the stop took {took:?}");
    assert_eq!(sd.show("app.service", "ActiveState"), "inactive");
    assert_eq!(report_lines(&app.report, "stopped").len(), 1);
}

// ----- programs woken alone (EPOLLEXCLUSIVE, as nginx waits) -----

/// The state letter of process `pid` (`T`: stopped), `?` once it is gone.
fn state_of(pid: &str) -> char {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(") ")
                .map(|(_, rest)| rest.chars().next().unwrap_or('?'))
        })
        .unwrap_or('?')
}

/// The journal's lines about failed reloads, for a message.
fn failures(sd: &Systemd) -> String {
    let journal = sd.journal();
    let lines: Vec<&str> = journal
        .lines()
        .filter(|l| l.contains("reload failed"))
        .collect();
    lines.join("\n")
}

/// A program that waits with `EPOLLEXCLUSIVE` is woken alone by each
/// connection, and the kernel wakes the first such waiter that is waiting:
/// without load that is the old generation, registered first, every time.
/// Each of these reloads failed after its ready timeout before the old
/// generation was paused for the probes. (A probe sent while the old
/// program is between two waits goes to the new one: a reload may pass
/// without a pause.)
fn accept_proves_a_program_woken_alone_without_load(sd: &Systemd) {
    let (port, app) = start_app(
        sd,
        "receive serve-exclusive web",
        "--ready accept --ready-timeout 10s",
        "",
    );
    for generation in 2..=5 {
        let before = main_pid(sd);
        app.version("receive serve-exclusive web");
        let (ok, took) = reload(sd);
        assert!(
            ok,
            "the reload to generation {generation} failed after {took:?}:\n{}",
            failures(sd)
        );
        assert_ne!(main_pid(sd), before);
        let starts = app.starts();
        let (old, new) = (&starts[starts.len() - 2], &starts[starts.len() - 1]);
        wait_gone(old);
        assert_eq!(answer(port), format!("pid {new}"));
        assert_ne!(state_of(new), 'T', "the new program must run");
    }
    let journal = sd.journal();
    assert!(
        journal.contains(" for the proof of generation "),
        "an old generation says it paused its program:\n{journal}"
    );
}

/// The same under traffic: nothing fails, and the new generation serves.
fn accept_proves_a_program_woken_alone_under_load(sd: &Systemd) {
    let (port, app) = start_app(
        sd,
        "receive serve-exclusive web",
        "--ready accept --ready-timeout 10s",
        "",
    );
    let traffic = Traffic::start(port, 4);
    for generation in 2..=6 {
        app.version("receive serve-exclusive web");
        let (ok, took) = reload(sd);
        assert!(
            ok,
            "the reload to generation {generation} failed after {took:?}:\n{}",
            failures(sd)
        );
    }
    let starts = app.starts();
    let last = starts.last().unwrap().clone();
    for old in &starts[..starts.len() - 1] {
        wait_gone(old);
    }
    std::thread::sleep(Duration::from_millis(200));
    let count = traffic.stop();
    assert_eq!(count.failed, 0, "{:?}", count.failures);
    assert!(count.answers.contains(&format!("pid {last}")), "{count:?}");
    assert_eq!(answer(port), format!("pid {last}"));
}

/// A new program that is slow to accept once woken (a program still busy
/// starting: here 5 ms late each time) loses every probe to an old one that
/// waits with `poll` too and is woken with it: after a few lost probes the
/// old program is paused for the next, and the reload succeeds instead of
/// retrying until its ready timeout. Nothing fails meanwhile.
fn probes_lost_again_and_again_get_the_old_program_paused(sd: &Systemd) {
    let (port, app) = start_app(
        sd,
        "receive serve web",
        "--ready accept --ready-timeout 2s",
        "",
    );
    let traffic = Traffic::start(port, 2);
    app.version("receive serve-late web");
    let (ok, took) = reload(sd);
    assert!(
        ok,
        "the reload failed after {took:?}; the old program took every probe:\n{}",
        failures(sd)
    );
    let journal = sd.journal();
    assert!(
        journal.contains("probes of listener web were taken by another process"),
        "the new generation says why it asks for pauses:\n{journal}"
    );
    assert!(
        journal.contains("paused the program of generation 1 for the proof of generation 2 "),
        "the old generation says it paused its program:\n{journal}"
    );
    let starts = app.starts();
    wait_gone(&starts[0]);
    std::thread::sleep(Duration::from_millis(200));
    let count = traffic.stop();
    assert_eq!(count.failed, 0, "{:?}", count.failures);
    assert_eq!(answer(port), format!("pid {}", starts[1]));
}

/// A new program that waits with `EPOLLEXCLUSIVE` but never accepts gets
/// the old generation paused again and again: each pause is short, their
/// number is bounded, the reload fails after its ready timeout, and the
/// old program runs on, never left stopped, and served every request.
fn pauses_for_a_program_that_never_accepts_are_bounded_and_end(sd: &Systemd) {
    let (port, app) = start_app(
        sd,
        "receive serve-exclusive web",
        "--ready accept --ready-timeout 3s",
        "",
    );
    let first = main_pid(sd);
    let traffic = Traffic::start(port, 4);
    app.version("receive hold-exclusive web");
    let (ok, _) = reload(sd);
    assert!(!ok, "the reload must fail");
    let line = failed_reload_line(sd, "generation 2");
    assert!(line.contains("was not ready within 3s"), "{line}");
    let starts = app.starts();
    assert_eq!(starts.len(), 2);
    assert_ne!(
        state_of(&starts[0]),
        'T',
        "the old program must not stay stopped"
    );
    wait_gone(&starts[1]);
    std::thread::sleep(Duration::from_millis(200));
    assert_ne!(
        state_of(&starts[0]),
        'T',
        "the old program must not stay stopped"
    );
    let count = traffic.stop();
    assert_eq!(count.failed, 0, "{:?}", count.failures);
    assert_eq!(count.answers, [format!("pid {}", starts[0])].into());
    assert_eq!(answer(port), format!("pid {}", starts[0]));
    assert_eq!(main_pid(sd), first);
    // "paused the program of generation 1 for the proof of generation 2 N
    // times, M ms in all"
    let journal = sd.journal();
    let summary = journal
        .lines()
        .find_map(|l| {
            l.split_once("paused the program of generation 1 for the proof of generation 2 ")
        })
        .map(|(_, rest)| rest.to_owned())
        .unwrap_or_else(|| panic!("no pause summary in the journal:\n{journal}"));
    let words: Vec<&str> = summary.split_whitespace().collect();
    let times: u32 = words[0].parse().unwrap();
    let ms: f64 = words[2].parse().unwrap();
    assert!(times >= 1, "{summary}");
    assert!(
        times <= fdstore::protocol::handover::PAUSES_MAX,
        "{summary}"
    );
    let total = fdstore::protocol::handover::PAUSE_TOTAL.as_secs_f64() * 1000.0;
    assert!(ms <= total + 0.05, "{summary}");
}

/// A stop while the old program is being paused again and again: the old
/// program is continued before it is told to stop, so it stops by itself
/// (a program left stopped would wait for the stop timeout and SIGKILL: the
/// manager continues the main process, fdstore-exec, not its program).
fn a_stop_during_pauses_stops_the_old_program_cleanly(sd: &Systemd) {
    let (_port, app) = start_app(
        sd,
        "receive serve-exclusive web",
        "--ready accept --ready-timeout 20s",
        "TimeoutStopSec=15\n",
    );
    app.version("receive hold-exclusive web");
    sd.ok(&["reload", "--no-block", "app.service"]);
    wait_for(
        "the new generation to ask for pauses",
        Duration::from_secs(20),
        || {
            sd.journal()
                .contains("its probes wait for the old generation's program to be paused")
                .then_some(())
        },
    );
    let t = Instant::now();
    sd.ok(&["stop", "app.service"]);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(10), "the stop took {took:?}");
    assert_eq!(sd.show("app.service", "ActiveState"), "inactive");
    assert_eq!(sd.show("app.service", "Result"), "success");
    let starts = app.starts();
    assert_eq!(starts.len(), 2);
    assert!(
        !report_lines(&app.report, "stopped").is_empty(),
        "the old program handled the stop itself"
    );
    for pid in &starts {
        wait_gone(pid);
    }
}

on_each_systemd!(
    every_mode_refuses_a_new_version_that_never_accepts,
    unproven_is_the_only_way_to_go_without_the_proof,
    accept_refuses_a_new_version_that_never_accepts,
    accept_waits_for_a_new_version_that_accepts_late,
    accept_probes_tcp_v4_v6_unix_and_abstract_listeners,
    accept_under_restricted_address_families_says_what_to_allow,
    http_refuses_versions_that_do_not_accept_or_answer_badly,
    http_waits_for_a_version_that_accepts_late,
    gunicorn_is_judged_by_its_workers_not_by_its_arbiter,
    command_checks_know_the_program_and_its_generation,
    a_stop_during_a_slow_check_command_is_prompt,
    accept_proves_a_program_woken_alone_without_load,
    accept_proves_a_program_woken_alone_under_load,
    probes_lost_again_and_again_get_the_old_program_paused,
    pauses_for_a_program_that_never_accepts_are_bounded_and_end,
    a_stop_during_pauses_stops_the_old_program_cleanly,
);
