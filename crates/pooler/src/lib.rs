//! pgbay-pooler: a multi-threaded PgBouncer-style PostgreSQL connection pooler.
//!
//! `Pooler::apply(PoolerConfig)` is the only way in: it starts, updates and stops services
//! (one listener each) and their pools, live, and answers with an `ApplyReport` naming each
//! service it could not apply. See `config` for the knobs.
//!
//! Layout: `apply` reconciles the running services with a config; `accept` binds and accepts (TCP; not to be confused with LISTEN, `backend::listen`);
//! `frontend::client` is the task of one connection; `frontend::login` logs it in
//! (negotiate → admit → authenticate → greet); `frontend::session` is a logged-in client's life
//! (idle → waiting → active); `frontend::relay` is the hot path: the socket loop (`pump`),
//! header-only scanning of each direction (`from_client` with prepared statement rewriting,
//! `from_server`) and the relay state a server connection carries (the queue of expected
//! answers, partial messages); `backend::pool` holds server connections (SV_IDLE list, FIFO of
//! waiting clients, RAII check-in, periodic `upkeep`); `stats` names the client and server
//! states whose per-pool counts the pool keeps (`PoolStats`); `backend::server` logs in to
//! PostgreSQL over a `net::ServerStream`: a Unix socket when the backend host is a directory
//! (starts with '/'), else TCP, encrypted with TLS when the server accepts an SSLRequest
//! (libpq's `sslmode=prefer`: the server's certificate is not verified); `params` carries client parameters to whichever server connection serves the
//! client: startup parameters, and in transaction/statement mode also the client's own SETs
//! (`frontend::relay::session_state` scans each statement's whole text for SET/RESET/
//! `set_config` and what else may change a session, reads the tracked values back at the end of
//! the transaction and resets the rest before the connection serves anyone else); a server
//! connection is lent for a whole message (up to 16 KiB), and a client that holds one without
//! sending is timed out (`frontend::relay::waiting`); in those modes LISTEN/UNLISTEN are served by a
//! per-pool listening server connection outside the pool's size (`backend::listen`), whose
//! notifications reach subscribed clients through a per-client channel, idle or attached
//! (`frontend::listen` answers an idle client's LISTEN once the listener confirmed it); what
//! clients leave unread is held within byte budgets, per client and for the whole pooler
//! (`notify`, `NotifyBudget`, `Pooler::set_notify_budget`); `cancel` routes CancelRequests; `net::messages` builds and parses wire messages, whose
//! type bytes are named in `net::messages::tag`.
//!
//! TLS: a service with `TlsConfig` answers SSLRequest with 'S'; with `TlsConfig::required` a
//! StartupMessage over plaintext is refused ("SSL required", 28000) while a CancelRequest over
//! plaintext is still served.
//!
//! Admin console (`admin`): a StartupMessage for the database `pgbouncer` is the console, not a
//! pool. The login runs the same checks and password exchange as any other, then lets in only
//! users with `UserConfig::admin` (others: FATAL "not allowed", 08P01, PgBouncer's answer after
//! the password). The console answers PgBouncer 1.25.1's SHOW commands with its exact columns
//! and types (one row per pool; `database` is the pool name, `user` the pool's user; SHOW
//! CLIENTS/SERVERS list the logged-in pool clients and server connections registered in
//! `sockets`, not the console's own clients nor connections still logging in), and
//! PAUSE/RESUME/RECONNECT/KILL/WAIT_CLOSE (semantics in `admin::commands`), over
//! the simple and the extended query protocol. SHOW VERSION says "PgBouncer 1.25.1 compatible
//! (pgbay X.Y.Z)"; SHOW CONFIG lists the service's settings in PgBouncer's units.
//!
//! Counters (`stats::PoolTotals`, PgBouncer's SHOW STATS): transactions, queries, bytes each
//! way, transaction/query/wait time (µs), server assignments, client and server Parse and Bind,
//! per pool (hence per user: a pool has one). No shared write per message: each client keeps a
//! `stats::Tally` and folds it into the pool's atomics (on cache lines of their own) once per
//! transaction, at the ReadyForQuery that says idle, and when it leaves. A query is what a
//! client sends after a ReadyForQuery, timed from its first bytes (or from getting a server
//! connection, when it had to wait: that part is wait time) to the next ReadyForQuery; a
//! transaction from its first query to the idle ReadyForQuery. That is two clock reads per
//! query. Averages (SHOW STATS_AVERAGES) are rolled by each pool's upkeep every
//! `stats_period` (60 s). PAUSE costs the hot path one relaxed load per transaction
//! (`Pool::is_paused`); KILL is an epoch clients compare at each request, so a killed client
//! leaves at its next request or transaction end rather than at once.
//!
//! Before login (`admission`): each service's port holds at most
//! `ClientLimits::max_pending_logins` sockets that have not passed authentication, each for at
//! most `ClientLimits::login_timeout`; the client sockets of all services share one budget
//! (`Pooler::set_client_socket_limit`); a socket over a cap is accepted and closed at once.
//! Refusals are counted per service and reason (`Pooler::refused_connections`). Nothing before
//! the password is checked depends on the pool: an unknown pool, or another user's, fails the
//! password exchange with the same 28P01 as a wrong password.
//!
//! Errors clients see are all in `errors`, each with its SQLSTATE: unknown pool 3D000, bad
//! password 28P01, wrong user for the pool, address not allowed or TLS required 28000, too many clients 53300, unread notifications past a budget 53200,
//! pool/service removed 57P01, wait timeout 08006, backend unreachable 08001, transaction block in
//! statement mode 25001, SQL-level PREPARE/EXECUTE/DEALLOCATE and a LISTEN the pooler cannot
//! serve in transaction or statement mode 0A000 (these are ERRORs; the client stays connected:
//! a Query or Parse starting with BEGIN/START TRANSACTION is answered by the pooler itself,
//! `frontend::relay::scan`; a block opened otherwise is rolled back when ReadyForQuery reveals
//! it), a client holding a server connection without sending or a Sync/Flush with a payload
//! 08P01 (FATAL); a server's own errors keep
//! their SQLSTATE. Messages name the pool.

