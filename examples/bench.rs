//! The reload-under-load benchmark: every scenario under a private systemd
//! (252, or `FDSTORE_BENCH_SYSTEMD=254|257|262`), HTTP load on loopback in
//! both client modes, one results table. Run it with `bash tests/bench
//! [RELOADS]` (as root), which builds everything first.
//!
//! Scenarios:
//! - `handover (socket unit)`, `handover (fd store)`: fdstore-exec, a
//!   `systemctl reload` every `--interval`;
//! - `handover (fd store, Type=notify-reload)` and its no-op (systemd 254+
//!   only): the reload without an `ExecReload=` process, by SIGHUP;
//! - `restart mode (fd store)`: fdstore-exec `--mode restart`, `systemctl
//!   restart`;
//! - `naive restart`: the program binds its own socket, `systemctl restart`;
//! - `SO_REUSEPORT overlap`: start a new instance on the same port with
//!   SO_REUSEPORT, then stop the old one;
//! - `control: ExecReload= that only uses CPU`: systemd's no-op reload
//!   whose `ExecReload=` burns as much CPU as a hand-over costs the unit
//!   (`FDSTORE_BENCH_BURN_MS`, 7 by default) and hands nothing over: on a
//!   small machine it tells how much of a hand-over's reload-window tail is
//!   only CPU taken from the server;
//! - `HAProxy`: Debian's haproxy in master-worker mode with `expose-fd
//!   listeners`, serving the same answer, reloaded by `systemctl reload` of
//!   Debian's unit (a configuration check, then SIGUSR2 to the master): the
//!   anchor, the reload known to lose nothing;
//! - `control: kill`: the server is killed outright once, which must show
//!   failed requests (proof that failures are counted).
//!
//! `FDSTORE_BENCH_WAIT=exclusive` runs every scenario's hello_http with
//! `--wait exclusive` (`epoll` with `EPOLLEXCLUSIVE`, as nginx waits)
//! instead of `poll`. `FDSTORE_BENCH_RATE=N` paces each client to N
//! requests per second (latency counted from when a request was due), so
//! that the machine keeps idle CPU; by default the clients are closed-loop
//! and keep both cores busy.
//!
//! Also measured: reload round trip minus the program's own time to ready,
//! fdstore-exec's resident memory, its wake-ups while idle, and the time to
//! hand over 1,000 listeners against one.

// The integration tests' harness, of which the benchmark uses a part (the
// manager, the load, free ports): the rest is dead code here.
#[allow(dead_code)]
#[path = "../tests/integration/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::load::{Load, LoadReport, Mode};
use support::{free_port, Systemd, Version};

const NEW_CONNECTION_CLIENTS: usize = 2;
const KEEP_ALIVE_CLIENTS: usize = 2;
/// A reload window: from the command's start to this long after it returned.
const WINDOW_TAIL: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    HandoverSocket,
    HandoverStore,
    HandoverNotifyReload,
    RestartMode,
    NaiveRestart,
    ReuseportOverlap,
    NoopReload,
    NoopNotifyReload,
    NoopBurn,
    Haproxy,
    ControlKill,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::HandoverSocket => "fdstore-exec handover (socket unit)",
            Kind::HandoverStore => "fdstore-exec handover (fd store)",
            Kind::HandoverNotifyReload => "fdstore-exec handover (fd store, Type=notify-reload)",
            Kind::RestartMode => "fdstore-exec --mode restart (fd store)",
            Kind::NaiveRestart => "naive restart (own socket)",
            Kind::ReuseportOverlap => "SO_REUSEPORT overlap (start new, stop old)",
            Kind::NoopReload => "systemd alone: reload with ExecReload=/bin/true",
            Kind::NoopNotifyReload => "systemd alone: Type=notify-reload, a no-op reload",
            Kind::NoopBurn => "control: ExecReload= that only uses CPU, as much as a hand-over",
            Kind::Haproxy => "HAProxy master-worker seamless reload (Debian's unit)",
            Kind::ControlKill => "control: server killed once",
        }
    }

    fn uses_fdstore_exec(self) -> bool {
        matches!(
            self,
            Kind::HandoverSocket
                | Kind::HandoverStore
                | Kind::HandoverNotifyReload
                | Kind::RestartMode
        )
    }

    /// Only managers that know `Type=notify-reload` (253+) run it.
    fn needs_notify_reload(self) -> bool {
        matches!(self, Kind::HandoverNotifyReload | Kind::NoopNotifyReload)
    }
}

struct Paths {
    fdstore_exec: PathBuf,
    server: PathBuf,
}

/// What one scenario measured.
struct Outcome {
    kind: Kind,
    events: usize,
    event_failures: usize,
    reports: Vec<(Mode, LoadReport)>,
    windows: Vec<(Instant, Instant)>,
    round_trips: Vec<Duration>,
    logged: LoggedTimes,
    max_rss_kib: Option<u64>,
    /// Of the RSS, the anonymous part (heap, stacks: `RssAnon`), which no
    /// other process shares; the rest is the executable's and libraries'
    /// pages, shared with every generation.
    max_anon_kib: Option<u64>,
    idle_wakeups: Option<u64>,
    /// The share of the machine's CPU time in use while the load ran.
    cpu_busy: Option<f64>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let reloads: usize = numeric_arg(&args, 1, 200);
    let interval = Duration::from_millis(numeric_arg(&args, 2, 500));
    let (fdstore_exec, server) = support::built_programs("bench", "tests/bench");
    let paths = Paths {
        fdstore_exec,
        server,
    };

