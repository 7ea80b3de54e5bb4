//! The server recipes of `units/` with the real servers from Debian's
//! archive (gunicorn with sync, gthread and uvicorn workers, lighttpd, nginx) under
//! real systemd: each starts as shipped (paths and port adapted), reloads
//! under load from `wrk` and from the project's own clients, rolls back a
//! broken application, and stops cleanly.
//!
//! Losses are compared with the server's own graceful reload under the same
//! load, measured in the same test (gunicorn's SIGHUP, lighttpd's SIGUSR1,
//! both reached through fdstore-exec's signal forwarding): where a server's
//! drain closes idle keep-alive connections, requests sent on them are lost
//! whoever reloads, and fdstore-exec must not lose more. gunicorn's sync
//! workers drain without loss: there the bound is 0.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::load::{Load, LoadReport, Mode};
use crate::support::servers::{Recipe, Wrk, WrkReport, RECIPES};
use crate::support::{free_port, wait_for, Systemd, Visible};

/// Reloads per measured phase (`FDSTORE_SERVERS_RELOADS` for the figures
/// of fdstore-servers(7), default 3), and the pause after each.
fn reloads() -> u32 {
    match std::env::var("FDSTORE_SERVERS_RELOADS") {
        Ok(n) => match n.parse() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => panic!("FDSTORE_SERVERS_RELOADS={n:?}: give a number of reloads from 1 to 100"),
        },
        Err(_) => 3,
    }
}
const PAUSE: Duration = Duration::from_millis(200);
/// Load: wrk's keep-alive connections, and the project's own clients of
/// each kind (a new connection per request, keep-alive).
const WRK_CONNECTIONS: u32 = 4;
const OWN_CLIENTS: usize = 2;

fn fdstore_exec() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_fdstore-exec"))
}

/// What one phase of load saw.
struct Phase {
    wrk: WrkReport,
    new_connection: LoadReport,
    keep_alive: LoadReport,
}

impl Phase {
    fn describe(&self) -> String {
        format!(
            "wrk (keep-alive, {WRK_CONNECTIONS} connections) {} lost of {}; \
             new connection per request {} lost of {} {:?}; keep-alive {} lost of {} {:?}; examples {:?} {:?}",
            self.wrk.failed,
            self.wrk.requests + self.wrk.failed - self.wrk.bad_responses,
            self.new_connection.failed(),
            self.new_connection.ok + self.new_connection.failed(),
            self.new_connection.failures,
            self.keep_alive.failed(),
            self.keep_alive.ok + self.keep_alive.failed(),
            self.keep_alive.failures,
            self.new_connection.examples.iter().take(3).collect::<Vec<_>>(),
            self.keep_alive.examples.iter().take(3).collect::<Vec<_>>(),
        )
    }

    /// No connection was refused or timed out: the listener was always
    /// there and something accepted from it.
    fn never_refused(&self) -> bool {
        self.wrk.connect_errors == 0
            && [&self.new_connection, &self.keep_alive]
                .iter()
                .all(|r| !r.failures.contains_key("refused") && !r.failures.contains_key("timeout"))
    }
}

impl Phase {
    /// The 99th percentile latency in ms of the project's clients of both
    /// kinds, of the requests that started inside one of `windows`.
    /// No windows: every request.
    fn p99_ms(&self, windows: &[(Instant, Instant)]) -> String {
        let inside =
            |t: Instant| windows.is_empty() || windows.iter().any(|(a, b)| t >= *a && t <= *b);
        let mut all = LoadReport::default();
        for r in [&self.new_connection, &self.keep_alive] {
            all.latencies.extend(r.latencies.iter().copied());
        }
        all.quantile(0.99, inside)
            .map_or("-".into(), |us| format!("{:.1}", f64::from(us) / 1000.0))
    }

    /// A figure row: lost requests of each kind of client, the p99 of the
    /// requests in `windows` (all, without any), and the reloads' round
    /// trips (p50 / max, ms; `-` without windows).
    fn row(&self, windows: &[(Instant, Instant)]) -> String {
        let mut trips: Vec<u128> = windows.iter().map(|(a, b)| (*b - *a).as_millis()).collect();
        trips.sort_unstable();
        let trip = match (trips.get(trips.len() / 2), trips.last()) {
            (Some(p50), Some(max)) => format!("{p50} / {max}"),
            _ => "-".into(),
        };
        // The figures: lost (wrk / new connection / keep-alive) | p99 |
        // round trip.
        format!(
            "{} / {} / {} | {} | {trip}",
            self.wrk.failed,
            self.new_connection.failed(),
            self.keep_alive.failed(),
            self.p99_ms(windows),
        )
    }
}

