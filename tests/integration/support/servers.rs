//! The server recipes of `units/` (gunicorn, gunicorn with uvicorn workers,
//! lighttpd, nginx) run as shipped, but for the paths and the port, by
//! `tests/integration/servers.rs` and the benchmark; and `wrk`, the
//! third-party load generator they are measured with.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::Systemd;

/// A recipe of `units/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recipe {
    /// Its unit file in `units/`, which is also the unit's name.
    pub unit: &'static str,
    /// What the server is.
    pub server: Server,
}

/// The server a recipe runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// gunicorn with a WSGI application (sync or gthread workers).
    GunicornWsgi,
    /// gunicorn with uvicorn workers and an ASGI application.
    GunicornAsgi,
    /// lighttpd with a static site.
    Lighttpd,
    /// nginx with a static site (workers that wait with `EPOLLEXCLUSIVE`).
    Nginx,
}

/// Every recipe, in the order the manual lists them.
pub const RECIPES: [Recipe; 5] = [
    Recipe {
        unit: "gunicorn.service",
        server: Server::GunicornWsgi,
    },
    Recipe {
        unit: "gunicorn-gthread.service",
        server: Server::GunicornWsgi,
    },
    Recipe {
        unit: "gunicorn-uvicorn.service",
        server: Server::GunicornAsgi,
    },
    Recipe {
        unit: "lighttpd.service",
        server: Server::Lighttpd,
    },
    Recipe {
        unit: "nginx.service",
        server: Server::Nginx,
    },
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn shipped(name: &str) -> String {
    let path = repo().join("units").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Replaces `from` by `to` in `text`, failing when the recipe no longer has
/// the text this adapts (so the test never runs something else silently).
fn adapt(text: String, what: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "{what} no longer contains {from:?}, which the server tests adapt"
    );
    text.replace(from, to)
}

impl Recipe {
    /// The signal of the server's own graceful reload, for comparison:
    /// gunicorn's SIGHUP (new workers, old ones drained as by the stop),
    /// lighttpd's SIGUSR1 (graceful restart), nginx's SIGHUP (new workers,
    /// old ones shut down gracefully).
    pub fn own_reload_signal(self) -> &'static str {
        match self.server {
            Server::GunicornWsgi | Server::GunicornAsgi | Server::Nginx => "SIGHUP",
            Server::Lighttpd => "SIGUSR1",
        }
    }

    /// Writes the unit, the application (or site and configuration) into
    /// `dir` and installs it into `sd`, serving on 127.0.0.1:`port` with
    /// `fdstore_exec`. The application is at version 1.
    pub fn install(self, sd: &Systemd, dir: &Path, port: u16, fdstore_exec: &Path) {
        let what = format!("units/{}", self.unit);
        let mut unit = shipped(self.unit);
        unit = adapt(
            unit,
            &what,
            "/usr/bin/fdstore-exec",
            &fdstore_exec.display().to_string(),
        );
        match self.server {
            Server::GunicornWsgi | Server::GunicornAsgi => {
                unit = adapt(
                    unit,
                    &what,
                    "tcp:[::]:8000",
                    &format!("tcp:127.0.0.1:{port}"),
                );
                unit = adapt(unit, &what, "/srv/app", &dir.display().to_string());
                let module = if self.server == Server::GunicornWsgi {
                    "wsgi_app"
                } else {
                    "asgi_app"
                };
                unit = adapt(
                    unit,
                    &what,
                    " app:application",
                    &format!(" {module}:application"),
                );
                let source = repo().join("tests/servers").join(format!("{module}.py"));
                std::fs::copy(&source, dir.join(format!("{module}.py")))
                    .unwrap_or_else(|e| panic!("{}: {e}", source.display()));
            }
            Server::Lighttpd => {
                unit = adapt(
                    unit,
                    &what,
                    "tcp:[::]:8080",
                    &format!("tcp:127.0.0.1:{port}"),
                );
                let config = dir.join("fdstore.conf");
                unit = adapt(
                    unit,
                    &what,
                    "/etc/lighttpd/fdstore.conf",
                    &config.display().to_string(),
                );
                let what = "units/lighttpd-fdstore.conf";
                let mut text = shipped("lighttpd-fdstore.conf");
                text = adapt(
                    text,
                    what,
                    "server.bind = \"[::]\"",
                    "server.bind = \"127.0.0.1\"",
                );
                text = adapt(
                    text,
                    what,
                    "server.port = 8080",
                    &format!("server.port = {port}"),
                );
                text = adapt(
                    text,
                    what,
                    "/srv/www",
                    &dir.join("www").display().to_string(),
                );
                std::fs::create_dir_all(dir.join("www")).unwrap();
                std::fs::write(&config, &text).unwrap();
                std::fs::write(dir.join("fdstore.conf.good"), text).unwrap();
            }
            Server::Nginx => {
                unit = adapt(
                    unit,
                    &what,
                    "tcp:[::]:8081,",
                    &format!("tcp:127.0.0.1:{port},"),
                );
                let config = dir.join("fdstore.conf");
                unit = adapt(
                    unit,
                    &what,
                    "/etc/nginx/fdstore.conf",
                    &config.display().to_string(),
                );
                // A user manager's RuntimeDirectory= is under
                // $XDG_RUNTIME_DIR: the run's directory instead, writable
                // under ProtectSystem=strict.
                let run = dir.join("run");
                std::fs::create_dir_all(&run).unwrap();
                unit = adapt(
                    unit,
                    &what,
                    "RuntimeDirectory=nginx-fdstore\n",
                    &format!(
                        "RuntimeDirectory=nginx-fdstore\nReadWritePaths={}\n",
                        run.display()
                    ),
                );
                let what = "units/nginx-fdstore.conf";
                let mut text = shipped("nginx-fdstore.conf");
                text = adapt(
                    text,
                    what,
                    "listen [::]:8081;",
                    &format!("listen 127.0.0.1:{port};"),
                );
                text = adapt(
                    text,
                    what,
                    "/srv/www",
                    &dir.join("www").display().to_string(),
                );
                // Some of the private managers run the unit where only
                // root is mapped: nginx's chown of its temporary
                // directories to its worker user fails there (EINVAL, seen
                // on 254 and 257).
                text = adapt(text, what, "user www-data;", "user root;");
                text = adapt(text, what, "/run/nginx-fdstore", &run.display().to_string());
                std::fs::create_dir_all(dir.join("www")).unwrap();
                std::fs::write(&config, &text).unwrap();
                std::fs::write(dir.join("fdstore.conf.good"), text).unwrap();
            }
        }
        self.set_version(dir, "1");
        sd.install(&[(self.unit, &unit)]);
    }

    /// Puts version `version` of the application (or site) in place for the
    /// next start; `broken` is one that fails at start-up (an application
    /// that fails to import, a configuration lighttpd or nginx rejects).
    pub fn set_version(self, dir: &Path, version: &str) {
        match self.server {
            Server::GunicornWsgi | Server::GunicornAsgi => {
                write_atomically(&dir.join("version"), &format!("{version}\n"));
            }
            Server::Lighttpd | Server::Nginx => {
                let config = dir.join("fdstore.conf");
                let good = dir.join("fdstore.conf.good");
                if version == "broken" {
                    let mut text = std::fs::read_to_string(&good).unwrap();
                    text.push_str(if self.server == Server::Lighttpd {
                        "server.this-is-not-a-setting = \n"
                    } else {
                        "this_is_not_a_directive on;\n"
                    });
                    write_atomically(&config, &text);
                } else {
                    write_atomically(&config, &std::fs::read_to_string(&good).unwrap());
                    write_atomically(
                        &dir.join("www/index.html"),
                        &format!("hello from version {version}\n"),
                    );
                }
            }
        }
    }
}

