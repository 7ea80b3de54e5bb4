//! A tokio + hyper HTTP/1.1 server that upgrades itself in place with
//! [`fdstore::Upgrader`] (feature `tokio`; units in
//! `units/app-library-tokio.{socket,service}`).
//!
//! ```text
//! upgrade_tokio [--listen NAME=tcp:ADDRESS:PORT] [--config FILE] [--drain-timeout DURATION]
//! ```
//!
//! Same behaviour as `upgrade_std`: listener by name (inherited or created
//! and stored), a greeting from the configuration file (`broken` makes it
//! exit 1 before ready), and on the drain notice it stops accepting and
//! shuts every connection down gracefully (hyper answers the request in
//! progress with `Connection: close`), then exits.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use fdstore::{Drain, UpgradeOptions, Upgrader};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::task::JoinSet;

/// How long a connection may stay open once the drain began.
const DRAIN_IDLE: Duration = Duration::from_secs(1);

fn main() {
    init_logging();
    let mut listen = "http=tcp:127.0.0.1:8080".to_owned();
    let mut config = None;
    let mut options = UpgradeOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| usage(&format!("{arg} needs a value")));
        match arg.as_str() {
            "--listen" => listen = value,
            "--config" => config = Some(value),
            "--drain-timeout" => match fdstore::parse_duration(&value) {
                Ok(d) => options = options.drain_timeout(d),
                Err(e) => usage(&format!("--drain-timeout: {e}")),
            },
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    // Before the runtime starts its threads.
    let upgrader = Upgrader::with_options(options).unwrap_or_else(|e| fail(71, &e.to_string()));
    let greeting = match &config {
        None => "hello".to_owned(),
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) if text.trim() == "broken" => fail(
                1,
                &format!("{path}: the configuration says 'broken'; refusing to start"),
            ),
            Ok(text) => text.trim().to_owned(),
            Err(e) => fail(66, &format!("cannot read {path}: {e}")),
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(71, &format!("starting the runtime: {e}")));
    let _entered = runtime.enter();
    let listener = upgrader
        .tokio_tcp_listener(&listen)
        .unwrap_or_else(|e| fail(69, &e.to_string()));
    if let Err(e) = upgrader.ready() {
        fail(75, &e.to_string());
    }
    let body = Bytes::from(format!(
        "{greeting} (pid {}, generation {})\n",
        std::process::id(),
        upgrader.generation()
    ));
    runtime.block_on(serve(listener, upgrader, body));
}

async fn serve(listener: tokio::net::TcpListener, upgrader: Upgrader, body: Bytes) {
    let drain = upgrader.drain();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let body = body.clone();
                let drain = drain.clone();
                connections.spawn(serve_connection(stream, body, drain));
            }
            _ = drain.notified() => break,
        }
        // Reap finished connections as we go.
        while connections.try_join_next().is_some() {}
    }
    // Queued connections stay in the listener for the next generation.
    drop(listener);
    while connections.join_next().await.is_some() {}
    // The upgrader lives until here: its thread ends the process at the
    // drain deadline if a connection does not finish.
    drop(upgrader);
}

/// Serves one connection. Once the drain begins, responses say
/// `Connection: close`; a connection still open a moment later (idle
/// keep-alive) is shut down gracefully. Closing at once would cut requests
/// already on the wire: a request hyper has not read yet counts as idle.
async fn serve_connection(stream: tokio::net::TcpStream, body: Bytes, drain: Drain) {
    let service = {
        let drain = drain.clone();
        service_fn(move |request: Request<hyper::body::Incoming>| {
            let body = body.clone();
            let draining = drain.notice().is_some();
            async move {
                if request.uri().path() == "/slow" {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                let mut response = Response::new(Full::new(body));
                if draining {
                    response.headers_mut().insert(
                        hyper::header::CONNECTION,
                        "close".parse().expect("a header value"),
                    );
                }
                Ok::<_, Infallible>(response)
            }
        })
    };
    let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = drain.notified() => {}
    }
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = tokio::time::sleep(DRAIN_IDLE) => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

fn usage(problem: &str) -> ! {
    fail(
        64,
        &format!("{problem}\nusage: upgrade_tokio [--listen SPEC] [--config FILE] [--drain-timeout DURATION]"),
    )
}

fn fail(status: i32, message: &str) -> ! {
    eprintln!("upgrade_tokio: {message}");
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
