//! Cancel routing. Clients get pooler-issued BackendKeyData; while a client is attached to a
//! server connection its slot names that connection's real keys, so a CancelRequest reaches the
//! query of that client and of nobody else. A client still waiting for a server connection with
//! its request has its wait ended instead (`CancelSlot::wait_cancelled`): the session answers the
//! request with PostgreSQL's 57014 and drops it, as if it had been cancelled where it ran.

use std::collections::HashMap;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};

use bytes::BytesMut;
use parking_lot::Mutex;
use rand::Rng;
use tokio::io::AsyncWriteExt;

use crate::config::BackendConfig;
use crate::net::messages::startup::cancel_request;
use crate::net::ServerStream;

/// The server connection currently serving a client.
#[derive(Clone, Debug)]
pub struct CancelTarget {
    pub backend: Arc<BackendConfig>,
    pub pid: i32,
    pub secret: i32,
}

/// A client's entry: its secret and where a cancel should go right now.
///
/// Written twice per transaction by the client's own task (attach, detach), read only by a
/// cancel request: the serving connection's keys are one atomic word, and the backend they
/// belong to is replaced (under the lock) only when it differs from the last one's, so a
/// transaction costs two atomic stores here, not two lock round trips and an `Arc` clone and drop.
pub struct CancelSlot {
    pub secret: i32,
    /// The serving connection's process id (high half) and secret (low half); 0 when none.
    keys: AtomicU64,
    /// The backend of the connection named by `keys` (or of the last one), kept alive here.
    backend: Mutex<Option<Arc<BackendConfig>>>,
    /// `Arc::as_ptr` of `backend`, compared without the lock; written only under it.
    backend_ptr: AtomicPtr<BackendConfig>,
    /// While the client waits for a server connection with a cancellable request
    /// (`wait_cancelled`), its task's waker (None otherwise; a cancel wakes it), and whether a
    /// cancel arrived during that wait.
    waiter: Mutex<(Option<Waker>, bool)>,
}

impl CancelSlot {
    fn new(secret: i32) -> Self {
        CancelSlot {
            secret,
            keys: AtomicU64::new(0),
            backend: Mutex::new(None),
            backend_ptr: AtomicPtr::new(std::ptr::null_mut()),
            waiter: Mutex::new((None, false)),
        }
    }

    /// Where a cancel should go right now, if a connection is serving the client.
    pub fn target(&self) -> Option<CancelTarget> {
        let keys = self.keys.load(Ordering::Acquire);
        if keys == 0 {
            return None;
        }
        let backend = self.backend.lock().clone()?;
        Some(CancelTarget {
            backend,
            pid: (keys >> 32) as u32 as i32,
            secret: keys as u32 as i32,
        })
    }

    /// Resolves once a cancel request names this client while the returned future is polled
    /// (a cancel before it or after it is dropped does nothing, as a cancel of an idle
    /// session does nothing in PostgreSQL). Used while the client waits for a server
    /// connection; dropped when the wait ends.
    pub fn wait_cancelled(&self) -> WaitCancelled<'_> {
        self.waiter.lock().1 = false;
        WaitCancelled(self)
    }

    /// A cancel for a client no connection serves: ends its wait, if it is waiting.
    fn cancel_wait(&self) -> bool {
        let mut waiter = self.waiter.lock();
        let (Some(w), cancelled) = &mut *waiter else {
            return false;
        };
        *cancelled = true;
        w.wake_by_ref();
        true
    }
}

/// A client's wait for a server connection, ended by a cancel (`CancelSlot::wait_cancelled`).
/// Forgets the waiting task's waker when dropped, however the wait ends.
pub struct WaitCancelled<'a>(&'a CancelSlot);

impl std::future::Future for WaitCancelled<'_> {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let mut waiter = self.0.waiter.lock();
        let (w, cancelled) = &mut *waiter;
        if *cancelled {
            *w = None;
            return Poll::Ready(());
        }
        match w {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for WaitCancelled<'_> {
    fn drop(&mut self) {
        self.0.waiter.lock().0 = None;
    }
}

/// Pooler-wide map from issued process id to client slot.
#[derive(Default)]
pub struct CancelRegistry {
    clients: Mutex<HashMap<i32, Arc<CancelSlot>>>,
}