/// Replaces `path` by a file holding `text` in one step (a rename), so that
/// a server reading it while it changes (lighttpd serving the page) never
/// sees it half written.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// What `wrk` reported.
#[derive(Debug, Default, Clone, Copy)]
pub struct WrkReport {
    /// Complete responses (bad ones included).
    pub requests: u64,
    /// Requests that failed: socket errors (connect, read, write, timeout)
    /// and responses other than 2xx/3xx.
    pub failed: u64,
    /// Of the responses, those other than 2xx/3xx.
    pub bad_responses: u64,
    /// Of those, connections that could not be made.
    pub connect_errors: u64,
}

/// A running `wrk` (Debian's package): closed-loop keep-alive clients,
/// stopped with SIGINT, on which it prints its summary.
pub struct Wrk {
    child: Child,
}

/// The `wrk` binary; fails with the fix when it is missing.
fn wrk_binary() -> &'static str {
    let path = "/usr/bin/wrk";
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install Debian's wrk package (tests/run does)"
    );
    path
}

impl Wrk {
    /// Starts `connections` keep-alive connections on one thread against
    /// http://127.0.0.1:`port`/, for at most `limit`.
    pub fn start(port: u16, connections: u32, limit: Duration) -> Wrk {
        let child = Command::new(wrk_binary())
            .args([
                "-t1",
                &format!("-c{connections}"),
                &format!("-d{}s", limit.as_secs().max(1)),
                "--timeout",
                &format!("{}s", super::load::READ_TIMEOUT.as_secs()),
                &format!("http://127.0.0.1:{port}/"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting wrk");
        Wrk { child }
    }

    /// Stops it and returns its counts.
    pub fn stop(self) -> WrkReport {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let out = self.child.wait_with_output().expect("waiting for wrk");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        parse_wrk(&text).unwrap_or_else(|| {
            panic!(
                "cannot read wrk's summary:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}

/// Reads `N requests in ...`, `Socket errors: connect A, read B, write C,
/// timeout D` and `Non-2xx or 3xx responses: E` from wrk's summary.
pub fn parse_wrk(text: &str) -> Option<WrkReport> {
    let mut report = WrkReport::default();
    let mut seen = false;
    for line in text.lines().map(str::trim) {
        if let Some((n, _)) = line.split_once(" requests in ") {
            report.requests = n.trim().parse().ok()?;
            seen = true;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            for part in rest.split(',') {
                let mut words = part.split_whitespace();
                let kind = words.next()?;
                let n: u64 = words.next()?.parse().ok()?;
                report.failed += n;
                if kind == "connect" {
                    report.connect_errors = n;
                }
            }
        } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            report.bad_responses = n.trim().parse::<u64>().ok()?;
            report.failed += report.bad_responses;
        }
    }
    seen.then_some(report)
}