    let (new_connection, keep_alive) = clients();
    let pace = match client_interval() {
        None => "closed-loop".to_owned(),
        Some(_) => format!("{} requests/s each", client_rate()),
    };
    println!(
        "fdstore benchmark: {reloads} reloads per scenario, one every {} ms, \
         {new_connection} new-connection + {keep_alive} keep-alive clients ({pace}), private systemd {}, \
         hello_http --wait {}\n",
        interval.as_millis(),
        systemd_version().number(),
        server_wait()
    );
    let kinds = [
        Kind::HandoverSocket,
        Kind::HandoverStore,
        Kind::HandoverNotifyReload,
        Kind::RestartMode,
        Kind::NaiveRestart,
        Kind::ReuseportOverlap,
        Kind::NoopReload,
        Kind::NoopNotifyReload,
        Kind::NoopBurn,
        Kind::Haproxy,
        Kind::ControlKill,
    ];
    // A third argument selects scenarios whose label contains it, or any of
    // its `|`-separated parts.
    let only = args.get(3).cloned().unwrap_or_default();
    let selected = |label: &str| only.split('|').any(|part| label.contains(part));
    let mut outcomes = Vec::new();
    let notify_reload = systemd_version().has_notify_reload();
    for kind in kinds.into_iter().filter(|k| selected(k.label())) {
        if kind.needs_notify_reload() && !notify_reload {
            println!(
                "== {}: not on systemd {} (Type=notify-reload needs 253+)",
                kind.label(),
                systemd_version().number()
            );
            continue;
        }
        let events = if kind == Kind::ControlKill {
            1
        } else {
            reloads
        };
        println!("== {} ...", kind.label());
        let outcome = run_scenario(&paths, kind, events, interval);
        println!(
            "   {} events ({} failed), {} requests, {} failed",
            outcome.events,
            outcome.event_failures,
            outcome.reports.iter().map(|(_, r)| r.ok).sum::<u64>(),
            outcome.reports.iter().map(|(_, r)| r.failed()).sum::<u64>()
        );
        outcomes.push(outcome);
    }
    // The tables first: the listener scenarios below take a while.
    println!();
    print_table(&outcomes);
    println!();
    print_extras(&outcomes);
    println!(
        "\nreload windows, by time since the reload began: the share of requests slower than the scenario's steady p99 (1 % if the reload changed nothing)"
    );
    print_window_profile(&outcomes);

    // The cost of listeners: the same unit with the HTTP listener alone and
    // with 1,000 more, no load.
    if selected("1 and 1,000 listeners") {
        println!("\n== 1 and 1,000 listeners ...");
        let one = listener_reloads(&paths, 0);
        let many = listener_reloads(&paths, 1000);
        print_listeners(&one, &many);
    }

    let handover_clean = outcomes
        .iter()
        .filter(|o| {
            matches!(
                o.kind,
                Kind::HandoverSocket | Kind::HandoverStore | Kind::HandoverNotifyReload
            )
        })
        .all(|o| o.event_failures == 0 && o.reports.iter().all(|(_, r)| r.failed() == 0));
    // With no load (FDSTORE_BENCH_CLIENTS=0) there is nothing to count.
    let control_counted = clients() == (0, 0)
        || outcomes
            .iter()
            .filter(|o| o.kind == Kind::ControlKill)
            .all(|o| o.reports.iter().any(|(_, r)| r.failed() > 0));
    println!();
    if handover_clean && control_counted {
        println!("result: PASS: 0 failed requests across every hand-over; the control scenario's failures were counted");
    } else {
        println!(
            "result: FAIL: hand-over failures: {}, control failures counted: {control_counted}",
            !handover_clean
        );
        std::process::exit(1);
    }
}

/// Argument `i`, a number, or `default` when it is absent.
fn numeric_arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> T {
    args.get(i).map_or(default, |a| {
        a.parse().unwrap_or_else(|_| {
            eprintln!("bench: usage: bench [RELOADS] [INTERVAL_MS] [SCENARIO]");
            std::process::exit(64)
        })
    })
}

/// `--ready MODE ` for the fdstore-exec scenarios from `FDSTORE_BENCH_READY`
/// (for example `http:/`), to measure what a readiness proof costs; empty
/// for the default (`notify`).
fn ready_option() -> String {
    match std::env::var("FDSTORE_BENCH_READY") {
        Ok(mode) if !mode.is_empty() => format!("--ready '{mode}' "),
        _ => String::new(),
    }
}

/// How hello_http waits for connections: `poll`, or `exclusive` from
/// `FDSTORE_BENCH_WAIT`.
fn server_wait() -> &'static str {
    match std::env::var("FDSTORE_BENCH_WAIT").as_deref() {
        Err(_) | Ok("") | Ok("poll") => "poll",
        Ok("exclusive") => "exclusive",
        Ok(other) => {
            eprintln!("bench: FDSTORE_BENCH_WAIT must be poll or exclusive, got {other:?}");
            std::process::exit(64)
        }
    }
}

