//! A small HTTP/1.1 server that takes its listener the systemd way and
//! drains without losing a request: what a program run by fdstore-exec
//! should do.
//!
//! ```text
//! ExecStart=/usr/bin/fdstore-exec --listen http=tcp:127.0.0.1:8080 -- hello_http --config /etc/hello.conf
//! ```
//!
//! - The listener named `http` comes from `LISTEN_FDS` (fdstore-exec, a
//!   socket unit, or the fd store); `--bind tcp:ADDRESS:PORT[,reuseport]`
//!   makes it bind its own instead, as the benchmark's baselines do.
//! - It reads its configuration file at start: one line, the greeting. A
//!   file that says `broken` makes it exit with status 1 before it is ready,
//!   as a new version with a bad configuration would.
//! - `READY=1` once it accepts.
//! - For readiness tests, versions that are wrong in ways `READY=1` does not
//!   show: `--accept-after MS` says `READY=1` at once but accepts only after
//!   MS milliseconds; `--never-accept` says it and never accepts;
//!   `--health-status CODE` answers `GET /health` with CODE (default 200).
//! - On SIGTERM it drains: it stops accepting (queued connections stay on the
//!   shared listener for the next generation), answers the next request on
//!   every open keep-alive connection with `Connection: close`, closes
//!   connections idle for a second (`--drain-idle DURATION`: longer, as a
//!   server that waits for idle keep-alive clients would), and exits when
//!   none are left (after 30 s at most).
//! - `--noop-reload`: a SIGHUP is answered as `Type=notify-reload` asks
//!   (`RELOADING=1`, then `READY=1`) and changes nothing: the benchmark's
//!   no-op reload for that unit type.
//! - `--wait poll` (the default) or `--wait exclusive`: how it waits for a
//!   connection: `poll(2)`, which wakes every generation waiting on the
//!   shared listener for each connection (as the `epoll` of tokio and Go,
//!   without `EPOLLEXCLUSIVE`, does), or `epoll` with `EPOLLEXCLUSIVE`,
//!   which wakes one (as nginx does; fdstore-exec's
//!   accept proof then pauses the old generation for its probes). Both also
//!   try an accept at every tick, so that a wake-up taken by a generation
//!   that began to drain does not leave a connection waiting.
//! - `--burn-cpu MS`: uses MS milliseconds of CPU time and exits, doing
//!   nothing else: the benchmark's `ExecReload=` that costs the machine as
//!   much CPU as a hand-over and hands nothing over (a control that tells
//!   CPU contention from the hand-over's own work).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fdstore::{ListenFds, Notification, Notifier, UnsetEnv};
use nix::sys::signal::{SigSet, Signal};

static DRAINING: AtomicBool = AtomicBool::new(false);
/// How long a keep-alive connection may be idle while draining, by default.
const DRAIN_IDLE: Duration = Duration::from_secs(1);
/// How often blocked reads and accepts look at the drain flag.
const TICK: Duration = Duration::from_millis(50);