mod accept;
mod admin;
mod admission;
mod apply;
mod auth;
mod backend;
mod cancel;
pub mod config;
pub mod error;
mod errors;
mod frontend;
mod log_window;
mod net;
mod notify;
mod params;
mod prepared;
mod service;
mod signal;
mod sockets;
mod spare;
mod stats;
mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

pub use admission::RefusalReason;
pub use apply::{ApplyReport, ServiceFailure};
pub use auth::ClientAuthMethod;
pub use config::NotifyBudget;
pub use config::{
    BackendConfig, ClientLimits, PoolConfig, PoolMode, PoolSettings, PoolerConfig, ServiceConfig,
    TlsConfig, UserConfig,
};
pub use error::PoolerError;
pub use stats::{ClientState, PoolStats, PoolTotals, ServerState};
pub use tls::verify_backends_with;

use apply::Running;
use cancel::CancelRegistry;
use prepared::Registry;

/// One pool's numbers, as `Pooler::pool_metrics` reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolMetrics {
    pub service: String,
    pub pool: String,
    /// The user the pool logs in as (its clients' user).
    pub user: String,
    pub stats: PoolStats,
    pub totals: PoolTotals,
}

/// How many connections of a service were refused before login for one reason, as
/// `Pooler::refused_connections` reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedConnections {
    pub service: String,
    pub reason: RefusalReason,
    pub total: u64,
}

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
    /// Client sockets of every service together, against the process's descriptor budget.
    sockets: Arc<admission::SocketBudget>,
    next_gen: std::sync::atomic::AtomicU64,
    /// Notification budgets and the bytes held for all clients (`notify`).
    notify: Arc<notify::Budget>,
    /// Listening sockets handed over by the process this one took over from, by address, until
    /// a service claims its own (`apply::bind`).
    inherited: Mutex<HashMap<SocketAddr, std::net::TcpListener>>,
}

