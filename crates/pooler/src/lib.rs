//! pgbay-pooler: a multi-threaded PgBouncer-style PostgreSQL connection pooler.
//!
//! `Pooler::apply(PoolerConfig)` is the only way in: it starts, updates and stops services
//! (one listener each) and their pools, live. See `config` for the knobs.
//!
//! Layout: `listener` accepts; `frontend::login` handles the first packets, TLS, SCRAM/md5 and
//! the pool lookup; `frontend::session` is a client's life (idle → waiting → active, see
//! `ClientState`); `frontend::relay` is the hot path (header-only scanning, prepared statement
//! rewriting, the queue of expected answers); `backend::pool` holds server connections
//! (SV_IDLE list, SV_ACTIVE/SV_CONNECTING counts, FIFO of CL_WAITING clients, RAII check-in);
//! `backend::server` logs in to PostgreSQL; `params` carries client parameters to whichever
//! server connection serves the client; `cancel` routes CancelRequests.
//!
//! Errors clients see: unknown pool 3D000, bad password 28P01, wrong user for the pool or
//! address not allowed 28000, too many clients 53300, pool/service removed 57P01, wait timeout
//! 08006, backend unreachable 08001, transaction block in statement mode 25001 (an ERROR; the
//! client stays connected). Messages name the pool.

mod apply;
pub mod auth;
pub mod backend;
pub mod cancel;
pub mod config;
pub mod error;
pub mod frontend;
mod listener;
pub mod net;
pub mod params;
pub mod prepared;
pub mod service;
pub mod signal;
mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;

pub use apply::{ApplyReport, ServiceFailure};
pub use auth::ClientAuthMethod;
pub use backend::PoolStats;
pub use config::{
    BackendConfig, ClientLimits, PoolConfig, PoolMode, PoolSettings, PoolerConfig, ServiceConfig,
    TlsConfig, UserConfig,
};
pub use error::PoolerError;

use apply::ServiceError;
use backend::{Pool, PoolState};
use cancel::CancelRegistry;
use prepared::Registry;
use service::{Service, ServiceState, User};

/// The pooler: cheap to clone, all clones drive the same services.
#[derive(Clone)]
pub struct Pooler {
    inner: Arc<Inner>,
}

struct Inner {
    /// Serialises `apply` and `shutdown`.
    apply_lock: tokio::sync::Mutex<()>,
    services: Mutex<HashMap<String, Running>>,
    cancel: Arc<CancelRegistry>,
    statements: Arc<Registry>,
    auth_method: Arc<AtomicU8>,
    shut_down: AtomicBool,
    next_gen: std::sync::atomic::AtomicU64,
}

/// A service that is being served.
struct Running {
    cfg: ServiceConfig,
    service: Arc<Service>,
    listener_stop: CancellationToken,
    local_addr: SocketAddr,
}

impl Default for Pooler {
    fn default() -> Self {
        Self::new()
    }
}

impl Pooler {
    /// Creates an empty pooler; its tasks run on the current tokio runtime.
    pub fn new() -> Pooler {
        Pooler {
            inner: Arc::new(Inner {
                apply_lock: tokio::sync::Mutex::new(()),
                services: Mutex::new(HashMap::new()),
                cancel: Arc::new(CancelRegistry::default()),
                statements: Arc::new(Registry::default()),
                auth_method: Arc::new(AtomicU8::new(0)),
                shut_down: AtomicBool::new(false),
                next_gen: std::sync::atomic::AtomicU64::new(1),
            }),
        }
    }

    /// How new client logins authenticate (SCRAM-SHA-256 by default).
    pub fn set_client_auth_method(&self, method: ClientAuthMethod) {
        let v = match method {
            ClientAuthMethod::ScramSha256 => 0,
            ClientAuthMethod::Md5 => 1,
        };
        self.inner.auth_method.store(v, Ordering::Relaxed);
    }

    /// The address a service's listener is bound to (useful with port 0).
    pub fn local_addr(&self, service: &str) -> Option<SocketAddr> {
        self.inner
            .services
            .lock()
            .get(service)
            .map(|r| r.local_addr)
    }

    /// Counters of one pool.
    pub fn pool_stats(&self, service: &str, pool: &str) -> Option<PoolStats> {
        let svc = self
            .inner
            .services
            .lock()
            .get(service)
            .map(|r| r.service.clone())?;
        svc.pool(pool).map(|p| p.stats())
    }

    /// Connected clients of a service.
    pub fn client_count(&self, service: &str) -> Option<u32> {
        let svc = self
            .inner
            .services
            .lock()
            .get(service)
            .map(|r| r.service.clone())?;
        Some(svc.clients.load(Ordering::Relaxed))
    }

