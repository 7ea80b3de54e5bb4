//! The async forms of the upgrader's blocking calls (feature `tokio`).
//!
//! They wrap the one implementation: the blocking call runs on tokio's
//! blocking pool ([`tokio::task::spawn_blocking`]) with a clone of the
//! upgrader, so a runtime worker never waits for a hand-over.

use super::{UpgradeError, UpgradeErrorKind, Upgraded, Upgrader};

impl Upgrader {
    /// [`ready`](Upgrader::ready) without blocking the runtime: the wait for
    /// the previous generation runs on tokio's blocking pool. Call it inside
    /// a tokio runtime (any flavour, `#[tokio::main]` included).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// let upgrader = fdstore::Upgrader::from_env()?;
    /// let web = upgrader.tokio_tcp_listener("web=tcp:127.0.0.1:8080")?;
    /// // ... load the configuration, warm caches ...
    /// upgrader.ready_async().await?;
    /// # drop(web);
    /// # Ok(()) }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn ready_async(&self) -> Result<(), UpgradeError> {
        let upgrader = self.clone();
        blocking(move || upgrader.ready()).await
    }

    /// [`upgrade`](Upgrader::upgrade) without blocking the runtime: resolves
    /// with the outcome once the new generation serves or failed.
    ///
    /// ```no_run
    /// # async fn f(upgrader: fdstore::Upgrader) {
    /// match upgrader.upgrade_async().await {
    ///     Ok(done) => eprintln!("generation {} took over", done.generation),
    ///     Err(e) => eprintln!("still serving: {e}"),
    /// }
    /// # }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn upgrade_async(&self) -> Result<Upgraded, UpgradeError> {
        let upgrader = self.clone();
        blocking(move || upgrader.upgrade()).await
    }
}

async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, UpgradeError> + Send + 'static,
) -> Result<T, UpgradeError> {
    tokio::task::spawn_blocking(call).await.unwrap_or_else(|e| {
        Err(UpgradeError::new(
            UpgradeErrorKind::Stopping,
            format!("the runtime is shutting down ({e})"),
        ))
    })
}
