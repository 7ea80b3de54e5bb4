//! A diagnostic service that reports what fdstore receives from systemd.
//!
//! The test-suite runs it under a private systemd; it is also handy for
//! checking a unit by hand:
//!
//! ```text
//! ExecStart=/path/to/probe --report /tmp/probe.txt receive serve web ready
//! ```
//!
//! It first reports `inherited-fds N...`: the descriptors open when it started.
//! Actions run in order; each writes lines to the report file:
//!
//! | action | what it does |
//! |---|---|
//! | `receive` | take `LISTEN_FDS`; one `fd NAME NUMBER KIND INODE` line each |
//! | `bind-or-store NAME=SPEC` | `inherited NAME INODE` if received, else bind, store: `created NAME INODE` |
//! | `remove NAME` | `FDSTOREREMOVE=1` for NAME |
//! | `store-result NAME=SPEC` | bind and store, report `store ok` or `store error: …` |
//! | `serve NAME` | answer every connection on the received TCP listener(s) NAME with `pid PID\n` |
//! | `serve-unix NAME` | the same on the received Unix stream listener NAME |
//! | `hold-exclusive NAME` | register the received TCP listener NAME in an `epoll` set with `EPOLLEXCLUSIVE`, and never accept (a program stuck before its loop) |
//! | `serve-exclusive NAME` | `serve`, waiting with `epoll` and `EPOLLEXCLUSIVE` (as nginx does): woken alone, first in the listener's queue |
//! | `serve-late NAME` | `serve`, each time 5 ms late to `accept` once woken (a program still busy starting): another process woken with it takes every connection |
//! | `flags NAME` | `flags NAME nonblocking` or `flags NAME blocking`: `O_NONBLOCK` of the received listener NAME (before any `serve`, which sets it) |
//! | `close NAME` | close the received listener NAME, report `closed NAME` |
//! | `exit CODE` | exit at once with CODE |
//! | `exit-once FILE CODE` | the first time (FILE absent): create FILE, exit with CODE; later: nothing |
//! | `await FILE` | wait until FILE exists |
//! | `sleep MS` | pause, as a program that is slow to start |
//! | `status TEXT` / `ready` | `STATUS=TEXT` / `READY=1` |
//! | `barrier MS` | `BARRIER=1`, report `barrier ok` or `barrier error: …` |
//! | `run PROGRAM ARG... end-run` | run a command, report its stdout |
//! | `fdstore-max` | `fdstore-max N` or `fdstore-max unknown` |
//! | `open-fds` | `open-fd N KIND` for every open descriptor |
//! | `ignore-stop` | after the last action, ignore SIGTERM (a program that never drains) |
//!
//! After the last action it waits for SIGTERM; then it stops accepting,
//! finishes the answers under way and exits, leaving queued connections on the
//! (shared) listener for the next generation.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use rustix::event::{epoll, poll, PollFd, PollFlags};

use fdstore::{FdKind, FdPoll, ListenFds, ListenerSpec, Notifier, UnsetEnv};

fn inode(fd: impl AsFd) -> u64 {
    std::fs::File::from(fd.as_fd().try_clone_to_owned().unwrap())
        .metadata()
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap_or(0)
}

fn kind_word(kind: FdKind) -> &'static str {
    match kind {
        FdKind::TcpListener => "tcp-listener",
        FdKind::UdpSocket => "udp",
        FdKind::UnixListener => "unix-listener",
        FdKind::UnixDatagram => "unix-datagram",
        FdKind::Fifo => "fifo",
        FdKind::CharacterDevice => "chardev",
        FdKind::RegularFile => "file",
        _ => "other",
    }
}

struct Report(std::fs::File);

