//! A running service: its current settings (swapped as a whole by `apply`), its pools and its
//! client count. Shared by the listener and every client task of the service.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;
use tokio_rustls::TlsAcceptor;

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
    /// Logged-in clients, for SHOW CLIENTS.
    pub client_list: crate::sockets::Sockets,
    /// Cancelled when the service is removed or the pooler shuts down.
    pub shutdown: Signal,
    pub cancel: Arc<CancelRegistry>,
    pub statements: Arc<Registry>,
    pub auth_method: Arc<AtomicU8>,
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

    /// Counts a new client; the guard uncounts it.
    pub fn client_guard(self: &Arc<Self>) -> ClientCount {
        self.clients.fetch_add(1, Ordering::Relaxed);
        ClientCount {
            service: self.clone(),
        }
    }
}

/// One counted client of a service.
pub struct ClientCount {
    pub service: Arc<Service>,
}

impl Drop for ClientCount {
    fn drop(&mut self) {
        self.service.clients.fetch_sub(1, Ordering::Relaxed);
    }
}
