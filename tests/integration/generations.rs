//! The bound on generations alive at once (`--max-generations`,
//! `UpgradeOptions::max_generations`) under real systemd: a client holds an
//! idle keep-alive connection to every generation, which therefore drains
//! until its long drain timeout, and the unit is reloaded 20 times, one every
//! 0.3 s, under HTTP load. A sampler reads the unit's cgroup all along: the
//! count of generations never exceeds the bound (and reaches it, so the
//! test can fail). At the bound, `kill-oldest` ends the oldest draining
//! generation (journal lines from both sides) and loses no request;
//! `refuse` fails the reload as busy (exit 75, the count in the message)
//! while the serving generation keeps serving.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::app::{fdstore_exec, main_pid};
use crate::support::load::{Load, Mode};
use crate::support::{example, free_port, wait_for, Systemd};

const BOUND: usize = 3;
const RELOADS: usize = 20;
const INTERVAL: Duration = Duration::from_millis(300);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Runner {
    /// fdstore-exec running hello_http.
    Wrapper,
    /// upgrade_std, which upgrades itself with the library.
    Library,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum AtMax {
    KillOldest,
    Refuse,
}

impl AtMax {
    fn word(self) -> &'static str {
        match self {
            AtMax::KillOldest => "kill-oldest",
            AtMax::Refuse => "refuse",
        }
    }
}

/// Installs and starts app.service; returns the port.
fn start(sd: &Systemd, runner: Runner, at_max: AtMax) -> u16 {
    let port = free_port();
    let config = sd.path("app.conf");
    std::fs::write(&config, "hello\n").unwrap();
    let bound = format!(
        "--max-generations {BOUND} --at-max-generations {}",
        at_max.word()
    );
    let exec_start = match runner {
        Runner::Wrapper => format!(
            "{} --listen http=tcp:127.0.0.1:{port} --drain-timeout 120s {bound} -- {} --config {} --drain-idle 120s",
            fdstore_exec(),
            example("hello_http").display(),
            config.display()
        ),
        Runner::Library => format!(
            "{} --listen http=tcp:127.0.0.1:{port} --config {} --drain-timeout 120s --drain-idle 120s {bound}",
            example("upgrade_std").display(),
            config.display()
        ),
    };
    let service = format!(
        "[Service]\nType=notify\nFileDescriptorStoreMax=4\nKillMode=mixed\nTimeoutStartSec=30\nTimeoutStopSec=10\n\
         ExecStart={exec_start}\nExecReload={} reload\n",
        fdstore_exec()
    );
    sd.install(&[("app.service", &service)]);
    sd.ok(&["start", "app.service"]);
    port
}