/// Runs `during` under load from wrk and the project's own clients.
fn under_load(port: u16, during: impl FnOnce()) -> Phase {
    let wrk = Wrk::start(port, WRK_CONNECTIONS, Duration::from_secs(90));
    let new_connection = Load::start(port, Mode::NewConnection, OWN_CLIENTS);
    let keep_alive = Load::start(port, Mode::KeepAlive, OWN_CLIENTS);
    std::thread::sleep(Duration::from_millis(300));
    during();
    std::thread::sleep(Duration::from_millis(300));
    Phase {
        keep_alive: keep_alive.stop(),
        new_connection: new_connection.stop(),
        wrk: wrk.stop(),
    }
}

/// One plain HTTP/1.0 GET of `/`: the body, or None while nothing answers.
fn get(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.")
        .then(|| head.contains(" 200 "))?
        .then(|| body.trim().to_owned())
}

fn wait_serving(port: u16, body: &str) {
    wait_for(
        &format!("127.0.0.1:{port} to answer {body:?}"),
        Duration::from_secs(30),
        || (get(port).as_deref() == Some(body)).then_some(()),
    );
}

/// Waits until a reload is complete: every process in `old` is gone and
/// the unit has `count` processes again (the new workers are up). Both
/// kinds of reload are paced this way, so that each phase measures whole
/// drains, one at a time.
fn wait_settled(sd: &Systemd, unit: &str, old: &[u32], count: usize) {
    wait_for(
        &format!("{unit} to settle after a reload"),
        Duration::from_secs(60),
        || {
            let now = sd.unit_processes(unit);
            (now.len() == count && !now.iter().any(|p| old.contains(p))).then_some(())
        },
    );
}

/// The unit's process count once it holds still for a second (the server
/// starts its workers after it answers the first request).
fn steady_count(sd: &Systemd, unit: &str) -> usize {
    let mut last = (0, 0);
    wait_for(
        &format!("{unit}'s process count to settle"),
        Duration::from_secs(60),
        || {
            let n = sd.unit_processes(unit).len();
            last = if n == last.0 { (n, last.1 + 1) } else { (n, 0) };
            std::thread::sleep(Duration::from_millis(80));
            (last.1 >= 10).then_some(n)
        },
    )
}

/// The server's worker processes: all of the unit's but fdstore-exec and
/// the program it started (gunicorn's arbiter).
fn workers(sd: &Systemd, unit: &str) -> Vec<u32> {
    let main = main_pid(sd, unit);
    sd.unit_processes(unit)
        .into_iter()
        .filter(|&p| p != main && parent(p) != Some(main))
        .collect()
}

fn parent(pid: u32) -> Option<u32> {
    crate::support::proc_status(pid, "PPid:")?.parse().ok()
}

fn main_pid(sd: &Systemd, unit: &str) -> u32 {
    sd.show(unit, "MainPID").parse().unwrap()
}

/// The loss bound for a kind of client with `connections` connections
/// (clients): what the server's own reload lost under the same load, plus
/// one reload's worth (one request per connection), plus three standard
/// deviations of the count.
///
/// Why: the requests a drain loses are those sent on a connection just as
/// the server closes it, so the count per run is a sum of rare, independent
/// events (which connections have a request in flight when each worker
/// shuts down); two runs of the same drain differ by a Poisson-like noise
/// of about the square root of the count (seen: 3 vs 7 and 4 vs 9 across
/// runs of the same reload). A loss of the hand-over's own (a refused
/// connection, a listener missing for a moment, requests dropped by the
/// overlap) adds far more than that, and is also caught by the other
/// assertions (never refused, nothing lost in a rollback, 0 for the servers
/// that drain without loss).
fn bound(own: u64, connections: u64) -> u64 {
    let expected = own + connections;
    expected + (3.0 * (expected as f64).sqrt()).ceil() as u64
}

