//! HTTP/1.1 servers on fdstore listeners, drained as `fdstore(7)`
//! prescribes (features `hyper` and `axum`).
//!
//! [`Server`] serves a hyper service ([`Server::hyper`]) or an axum
//! `Router` ([`Server::axum`]) on a listener from an [`Upgrader`] until this
//! generation must [drain](crate::Drain), and then drains it the way that
//! loses no request:
//!
//! 1. it stops accepting and closes its copy of the listener (never
//!    `shutdown(2)`, which would stop the listener for the new generation
//!    too); connections still queued in the listener belong to the new
//!    generation;
//! 2. every response from then on says `Connection: close`, so a keep-alive
//!    client opens its next request on a new connection, which the new
//!    generation answers;
//! 3. a connection that is still open after the
//!    [idle grace](Server::idle_grace) (an idle keep-alive connection) is
//!    shut down gracefully: a request being served is finished, an idle
//!    connection is closed. Closing idle connections at once instead would
//!    cut requests already on the wire (a request hyper has not read yet
//!    counts as idle);
//! 4. the call returns once every connection is done. The upgrader ends the
//!    process at the drain deadline
//!    ([`UpgradeOptions::drain_timeout`](crate::UpgradeOptions::drain_timeout))
//!    if a request is still running.
//!
//! ```no_run
//! # #[cfg(feature = "axum")]
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let up = fdstore::Upgrader::from_env()?;
//!     let web = up.tokio_tcp_listener("web=tcp:127.0.0.1:8080")?;
//!     let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello\n" }));
//!     up.ready_async().await?;
//!     fdstore::serve::Server::new(&up).axum(web, app).await;
//!     Ok(())
//! }
//! # #[cfg(not(feature = "axum"))]
//! # fn main() {}
//! ```
//!
//! HTTP/1.1 only (HTTP/2 and TLS are not handled here: terminate them in
//! front, or drive hyper yourself with [`crate::Drain`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use ::http::header::{HeaderValue, CONNECTION};
use ::http::{Request, Response};
use ::hyper::body::{Body, Incoming};
use ::hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;
use tracing::warn;

use crate::{Drain, Upgrader};

/// How long connections may stay open after the drain notice before they
/// are shut down gracefully, by default.
pub const DEFAULT_IDLE_GRACE: Duration = Duration::from_secs(1);

/// An error of a service or a body, as hyper takes it.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A hyper service that [`Server::hyper`] can serve: a
/// [`Service`](::hyper::service::Service) of `Request<Incoming>` answering
/// `Response<B>`, cloned for each connection and sent between threads, so
/// its futures and bodies are `Send` and `'static`, and its errors and its
/// body's errors convert into `Box<dyn Error + Send + Sync>`.
///
/// Implemented for every such service (`hyper::service::service_fn`,
/// `hyper_util::service::TowerToHyperService`, ...): it names these bounds
/// once. The associated types are the service's own.
pub trait HyperService:
    ::hyper::service::Service<
        Request<Incoming>,
        Response = Response<Self::ResponseBody>,
        Error = Self::ServiceError,
        Future = Self::ServiceFuture,
    > + Clone
    + Send
    + 'static
{
    /// The body of its responses (`B`).
    type ResponseBody: Body<Data = Self::BodyData, Error = Self::BodyError> + Send + 'static;
    /// The chunks of the body.
    type BodyData: ::hyper::body::Buf + Send;
    /// The errors of the body.
    type BodyError: Into<BoxError>;
    /// The errors of the service.
    type ServiceError: Into<BoxError>;
    /// The future of a response.
    type ServiceFuture: Send + 'static;
}

impl<S, B> HyperService for S
where
    S: ::hyper::service::Service<Request<Incoming>, Response = Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type ResponseBody = B;
    type BodyData = B::Data;
    type BodyError = B::Error;
    type ServiceError = S::Error;
    type ServiceFuture = S::Future;
}

/// A listener to serve on: a tokio TCP or Unix stream listener, as
/// [`Upgrader::tokio_tcp_listener`] and [`Upgrader::tokio_unix_listener`]
/// return them.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let up = fdstore::Upgrader::from_env()?;
/// let web: fdstore::serve::Listener = up.tokio_tcp_listener("web=tcp:127.0.0.1:8080")?.into();
/// let admin: fdstore::serve::Listener = up.tokio_unix_listener("admin=unix:/run/app/admin.sock")?.into();
/// # drop((web, admin));
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Listener {
    /// A TCP listener.
    Tcp(tokio::net::TcpListener),
    /// A Unix stream listener.
    Unix(tokio::net::UnixListener),
}

impl From<tokio::net::TcpListener> for Listener {
    fn from(listener: tokio::net::TcpListener) -> Listener {
        Listener::Tcp(listener)
    }
}

impl From<tokio::net::UnixListener> for Listener {
    fn from(listener: tokio::net::UnixListener) -> Listener {
        Listener::Unix(listener)
    }
}