/// One keep-alive `GET /` on `stream`: the body, and whether the server
/// keeps the connection open.
fn request(stream: &mut TcpStream) -> Result<(String, bool), String> {
    write!(stream, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut length = 0;
    let mut keep_alive = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("closed before the response".into());
        }
        let lower = line.trim().to_ascii_lowercase();
        if lower.is_empty() {
            break;
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v
                .trim()
                .parse()
                .map_err(|_| format!("bad header {line:?}"))?;
        }
        if lower == "connection: keep-alive" {
            keep_alive = true;
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok((String::from_utf8_lossy(&body).trim().to_owned(), keep_alive))
}

/// Idle keep-alive connections, each held by a different generation, as
/// browsers and connection pools keep them: each holds its generation until
/// its drain timeout once it drains.
#[derive(Default)]
struct Held {
    streams: Vec<TcpStream>,
    /// What each one's generation answered (its pid is in it).
    answers: Vec<String>,
}

impl Held {
    /// One more, held by the serving generation. A generation that just
    /// began to drain may still accept: it then closes the connection, or
    /// (before its drain notice) answers as it answered an earlier one;
    /// either is tried again, so that no generation holds two while a newer
    /// one holds none and ends by itself.
    fn add(&mut self, port: u16) {
        let (stream, answer) = wait_for(
            "a keep-alive connection to the serving generation",
            Duration::from_secs(5),
            || {
                let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
                stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
                match request(&mut stream) {
                    Ok((answer, true)) if !self.answers.contains(&answer) => Some((stream, answer)),
                    _ => None,
                }
            },
        );
        self.streams.push(stream);
        self.answers.push(answer);
    }

    /// The one held by the newest generation.
    fn newest(&mut self) -> &mut TcpStream {
        self.streams.last_mut().expect("one connection held")
    }
}

/// `(comm, parent pid, argv[1])` of a process, if it still exists.
fn describe(pid: u32) -> Option<(String, u32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let comm = stat[stat.find('(')? + 1..stat.rfind(')')?].to_owned();
    let after = &stat[stat.rfind(')')? + 2..];
    let mut fields = after.split(' ');
    if fields.next()? == "Z" {
        return None;
    }
    let ppid = fields.next()?.parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let arg1 = cmdline
        .split(|b| *b == 0)
        .nth(1)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .unwrap_or_default();
    Some((comm, ppid, arg1))
}

/// Samples the unit's cgroup every few milliseconds until stopped; returns
/// the highest count seen of each kind of process ("generations": the
/// manager's children that are a generation, fdstore-exec or upgrade_std;
/// "programs": hello_http processes).
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(BTreeMap<&'static str, usize>, u64)>,
}

impl Sampler {
    fn start(sd: &Systemd, runner: Runner) -> Sampler {
        let procs = sd.unit_cgroup("app.service").join("cgroup.procs");
        let manager = sd.manager_pid() as u32;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut max: BTreeMap<&'static str, usize> = BTreeMap::new();
            let mut samples = 0;
            while !flag.load(Ordering::Relaxed) {
                let text = std::fs::read_to_string(&procs).unwrap_or_default();
                let mut count: BTreeMap<&'static str, usize> = BTreeMap::new();
                for pid in text.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                    let Some((comm, ppid, arg1)) = describe(pid) else {
                        continue;
                    };
                    let kind = match (runner, comm.as_str()) {
                        // The intermediate a generation forks is the
                        // generation's child: not a generation.
                        // `fdstore-exec reload` is the ExecReload= client.
                        (Runner::Wrapper, "fdstore-exec")
                            if ppid == manager
                                && !["reload", "status"].contains(&arg1.as_str()) =>
                        {
                            "generations"
                        }
                        (Runner::Wrapper, "hello_http") => "programs",
                        (Runner::Library, "upgrade_std") if ppid == manager => "generations",
                        _ => continue,
                    };
                    *count.entry(kind).or_default() += 1;
                }
                for (kind, n) in count {
                    let m = max.entry(kind).or_default();
                    *m = (*m).max(n);
                }
                samples += 1;
                std::thread::sleep(Duration::from_millis(3));
            }
            (max, samples)
        });
        Sampler { stop, thread }
    }

    fn stop(self) -> (BTreeMap<&'static str, usize>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// `fdstore-exec reload --pid MAINPID`: exit status and stderr.
fn reload(sd: &Systemd) -> (i32, String) {
    let out = std::process::Command::new(fdstore_exec())
        .args(["reload", "--pid", &main_pid(sd).to_string()])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn bounded(sd: &Systemd, runner: Runner, at_max: AtMax) {
    let port = start(sd, runner, at_max);
    let mut held = Held::default();
    held.add(port);
    let sampler = Sampler::start(sd, runner);
    let loads = [
        Load::start(port, Mode::NewConnection, 1),
        Load::start(port, Mode::KeepAlive, 1),
    ];
    let mut outcomes: BTreeMap<i32, usize> = BTreeMap::new();
    let mut refusals = Vec::new();
    for _ in 0..RELOADS {
        std::thread::sleep(INTERVAL);
        let (status, stderr) = reload(sd);
        *outcomes.entry(status).or_default() += 1;
        match status {
            0 => held.add(port),
            75 => refusals.push(stderr),
            other => panic!("reload exited {other}: {stderr}"),
        }
    }
    let reports: Vec<_> = loads.into_iter().map(Load::stop).collect();
    let (max, samples) = sampler.stop();
    eprintln!(
        "{} reloads: {outcomes:?}; highest counts in {samples} samples: {max:?}; load: {:?} ok",
        RELOADS,
        reports.iter().map(|r| r.ok).collect::<Vec<_>>()
    );
    assert!(samples > 100, "too few samples ({samples})");
    let generations = max.get("generations").copied().unwrap_or(0);
    assert_eq!(
        generations, BOUND,
        "the unit's generations must reach the bound of {BOUND} and never exceed it: {max:?}"
    );
    if runner == Runner::Wrapper {
        assert_eq!(max.get("programs").copied(), Some(BOUND), "{max:?}");
    }
    for report in &reports {
        assert_eq!(
            report.failed(),
            0,
            "{:?} {:?}",
            report.failures,
            report.examples
        );
    }
    match at_max {
        AtMax::KillOldest => {
            assert_eq!(
                outcomes.get(&0),
                Some(&RELOADS),
                "{outcomes:?} {refusals:?}"
            );
            // Reloads beyond the first BOUND - 1 each end one generation,
            // unless one ended by itself (a held connection that raced the
            // drain and went to the older generation leaves none to hold it).
            let mut journal = String::new();
            for _ in 0..50 {
                journal = sd.journal();
                let told = journal.matches("ending generation").count();
                if told > 0 && journal.matches("ends early").count() == told {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let lines: Vec<&str> = journal
                .lines()
                .filter(|l| l.contains("early") || l.contains("hand-over is complete"))
                .collect();
            let told = journal.matches("ending generation").count();
            assert_eq!(
                journal.matches("ends early").count(),
                told,
                "every generation told to end says so: {}",
                lines.join("\n")
            );
            assert!(
                (RELOADS / 2..=RELOADS - (BOUND - 1)).contains(&told),
                "{told} generations ended early: {}",
                lines.join("\n")
            );
            // Each says why, with the bound. (Which generations are alive
            // then depends on which of them ended by itself.)
            assert_eq!(
                journal
                    .matches(&format!("early: {BOUND} generations are alive ("))
                    .count(),
                told,
                "{}",
                lines.join("\n")
            );
        }
        AtMax::Refuse => {
            // Once BOUND generations are alive, every reload is refused
            // until one of them ends, which the held connections prevent.
            assert_eq!(outcomes.get(&0), Some(&(BOUND - 1)), "{outcomes:?}");
            assert_eq!(outcomes.get(&75), Some(&(RELOADS - (BOUND - 1))));
            for text in &refusals {
                assert!(
                    text.contains(&format!(
                        "{BOUND} generations are alive ({BOUND} serving, 1 and 2 draining)"
                    )) && text.contains("kill-oldest"),
                    "{text}"
                );
            }
            let out = std::process::Command::new(fdstore_exec())
                .args(["status", "--pid", &main_pid(sd).to_string()])
                .output()
                .unwrap();
            let status = String::from_utf8_lossy(&out.stdout);
            assert!(
                status.contains("; 2 older generations draining"),
                "{status}"
            );
        }
    }
    // The generations' idle connections: the newest ones are still open and
    // served by their generation; the ended ones were closed.
    assert!(request(held.newest()).is_ok(), "the newest held connection");
    if at_max == AtMax::KillOldest {
        let mut oldest = held.streams.remove(0);
        let mut buf = [0u8; 1];
        let _ = oldest.set_read_timeout(Some(Duration::from_secs(5)));
        assert!(
            matches!(oldest.read(&mut buf), Ok(0) | Err(_)),
            "the ended generation's connection must be closed"
        );
    }
}

fn wrapper_kill_oldest(sd: &Systemd) {
    bounded(sd, Runner::Wrapper, AtMax::KillOldest);
}

fn wrapper_refuse(sd: &Systemd) {
    bounded(sd, Runner::Wrapper, AtMax::Refuse);
}

fn library_kill_oldest(sd: &Systemd) {
    bounded(sd, Runner::Library, AtMax::KillOldest);
}

fn library_refuse(sd: &Systemd) {
    bounded(sd, Runner::Library, AtMax::Refuse);
}

/// fdstore-exec's loop goes on while a reload waits for room: the oldest
/// draining generation, stopped (SIGSTOP), cannot end when told to, and the
/// main process waits for it (up to 5 s) without blocking. Meanwhile it
/// answers `status`, which names the reload in progress; before, it sat in
/// that wait and answered only after the reload was refused. Once the old
/// generation may go on, it ends and the reload completes.
fn waiting_for_room_blocks_nothing(sd: &Systemd) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let port = start(sd, Runner::Wrapper, AtMax::KillOldest);
    let first = Pid::from_raw(main_pid(sd) as i32);
    let mut held = Held::default();
    held.add(port);
    for _ in 0..BOUND - 1 {
        let (status, stderr) = reload(sd);
        assert_eq!(status, 0, "{stderr}");
        held.add(port);
    }
    // Generations 1 and 2 drain (held), 3 serves: at the bound.
    kill(first, Signal::SIGSTOP).unwrap();
    let (status, stderr, text) = std::thread::scope(|scope| {
        let reloading = scope.spawn(|| reload(sd));
        sd.wait_for_journal("ending generation 1 early");
        let out = std::process::Command::new(fdstore_exec())
            .args(["status", "--pid", &main_pid(sd).to_string()])
            .output()
            .unwrap();
        kill(first, Signal::SIGCONT).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (status, stderr) = reloading.join().unwrap();
        (status, stderr, text)
    });
    assert!(
        text.contains("reloading (generation 4 starting)"),
        "status during the wait for room: {text:?}"
    );
    assert_eq!(status, 0, "{stderr}");
    sd.wait_for_journal("generation 1 ends early");
    assert!(request(held.newest()).is_ok());
}

on_each_systemd!(
    wrapper_kill_oldest,
    wrapper_refuse,
    library_kill_oldest,
    library_refuse,
    waiting_for_room_blocks_nothing
);