impl CancelRegistry {
    /// Issues fresh keys for a client; the returned guard unregisters them when dropped.
    pub fn register(self: &Arc<Self>) -> CancelGuard {
        let mut rng = rand::thread_rng();
        let secret: i32 = rng.gen();
        let mut map = self.clients.lock();
        loop {
            let pid: i32 = rng.gen_range(1..i32::MAX);
            if let std::collections::hash_map::Entry::Vacant(v) = map.entry(pid) {
                let slot = Arc::new(CancelSlot::new(secret));
                v.insert(slot.clone());
                return CancelGuard {
                    registry: self.clone(),
                    pid,
                    slot,
                };
            }
        }
    }

    /// Forwards a client's CancelRequest to the server connection serving it, if any, or ends
    /// the client's wait for one.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let slot = {
            let map = self.clients.lock();
            match map.get(&pid) {
                Some(slot) if slot.secret == secret => Some(slot.clone()),
                _ => None,
            }
        };
        let Some(slot) = slot else {
            tracing::debug!(pid, "cancel request for no client");
            return;
        };
        let Some(t) = slot.target() else {
            if slot.cancel_wait() {
                tracing::debug!(pid, "cancel request ends a client's wait for a server");
            } else {
                tracing::debug!(pid, "cancel request for no active query");
            }
            return;
        };
        // Always without TLS, also to a server that offers it: PostgreSQL reads a CancelRequest
        // before any authentication or pg_hba check, and the request holds only the key.
        match ServerStream::connect_plain(&t.backend.host, t.backend.port).await {
            Ok(mut s) => {
                let mut buf = BytesMut::with_capacity(16);
                cancel_request(&mut buf, t.pid, t.secret);
                if let Err(e) = s.write_all(&buf).await {
                    tracing::warn!(error = %e, "could not forward cancel request");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not connect to forward cancel request"),
        }
    }
}

/// A client's registration; unregisters on drop.
pub struct CancelGuard {
    registry: Arc<CancelRegistry>,
    pub pid: i32,
    pub slot: Arc<CancelSlot>,
}

impl CancelGuard {
    /// From now on a cancel goes to the connection with these keys on `backend`. A PostgreSQL
    /// backend's process id is never 0, so neither is the word (a server that sent no key data,
    /// keys 0/0, has nothing a cancel could name).
    pub fn attach(&self, backend: &Arc<BackendConfig>, pid: i32, secret: i32) {
        let slot = &*self.slot;
        if slot.backend_ptr.load(Ordering::Relaxed) != Arc::as_ptr(backend).cast_mut() {
            let mut held = slot.backend.lock();
            *held = Some(backend.clone());
            slot.backend_ptr
                .store(Arc::as_ptr(backend).cast_mut(), Ordering::Relaxed);
        }
        let keys = (u64::from(pid as u32) << 32) | u64::from(secret as u32);
        slot.keys.store(keys, Ordering::Release);
    }

    /// No connection serves the client any more: a cancel does nothing.
    pub fn detach(&self) {
        self.slot.keys.store(0, Ordering::Release);
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.registry.clients.lock().remove(&self.pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(port: u16) -> Arc<BackendConfig> {
        Arc::new(BackendConfig {
            host: "127.0.0.1".into(),
            port,
            require_primary: false,
            unavailable_hold: std::time::Duration::ZERO,
        })
    }

    #[test]
    fn a_slot_names_the_serving_connection_only_while_attached() {
        let registry = Arc::new(CancelRegistry::default());
        let guard = registry.register();
        assert!(
            guard.slot.target().is_none(),
            "no connection serves a fresh client"
        );

        let first = backend(5432);
        guard.attach(&first, 4242, -7);
        let t = guard.slot.target().expect("attached");
        assert_eq!((t.pid, t.secret, t.backend.port), (4242, -7, 5432));
        guard.detach();
        assert!(
            guard.slot.target().is_none(),
            "detached: a cancel does nothing"
        );

        // Another backend (a failover): the slot follows it; negative and extreme keys survive
        // the packing.
        let second = backend(6543);
        guard.attach(&second, i32::MAX, i32::MIN);
        let t = guard.slot.target().expect("attached again");
        assert_eq!(
            (t.pid, t.secret, t.backend.port),
            (i32::MAX, i32::MIN, 6543)
        );
        guard.attach(&first, 1, 0);
        let t = guard.slot.target().expect("attached to the first again");
        assert_eq!((t.pid, t.secret, t.backend.port), (1, 0, 5432));
    }
}