    /// Makes the running services match `config`. Returns once every listener of the new
    /// config is bound and every pool accepts clients. A service that cannot be applied is named
    /// in the report with its reason; the other services are applied regardless, and the failed
    /// one is tried again by every later `apply` that still names it.
    pub async fn apply(&self, config: PoolerConfig) -> Result<ApplyReport, PoolerError> {
        let _serial = self.inner.apply_lock.lock().await;
        if self.inner.shut_down.load(Ordering::Relaxed) {
            return Err(PoolerError::ShutDown);
        }
        let mut report = ApplyReport::default();
        let mut wanted: HashMap<&str, &ServiceConfig> = HashMap::new();
        for svc in &config.services {
            if wanted.insert(svc.name.as_str(), svc).is_some() {
                report.push(
                    &svc.name,
                    &ServiceError::Duplicate {
                        what: "service",
                        name: svc.name.clone(),
                    },
                );
            }
        }
        let removed: Vec<Running> = {
            let mut services = self.inner.services.lock();
            let gone: Vec<String> = services
                .keys()
                .filter(|k| !wanted.contains_key(k.as_str()))
                .cloned()
                .collect();
            gone.into_iter()
                .filter_map(|k| services.remove(&k))
                .collect()
        };
        for r in removed {
            tracing::info!(service = %r.cfg.name, "removing service");
            stop_service(&r);
        }
        for svc in &config.services {
            if let Err(e) = self.apply_service(svc) {
                tracing::warn!(service = %svc.name, error = %e, "could not apply service");
                report.push(&svc.name, &e);
            }
        }
        Ok(report)
    }

    fn apply_service(&self, cfg: &ServiceConfig) -> Result<(), ServiceError> {
        validate(cfg)?;
        let tls = match &cfg.tls {
            Some(t) => Some(tls::acceptor(t).map_err(ServiceError::Tls)?),
            None => None,
        };
        let mut services = self.inner.services.lock();
        let existing = services.get(&cfg.name);
        let old_users = existing
            .map(|r| r.service.state().users.clone())
            .unwrap_or_default();
        let users: HashMap<String, Arc<User>> = cfg
            .users
            .iter()
            .map(|u| {
                let user = match old_users.get(&u.name) {
                    Some(old) if old.password == u.password => old.clone(),
                    _ => Arc::new(User::new(u.password.clone())),
                };
                (u.name.clone(), user)
            })
            .collect();
        let state = Arc::new(ServiceState {
            users,
            tls,
            allowed_cidrs: cfg.allowed_cidrs.clone(),
            limits: cfg.limits.clone(),
            settings: cfg.settings.clone(),
        });
        match existing {
            None => {
                let listener = listener::bind(cfg.listen).map_err(|source| ServiceError::Bind {
                    addr: cfg.listen,
                    source,
                })?;
                let local_addr = listener.local_addr().unwrap_or(cfg.listen);
                let service = Arc::new(Service {
                    name: cfg.name.as_str().into(),
                    state: RwLock::new(state),
                    pools: RwLock::new(HashMap::new()),
                    clients: Default::default(),
                    shutdown: signal::Signal::new(),
                    cancel: self.inner.cancel.clone(),
                    statements: self.inner.statements.clone(),
                    auth_method: self.inner.auth_method.clone(),
                });
                self.apply_pools(&service, cfg, None);
                let stop = CancellationToken::new();
                tokio::spawn(listener::accept_loop(
                    listener,
                    service.clone(),
                    stop.clone(),
                ));
                tracing::info!(service = %cfg.name, addr = %local_addr, "service listening");
                services.insert(
                    cfg.name.clone(),
                    Running {
                        cfg: cfg.clone(),
                        service,
                        listener_stop: stop,
                        local_addr,
                    },
                );
            }
            Some(running) => {
                let service = running.service.clone();
                let old_cfg = running.cfg.clone();
                let mut rebound = None;
                if old_cfg.listen != cfg.listen {
                    let listener =
                        listener::bind(cfg.listen).map_err(|source| ServiceError::Bind {
                            addr: cfg.listen,
                            source,
                        })?;
                    let local_addr = listener.local_addr().unwrap_or(cfg.listen);
                    let stop = CancellationToken::new();
                    tokio::spawn(listener::accept_loop(
                        listener,
                        service.clone(),
                        stop.clone(),
                    ));
                    rebound = Some((stop, local_addr));
                }
                *service.state.write() = state;
                self.apply_pools(&service, cfg, Some(&old_cfg));
                if let Some(running) = services.get_mut(&cfg.name) {
                    if let Some((stop, addr)) = rebound {
                        running.listener_stop.cancel();
                        running.listener_stop = stop;
                        running.local_addr = addr;
                    }
                    running.cfg = cfg.clone();
                }
            }
        }
        Ok(())
    }

