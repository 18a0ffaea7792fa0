//! Stop signals (service shutdown, pool removal) that are cheap to check on the hot path.
//!
//! `CancellationToken::is_cancelled` and polling its `cancelled()` future each take a mutex
//! shared by every client of the service or pool. A relaying client checks its stop signals
//! on every wakeup, so `Signal` keeps an atomic flag in front of the token, and `Watch`
//! registers the task's waker with the token once and then only reads the flag.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// A one-way stop signal: an atomic flag plus a token to wake waiters.
#[derive(Default)]
pub struct Signal {
    set: AtomicBool,
    token: CancellationToken,
}

impl Signal {
    pub fn new() -> Signal {
        Signal::default()
    }

    /// Sets the flag, then wakes every waiter.
    pub fn cancel(&self) {
        self.set.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// One atomic load.
    pub fn is_cancelled(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// The underlying token, for tasks that own a clone.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

/// One task's subscription to a `Signal`: the token's future is polled only while the task's
/// waker is not registered with it yet (normally once per client); every other check is an
/// atomic load.
pub struct Watch<'a, 'f> {
    signal: &'a Signal,
    fut: Pin<&'f mut WaitForCancellationFuture<'a>>,
    /// The waker the token's future holds, if it was polled.
    registered: Option<Waker>,
}

impl<'a, 'f> Watch<'a, 'f> {
    pub fn new(signal: &'a Signal, fut: Pin<&'f mut WaitForCancellationFuture<'a>>) -> Self {
        Watch {
            signal,
            fut,
            registered: None,
        }
    }

    /// True once the signal is set; otherwise makes sure this task is woken when it is.
    pub fn poll_fired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.signal.is_cancelled() {
            return true;
        }
        if let Some(w) = &self.registered {
            if w.will_wake(cx.waker()) {
                return false;
            }
        }
        if self.fut.as_mut().poll(cx).is_ready() {
            return true;
        }
        self.registered = Some(cx.waker().clone());
        false
    }

    /// Resolves when the signal is set.
    pub async fn fired(&mut self) {
        std::future::poll_fn(|cx| {
            if self.poll_fired(cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}
