//! Cancel routing. Clients get pooler-issued BackendKeyData; while a client is attached to a
//! server connection its slot names that connection's real keys, so a CancelRequest reaches the
//! query of that client and of nobody else.

use std::collections::HashMap;
use std::sync::Arc;

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
pub struct CancelSlot {
    pub secret: i32,
    pub target: Mutex<Option<CancelTarget>>,
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
                let slot = Arc::new(CancelSlot {
                    secret,
                    target: Mutex::new(None),
                });
                v.insert(slot.clone());
                return CancelGuard {
                    registry: self.clone(),
                    pid,
                    slot,
                };
            }
        }
    }

    /// Forwards a client's CancelRequest to the server connection serving it, if any.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let target = {
            let map = self.clients.lock();
            match map.get(&pid) {
                Some(slot) if slot.secret == secret => slot.target.lock().clone(),
                _ => None,
            }
        };
        let Some(t) = target else {
            tracing::debug!(pid, "cancel request for no active query");
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
    pub fn attach(&self, target: CancelTarget) {
        *self.slot.target.lock() = Some(target);
    }

    pub fn detach(&self) {
        *self.slot.target.lock() = None;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.registry.clients.lock().remove(&self.pid);
    }
}