fn recipe_reloads_under_load_and_rolls_back(sd: &Systemd, recipe: Recipe) {
    let unit = recipe.unit;
    let stem = unit.trim_end_matches(".service");
    let dir = Visible::new(&format!("servers-{stem}-{}", sd.version.number()));
    let port = free_port();
    // The recipes run with PrivateTmp= and ProtectHome=, which hide a build
    // directory under /tmp or /root: run a copy from the visible directory.
    let exec = dir.copy_executable(fdstore_exec(), "fdstore-exec");
    recipe.install(sd, &dir.0, port, &exec);
    let started = Instant::now();
    sd.ok(&["start", unit]);
    wait_serving(port, "hello from version 1");
    let start_took = started.elapsed();

    let reloads = reloads();
    // FDSTORE_SERVERS_FIGURES: also the sync workers' own reload, for the
    // figures of fdstore-servers(7).
    let figures = std::env::var_os("FDSTORE_SERVERS_FIGURES").is_some();
    // The same load without a reload: the latency a reload is compared with.
    let quiet = under_load(port, || std::thread::sleep(Duration::from_secs(1)));

    // The server's own graceful reload, through fdstore-exec's forwarding.
    let signal = recipe.own_reload_signal();
    let steady = steady_count(sd, unit);
    // (Not for sync workers, but for the figures: their bound is 0 whatever
    // their own reload does.)
    let own_reloads = if unit == "gunicorn.service" && !figures {
        0
    } else {
        reloads
    };
    // Each reload's window: from its start until it is complete (the old
    // workers gone and the new ones up, or `systemctl reload` returned).
    let mut own_windows = Vec::new();
    let own = under_load(port, || {
        for _ in 0..own_reloads {
            let old = workers(sd, unit);
            let t = Instant::now();
            sd.ok(&[
                "kill",
                "--kill-whom=main",
                &format!("--signal={signal}"),
                unit,
            ]);
            // gunicorn replaces its workers; lighttpd restarts in place.
            wait_settled(sd, unit, &old, steady);
            own_windows.push((t, Instant::now()));
            std::thread::sleep(PAUSE);
        }
    });
    wait_serving(port, "hello from version 1");

    // fdstore-exec's hand-overs, a new version each.
    let first_main = main_pid(sd, unit);
    let mut reload_times = Vec::new();
    // Unlike the server's own reload, a hand-over cannot overlap the next
    // one (the reload returns once the new generation serves), so only the
    // last one is waited for: old generations drain meanwhile.
    let mut old = Vec::new();
    let mut our_windows = Vec::new();
    let ours = under_load(port, || {
        for version in 2..=reloads + 1 {
            recipe.set_version(&dir.0, &version.to_string());
            old.extend(sd.unit_processes(unit));
            let t = Instant::now();
            sd.ok(&["reload", unit]);
            reload_times.push(t.elapsed().as_millis());
            our_windows.push((t, Instant::now()));
            std::thread::sleep(PAUSE);
        }
        wait_settled(sd, unit, &old, steady);
    });
    let last = format!("hello from version {}", reloads + 1);
    assert_eq!(get(port).as_deref(), Some(last.as_str()));
    assert_ne!(main_pid(sd, unit), first_main, "the main process changed");

    // A broken version: the reload fails, the old generation serves on.
    let serving = main_pid(sd, unit);
    let rollback = under_load(port, || {
        recipe.set_version(&dir.0, "broken");
        let out = sd.systemctl(&["reload", unit]);
        assert!(
            !out.status.success(),
            "a reload to a broken {stem} must fail"
        );
        recipe.set_version(&dir.0, &(reloads + 1).to_string());
    });
    assert_eq!(main_pid(sd, unit), serving, "the old generation serves on");
    assert_eq!(get(port).as_deref(), Some(last.as_str()));
    let status = sd.show(unit, "StatusText");
    assert!(
        status.contains("reload failed") && status.contains("before it was ready"),
        "{status}"
    );

    if std::env::var_os("FDSTORE_SERVERS_JOURNAL").is_some() {
        eprintln!("{}", sd.journal());
    }
    // A clean stop: nothing left, no failure.
    let t = Instant::now();
    sd.ok(&["stop", unit]);
    let stop_took = t.elapsed();
    assert_eq!(sd.show(unit, "ActiveState"), "inactive");
    assert_eq!(sd.show(unit, "Result"), "success");
    assert!(sd.unit_processes(unit).is_empty());

    eprintln!(
        "RESULT {stem} on systemd {}: started in {start_took:?}; own reload ({signal}) x{own_reloads}: {}\n\
         RESULT {stem} on systemd {}: fdstore-exec reload x{reloads} (ms {reload_times:?}): {}\n\
         RESULT {stem} on systemd {}: rollback: {}; stop took {stop_took:?}",
        sd.version.number(),
        own.describe(),
        sd.version.number(),
        ours.describe(),
        sd.version.number(),
        rollback.describe(),
    );
    // The figures of fdstore-servers(7): lost (wrk / new connection /
    // keep-alive) | p99 ms in reload windows | round trip p50 / max ms.
    eprintln!(
        "FIGURES | {stem} | {} | no reload | {} |\n\
         FIGURES | {stem} | {} | own ({signal}) x{own_reloads} | {} |\n\
         FIGURES | {stem} | {} | fdstore-exec x{reloads} | {} |",
        sd.version.number(),
        quiet.row(&[]),
        sd.version.number(),
        own.row(&own_windows),
        sd.version.number(),
        ours.row(&our_windows),
    );

    for phase in [&ours, &rollback] {
        assert!(phase.never_refused(), "{}", phase.describe());
    }
    // A rollback never drains anything: nothing may be lost.
    assert_eq!(
        rollback.wrk.failed + rollback.new_connection.failed() + rollback.keep_alive.failed(),
        0,
        "rollback: {}",
        rollback.describe()
    );
    let total = |p: &Phase| p.wrk.failed + p.new_connection.failed() + p.keep_alive.failed();
    match recipe.unit {
        // Sync workers close every connection after its response, so their
        // drain loses nothing.
        "gunicorn.service" => assert_eq!(total(&ours), 0, "{}", ours.describe()),
        // These drains close each idle keep-alive connection once: clients
        // that open a connection per request lose nothing, keep-alive ones
        // at most one request per connection per reload.
        "gunicorn-gthread.service" | "lighttpd.service" => {
            assert_eq!(ours.new_connection.failed(), 0, "{}", ours.describe());
            let ceiling = |connections: u64| u64::from(reloads) * connections;
            assert!(
                ours.wrk.failed <= ceiling(WRK_CONNECTIONS.into())
                    && ours.keep_alive.failed() <= ceiling(OWN_CLIENTS as u64),
                "more than one request per keep-alive connection per reload: {}",
                ours.describe()
            );
        }
        // nginx's workers get the quit one after the other, and one that has
        // not yet takes the reconnection of a client whose connection the
        // other just closed, and may close it again: more than one request
        // per connection per reload, in its own reload as in a hand-over
        // (13 against a ceiling of 12 seen once). The bound below holds.
        "nginx.service" => {
            assert_eq!(ours.new_connection.failed(), 0, "{}", ours.describe());
        }
        _ => {}
    }
    let pairs = [
        (
            "wrk",
            own.wrk.failed,
            ours.wrk.failed,
            u64::from(WRK_CONNECTIONS),
        ),
        (
            "new connection",
            own.new_connection.failed(),
            ours.new_connection.failed(),
            OWN_CLIENTS as u64,
        ),
        (
            "keep-alive",
            own.keep_alive.failed(),
            ours.keep_alive.failed(),
            OWN_CLIENTS as u64,
        ),
    ];
    for (kind, own_lost, our_lost, connections) in pairs {
        assert!(
            our_lost <= bound(own_lost, connections),
            "{stem}, {kind} clients: fdstore-exec lost {our_lost}, the server's own reload {own_lost}\n\
             own: {}\nfdstore-exec: {}",
            own.describe(),
            ours.describe()
        );
    }
}

fn gunicorn_sync(sd: &Systemd) {
    recipe_reloads_under_load_and_rolls_back(sd, RECIPES[0]);
}

fn gunicorn_gthread(sd: &Systemd) {
    recipe_reloads_under_load_and_rolls_back(sd, RECIPES[1]);
}

fn gunicorn_uvicorn_workers(sd: &Systemd) {
    recipe_reloads_under_load_and_rolls_back(sd, RECIPES[2]);
}

fn lighttpd(sd: &Systemd) {
    recipe_reloads_under_load_and_rolls_back(sd, RECIPES[3]);
}

fn nginx(sd: &Systemd) {
    recipe_reloads_under_load_and_rolls_back(sd, RECIPES[4]);
}

on_each_systemd!(
    gunicorn_sync,
    gunicorn_gthread,
    gunicorn_uvicorn_workers,
    lighttpd,
    nginx
);