/// Why the pooler drains (`Pooler::drain`): what clients are told when they are closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DrainReason {
    /// A successor process took over the sockets.
    Restarting = 1,
    /// pgbay is stopping (SIGTERM).
    ShuttingDown = 2,
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
                sockets: Default::default(),
                next_gen: std::sync::atomic::AtomicU64::new(1),
                notify: Arc::new(notify::Budget::new(NotifyBudget::default())),
                inherited: Mutex::new(HashMap::new()),
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

    /// How many bytes of unread notifications the pooler holds per client and in total
    /// (`NotifyBudget`); applies to new and running clients alike.
    pub fn set_notify_budget(&self, budget: NotifyBudget) {
        self.inner.notify.set(budget);
    }

    /// Bytes of notifications queued for clients right now (all pools).
    pub fn notify_bytes_queued(&self) -> usize {
        self.inner.notify.used()
    }

    /// The running service of that name.
    fn service(&self, name: &str) -> Option<Arc<service::Service>> {
        self.inner
            .services
            .lock()
            .get(name)
            .map(|r| r.service.clone())
    }

    /// The address a service's listener is bound to (useful with port 0).
    pub fn local_addr(&self, service: &str) -> Option<SocketAddr> {
        self.inner
            .services
            .lock()
            .get(service)
            .map(|r| r.listener.local_addr)
    }

    /// Counters of one pool.
    pub fn pool_stats(&self, service: &str, pool: &str) -> Option<PoolStats> {
        let svc = self.service(service)?;
        svc.pool(pool).map(|p| p.stats())
    }

    /// Cumulative counters of one pool (SHOW STATS_TOTALS).
    pub fn pool_totals(&self, service: &str, pool: &str) -> Option<PoolTotals> {
        let svc = self.service(service)?;
        svc.pool(pool).map(|p| p.totals())
    }

    /// Every pool of every service with its state counts and counters, sorted by service and
    /// pool: what `/metrics` exports.
    pub fn pool_metrics(&self) -> Vec<PoolMetrics> {
        let services: Vec<_> = self
            .inner
            .services
            .lock()
            .values()
            .map(|r| r.service.clone())
            .collect();
        let mut out = Vec::new();
        for svc in services {
            let pools: Vec<_> = svc.pools.read().values().cloned().collect();
            for p in pools {
                out.push(PoolMetrics {
                    service: svc.name.to_string(),
                    pool: p.name.clone(),
                    user: p.state().cfg.username.clone(),
                    stats: p.stats(),
                    totals: p.totals(),
                });
            }
        }
        out.sort_by(|a, b| (&a.service, &a.pool).cmp(&(&b.service, &b.pool)));
        out
    }

    /// Connected clients of a service.
    pub fn client_count(&self, service: &str) -> Option<u32> {
        let svc = self.service(service)?;
        Some(svc.clients.load(Ordering::Relaxed))
    }

    // Admission before login (see `admission`).

    /// Caps the client sockets of all services together (logging in or logged in); a socket
    /// accepted past it is closed at once and counted as refused (`fd_reserve`). The binary sets
    /// it to the open-files limit minus what pgbay keeps for its own work. Unlimited by default.
    pub fn set_client_socket_limit(&self, max: u32) {
        self.inner.sockets.set_max(max);
    }

    /// Client sockets open now, over every service.
    pub fn client_sockets(&self) -> u32 {
        self.inner.sockets.open()
    }

    /// Sockets of a service's port that have not finished logging in.
    pub fn pending_logins(&self, service: &str) -> Option<u32> {
        let svc = self.service(service)?;
        Some(svc.pending.count())
    }

    /// Connections refused before login, per service and reason (every reason, zeros included),
    /// sorted by service: what `/metrics` exports.
    pub fn refused_connections(&self) -> Vec<RefusedConnections> {
        let mut services: Vec<_> = self
            .inner
            .services
            .lock()
            .values()
            .map(|r| r.service.clone())
            .collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        services
            .iter()
            .flat_map(|svc| {
                RefusalReason::ALL.map(|reason| RefusedConnections {
                    service: svc.name.to_string(),
                    reason,
                    total: svc.refused.get(reason),
                })
            })
            .collect()
    }

    /// Makes the running services match `config`. Returns once every listener of the new
    /// config is bound and every pool accepts clients. A service that cannot be applied is named
    /// in the report with its reason; the other services are applied regardless, and the failed
    /// one is tried again by every later `apply` that still names it. Errs only when the pooler
    /// as a whole cannot apply anything (it was shut down).
    pub async fn apply(&self, config: PoolerConfig) -> Result<ApplyReport, PoolerError> {
        apply::apply(&self.inner, config).await
    }

    /// Applies a change of some services only: each of `upserts` is added or updated as
    /// `apply` would, each service named in `removed` is removed, and every other running
    /// service is left untouched (not even compared). A failure is reported as by `apply`.
    pub async fn apply_changes(
        &self,
        upserts: Vec<ServiceConfig>,
        removed: Vec<String>,
    ) -> Result<ApplyReport, PoolerError> {
        apply::apply_changes(&self.inner, upserts, removed).await
    }

    /// Listening sockets inherited from a predecessor (`takeover`): a service whose listen
    /// address matches one of them accepts on it instead of binding anew; the next `apply`
    /// closes those no service of its config listens on.
    pub fn inherit(&self, listeners: Vec<std::net::TcpListener>) {
        let mut inherited = self.inner.inherited.lock();
        for l in listeners {
            match l.local_addr() {
                Ok(addr) => {
                    inherited.insert(addr, l);
                }
                Err(e) => tracing::warn!(error = %e, "inherited socket has no address; closed"),
            }
        }
    }

    /// Duplicates of every service's listening socket, for a successor process.
    pub fn listening_sockets(&self) -> Vec<(SocketAddr, std::os::fd::OwnedFd)> {
        let services = self.inner.services.lock();
        services
            .values()
            .filter_map(|r| match r.listener.dup() {
                Ok(fd) => Some((r.listener.local_addr, fd)),
                Err(e) => {
                    tracing::warn!(service = %r.cfg.name, error = %e, "cannot hand over listener");
                    None
                }
            })
            .collect()
    }

    /// Stops accepting on every port, lets each client finish the transaction it is in and
    /// closes it at its next transaction boundary (idle clients at once, after a short grace
    /// for a request already on its way) with 57P01 saying why; after `timeout`, or once no
    /// client is left, shuts down (`shutdown`). No `apply` is taken after this starts.
    pub async fn drain(&self, reason: DrainReason, timeout: Duration) {
        let services: Vec<Arc<service::Service>> = {
            let _serial = self.inner.apply_lock.lock().await;
            self.inner.shut_down.store(true, Ordering::Relaxed);
            let running = self.inner.services.lock();
            for r in running.values() {
                r.listener.stop();
            }
            running.values().map(|r| r.service.clone()).collect()
        };
        for svc in &services {
            svc.restart_reason.store(reason as u8, Ordering::Relaxed);
            svc.restarting.cancel();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline
            && services
                .iter()
                .any(|s| s.clients.load(Ordering::Relaxed) > 0)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.shutdown().await;
    }

    /// Closes listeners, disconnects clients (57P01) and closes server connections.
    pub async fn shutdown(&self) {
        let _serial = self.inner.apply_lock.lock().await;
        self.inner.shut_down.store(true, Ordering::Relaxed);
        let all: Vec<Running> = self.inner.services.lock().drain().map(|(_, r)| r).collect();
        let services: Vec<Arc<service::Service>> = all.iter().map(|r| r.service.clone()).collect();
        for r in all {
            r.stop().await;
        }
        // Give client tasks a moment to say goodbye; they need no more than a write each.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline
            && services
                .iter()
                .any(|s| s.clients.load(Ordering::Relaxed) > 0)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
