//! Reconciling the running services with a `PoolerConfig`: services are added (listener bound,
//! pools created), updated in place (settings swapped, pools resized or drained, listener moved)
//! or removed, without touching the clients of what did not change.
//!
//! A failure of one service (its port is taken, its TLS material is bad, it names a pool twice)
//! must neither hide nor block the others, so failures are data in an `ApplyReport` rather than
//! an error that ends `apply`. A failed service keeps what it served before and nothing of the
//! failed config is half-applied: everything that can fail (validation, TLS, binding) happens
//! before the service is touched. Whoever drives the pooler decides per service what a failure
//! means.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::accept::{Bound, Listening};
use crate::backend::{Pool, PoolState};
use crate::config::{PoolerConfig, ServiceConfig};
use crate::error::PoolerError;
use crate::service::{Service, ServiceState, User};
use crate::{signal, tls, Inner};

/// The outcome of one `Pooler::apply`: empty `failures` means every service is applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub failures: Vec<ServiceFailure>,
}

/// A service of the applied config that is not (fully) served as configured. A service that
/// failed keeps what it served before (nothing, if it is new); the next `apply` that still names
/// it tries again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceFailure {
    pub service: String,
    /// Human readable, e.g. "cannot listen on 127.0.0.1:21003: Address already in use (os error 98)".
    pub reason: String,
}

impl ApplyReport {
    /// True when every service of the config is applied.
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// Why `service` failed, or None when it was applied (or not in the config).
    pub fn failure(&self, service: &str) -> Option<&str> {
        self.failures
            .iter()
            .find(|f| f.service == service)
            .map(|f| f.reason.as_str())
    }

    pub(crate) fn push(&mut self, service: &str, error: &ServiceError) {
        self.failures.push(ServiceFailure {
            service: service.to_string(),
            reason: error.to_string(),
        });
    }
}

/// Why one service could not be applied; becomes a `ServiceFailure`'s reason.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServiceError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid TLS configuration: {0}")]
    Tls(String),
    #[error("duplicate {what} name {name:?}")]
    Duplicate { what: &'static str, name: String },
}

/// A service that is being served.
pub(crate) struct Running {
    pub cfg: ServiceConfig,
    pub service: Arc<Service>,
    pub listener: Listening,
}

impl Running {
    /// Closes the listener, tells the clients to leave and removes the pools; returns once the
    /// port is closed.
    pub async fn stop(self) {
        self.listener.stop();
        self.service.shutdown.cancel();
        for pool in self.service.pools.write().drain().map(|(_, p)| p) {
            pool.remove();
        }
        self.listener.close().await;
    }
}

/// See `Pooler::apply`.
pub(crate) async fn apply(inner: &Inner, config: PoolerConfig) -> Result<ApplyReport, PoolerError> {
    let _serial = inner.apply_lock.lock().await;
    if inner.shut_down.load(Ordering::Relaxed) {
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
        let mut services = inner.services.lock();
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
        r.stop().await;
    }
    for svc in &config.services {
        if let Err(e) = apply_service(inner, svc) {
            tracing::warn!(service = %svc.name, error = %e, "could not apply service");
            report.push(&svc.name, &e);
        }
    }
    // A socket inherited from a predecessor that no service of this config listens on (its
    // service was deleted meanwhile) is closed; one a failed service wants is kept for its retry.
    inner.inherited.lock().retain(|addr, _| {
        let wanted = config.services.iter().any(|s| s.listen == *addr);
        if !wanted {
            tracing::info!(%addr, "closing an inherited socket no service listens on");
        }
        wanted
    });
    Ok(report)
}

/// See `Pooler::apply_changes`.
pub(crate) async fn apply_changes(
    inner: &Inner,
    upserts: Vec<ServiceConfig>,
    removed: Vec<String>,
) -> Result<ApplyReport, PoolerError> {
    let _serial = inner.apply_lock.lock().await;
    if inner.shut_down.load(Ordering::Relaxed) {
        return Err(PoolerError::ShutDown);
    }
    let mut report = ApplyReport::default();
    let gone: Vec<Running> = {
        let mut services = inner.services.lock();
        removed.iter().filter_map(|k| services.remove(k)).collect()
    };
    for r in gone {
        tracing::info!(service = %r.cfg.name, "removing service");
        r.stop().await;
    }
    let mut seen = std::collections::HashSet::new();
    for svc in &upserts {
        let result = if seen.insert(svc.name.as_str()) {
            apply_service(inner, svc)
        } else {
            Err(ServiceError::Duplicate {
                what: "service",
                name: svc.name.clone(),
            })
        };
        if let Err(e) = result {
            tracing::warn!(service = %svc.name, error = %e, "could not apply service");
            report.push(&svc.name, &e);
        }
    }
    Ok(report)
}

