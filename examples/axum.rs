//! An axum 0.8 service that upgrades itself in place: HTTP on TCP, an admin
//! API on a Unix socket, a configuration file and a warm-up, and its own
//! `ExecReload=` command (features `axum`; units in `units/app-axum.service`).
//!
//! ```text
//! axum [--config FILE] [--drain-timeout SECONDS]
//! axum reload        # what ExecReload= runs: asks $MAINPID to upgrade
//! axum status        # the main process's status line
//! ```
//!
//! The configuration file (default `/etc/app/app.conf`, read by every
//! generation) has `KEY=VALUE` lines:
//!
//! - `greeting=TEXT`: the answer to `GET /` (and, after 2 s, to
//!   `GET /slow`; default `hello`); `broken`
//!   makes the program exit 1 before it is ready, as a bad new version would
//!   (the reload then fails and the old generation keeps serving);
//! - `listen=SPEC`: the HTTP listener (default `http=tcp:127.0.0.1:8080`).
//!   A reload keeps a listener's address: a new address under the same name
//!   fails the reload; under a new name the new generation binds it and
//!   closes the old one (out of the fd store too);
//! - `admin=SPEC`: the admin listener (default
//!   `admin=unix:/run/app/admin.sock`): `GET /health`, `POST /upgrade`.
//!
//! The fdstore glue is the lines marked `// fdstore`, 12 of them (every line
//! that names fdstore or the upgrader is marked; `tests/integration/serve.rs` checks and
//! counts): the `reload` command, the upgrader and its options, two
//! listeners, readiness, serving with the drain, and what the handlers use
//! (the generation, the upgrade the admin API offers).

use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;

/// The greeting and the upgrader (cheap to clone: one for every handler).
#[derive(Clone)]
struct App(String, fdstore::Upgrader); // fdstore

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    fdstore::client::run_if_asked(); // fdstore
    init_logging();
    let (config_path, drain_timeout) = arguments();
    let config = read_config(&config_path);
    let http = config.get("listen").unwrap_or("http=tcp:127.0.0.1:8080");
    let api = config
        .get("admin")
        .unwrap_or("admin=unix:/run/app/admin.sock");
    let options = fdstore::UpgradeOptions::default().drain_timeout(drain_timeout); // fdstore
    let up = fdstore::Upgrader::with_options(options).unwrap_or_else(|e| fail(71, e)); // fdstore
    let http = up.tokio_tcp_listener(http).unwrap_or_else(|e| fail(69, e)); // fdstore
    let api = up.tokio_unix_listener(api).unwrap_or_else(|e| fail(69, e)); // fdstore
    let greeting = config.get("greeting").unwrap_or("hello").to_owned();
    if greeting == "broken" {
        fail(
            1,
            format!("{config_path}: greeting=broken; refusing to start"),
        );
    }
    warm_up().await;
    let app = App(greeting, up.clone()); // fdstore
    let web_app = Router::new()
        .route("/", get(hello))
        .route("/slow", get(slow))
        .with_state(app.clone());
    let api_app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/upgrade", post(upgrade))
        .with_state(app);
    up.ready_async().await.unwrap_or_else(|e| fail(75, e)); // fdstore
    let server = fdstore::serve::Server::new(&up); // fdstore
    tokio::join!(server.axum(http, web_app), server.axum(api, api_app)); // fdstore
}

async fn hello(State(App(greeting, up)): State<App>) -> String {
    let (pid, generation) = (std::process::id(), up.generation()); // fdstore
    format!("{greeting} (pid {pid}, generation {generation})\n")
}

/// A request that takes 2 s: a drain finishes it.
async fn slow(state: State<App>) -> String {
    tokio::time::sleep(Duration::from_secs(2)).await;
    hello(state).await
}

async fn upgrade(State(App(_, up)): State<App>) -> String {
    let outcome = up.upgrade_async().await; // fdstore
    match outcome {
        Ok(done) => format!(
            "upgraded: generation {} (pid {})\n",
            done.generation, done.pid
        ),
        Err(e) => format!("not upgraded: {e}\n"),
    }
}

/// Stands for what a real service does before it can answer: open pools,
/// fill caches.
async fn warm_up() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

struct Config(Vec<(String, String)>);

impl Config {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn read_config(path: &str) -> Config {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| fail(66, format!("cannot read {path}: {e}")));
    let mut entries = Vec::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        match line.split_once('=') {
            Some((key, value)) => entries.push((key.trim().to_owned(), value.trim().to_owned())),
            None => fail(78, format!("{path}: {line:?} is not KEY=VALUE")),
        }
    }
    Config(entries)
}

fn arguments() -> (String, Duration) {
    let mut config = "/etc/app/app.conf".to_owned();
    let mut drain_timeout = Duration::from_secs(60);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| usage(&format!("{arg} needs a value")));
        match arg.as_str() {
            "--config" => config = value,
            "--drain-timeout" => {
                let seconds = value
                    .parse()
                    .unwrap_or_else(|e| usage(&format!("--drain-timeout: {e}")));
                drain_timeout = Duration::from_secs(seconds);
            }
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    (config, drain_timeout)
}

fn usage(problem: &str) -> ! {
    fail(
        64,
        format!("{problem}\nusage: axum [--config FILE] [--drain-timeout SECONDS] | axum reload"),
    )
}

fn fail(status: i32, message: impl std::fmt::Display) -> ! {
    eprintln!("axum: {message}");
    std::process::exit(status)
}

/// The upgrader's log (reload outcomes, drain deadline) to stderr, which
/// systemd puts into the journal.
fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .with_ansi(false)
        .try_init();
}