/// Requests per second per client from `FDSTORE_BENCH_RATE`; 0 (the
/// default) for closed-loop clients.
fn client_rate() -> u32 {
    match std::env::var("FDSTORE_BENCH_RATE") {
        Err(_) => 0,
        Ok(n) => n.parse().unwrap_or_else(|_| {
            eprintln!(
                "bench: FDSTORE_BENCH_RATE must be requests per second per client, got {n:?}"
            );
            std::process::exit(64)
        }),
    }
}

/// The time between two requests of a paced client, or `None` for
/// closed-loop clients.
fn client_interval() -> Option<Duration> {
    match client_rate() {
        0 => None,
        rate => Some(Duration::from_secs(1) / rate),
    }
}

/// Load clients per mode: the defaults, or `FDSTORE_BENCH_CLIENTS` (the
/// same count for both modes; 0 measures reloads with no load at all).
fn clients() -> (usize, usize) {
    match std::env::var("FDSTORE_BENCH_CLIENTS") {
        Ok(n) => {
            let n = n.parse().unwrap_or_else(|_| {
                eprintln!("bench: FDSTORE_BENCH_CLIENTS must be a number, got {n:?}");
                std::process::exit(64)
            });
            (n, n)
        }
        Err(_) => (NEW_CONNECTION_CLIENTS, KEEP_ALIVE_CLIENTS),
    }
}

fn units(paths: &Paths, kind: Kind, port: u16, config_path: &Path) -> Vec<(String, String)> {
    let fe = paths.fdstore_exec.display();
    let server = format!("{} --wait {}", paths.server.display(), server_wait());
    let config = config_path.display();
    let ready = ready_option();
    let common = "Type=notify\nKillMode=mixed\nTimeoutStartSec=30\nTimeoutStopSec=20\n";
    // Hundreds of restarts: without this, the default start limit (5 starts
    // in 10 s) fails the unit, which also empties its fd store.
    let unit = "[Unit]\nStartLimitIntervalSec=0\n";
    let socket =
        format!("[Socket]\nListenStream=127.0.0.1:{port}\nFileDescriptorName=http\nBacklog=4096\n");
    match kind {
        Kind::HandoverSocket => vec![
            ("bench.socket".into(), socket),
            (
                "bench.service".into(),
                format!(
                    "{unit}Requires=bench.socket\nAfter=bench.socket\n[Service]\n{common}FileDescriptorStoreMax=16\n\
                     ExecStart={fe} {ready}--drain-timeout 10s -- {server} --config {config}\nExecReload={fe} reload\n"
                ),
            ),
        ],
        Kind::HandoverStore | Kind::RestartMode | Kind::ControlKill => {
            let mode = if kind == Kind::RestartMode {
                "--mode restart "
            } else {
                ""
            };
            let restart = if kind == Kind::ControlKill {
                "Restart=no\n"
            } else {
                ""
            };
            vec![(
                "bench.service".into(),
                format!(
                    "{unit}[Service]\n{common}{restart}FileDescriptorStoreMax=16\n\
                     ExecStart={fe} {mode}{ready}--listen http=tcp:127.0.0.1:{port},backlog=4096 --drain-timeout 10s -- {server} --config {config}\n\
                     ExecReload={fe} reload\n"
                ),
            )]
        }
        // The reload without a control process: systemd sends SIGHUP to
        // the main process and waits for RELOADING=1 and READY=1.
        Kind::HandoverNotifyReload => vec![(
            "bench.service".into(),
            format!(
                "{unit}[Service]\n{}FileDescriptorStoreMax=16\n\
                 ExecStart={fe} {ready}--listen http=tcp:127.0.0.1:{port},backlog=4096 --drain-timeout 10s -- {server} --config {config}\n",
                common.replace("Type=notify\n", "Type=notify-reload\n")
            ),
        )],
        // Its floor: the same reload answered at once by the program.
        Kind::NoopNotifyReload => vec![(
            "bench.service".into(),
            format!(
                "{unit}[Service]\n{}ExecStart={server} --noop-reload --config {config} --bind tcp:127.0.0.1:{port},backlog=4096\n",
                common.replace("Type=notify\n", "Type=notify-reload\n")
            ),
        )],
        Kind::NaiveRestart => vec![(
            "bench.service".into(),
            format!(
                "{unit}[Service]\n{common}ExecStart={server} --config {config} --bind tcp:127.0.0.1:{port},backlog=4096\n"
            ),
        )],
        // What `systemctl reload` costs before any program does anything:
        // the floor under every reload round trip.
        Kind::NoopReload => vec![(
            "bench.service".into(),
            format!(
                "{unit}[Service]\n{common}ExecStart={server} --config {config} --bind tcp:127.0.0.1:{port},backlog=4096\n\
                 ExecReload=/bin/true\n"
            ),
        )],
        // The no-op reload plus the CPU a hand-over costs, and nothing else.
        Kind::NoopBurn => vec![(
            "bench.service".into(),
            format!(
                "{unit}[Service]\n{common}ExecStart={server} --config {config} --bind tcp:127.0.0.1:{port},backlog=4096\n\
                 ExecReload={server} --burn-cpu {}\n",
                burn_ms()
            ),
        )],
        // HAProxy as Debian ships it (master-worker by -Ws, Type=notify,
        // ExecReload= a configuration check, then SIGUSR2 to the master),
        // with the paths of this run; see haproxy_unit.
        Kind::Haproxy => vec![("bench.service".into(), haproxy_unit(config_path))],
        Kind::ReuseportOverlap => vec![(
            "bench@.service".into(),
            format!(
                "{unit}[Service]\n{common}ExecStart={server} --config {config} --bind tcp:127.0.0.1:{port},backlog=4096,reuseport\n"
            ),
        )],
    }
}