impl Report {
    fn line(&mut self, text: impl AsRef<str>) {
        writeln!(self.0, "{}", text.as_ref()).expect("writing the report");
        self.0.flush().expect("flushing the report");
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

/// The descriptors open when the process started, before it opened any.
fn inherited_fds() -> String {
    let mut fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort();
    // The last one is the directory read_dir itself opened.
    fds.pop();
    fds.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    let inherited = inherited_fds();
    // SIGTERM is taken with sigwait below: block it before any thread starts.
    let mut term = SigSet::empty();
    term.add(Signal::SIGTERM);
    term.thread_block().expect("blocking SIGTERM");
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("--report") || args.len() < 2 {
        eprintln!("usage: probe --report FILE ACTION...");
        std::process::exit(64);
    }
    let path = args.remove(1);
    args.remove(0);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("opening the report");
    let mut report = Report(file);
    report.line(format!("start pid {}", std::process::id()));
    report.line(format!("inherited-fds {inherited}"));

    let notifier = Notifier::from_env().expect("NOTIFY_SOCKET");
    let mut fds = ListenFds::new();
    let mut listeners: HashMap<String, TcpListener> = HashMap::new();
    let mut servers = Vec::new();
    let mut ignore_stop = false;
    let mut args = args.into_iter();
    while let Some(action) = args.next() {
        let mut arg = || args.next().expect("missing argument");
        match action.as_str() {
            "receive" => {
                fds = ListenFds::from_env(UnsetEnv::Yes).expect("LISTEN_FDS");
                for fd in fds.iter() {
                    let kind = fd.kind().map(kind_word).unwrap_or("closed");
                    report.line(format!(
                        "fd {} {} {} {}",
                        fd.name(),
                        fd.as_raw_fd(),
                        kind,
                        inode(fd)
                    ));
                }
                report.line(format!("received {}", fds.len()));
            }
            "bind-or-store" => {
                let spec: ListenerSpec = arg().parse().expect("spec");
                let name = spec.name().to_owned();
                let listener = if fds.contains(&name) {
                    let l = fds.tcp_listener(&name).expect("inherited listener");
                    report.line(format!("inherited {name} {}", inode(&l)));
                    l
                } else {
                    let fd = spec.bind().expect("bind");
                    notifier
                        .store_fds(&name, &[fd.as_fd()], FdPoll::Watch)
                        .expect("store");
                    report.line(format!("created {name} {}", inode(&fd)));
                    TcpListener::from(fd.into_fd())
                };
                listeners.insert(name, listener);
            }
            "store-result" => {
                let spec: ListenerSpec = arg().parse().expect("spec");
                let fd = spec.bind().expect("bind");
                match notifier.store_fds(spec.name(), &[fd.as_fd()], FdPoll::Watch) {
                    Ok(delivery) => report.line(format!("store ok {delivery:?}")),
                    Err(e) => report.line(format!("store error: {e}")),
                }
            }
            "remove" => {
                let name = arg();
                notifier.remove_fds(&name).expect("FDSTOREREMOVE");
                report.line(format!("removed {name}"));
            }
            "serve" | "serve-exclusive" | "serve-late" => {
                let name = arg();
                let listeners = match listeners.remove(&name) {
                    Some(l) => vec![l],
                    None => fds.tcp_listeners(&name).expect("listener to serve"),
                };
                let wait = match action.as_str() {
                    "serve" => Wait::Poll,
                    "serve-late" => Wait::Late,
                    _ => Wait::Exclusive,
                };
                for listener in listeners {
                    servers.push(std::thread::spawn(move || serve(listener, wait)));
                }
                report.line(format!("serving {name}"));
            }
            "hold-exclusive" => {
                let name = arg();
                let listener = fds.tcp_listener(&name).expect("listener to hold");
                let epoll = exclusive_epoll(&listener);
                // Held until the process ends.
                std::mem::forget((listener, epoll));
                report.line(format!("holding {name}"));
            }
            "serve-unix" => {
                let name = arg();
                let listener = fds.unix_listener(&name).expect("Unix listener to serve");
                servers.push(std::thread::spawn(move || serve_unix(listener, Wait::Poll)));
                report.line(format!("serving {name}"));
            }
            "flags" => {
                let name = arg();
                let fd = fds
                    .iter()
                    .find(|fd| fd.name() == name)
                    .expect("listener to look at");
                let flags = rustix::fs::fcntl_getfl(fd).expect("F_GETFL");
                let word = if flags.contains(rustix::fs::OFlags::NONBLOCK) {
                    "nonblocking"
                } else {
                    "blocking"
                };
                report.line(format!("flags {name} {word}"));
            }
            "close" => {
                let name = arg();
                drop(fds.take(&name));
                report.line(format!("closed {name}"));
            }
            "sleep" => {
                let ms: u64 = arg().parse().expect("milliseconds");
                std::thread::sleep(Duration::from_millis(ms));
            }
            "exit" => {
                let code: i32 = arg().parse().expect("exit status");
                report.line(format!("exiting {code}"));
                std::process::exit(code);
            }
            "exit-once" => {
                let (flag, code) = (arg(), arg());
                if !std::path::Path::new(&flag).exists() {
                    std::fs::write(&flag, "").expect("writing the flag file");
                    report.line(format!("exiting {code}"));
                    std::process::exit(code.parse().expect("exit status"));
                }
            }
            "await" => {
                let path = arg();
                while !std::path::Path::new(&path).exists() {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            "status" => {
                let text = arg();
                notifier.status(&text).expect("STATUS");
            }
            "ready" => {
                notifier.ready().expect("READY");
                report.line("ready");
            }
            "barrier" => {
                let ms: u64 = arg().parse().expect("milliseconds");
                match notifier.barrier(Duration::from_millis(ms)) {
                    Ok(_) => report.line("barrier ok"),
                    Err(e) => report.line(format!("barrier error: {e}")),
                }
            }
            "run" => {
                let mut command: Vec<String> = Vec::new();
                for word in args.by_ref() {
                    if word == "end-run" {
                        break;
                    }
                    command.push(word);
                }
                let out = std::process::Command::new(&command[0])
                    .args(&command[1..])
                    .output()
                    .expect("running the command");
                let output = String::from_utf8_lossy(&out.stdout);
                let words: Vec<&str> = output.split_whitespace().collect();
                report.line(format!("run-output {}", words.join(" ")));
            }
            "fdstore-max" => match notifier.fd_store_max() {
                Some(n) => report.line(format!("fdstore-max {n}")),
                None => report.line("fdstore-max unknown"),
            },
            "open-fds" => {
                for entry in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd") {
                    let n: i32 = entry
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .parse()
                        .unwrap();
                    report.line(format!("open-fd {n}"));
                }
            }
            "ignore-stop" => ignore_stop = true,
            other => {
                report.line(format!("unknown action {other}"));
                std::process::exit(64);
            }
        }
    }
    report.line("waiting");
    term.wait().expect("waiting for SIGTERM");
    if ignore_stop {
        loop {
            report.line("ignoring SIGTERM");
            term.wait().expect("waiting for SIGTERM");
        }
    }
    STOP.store(true, Ordering::SeqCst);
    for server in servers {
        let _ = server.join();
    }
    report.line("stopped");
}

/// How an accept loop waits for a connection.
#[derive(Clone, Copy)]
enum Wait {
    /// `poll(2)`: every waiting process is woken by each connection.
    Poll,
    /// `epoll` with `EPOLLEXCLUSIVE`: the kernel wakes one waiter, the
    /// first registered that is waiting, which stays first.
    Exclusive,
    /// `poll(2)`, then 5 ms before `accept`.
    Late,
}

/// Answers every connection with one line until STOP is set.
fn serve(listener: TcpListener, wait: Wait) {
    accept_loop(&listener, wait, || match listener.accept() {
        Ok((stream, _)) => Some(Box::new(stream) as Box<dyn Connection>),
        Err(_) => None,
    });
}

/// [`serve`] on a Unix stream listener.
fn serve_unix(listener: UnixListener, wait: Wait) {
    accept_loop(&listener, wait, || match listener.accept() {
        Ok((stream, _)) => Some(Box::new(stream) as Box<dyn Connection>),
        Err(_) => None,
    });
}

/// An accepted stream, TCP or Unix.
trait Connection: std::io::Read + Write + Send {
    fn shut_write(&self);
    fn blocking(&self);
}

impl Connection for std::net::TcpStream {
    fn shut_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
    fn blocking(&self) {
        let _ = self.set_nonblocking(false);
        let _ = self.set_read_timeout(Some(Duration::from_secs(1)));
    }
}

impl Connection for std::os::unix::net::UnixStream {
    fn shut_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
    fn blocking(&self) {
        let _ = self.set_nonblocking(false);
        let _ = self.set_read_timeout(Some(Duration::from_secs(1)));
    }
}

/// An `epoll` set that waits for connections on `listener` with
/// `EPOLLEXCLUSIVE`.
fn exclusive_epoll(listener: impl AsFd) -> std::os::fd::OwnedFd {
    let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).expect("epoll_create");
    epoll::add(
        &epoll,
        listener,
        epoll::EventData::new_u64(0),
        epoll::EventFlags::IN | epoll::EventFlags::EXCLUSIVE,
    )
    .expect("EPOLL_CTL_ADD");
    epoll
}

fn accept_loop<L: AsFd>(
    listener: &L,
    wait: Wait,
    accept: impl Fn() -> Option<Box<dyn Connection>>,
) {
    let answer = format!("pid {}\n", std::process::id());
    rustix::io::ioctl_fionbio(listener, true).expect("non-blocking accept");
    let tick = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 20_000_000,
    };
    let epoll = match wait {
        Wait::Poll | Wait::Late => None,
        Wait::Exclusive => Some(exclusive_epoll(listener)),
    };
    while !STOP.load(Ordering::SeqCst) {
        // A wait cut short (a signal, SIGSTOP and SIGCONT) is a timeout.
        let woken = match &epoll {
            None => {
                let mut ready = [PollFd::new(listener, PollFlags::IN)];
                matches!(poll(&mut ready, Some(&tick)), Ok(n) if n > 0)
            }
            Some(epoll) => {
                let mut events = [std::mem::MaybeUninit::uninit(); 1];
                matches!(epoll::wait(epoll, &mut events[..], Some(&tick)), Ok((ready, _)) if !ready.is_empty())
            }
        };
        if !woken {
            continue;
        }
        if matches!(wait, Wait::Late) {
            std::thread::sleep(Duration::from_millis(5));
        }
        match accept() {
            Some(mut stream) => {
                stream.blocking();
                // One write, so a reader never sees half an answer; then
                // the end of the answer, and the connection stays open
                // until the client closes it (at most a second), as a
                // request-response server holds a connection.
                let _ = stream.write_all(answer.as_bytes());
                stream.shut_write();
                std::thread::spawn(move || {
                    let mut rest = [0u8; 64];
                    while matches!(stream.read(&mut rest), Ok(n) if n > 0) {}
                });
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}