/// Adds or updates one service. On error nothing of the service has changed, and the next
/// `apply` naming it tries again (a new service is not recorded; a moved listener keeps the old
/// configuration, which differs from the wanted one).
fn apply_service(inner: &Inner, cfg: &ServiceConfig) -> Result<(), ServiceError> {
    validate(cfg)?;
    let tls = match &cfg.tls {
        Some(t) => Some(tls::acceptor(t).map_err(ServiceError::Tls)?),
        None => None,
    };
    let mut services = inner.services.lock();
    let existing = services.get(&cfg.name);
    let old_users = existing
        .map(|r| r.service.state().users.clone())
        .unwrap_or_default();
    let users: HashMap<String, Arc<User>> = cfg
        .users
        .iter()
        .map(|u| {
            let user = match old_users.get(&u.name) {
                Some(old) if old.password == u.password && old.admin == u.admin => old.clone(),
                _ => Arc::new(User::new(u.password.clone(), u.admin)),
            };
            (u.name.clone(), user)
        })
        .collect();
    let state = Arc::new(ServiceState {
        users,
        tls,
        tls_endpoint: cfg.tls.as_ref().and_then(tls::endpoint_hash),
        tls_required: cfg.tls.as_ref().is_some_and(|t| t.required),
        allowed_cidrs: cfg.allowed_cidrs.clone(),
        limits: cfg.limits.clone(),
        settings: cfg.settings.clone(),
    });
    // The one step that depends on the world rather than on the config: bind first.
    let old_cfg = existing.map(|r| r.cfg.clone());
    let bound = match &old_cfg {
        Some(old) if old.listen == cfg.listen => None,
        _ => Some(bind(inner, cfg)?),
    };
    let service = match existing {
        Some(running) => {
            let service = running.service.clone();
            *service.state.write() = state;
            service
        }
        None => Arc::new(Service {
            name: cfg.name.as_str().into(),
            state: RwLock::new(state),
            pools: RwLock::new(HashMap::new()),
            clients: Default::default(),
            shutdown: signal::Signal::new(),
            restarting: signal::Signal::new(),
            restart_reason: Default::default(),
            cancel: inner.cancel.clone(),
            statements: inner.statements.clone(),
            auth_method: inner.auth_method.clone(),
            pending: Default::default(),
            refused: Default::default(),
            sockets: inner.sockets.clone(),
        }),
    };
    // Pools before accepting: a client of a new service must find its pool.
    apply_pools(inner, &service, cfg, old_cfg.as_ref());
    let listening = bound.map(|b| b.serve(service.clone()));
    match services.get_mut(&cfg.name) {
        Some(running) => {
            if let Some(listening) = listening {
                running.listener.stop();
                running.listener = listening;
            }
            running.cfg = cfg.clone();
        }
        None => {
            let Some(listener) = listening else {
                unreachable!("a new service is always bound")
            };
            services.insert(
                cfg.name.clone(),
                Running {
                    cfg: cfg.clone(),
                    service,
                    listener,
                },
            );
        }
    }
    Ok(())
}

/// The socket a service listens on: the one inherited from the process this one took over from
/// when it listened on that address (its accept queue carries over), else a new bind.
fn bind(inner: &Inner, cfg: &ServiceConfig) -> Result<Bound, ServiceError> {
    let inherited = inner.inherited.lock().remove(&cfg.listen);
    match inherited {
        Some(l) => Bound::from_std(l),
        None => Bound::bind(cfg.listen),
    }
    .map_err(|source| ServiceError::Bind {
        addr: cfg.listen,
        source,
    })
}

/// Makes the service's pools match `cfg`: removed pools drain, new ones start, changed ones are
/// updated in place (a new generation when their server connections can no longer serve).
fn apply_pools(
    inner: &Inner,
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
                    inner.next_gen.fetch_add(1, Ordering::Relaxed)
                } else {
                    old.gen
                }
            }
            None => inner.next_gen.fetch_add(1, Ordering::Relaxed),
        };
        let state = PoolState {
            cfg: pc.clone(),
            settings: cfg.settings.clone(),
            backend: backend.clone(),
            password,
            gen,
            wait_timeout: cfg.limits.query_wait_timeout,
            idle_transaction_timeout: cfg.limits.idle_transaction_timeout,
            message_timeout: cfg.limits.client_message_timeout,
        };
        match existing {
            Some(pool) => pool.update(state),
            None => {
                pools.insert(
                    pc.name.clone(),
                    Pool::new(service.name.clone(), state, inner.notify.clone()),
                );
            }
        }
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
    use crate::config::{
        BackendConfig, ClientLimits, PoolConfig, PoolMode, PoolSettings, UserConfig,
    };
    use std::net::SocketAddr;

    fn service(pools: &[&str], users: &[&str]) -> ServiceConfig {
        ServiceConfig {
            name: "svc".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: None,
            backend: BackendConfig {
                host: "127.0.0.1".into(),
                port: 5432,
                require_primary: false,
                unavailable_hold: Default::default(),
            },
            users: users
                .iter()
                .map(|u| UserConfig {
                    name: u.to_string(),
                    password: "pw".into(),
                    admin: false,
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