/// Debian's haproxy.service, changed only where this run needs it: its
/// configuration, pid file and master socket in the run's directory, and
/// neither `EnvironmentFile=` (the machine's settings, which would override
/// these) nor `BindReadOnlyPaths=/dev/log` (no syslog socket here; HAProxy
/// logs nothing per request in this configuration anyway).
fn haproxy_unit(config: &Path) -> String {
    let shipped = [
        "/usr/lib/systemd/system/haproxy.service",
        "/lib/systemd/system/haproxy.service",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .unwrap_or_else(|| {
        eprintln!("bench: no haproxy.service: install Debian's haproxy (tests/bench does)");
        std::process::exit(69) // EX_UNAVAILABLE
    });
    let dir = config
        .parent()
        .expect("the configuration is in the run directory");
    let adapt = |text: String, from: &str, to: &str| {
        if !text.contains(from) {
            eprintln!(
                "bench: haproxy.service no longer contains {from:?}, which the benchmark adapts"
            );
            std::process::exit(69)
        }
        text.replace(from, to)
    };
    let text = adapt(shipped, "EnvironmentFile=-/etc/default/haproxy\n", "");
    let text = adapt(text, "EnvironmentFile=-/etc/sysconfig/haproxy\n", "");
    let text = adapt(
        text,
        "BindReadOnlyPaths=/dev/log:/var/lib/haproxy/dev/log\n",
        "",
    );
    let text = adapt(
        text,
        "Environment=\"CONFIG=/etc/haproxy/haproxy.cfg\" \"PIDFILE=/run/haproxy.pid\" \"EXTRAOPTS=-S /run/haproxy-master.sock\"",
        &format!(
            "Environment=\"CONFIG={d}/haproxy.cfg\" \"PIDFILE={d}/haproxy.pid\" \"EXTRAOPTS=-S {d}/haproxy-master.sock\"",
            d = dir.display()
        ),
    );
    adapt(text, "[Unit]\n", "[Unit]\nStartLimitIntervalSec=0\n")
}

/// HAProxy serving the answer hello_http serves, from the same listen
/// backlog, set up for seamless reloads as its documentation says: the
/// listeners passed to the new worker (`expose-fd listeners`), and idle
/// keep-alive connections of the old worker closed after their next
/// response rather than at once (`option idle-close-on-response`, which
/// would otherwise race clients sending on them).
fn haproxy_config(dir: &Path, port: u16, body: &str) -> String {
    format!(
        "global\n    master-worker\n    stats socket {d}/haproxy-stats.sock mode 600 level admin expose-fd listeners\n\
         defaults\n    mode http\n    option idle-close-on-response\n    timeout connect 5s\n    timeout client 30s\n\
         \x20   timeout server 30s\n    timeout http-keep-alive 30s\n\
         frontend bench\n    bind 127.0.0.1:{port} backlog 4096\n\
         \x20   http-request return status 200 content-type text/plain string \"{body}\"\n",
        d = dir.display(),
        body = body.trim_end(),
    )
}

/// The CPU time a one-listener hand-over costs the unit, in milliseconds:
/// the burn control's `ExecReload=` uses as much.
const BURN_MS: u64 = 7;

/// The burn control's CPU time: `BURN_MS` or `FDSTORE_BENCH_BURN_MS`.
fn burn_ms() -> u64 {
    match std::env::var("FDSTORE_BENCH_BURN_MS") {
        Ok(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("bench: FDSTORE_BENCH_BURN_MS must be a number of milliseconds, got {v:?}");
            std::process::exit(64);
        }),
        Err(_) => BURN_MS,
    }
}

/// The systemd version every scenario runs under: 252 (Debian 12's), or
/// `FDSTORE_BENCH_SYSTEMD` (252, 254, 257 or 262).
fn systemd_version() -> Version {
    match std::env::var("FDSTORE_BENCH_SYSTEMD") {
        Err(_) => Version::V252,
        Ok(v) => Version::ALL
            .into_iter()
            .find(|x| x.number().to_string() == v)
            .unwrap_or_else(|| {
                eprintln!(
                    "bench: FDSTORE_BENCH_SYSTEMD must be one of 252, 254, 257, 262, got {v:?}"
                );
                std::process::exit(64)
            }),
    }
}

const BODY: &str = "hello from the benchmark\n";

