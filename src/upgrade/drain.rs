//! The drain handle: when this generation must stop accepting and finish
//! its connections, and by when.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Why this generation drains.
///
/// ```no_run
/// use fdstore::DrainReason;
/// let upgrader = fdstore::Upgrader::from_env()?;
/// match upgrader.drain().wait().reason {
///     DrainReason::HandedOver { successor } => eprintln!("pid {successor} serves now"),
///     DrainReason::Stopping => eprintln!("stopping"),
/// }
/// # Ok::<(), fdstore::UpgradeError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainReason {
    /// A new generation (this pid) is ready and is the unit's main process
    /// now; queued and new connections go to it.
    HandedOver {
        /// The new main process.
        successor: u32,
    },
    /// The unit is stopping (SIGTERM or SIGINT).
    Stopping,
}

/// What a drained generation is told (see [`Drain`] for an example).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainNotice {
    /// Why.
    pub reason: DrainReason,
    /// When the process is ended if it has not exited by itself:
    /// [`UpgradeOptions::drain_timeout`](crate::UpgradeOptions::drain_timeout)
    /// after the notice.
    pub deadline: Instant,
}

impl DrainNotice {
    /// The time left until the deadline (zero once it passed).
    ///
    /// ```no_run
    /// let upgrader = fdstore::Upgrader::from_env()?;
    /// let notice = upgrader.drain().wait();
    /// // Give slow clients most of what is left, keep a margin to exit.
    /// let grace = notice.remaining().saturating_sub(std::time::Duration::from_secs(1));
    /// # Ok::<(), fdstore::UpgradeError>(())
    /// ```
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

#[derive(Default)]
struct State {
    notice: Option<DrainNotice>,
    wakers: Vec<Waker>,
}

/// A handle that resolves when this generation must drain: stop accepting
/// new connections, finish the ones it has (telling keep-alive clients to
/// close), and exit before [`DrainNotice::deadline`].
///
/// Cheap to clone; every clone sees the same notice. Wait for it blocking
/// ([`wait`](Drain::wait)) or as a future ([`notified`](Drain::notified),
/// runtime-agnostic).
///
/// ```no_run
/// let upgrader = fdstore::Upgrader::from_env()?;
/// let drain = upgrader.drain();
/// std::thread::spawn(move || {
///     let notice = drain.wait();
///     eprintln!("draining ({:?}), {:?} left", notice.reason, notice.remaining());
/// });
/// # Ok::<(), fdstore::UpgradeError>(())
/// ```
#[derive(Clone, Default)]
pub struct Drain {
    shared: Arc<(Mutex<State>, Condvar)>,
}

impl std::fmt::Debug for Drain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drain")
            .field("notice", &self.notice())
            .finish()
    }
}

impl Drain {
    /// The notice, if this generation has been told to drain: for accept
    /// loops that poll.
    ///
    /// ```no_run
    /// let upgrader = fdstore::Upgrader::from_env()?;
    /// let drain = upgrader.drain();
    /// while drain.notice().is_none() {
    ///     // accept with a timeout, serve ...
    /// #   break;
    /// }
    /// # Ok::<(), fdstore::UpgradeError>(())
    /// ```
    pub fn notice(&self) -> Option<DrainNotice> {
        self.lock().notice
    }

    /// Blocks until this generation must drain (see the type's example).
    pub fn wait(&self) -> DrainNotice {
        let (lock, changed) = &*self.shared;
        let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(notice) = state.notice {
                return notice;
            }
            state = changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Like [`wait`](Drain::wait), giving up after `timeout`.
    ///
    /// ```no_run
    /// let upgrader = fdstore::Upgrader::from_env()?;
    /// if let Some(notice) = upgrader.drain().wait_timeout(std::time::Duration::from_secs(1)) {
    ///     eprintln!("draining: {:?}", notice.reason);
    /// }
    /// # Ok::<(), fdstore::UpgradeError>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> Option<DrainNotice> {
        let (lock, changed) = &*self.shared;
        let state = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (state, _) = changed
            .wait_timeout_while(state, timeout, |s| s.notice.is_none())
            .unwrap_or_else(|e| e.into_inner());
        state.notice
    }

    /// A future that resolves with the notice; works with any executor.
    ///
    /// ```no_run
    /// # async fn serve(upgrader: fdstore::Upgrader) {
    /// let notice = upgrader.drain().notified().await;
    /// # let _ = notice;
    /// # }
    /// ```
    pub fn notified(&self) -> Notified {
        Notified {
            drain: self.clone(),
        }
    }

    /// Tells every waiter; only the first notice counts.
    pub(crate) fn begin(&self, reason: DrainReason, timeout: Duration) -> DrainNotice {
        let (_, changed) = &*self.shared;
        let mut state = self.lock();
        let notice = *state.notice.get_or_insert(DrainNotice {
            reason,
            deadline: Instant::now() + timeout,
        });
        for waker in state.wakers.drain(..) {
            waker.wake();
        }
        changed.notify_all();
        notice
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The future of [`Drain::notified`] (see there for an example).
#[derive(Debug)]
pub struct Notified {
    drain: Drain,
}

impl Future for Notified {
    type Output = DrainNotice;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<DrainNotice> {
        let mut state = self.drain.lock();
        match state.notice {
            Some(notice) => Poll::Ready(notice),
            None => {
                if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    state.wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_see_the_first_notice() {
        let drain = Drain::default();
        assert_eq!(drain.notice(), None);
        assert_eq!(drain.wait_timeout(Duration::from_millis(10)), None);
        let waiter = {
            let drain = drain.clone();
            std::thread::spawn(move || drain.wait())
        };
        let first = drain.begin(
            DrainReason::HandedOver { successor: 7 },
            Duration::from_secs(5),
        );
        drain.begin(DrainReason::Stopping, Duration::from_secs(1));
        assert_eq!(waiter.join().unwrap(), first);
        assert_eq!(drain.notice(), Some(first));
        assert!(first.remaining() <= Duration::from_secs(5));
    }

    #[test]
    fn the_future_wakes_its_task() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::task::Wake;
        struct Flag(AtomicBool);
        impl Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let drain = Drain::default();
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let mut future = drain.notified();
        assert!(Pin::new(&mut future).poll(&mut cx).is_pending());
        drain.begin(DrainReason::Stopping, Duration::from_secs(1));
        assert!(flag.0.load(Ordering::SeqCst), "the task was not woken");
        match Pin::new(&mut future).poll(&mut cx) {
            Poll::Ready(notice) => assert_eq!(notice.reason, DrainReason::Stopping),
            Poll::Pending => panic!("still pending after the notice"),
        }
    }
}