    fn apply_pools(
        &self,
        service: &Arc<Service>,
        cfg: &ServiceConfig,
        old: Option<&ServiceConfig>,
    ) {
        let backend = Arc::new(cfg.backend.clone());
        let backend_changed = old.is_some_and(|o| o.backend != cfg.backend);
        let mut pools = service.pools.write();
        pools.retain(|name, pool| {
            let keep = cfg.pools.iter().any(|p| &p.name == name);
            if !keep {
                tracing::info!(service = %cfg.name, pool = %name, "removing pool");
                pool.remove();
            }
            keep
        });
        for pc in &cfg.pools {
            let password = cfg
                .users
                .iter()
                .find(|u| u.name == pc.username)
                .map(|u| u.password.clone());
            let existing = pools.get(&pc.name).cloned();
            let gen = match &existing {
                Some(pool) => {
                    let old = pool.state();
                    if backend_changed
                        || old.cfg.database != pc.database
                        || old.cfg.username != pc.username
                    {
                        self.inner.next_gen.fetch_add(1, Ordering::Relaxed)
                    } else {
                        old.gen
                    }
                }
                None => self.inner.next_gen.fetch_add(1, Ordering::Relaxed),
            };
            let state = PoolState {
                cfg: pc.clone(),
                settings: cfg.settings.clone(),
                backend: backend.clone(),
                password,
                gen,
                wait_timeout: cfg.limits.query_wait_timeout,
            };
            match existing {
                Some(pool) => pool.update(state),
                None => {
                    pools.insert(pc.name.clone(), Pool::new(service.name.clone(), state));
                }
            }
        }
    }

    /// Closes listeners, disconnects clients (57P01) and closes server connections.
    pub async fn shutdown(&self) {
        let _serial = self.inner.apply_lock.lock().await;
        self.inner.shut_down.store(true, Ordering::Relaxed);
        let all: Vec<Running> = self.inner.services.lock().drain().map(|(_, r)| r).collect();
        for r in &all {
            stop_service(r);
        }
        // Give client tasks a moment to say goodbye; they need no more than a write each.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline
            && all
                .iter()
                .any(|r| r.service.clients.load(Ordering::Relaxed) > 0)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn stop_service(r: &Running) {
    r.listener_stop.cancel();
    r.service.shutdown.cancel();
    for pool in r.service.pools.write().drain().map(|(_, p)| p) {
        pool.remove();
    }
}

/// Refuses a config that names one pool (or user) twice: lookups by name would be ambiguous.
fn unique_names<'a>(
    what: &'static str,
    names: impl Iterator<Item = &'a str>,
) -> Result<(), ServiceError> {
    let mut seen = std::collections::HashSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(ServiceError::Duplicate {
                what,
                name: name.to_string(),
            });
        }
    }
    Ok(())
}

fn validate(cfg: &ServiceConfig) -> Result<(), ServiceError> {
    unique_names("pool", cfg.pools.iter().map(|p| p.name.as_str()))?;
    unique_names("user", cfg.users.iter().map(|u| u.name.as_str()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(pools: &[&str], users: &[&str]) -> ServiceConfig {
        ServiceConfig {
            name: "svc".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: None,
            backend: BackendConfig {
                host: "127.0.0.1".into(),
                port: 5432,
            },
            users: users
                .iter()
                .map(|u| UserConfig {
                    name: u.to_string(),
                    password: "pw".into(),
                })
                .collect(),
            pools: pools
                .iter()
                .map(|p| PoolConfig {
                    name: p.to_string(),
                    database: "db".into(),
                    username: "u".into(),
                    mode: PoolMode::Transaction,
                    size: 1,
                })
                .collect(),
            settings: PoolSettings::default(),
            limits: ClientLimits::default(),
            allowed_cidrs: vec![],
        }
    }

    #[test]
    fn a_name_given_twice_is_refused_naming_it() {
        assert!(validate(&service(&["a", "b"], &["u", "v"])).is_ok());
        for (cfg, what) in [
            (service(&["a", "a"], &["u"]), "pool"),
            (service(&["a"], &["u", "u"]), "user"),
        ] {
            match validate(&cfg) {
                Err(ServiceError::Duplicate { what: w, name }) => {
                    assert_eq!(w, what);
                    assert!(name == "a" || name == "u", "{name}");
                }
                other => panic!("expected a duplicate {what} error, got {other:?}"),
            }
        }
    }
}