fn run_scenario(paths: &Paths, kind: Kind, events: usize, interval: Duration) -> Outcome {
    let sd = Systemd::start_logging(systemd_version(), "info");
    let port = free_port();
    let config = sd.path("bench.conf");
    std::fs::write(&config, BODY).expect("writing the configuration");
    if kind == Kind::Haproxy {
        let dir = config.parent().expect("the run directory");
        std::fs::write(dir.join("haproxy.cfg"), haproxy_config(dir, port, BODY))
            .expect("writing haproxy.cfg");
    }
    let units = units(paths, kind, port, &config);
    let units: Vec<(&str, &str)> = units
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    sd.install(&units);
    let first = if kind == Kind::ReuseportOverlap {
        "bench@0.service"
    } else {
        "bench.service"
    };
    sd.ok(&["start", first]);

    let (new_connection, keep_alive) = clients();
    let loads = [
        (
            Mode::NewConnection,
            Load::start_paced(port, Mode::NewConnection, new_connection, client_interval()),
        ),
        (
            Mode::KeepAlive,
            Load::start_paced(port, Mode::KeepAlive, keep_alive, client_interval()),
        ),
    ];
    std::thread::sleep(Duration::from_secs(1));
    let cpu_at_start = cpu_idle();
    let mut windows = Vec::new();
    let mut round_trips = Vec::new();
    let mut event_failures = 0;
    let mut max_rss_kib = None;
    let mut max_anon_kib = None;
    let mut started_monotonic = Vec::new();
    // fdstore-exec's memory is read from /proc after every event, its pids
    // from the unit's cgroup: asking the manager (`systemctl show`) would
    // start a process and a D-Bus call inside every reload window of the
    // fdstore-exec scenarios and of no other, and cost those clients alone.
    let unit_cgroup = kind
        .uses_fdstore_exec()
        .then(|| sd.unit_cgroup("bench.service"));
    for i in 0..events {
        let started = Instant::now();
        started_monotonic.push(monotonic_now());
        let ok = match kind {
            Kind::HandoverSocket
            | Kind::HandoverStore
            | Kind::HandoverNotifyReload
            | Kind::NoopReload
            | Kind::NoopNotifyReload
            | Kind::NoopBurn
            | Kind::Haproxy => sd.systemctl(&["reload", "bench.service"]).status.success(),
            Kind::RestartMode | Kind::NaiveRestart => {
                sd.systemctl(&["restart", "bench.service"]).status.success()
            }
            Kind::ReuseportOverlap => {
                let next = format!("bench@{}.service", i + 1);
                let old = format!("bench@{i}.service");
                sd.systemctl(&["start", &next]).status.success()
                    && sd.systemctl(&["stop", &old]).status.success()
            }
            Kind::ControlKill => sd
                .systemctl(&["kill", "--signal=SIGKILL", "bench.service"])
                .status
                .success(),
        };
        let ended = Instant::now();
        windows.push((started, ended + WINDOW_TAIL));
        round_trips.push(ended - started);
        if !ok {
            event_failures += 1;
            if event_failures == 1 {
                eprintln!(
                    "   event {} failed; the journal's end:\n{}",
                    i + 1,
                    sd.journal_tail(40)
                );
            }
        }
        if let Some(cgroup) = &unit_cgroup {
            let max = |m: Option<u64>, v: Option<u64>| match (m, v) {
                (Some(m), Some(v)) => Some(m.max(v)),
                (m, v) => m.or(v),
            };
            for pid in fdstore_exec_processes(cgroup) {
                max_rss_kib = max(max_rss_kib, status_value(pid, "VmRSS:"));
                max_anon_kib = max(max_anon_kib, status_value(pid, "RssAnon:"));
            }
        }
        let next = started + interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if kind == Kind::ControlKill {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let cpu_busy = cpu_busy_between(cpu_at_start, cpu_idle());
    let reports: Vec<(Mode, LoadReport)> = loads
        .into_iter()
        .map(|(mode, load)| (mode, load.stop()))
        .collect();

    // Idle: no traffic, no timers; count the wrapper's context switches.
    let idle_wakeups = (kind == Kind::HandoverSocket)
        .then(|| main_pid(&sd))
        .flatten()
        .and_then(|pid| {
            let before = switches(pid)?;
            std::thread::sleep(Duration::from_secs(5));
            Some(switches(pid)? - before)
        });
    let logged = if kind.uses_fdstore_exec() {
        logged_times(&sd)
    } else if kind == Kind::Haproxy {
        haproxy_times(&sd, &started_monotonic)
    } else {
        LoggedTimes::default()
    };
    Outcome {
        kind,
        events,
        event_failures,
        reports,
        windows,
        round_trips,
        logged,
        max_rss_kib,
        max_anon_kib,
        idle_wakeups,
        cpu_busy,
    }
}

/// The machine's idle CPU time so far (idle and I/O wait, `/proc/stat`),
/// when it was read, and how many CPUs it counts. Only idle time is
/// measured exactly on a tickless kernel; busy time is sampled at each
/// tick and misses the many short bursts of paced clients (it read 5 %
/// busy for a load that kept the machine a third busy), so the busy share
/// is computed from idle time.
fn cpu_idle() -> Option<(Duration, Instant, usize)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpus = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let ticks = fields.get(3)? + fields.get(4)?;
    let per_second = rustix::param::clock_ticks_per_second();
    Some((
        Duration::from_secs_f64(ticks as f64 / per_second as f64),
        Instant::now(),
        cpus,
    ))
}

/// The share of the machine's CPU time in use between two [`cpu_idle`]
/// readings.
fn cpu_busy_between(
    start: Option<(Duration, Instant, usize)>,
    end: Option<(Duration, Instant, usize)>,
) -> Option<f64> {
    let ((idle0, t0, cpus), (idle1, t1, _)) = (start?, end?);
    let capacity = (t1 - t0).as_secs_f64() * cpus as f64;
    let idle = idle1.saturating_sub(idle0).as_secs_f64();
    (capacity > 0.0).then(|| (1.0 - idle / capacity).clamp(0.0, 1.0))
}

fn main_pid(sd: &Systemd) -> Option<u32> {
    sd.show("bench.service", "MainPID")
        .parse()
        .ok()
        .filter(|&p| p > 0)
}

/// The fdstore-exec processes in a unit's cgroup: the main one and any
/// generation still draining.
fn fdstore_exec_processes(cgroup: &Path) -> Vec<u32> {
    support::systemd::cgroup_processes(cgroup)
        .unwrap_or_default()
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == "fdstore-exec")
        })
        .collect()
}

