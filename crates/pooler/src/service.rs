//! A running service: its current settings (swapped as a whole by `apply`), its pools and its
//! client count. Shared by the listener and every client task of the service.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;
use tokio_rustls::TlsAcceptor;

use crate::admission::{
    PendingLogin, PendingLogins, RefusalReason, Refusals, SocketBudget, SocketPermit,
};
use crate::auth::scram::ServerSecret;
use crate::auth::ClientAuthMethod;
use crate::backend::Pool;
use crate::cancel::CancelRegistry;
use crate::config::{ClientLimits, PoolSettings};
use crate::prepared::Registry;
use crate::signal::Signal;

/// A login the service accepts. The SCRAM secret is derived on first use and kept as long as
/// the password does not change.
pub struct User {
    pub password: String,
    /// May open the admin console.
    pub admin: bool,
    scram: OnceLock<ServerSecret>,
}

impl User {
    pub fn new(password: String, admin: bool) -> User {
        User {
            password,
            admin,
            scram: OnceLock::new(),
        }
    }

    pub fn scram(&self) -> &ServerSecret {
        self.scram
            .get_or_init(|| ServerSecret::derive(&self.password))
    }
}

/// Settings of a service that clients read at login.
pub struct ServiceState {
    pub users: HashMap<String, Arc<User>>,
    pub tls: Option<TlsAcceptor>,
    /// The `tls-server-end-point` binding of `tls`'s certificate (`tls::endpoint_hash`):
    /// SCRAM-SHA-256-PLUS is offered to TLS clients when it is known.
    pub tls_endpoint: Option<[u8; 32]>,
    /// A StartupMessage must arrive over TLS (`TlsConfig::required`).
    pub tls_required: bool,
    pub allowed_cidrs: Vec<ipnet::IpNet>,
    pub limits: ClientLimits,
    pub settings: PoolSettings,
}

/// One service.
pub struct Service {
    pub name: Arc<str>,
    pub state: RwLock<Arc<ServiceState>>,
    pub pools: RwLock<HashMap<String, Arc<Pool>>>,
    /// Clients connected (in any state, login included).
    pub clients: AtomicU32,
    /// Cancelled when the service is removed or the pooler shuts down.
    pub shutdown: Signal,
    /// Set when pgbay drains (`Pooler::drain`): clients leave at their next transaction
    /// boundary, with 57P01.
    pub restarting: Signal,
    /// Why (`DrainReason as u8`), set before `restarting`.
    pub restart_reason: AtomicU8,
    pub cancel: Arc<CancelRegistry>,
    pub statements: Arc<Registry>,
    pub auth_method: Arc<AtomicU8>,
    /// Sockets of this service's port still logging in.
    pub(crate) pending: PendingLogins,
    /// Connections refused before login, by reason (`/metrics`).
    pub(crate) refused: Refusals,
    /// The process-wide budget of client sockets, shared by every service.
    pub(crate) sockets: Arc<SocketBudget>,
}

impl Service {
    pub fn state(&self) -> Arc<ServiceState> {
        self.state.read().clone()
    }

    pub fn pool(&self, name: &str) -> Option<Arc<Pool>> {
        self.pools.read().get(name).cloned()
    }

    pub fn auth_method(&self) -> ClientAuthMethod {
        match self.auth_method.load(Ordering::Relaxed) {
            1 => ClientAuthMethod::Md5,
            _ => ClientAuthMethod::ScramSha256,
        }
    }

    /// Admits a just-accepted socket: a pending login slot of this port and a client socket of
    /// the process's budget, counted as a client of the service. None: refused (counted, and
    /// logged at most once per interval); the caller closes the socket at once.
    pub(crate) fn admit_socket(self: &Arc<Self>) -> Option<(ClientCount, PendingLogin)> {
        let max = self.state.read().limits.max_pending_logins;
        let Some(pending) = self.pending.try_take(max) else {
            self.refuse(RefusalReason::PendingLogins, max);
            return None;
        };
        let Some(permit) = self.sockets.try_take() else {
            self.refuse(RefusalReason::FdReserve, self.sockets.open());
            return None;
        };
        Some((self.client_guard(permit), pending))
    }

    /// Counts a refusal; `limit` is the bound that was reached, for the log.
    pub(crate) fn refuse(&self, reason: RefusalReason, limit: u32) {
        if self.refused.count(reason) {
            tracing::warn!(service = %self.name, %reason, limit,
                "refusing connections before login (logged at most every 10 s)");
        }
    }

    /// Counts a new client; the guard uncounts it.
    fn client_guard(self: &Arc<Self>, permit: SocketPermit) -> ClientCount {
        self.clients.fetch_add(1, Ordering::Relaxed);
        ClientCount {
            service: self.clone(),
            _socket: permit,
        }
    }
}

/// One counted client of a service, holding its socket's place in the process's budget.
pub struct ClientCount {
    pub service: Arc<Service>,
    _socket: SocketPermit,
}

impl Drop for ClientCount {
    fn drop(&mut self) {
        self.service.clients.fetch_sub(1, Ordering::Relaxed);
    }
}