fn main() {
    if let Some(ms) = burn_cpu_option() {
        burn_cpu(Duration::from_millis(ms));
        return;
    }
    // SIGTERM is taken by a thread with sigwait: block it before any thread
    // starts.
    let mut term = SigSet::empty();
    term.add(Signal::SIGTERM);
    term.add(Signal::SIGINT);
    let noop_reload = std::env::args().any(|a| a == "--noop-reload");
    if noop_reload {
        term.add(Signal::SIGHUP);
    }
    term.thread_block().expect("blocking SIGTERM");

    let args: Vec<String> = std::env::args().collect();
    let config = match args.iter().position(|a| a == "--config") {
        Some(i) if i + 1 < args.len() => args[i + 1].clone(),
        _ => {
            eprintln!("usage: hello_http --config FILE");
            std::process::exit(64);
        }
    };
    let greeting = match std::fs::read_to_string(&config) {
        Ok(text) if text.trim() == "broken" => {
            eprintln!("hello_http: {config}: the configuration says 'broken'; refusing to start");
            std::process::exit(1);
        }
        Ok(text) => text.trim().to_owned(),
        Err(e) => {
            eprintln!("hello_http: cannot read {config}: {e}");
            std::process::exit(66);
        }
    };
    let drain_idle = match args.iter().position(|a| a == "--drain-idle") {
        Some(i) => fdstore::parse_duration(args.get(i + 1).map(String::as_str).unwrap_or(""))
            .unwrap_or_else(|e| {
                eprintln!("hello_http: --drain-idle: {e}");
                std::process::exit(64);
            }),
        None => DRAIN_IDLE,
    };
    let notifier = Notifier::from_env().expect("NOTIFY_SOCKET");
    let listener = match args.iter().position(|a| a == "--bind") {
        Some(i) => bind_own(args.get(i + 1).map(String::as_str).unwrap_or("")),
        None => inherited_listener(),
    };
    // Another generation may take a connection between our poll and our
    // accept, so accept must not block. O_NONBLOCK belongs to the listener's
    // open file description, shared by every generation: fine for programs
    // that all poll before accepting, as event-loop servers (tokio, Go) do.
    listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    std::thread::spawn(move || {
        // SIGHUP is in the set only with --noop-reload.
        while let Ok(Signal::SIGHUP) = term.wait() {
            if let Ok(notifier) = Notifier::from_env() {
                let _ = notifier.notify(&[Notification::Reloading]);
                let _ = notifier.notify(&[Notification::Ready]);
            }
        }
        DRAINING.store(true, Ordering::SeqCst);
    });
    let option = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| {
                v.parse::<u64>().unwrap_or_else(|_| {
                    eprintln!("hello_http: {name} takes a number, not {v:?}");
                    std::process::exit(64);
                })
            })
    };
    let exclusive = match args.iter().position(|a| a == "--wait") {
        None => false,
        Some(i) => match args.get(i + 1).map(String::as_str) {
            Some("poll") => false,
            Some("exclusive") => true,
            other => {
                eprintln!("hello_http: --wait takes poll or exclusive, not {other:?}");
                std::process::exit(64);
            }
        },
    };
    let accept_after = option("--accept-after").map(Duration::from_millis);
    let never_accept = args.iter().any(|a| a == "--never-accept");
    let health = option("--health-status").unwrap_or(200) as u16;
    let body = Arc::new(format!("{greeting} (pid {})\n", std::process::id()));
    let open = Arc::new(AtomicUsize::new(0));
    // Registered before READY=1: fdstore-exec's accept proof sees the
    // program wait with EPOLLEXCLUSIVE from then on, and pauses the old
    // generation for the probes that follow.
    let set = exclusive.then(|| exclusive_set(&listener));
    let _ = notifier.notify(&[
        Notification::Ready,
        Notification::Status(&format!("serving: {greeting}")),
    ]);
    if never_accept {
        while !DRAINING.load(Ordering::SeqCst) {
            std::thread::sleep(TICK);
        }
    } else if let Some(pause) = accept_after {
        let until = Instant::now() + pause;
        while Instant::now() < until && !DRAINING.load(Ordering::SeqCst) {
            std::thread::sleep(TICK.min(until.saturating_duration_since(Instant::now())));
        }
    }
    accept_until_draining(&listener, set, &body, health, &open, drain_idle);
    drop(listener);
    // Let open connections finish.
    let started = Instant::now();
    while open.load(Ordering::SeqCst) > 0 && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `--burn-cpu MS`, read before anything else: that mode needs nothing else.
fn burn_cpu_option() -> Option<u64> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == "--burn-cpu")?;
    match args.get(i + 1).map(|v| v.parse::<u64>()) {
        Some(Ok(ms)) => Some(ms),
        _ => {
            eprintln!("hello_http: --burn-cpu takes a number of milliseconds");
            std::process::exit(64);
        }
    }
}

/// Spins until this process has used `budget` of CPU time: the process's
/// own CPU clock, not the wall clock, so a busy machine does not shorten it.
fn burn_cpu(budget: Duration) {
    use rustix::time::{clock_gettime, ClockId};
    let used = || {
        let t = clock_gettime(ClockId::ProcessCPUTime);
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    };
    let mut spins: u64 = 0;
    while used() < budget {
        spins = std::hint::black_box(spins.wrapping_add(1));
    }
}