fn status_value(pid: u32, field: &str) -> Option<u64> {
    support::proc_status(pid, field)?.parse().ok()
}

fn switches(pid: u32) -> Option<u64> {
    Some(
        status_value(pid, "voluntary_ctxt_switches:")?
            + status_value(pid, "nonvoluntary_ctxt_switches:")?,
    )
}

/// Durations fdstore-exec logged, from its journal entries (journal fields
/// `MESSAGE` and `F_TOOK`, since it logs with the journal's native
/// protocol): the program's own start-to-ready times (`generation N is
/// ready`) and fdstore-exec's hand-over times, from the reload request to
/// the new generation serving as the main process (`... is serving`).
#[derive(Default)]
struct LoggedTimes {
    /// From the program's start to its `READY=1`.
    program_ready: Vec<Duration>,
    /// From the program's start to the generation ready: `READY=1` and the
    /// accept proof.
    ready: Vec<Duration>,
    handover: Vec<Duration>,
}

fn logged_times(sd: &Systemd) -> LoggedTimes {
    let mut times = LoggedTimes::default();
    let Ok(out) = Command::new("journalctl")
        .arg("-D")
        .arg(sd.dir().join("journal"))
        .args(["--no-pager", "-o", "verbose"])
        .output()
    else {
        return times;
    };
    // Entries start at an unindented line; their fields follow indented.
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut message, mut took) = (String::new(), None);
    for line in text.lines().chain(std::iter::once("end")) {
        if !line.starts_with(char::is_whitespace) {
            if let Some(t) = took.take() {
                if message.starts_with("the program of generation ")
                    && message.ends_with(" sent READY=1")
                {
                    times.program_ready.push(t);
                } else if message.starts_with("generation ") && message.ends_with(" is ready") {
                    times.ready.push(t);
                } else if message.contains(" is serving; ") {
                    times.handover.push(t);
                }
            }
            message.clear();
            continue;
        }
        let field = line.trim();
        if let Some(m) = field.strip_prefix("MESSAGE=") {
            message = m.to_owned();
        } else if let Some(value) = field.strip_prefix("F_TOOK=") {
            took = parse_debug_duration(value);
        }
    }
    times
}

/// CLOCK_MONOTONIC now: the clock of the journal's monotonic timestamps.
fn monotonic_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// HAProxy's reload times from the journal: from each reload command's
/// start to the master's next `Loading success.` (logged once it has
/// forked the new worker on the inherited listeners and told the old ones
/// to stop), by the journal's monotonic timestamps (`short-monotonic`, in
/// µs; journald stamps a stderr line when it reads it, so this is an upper
/// bound).
fn haproxy_times(sd: &Systemd, starts: &[Duration]) -> LoggedTimes {
    let mut times = LoggedTimes::default();
    let Ok(out) = Command::new("journalctl")
        .arg("-D")
        .arg(sd.dir().join("journal"))
        .args(["--no-pager", "-o", "short-monotonic"])
        .output()
    else {
        return times;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let successes: Vec<Duration> = text
        .lines()
        .filter(|l| l.ends_with("Loading success."))
        .filter_map(|l| {
            let stamp = l.strip_prefix('[')?.split(']').next()?.trim();
            Some(Duration::from_secs_f64(stamp.parse().ok()?))
        })
        .collect();
    for (i, start) in starts.iter().enumerate() {
        let next = starts.get(i + 1);
        if let Some(done) = successes
            .iter()
            .find(|t| *t > start && next.map_or(true, |n| *t < n))
        {
            times.handover.push(*done - *start);
        }
    }
    times
}

/// Parses a `Duration` printed with `{:?}` (`1.5ms`, `850.2µs`, `1.2s`).
fn parse_debug_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => number,
        "ms" => number / 1e3,
        "µs" | "us" => number / 1e6,
        "ns" => number / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

/// Reloads in the listener scenarios.
const LISTENER_RELOADS: usize = 20;

/// What the listener scenarios measured per reload.
#[derive(Default)]
struct ListenerRun {
    /// `systemctl reload` round trips.
    round_trips: Vec<Duration>,
    /// fdstore-exec's own hand-over times (from its journal entries).
    handovers: Vec<Duration>,
    /// CPU time the unit's processes used from one reload to the next
    /// (the unit cgroup's `cpu.stat` `usage_usec`: every generation,
    /// intermediate and program, the drain included), which a busy machine
    /// does not inflate the way it inflates wall-clock times.
    cpu: Vec<Duration>,
}

/// The unit's CPU time so far (`usage_usec` of its cgroup's `cpu.stat`).
fn unit_cpu(sd: &Systemd) -> Option<Duration> {
    let stat = std::fs::read_to_string(sd.unit_cgroup("bench.service").join("cpu.stat")).ok()?;
    let usec = stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_micros(usec))
}