/// Serves HTTP/1.1 on fdstore listeners until the drain, then drains as the
/// [module](self) describes.
///
/// Cheap to clone; one per listener or one for all, as convenient.
///
/// ```no_run
/// # async fn f(up: fdstore::Upgrader, web: tokio::net::TcpListener, app: axum::Router) {
/// use std::time::Duration;
/// fdstore::serve::Server::new(&up)
///     .idle_grace(Duration::from_millis(500))
///     .axum(web, app)
///     .await;
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Server {
    drain: Drain,
    idle_grace: Duration,
    _upgrader: Upgrader,
}

impl Server {
    /// A server that drains when `upgrader` says so. It keeps a clone of
    /// the upgrader (cheap) for as long as it serves.
    ///
    /// ```no_run
    /// let up = fdstore::Upgrader::from_env()?;
    /// let server = fdstore::serve::Server::new(&up);
    /// # Ok::<(), fdstore::UpgradeError>(())
    /// ```
    pub fn new(upgrader: &Upgrader) -> Server {
        Server {
            drain: upgrader.drain(),
            idle_grace: DEFAULT_IDLE_GRACE,
            _upgrader: upgrader.clone(),
        }
    }

    /// How long connections may stay open after the drain notice before
    /// idle ones are closed (default [`DEFAULT_IDLE_GRACE`]). Long enough
    /// for a request already on the wire to arrive; keep it well below the
    /// drain timeout. See the type's example.
    pub fn idle_grace(mut self, grace: Duration) -> Server {
        self.idle_grace = grace;
        self
    }

    /// Serves the hyper `service` (any [`HyperService`]) on `listener` until
    /// the drain is done.
    ///
    /// ```no_run
    /// # async fn f(up: fdstore::Upgrader, web: tokio::net::TcpListener) {
    /// use std::convert::Infallible;
    /// let service = hyper::service::service_fn(|_request| async {
    ///     let body = http_body_util::Full::new(bytes::Bytes::from("hi\n"));
    ///     Ok::<_, Infallible>(hyper::Response::new(body))
    /// });
    /// fdstore::serve::Server::new(&up).hyper(web, service).await;
    /// # }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "hyper")))]
    pub async fn hyper<S: HyperService>(&self, listener: impl Into<Listener>, service: S) {
        let service = CloseWhenDraining {
            inner: service,
            drain: self.drain.clone(),
        };
        match listener.into() {
            Listener::Tcp(l) => {
                self.accept_loop(
                    l,
                    |l| Box::pin(async { l.accept().await.map(|(s, _)| s) }),
                    service,
                )
                .await
            }
            Listener::Unix(l) => {
                self.accept_loop(
                    l,
                    |l| Box::pin(async { l.accept().await.map(|(s, _)| s) }),
                    service,
                )
                .await
            }
        }
    }

    /// Serves the axum `router` on `listener` until the drain is done: one
    /// call, the whole drain of the [module](self) documentation.
    /// (Extractors that need the peer address, `ConnectInfo`, are not
    /// available; a Unix listener has no IP peer anyway.)
    ///
    /// ```no_run
    /// # async fn f(up: fdstore::Upgrader) -> Result<(), fdstore::UpgradeError> {
    /// let web = up.tokio_tcp_listener("web=tcp:127.0.0.1:8080")?;
    /// let admin = up.tokio_unix_listener("admin=unix:/run/app/admin.sock")?;
    /// let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello\n" }));
    /// let admin_app = axum::Router::new().route("/health", axum::routing::get(|| async { "ok\n" }));
    /// up.ready_async().await?;
    /// let server = fdstore::serve::Server::new(&up);
    /// tokio::join!(server.axum(web, app), server.axum(admin, admin_app));
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "axum")]
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    pub async fn axum(&self, listener: impl Into<Listener>, router: ::axum::Router) {
        let service = hyper_util::service::TowerToHyperService::new(router);
        self.hyper(listener, service).await
    }

    async fn accept_loop<L, I>(
        &self,
        listener: L,
        accept: impl for<'a> Fn(&'a L) -> Pin<Box<dyn Future<Output = io::Result<I>> + Send + 'a>>,
        service: impl HyperService,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = accept(&listener) => match accepted {
                    Ok(io) => {
                        connections.spawn(serve_connection(io, service.clone(), self.drain.clone(), self.idle_grace));
                    }
                    Err(e) => {
                        // Out of descriptors or memory, or the peer gave up
                        // in the queue: go on, without a busy loop.
                        warn!("accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = self.drain.notified() => break,
            }
            while connections.try_join_next().is_some() {}
        }
        // Close, never shut down: the listener is shared with the new
        // generation, and queued connections are its.
        drop(listener);
        while connections.join_next().await.is_some() {}
    }
}

async fn serve_connection<I>(io: I, service: impl HyperService, drain: Drain, idle_grace: Duration)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = drain.notified() => {}
    }
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = tokio::time::sleep(idle_grace) => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

/// Adds `Connection: close` to every response completed once the drain
/// began.
#[derive(Clone)]
struct CloseWhenDraining<S> {
    inner: S,
    drain: Drain,
}

impl<S, B> ::hyper::service::Service<Request<Incoming>> for CloseWhenDraining<S>
where
    S: ::hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, S::Error>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let response = self.inner.call(request);
        let drain = self.drain.clone();
        Box::pin(async move {
            let mut response = response.await?;
            if drain.notice().is_some() {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response)
        })
    }
}
