//! A threaded std HTTP/1.1 server that upgrades itself in place with
//! [`fdstore::Upgrader`]: no wrapper, the same `ExecReload=fdstore-exec
//! reload` line (units in `units/app-library.service`).
//!
//! ```text
//! upgrade_std [--listen NAME=tcp:ADDRESS:PORT] [--config FILE] [--drain-timeout DURATION]
//!             [--drain-idle DURATION] [--max-generations N] [--at-max-generations refuse|kill-oldest]
//! ```
//!
//! - The listener (default `http=tcp:127.0.0.1:8080`) is inherited from
//!   systemd or the previous generation, or created and put into the fd
//!   store.
//! - The configuration file holds the greeting; `broken` makes the program
//!   exit with status 1 before it is ready, as a bad new version would (the
//!   upgrade then fails and the old generation keeps serving);
//!   `slow-start` makes it take 2 s to get ready.
//! - `GET /slow` answers after 30 s (to show the drain deadline).
//! - `GET /upgrade` calls [`Upgrader::upgrade`] and answers with the
//!   outcome (an upgrade triggered by the program itself).
//! - On the drain notice it stops accepting, answers the next request on
//!   each keep-alive connection with `Connection: close`, closes connections
//!   idle for a second (`--drain-idle`), and exits when its connections are
//!   done; the upgrader ends it at the deadline otherwise.
//! - `--max-generations` and `--at-max-generations` set
//!   [`fdstore::UpgradeOptions::max_generations`] and
//!   [`fdstore::UpgradeOptions::at_max_generations`].

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fdstore::{UpgradeOptions, Upgrader};

/// How often blocked reads and accepts look at the drain notice.
const TICK: Duration = Duration::from_millis(50);
/// How long a keep-alive connection may be idle while draining, by default.
const DRAIN_IDLE: Duration = Duration::from_secs(1);

struct Args {
    listen: String,
    config: Option<String>,
    drain_timeout: Option<Duration>,
    drain_idle: Duration,
    max_generations: Option<u32>,
    at_max_generations: Option<fdstore::AtMaxGenerations>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: "http=tcp:127.0.0.1:8080".into(),
        config: None,
        drain_timeout: None,
        drain_idle: DRAIN_IDLE,
        max_generations: None,
        at_max_generations: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => args.listen = value()?,
            "--config" => args.config = Some(value()?),
            "--drain-timeout" => {
                args.drain_timeout = Some(
                    fdstore::parse_duration(&value()?)
                        .map_err(|e| format!("--drain-timeout: {e}"))?,
                )
            }
            "--drain-idle" => {
                args.drain_idle =
                    fdstore::parse_duration(&value()?).map_err(|e| format!("--drain-idle: {e}"))?
            }
            "--max-generations" => {
                args.max_generations = Some(
                    value()?
                        .parse()
                        .map_err(|_| "--max-generations needs a number".to_owned())?,
                )
            }
            "--at-max-generations" => args.at_max_generations = Some(value()?.parse()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() {
    // The upgrader's log (reload outcomes, drain deadline) to stderr, which
    // systemd puts into the journal.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .with_ansi(false)
        .try_init();
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("upgrade_std: {e}\nusage: upgrade_std [--listen SPEC] [--config FILE] [--drain-timeout DURATION] [--drain-idle DURATION] [--max-generations N] [--at-max-generations refuse|kill-oldest]");
        std::process::exit(64);
    });
    let mut options = UpgradeOptions::default();
    if let Some(timeout) = args.drain_timeout {
        options = options.drain_timeout(timeout);
    }
    if let Some(max) = args.max_generations {
        options = options.max_generations(max);
    }
    if let Some(choice) = args.at_max_generations {
        options = options.at_max_generations(choice);
    }
    let upgrader = Upgrader::with_options(options).unwrap_or_else(|e| {
        eprintln!("upgrade_std: {e}");
        std::process::exit(71);
    });
    let greeting = match &args.config {
        None => "hello".to_owned(),
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) if text.trim() == "broken" => {
                eprintln!(
                    "upgrade_std: {path}: the configuration says 'broken'; refusing to start"
                );
                std::process::exit(1);
            }
            Ok(text) => {
                if text.trim() == "slow-start" {
                    std::thread::sleep(Duration::from_secs(2));
                }
                text.trim().to_owned()
            }
            Err(e) => {
                eprintln!("upgrade_std: cannot read {path}: {e}");
                std::process::exit(66);
            }
        },
    };
    let listener = upgrader.tcp_listener(&args.listen).unwrap_or_else(|e| {
        eprintln!("upgrade_std: {e}");
        std::process::exit(69);
    });
    // Another generation may take a connection between our poll and our
    // accept, so accept must not block.
    listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    if let Err(e) = upgrader.ready() {
        eprintln!("upgrade_std: {e}");
        std::process::exit(75);
    }
    let body = Arc::new(format!(
        "{greeting} (pid {}, generation {})\n",
        std::process::id(),
        upgrader.generation()
    ));
    let open = Arc::new(AtomicUsize::new(0));
    let upgrader = Arc::new(upgrader);
    accept_until_drained(&listener, &upgrader, &body, &open, args.drain_idle);
    drop(listener);
    while open.load(Ordering::SeqCst) > 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn accept_until_drained(
    listener: &TcpListener,
    upgrader: &Arc<Upgrader>,
    body: &Arc<String>,
    open: &Arc<AtomicUsize>,
    drain_idle: Duration,
) {
    let drain = upgrader.drain();
    use rustix::event::{poll, PollFd, PollFlags};
    let tick = rustix::time::Timespec::try_from(TICK).expect("a small duration");
    while drain.notice().is_none() {
        let mut ready = [PollFd::new(listener, PollFlags::IN)];
        if !matches!(poll(&mut ready, Some(&tick)), Ok(n) if n > 0) {
            continue;
        }
        let Ok((stream, _)) = listener.accept() else {
            continue;
        };
        if stream.set_nonblocking(false).is_err() {
            continue;
        }
        let (body, open, upgrader) = (body.clone(), open.clone(), upgrader.clone());
        open.fetch_add(1, Ordering::SeqCst);
        std::thread::spawn(move || {
            let _ = serve(stream, &body, &upgrader, drain_idle);
            open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Serves one connection: keep-alive until the client closes, or until the
/// first request after the drain notice (answered with `Connection:
/// close`), or `drain_idle` without a request while draining.
fn serve(
    stream: TcpStream,
    body: &str,
    upgrader: &Upgrader,
    drain_idle: Duration,
) -> std::io::Result<()> {
    let drain = upgrader.drain();
    stream.set_read_timeout(Some(TICK))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut idle_since = Instant::now();
    loop {
        let mut request = String::new();
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
                        && drain.notice().is_some()
                        && idle_since.elapsed() >= drain_idle
                    {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if request.starts_with("GET /slow ") {
            std::thread::sleep(Duration::from_secs(30));
        }
        let upgraded;
        let body = if request.starts_with("GET /upgrade ") {
            upgraded = match upgrader.upgrade() {
                Ok(done) => format!(
                    "upgraded: generation {} (pid {}) serves; took {} ms\n",
                    done.generation,
                    done.pid,
                    done.took.as_millis()
                ),
                Err(e) => format!("upgrade failed ({:?}): {e}\n", e.kind()),
            };
            upgraded.as_str()
        } else {
            body
        };
        let close = request
            .lines()
            .any(|l| l.eq_ignore_ascii_case("connection: close"))
            || drain.notice().is_some();
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{body}",
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