/// Hand-over of `extra` listeners (abstract Unix sockets from a listener
/// file) plus the HTTP one.
fn listener_reloads(paths: &Paths, extra: usize) -> ListenerRun {
    let sd = Systemd::start_logging(systemd_version(), "info");
    let port = free_port();
    let config = sd.path("bench.conf");
    std::fs::write(&config, BODY).expect("writing the configuration");
    let list = sd.path("listeners");
    let mut text = String::new();
    for i in 0..extra {
        text.push_str(&format!(
            "l{i}=unix:@fdstore-bench/{}/{i}\n",
            std::process::id()
        ));
    }
    std::fs::write(&list, text).expect("writing the listener file");
    let unit = format!(
        "[Service]\nType=notify\nKillMode=mixed\nTimeoutStartSec=60\nFileDescriptorStoreMax=1100\n\
         ExecStart={fe} --ready notify+unproven --listen http=tcp:127.0.0.1:{port} --listen-file {list} --drain-timeout 10s -- {server} --config {config}\n\
         ExecReload={fe} reload\n",
        fe = paths.fdstore_exec.display(),
        server = paths.server.display(),
        list = list.display(),
        config = config.display(),
    );
    sd.install(&[("bench.service", &unit)]);
    sd.ok(&["start", "bench.service"]);
    let mut run = ListenerRun::default();
    std::thread::sleep(Duration::from_millis(300));
    let mut cpu_before = unit_cpu(&sd);
    for _ in 0..LISTENER_RELOADS {
        let started = Instant::now();
        sd.ok(&["reload", "bench.service"]);
        run.round_trips.push(started.elapsed());
        // The drain (the old generation's end) is within the next 300 ms.
        std::thread::sleep(Duration::from_millis(300));
        let cpu_after = unit_cpu(&sd);
        if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
            run.cpu.push(b.saturating_sub(a));
        }
        cpu_before = cpu_after;
    }
    run.handovers = logged_times(&sd).handover;
    run
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn us_as_ms(us: Option<u32>) -> String {
    us.map_or("-".into(), |v| format!("{:.2}", f64::from(v) / 1e3))
}

fn median(v: Vec<Duration>) -> Option<Duration> {
    quantile_of(v, 0.5)
}

fn quantile_of(mut v: Vec<Duration>, q: f64) -> Option<Duration> {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v.get(i).copied()
}

fn print_table(outcomes: &[Outcome]) {
    println!("| scenario | clients | requests | failed (by kind) | p50 ms | p99 ms | p99.9 ms | max ms | p99 in reload windows ms | p99 steady ms |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for o in outcomes {
        for (mode, r) in &o.reports {
            let in_window = |t: Instant| o.windows.iter().any(|(a, b)| t >= *a && t <= *b);
            let failures = if r.failures.is_empty() {
                "0".to_owned()
            } else {
                let kinds: Vec<String> =
                    r.failures.iter().map(|(k, n)| format!("{n} {k}")).collect();
                format!("**{}** ({})", r.failed(), kinds.join(", "))
            };
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                o.kind.label(),
                mode_label(*mode),
                r.ok + r.failed(),
                failures,
                us_as_ms(r.quantile(0.5, |_| true)),
                us_as_ms(r.quantile(0.99, |_| true)),
                us_as_ms(r.quantile(0.999, |_| true)),
                us_as_ms(r.quantile(1.0, |_| true)),
                us_as_ms(r.quantile(0.99, in_window)),
                us_as_ms(r.quantile(0.99, |t| !in_window(t))),
            );
        }
    }
}

/// How the tables name a client mode.
fn mode_label(mode: Mode) -> &'static str {
    match mode {
        Mode::NewConnection => "new connection",
        Mode::KeepAlive => "keep-alive",
    }
}

/// Bins of the window profile: this long each, the last open-ended.
const PROFILE_BIN: Duration = Duration::from_millis(20);
const PROFILE_BINS: usize = 8;