/// The listener named `http` from `LISTEN_FDS`.
fn inherited_listener() -> TcpListener {
    let mut fds = ListenFds::from_env(UnsetEnv::Yes).unwrap_or_else(|e| {
        eprintln!("hello_http: {e}");
        std::process::exit(78);
    });
    fds.tcp_listener("http").unwrap_or_else(|e| {
        eprintln!("hello_http: {e}; run it under fdstore-exec --listen http=tcp:ADDRESS:PORT");
        std::process::exit(78);
    })
}

/// `--bind tcp:ADDRESS:PORT[,reuseport]`: a socket of its own, as programs
/// that do not take listeners from systemd have (the benchmark's baselines).
fn bind_own(spec: &str) -> TcpListener {
    let spec: fdstore::ListenerSpec = format!("http={spec}").parse().unwrap_or_else(|e| {
        eprintln!("hello_http: --bind: {e}");
        std::process::exit(64);
    });
    let fd = spec.bind().unwrap_or_else(|e| {
        eprintln!("hello_http: {e}");
        std::process::exit(69);
    });
    TcpListener::from(fd.into_fd())
}

/// An `epoll` set that waits for `listener` with `EPOLLEXCLUSIVE`. It, not
/// the listener (which other generations share), holds this process's
/// place in the listener's queue of exclusive waiters: it is closed when
/// the drain begins.
fn exclusive_set(listener: &TcpListener) -> OwnedFd {
    use rustix::event::epoll;
    let set = epoll::create(epoll::CreateFlags::CLOEXEC).expect("epoll_create");
    epoll::add(
        &set,
        listener,
        epoll::EventData::new_u64(0),
        epoll::EventFlags::IN | epoll::EventFlags::EXCLUSIVE,
    )
    .expect("EPOLL_CTL_ADD");
    set
}

/// Accepts until the drain begins, waiting with `set` (from
/// [`exclusive_set`]) or else with `poll`.
fn accept_until_draining(
    listener: &TcpListener,
    set: Option<OwnedFd>,
    body: &Arc<String>,
    health: u16,
    open: &Arc<AtomicUsize>,
    drain_idle: Duration,
) {
    use rustix::event::{epoll, poll, PollFd, PollFlags};
    let tick = rustix::time::Timespec::try_from(TICK).expect("a small duration");
    let mut events = [std::mem::MaybeUninit::uninit(); 1];
    while !DRAINING.load(Ordering::SeqCst) {
        // A timeout or an interrupted wait (SIGSTOP and SIGCONT): an accept
        // is tried all the same, and fails at once when nothing waits.
        match &set {
            None => {
                let mut ready = [PollFd::new(listener, PollFlags::IN)];
                let _ = poll(&mut ready, Some(&tick));
            }
            Some(set) => {
                let _ = epoll::wait(set, &mut events[..], Some(&tick));
            }
        }
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(false).is_err() {
                    continue;
                }
                let body = body.clone();
                let open = open.clone();
                open.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let _ = serve(stream, &body, health, drain_idle);
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Err(_) => continue,
        }
    }
}

/// Serves one connection: keep-alive until the client closes, or until the
/// first request after the drain began (answered with `Connection: close`),
/// or `drain_idle` without a request while draining.
fn serve(stream: TcpStream, body: &str, health: u16, drain_idle: Duration) -> std::io::Result<()> {
    stream.set_read_timeout(Some(TICK))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut idle_since = Instant::now();
    loop {
        let mut request = String::new();
        // Read one request head, waking up every tick to look at the drain.
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => return Ok(()),
                Ok(_) => {
                    request.push_str(&line);
                    if line == "\r\n" || line == "\n" {
                        break;
                    }
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    request.push_str(&line);
                    if request.is_empty()
                        && DRAINING.load(Ordering::SeqCst)
                        && idle_since.elapsed() >= drain_idle
                    {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let wants_close = request
            .lines()
            .any(|l| l.eq_ignore_ascii_case("connection: close"));
        let close = wants_close || DRAINING.load(Ordering::SeqCst);
        let status = if request.starts_with("GET /health ") {
            health
        } else {
            200
        };
        let response = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{body}",
            if status == 200 { "OK" } else { "Not OK" },
            body.len(),
            if close { "close" } else { "keep-alive" }
        );
        writer.write_all(response.as_bytes())?;
        if close {
            return Ok(());
        }
        idle_since = Instant::now();
    }
}