/// Where in a reload window the slow requests are: per bin of time since
/// the reload began, the share of requests slower than the scenario's own
/// steady p99 (1 % if the reload changed nothing). It tells the part of a
/// reload that costs the clients (a process start, the drain, the manager)
/// from the rest.
fn print_window_profile(outcomes: &[Outcome]) {
    let bins: Vec<String> = (0..PROFILE_BINS)
        .map(|i| {
            let from = PROFILE_BIN.as_millis() * i as u128;
            if i + 1 == PROFILE_BINS {
                format!("{from}+")
            } else {
                format!("{from}-{}", from + PROFILE_BIN.as_millis())
            }
        })
        .collect();
    println!("| scenario | clients | {} ms |", bins.join(" ms | "));
    println!("|---|---|{}", "---|".repeat(PROFILE_BINS));
    for o in outcomes.iter().filter(|o| o.windows.len() > 1) {
        let mut windows = o.windows.clone();
        windows.sort();
        for (mode, r) in &o.reports {
            let in_window = |t: Instant| window_offset(&windows, t).is_some();
            let Some(steady) = r.quantile(0.99, |t| !in_window(t)) else {
                continue;
            };
            let mut slow = [0u64; PROFILE_BINS];
            let mut all = [0u64; PROFILE_BINS];
            for &(t, us) in &r.latencies {
                if let Some(offset) = window_offset(&windows, t) {
                    let bin = ((offset.as_nanos() / PROFILE_BIN.as_nanos()) as usize)
                        .min(PROFILE_BINS - 1);
                    all[bin] += 1;
                    slow[bin] += u64::from(us > steady);
                }
            }
            let cells: Vec<String> = slow
                .iter()
                .zip(&all)
                .map(|(s, a)| match a {
                    0 => "-".into(),
                    a => format!("{:.1} %", *s as f64 * 100.0 / *a as f64),
                })
                .collect();
            println!(
                "| {} | {} | {} |",
                o.kind.label(),
                mode_label(*mode),
                cells.join(" | ")
            );
        }
    }
}

/// How long after the start of the window that holds `t` it came, if one
/// does (`windows` sorted).
fn window_offset(windows: &[(Instant, Instant)], t: Instant) -> Option<Duration> {
    let i = windows
        .partition_point(|(start, _)| *start <= t)
        .checked_sub(1)?;
    let (start, end) = windows[i];
    (t <= end).then(|| t - start)
}

fn print_extras(outcomes: &[Outcome]) {
    // What `systemctl reload` costs with a no-op ExecReload=: systemctl, the
    // manager's job and one process start. Every reload pays it. With
    // Type=notify-reload there is no process to start: its own no-op.
    let alone = |kind| {
        outcomes
            .iter()
            .find(|o| o.kind == kind)
            .and_then(|o| median(o.round_trips.clone()))
    };
    println!("| scenario | events (failed) | round trip p50 / p99 ms | program ready / proven p50 ms | hand-over p50 / p99 ms | overhead p50 ms | fdstore-exec max RSS (anonymous) | idle wake-ups in 5 s | CPU busy under load |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let or_dash = |d: Option<Duration>| d.map_or("-".into(), ms);
    for o in outcomes {
        let rt50 = median(o.round_trips.clone());
        let proven = median(o.logged.ready.clone());
        // A fdstore-exec that does not log the program's READY=1 (before
        // the sixth pass) has only the time to ready with the proof.
        let ready = median(o.logged.program_ready.clone()).or(proven);
        let handover50 = median(o.logged.handover.clone());
        let handover99 = quantile_of(o.logged.handover.clone(), 0.99);
        // Overhead: the round trip beyond systemd's own reload, less the
        // time the program itself took to get ready (its READY=1: the
        // accept proof is fdstore-exec's, so it counts as overhead).
        let systemd_alone = match o.kind {
            Kind::HandoverSocket | Kind::HandoverStore => alone(Kind::NoopReload),
            Kind::HandoverNotifyReload => alone(Kind::NoopNotifyReload),
            _ => None,
        };
        let overhead = match (rt50, systemd_alone, ready) {
            (Some(rt), Some(floor), Some(ready)) => {
                ms(rt.saturating_sub(floor).saturating_sub(ready))
            }
            _ => "-".into(),
        };
        println!(
            "| {} | {} ({}) | {} / {} | {} / {} | {} / {} | {} | {} | {} | {} |",
            o.kind.label(),
            o.events,
            o.event_failures,
            or_dash(rt50),
            or_dash(quantile_of(o.round_trips.clone(), 0.99)),
            or_dash(ready),
            or_dash(proven),
            or_dash(handover50),
            or_dash(handover99),
            overhead,
            match (o.max_rss_kib, o.max_anon_kib) {
                (Some(rss), Some(anon)) => format!(
                    "{:.1} MiB ({:.2} MiB)",
                    rss as f64 / 1024.0,
                    anon as f64 / 1024.0
                ),
                _ => "-".into(),
            },
            o.idle_wakeups.map_or("-".into(), |w| w.to_string()),
            o.cpu_busy
                .map_or("-".into(), |b| format!("{:.0} %", b * 100.0)),
        );
    }
}

fn print_listeners(one: &ListenerRun, many: &ListenerRun) {
    println!(
        "listeners handed over, {LISTENER_RELOADS} reloads each, no load (p50 ms): the HTTP listener alone / with 1,000 more / the difference"
    );
    let p50 = |v: &[Duration]| median(v.to_vec());
    let row = |what: &str, a: Option<Duration>, b: Option<Duration>| {
        let diff = match (a, b) {
            (Some(a), Some(b)) => format!("{:+.1}", (b.as_secs_f64() - a.as_secs_f64()) * 1e3),
            _ => "-".into(),
        };
        let or_dash = |d: Option<Duration>| d.map_or("-".into(), ms);
        println!("  {what}: {} / {} / {diff}", or_dash(a), or_dash(b));
    };
    row(
        "systemctl reload round trip",
        p50(&one.round_trips),
        p50(&many.round_trips),
    );
    row(
        "fdstore-exec hand-over",
        p50(&one.handovers),
        p50(&many.handovers),
    );
    row(
        "CPU time of the unit per reload",
        p50(&one.cpu),
        p50(&many.cpu),
    );
}
