//! A pool of server connections for one (service, pool name).
//!
//! Inner state sits behind one mutex: idle connections, the count of connections that exist or
//! are being made (`total`, capped by `size`) and a FIFO of waiting clients. A waiter is handed
//! either a ready connection or a reserved slot to connect with. `ServerGuard` checks the
//! connection back in when dropped; `SlotToken` gives the capacity back when a connection (or a
//! reservation) dies, so a slot cannot leak whatever path drops it. Timeouts and
//! min_pool_size are the periodic `upkeep`'s.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

mod averages;
mod checkout;
mod pause;
mod updates;
mod upkeep;
mod wait;

pub use checkout::ServerGuard;
pub use wait::WaitPlace;

use super::server::{ConnectParams, Server, ServerError};
use crate::config::{BackendConfig, PoolConfig, PoolSettings};
use crate::net::messages::tag::txn;
use crate::signal::Signal;
use crate::stats::{ClientState, PoolCounters, PoolStats, PoolTotals, ServerState};

/// Connecting to and logging in to the backend may take at most this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The pool's current configuration, replaced as a whole by `apply`.
#[derive(Debug)]
pub struct PoolState {
    pub cfg: PoolConfig,
    pub settings: PoolSettings,
    pub backend: Arc<BackendConfig>,
    /// The password of `cfg.username`, if the service has that user.
    pub password: Option<String>,
    /// Bumped when server connections made before can no longer serve (database, user or
    /// backend changed); older connections are retired when released.
    pub gen: u64,
    pub wait_timeout: Duration,
    /// `ClientLimits::idle_transaction_timeout`.
    pub idle_transaction_timeout: Option<Duration>,
    /// `ClientLimits::client_message_timeout`.
    pub message_timeout: Duration,
}

impl PoolState {
    /// How a server connection of this state logs in (the pool's own or its LISTEN connection).
    pub fn connect_params<'a>(&'a self, pool: &'a str, timeout: Duration) -> ConnectParams<'a> {
        ConnectParams {
            pool,
            host: &self.backend.host,
            port: self.backend.port,
            user: &self.cfg.username,
            database: &self.cfg.database,
            password: self.password.as_deref(),
            gen: self.gen,
            timeout,
            require_primary: self.backend.require_primary,
        }
    }
}

/// What a waiter is handed.
enum Grant {
    Server(Box<Server>),
    Connect(SlotToken),
    /// `query_wait_timeout` passed (found by the pool's upkeep, see `Waiter`).
    Expired,
    /// The pool was removed (`Pool::remove`).
    Removed,
}

/// A client in CL_WAITING. Like PgBouncer, the wait deadline is enforced by the periodic
/// upkeep rather than a timer per wait: registering and cancelling a timer for every queued
/// transaction costs more than the rest of the queueing. Timeouts fire up to `upkeep::TICK` late.
struct Waiter {
    slot: Arc<wait::Slot>,
    /// The wait this entry is for (see `wait`).
    seq: u64,
    /// When it started waiting (for `PoolStats::maxwait`), in `stats::now_us` time.
    since_us: u64,
    deadline_us: u64,
}

impl Waiter {
    /// Hands `grant` to the client if it still waits for it; gives it back otherwise.
    fn send(self, grant: Grant) -> Result<(), Grant> {
        self.slot.send(self.seq, grant)
    }

    /// True when the client no longer waits on this entry.
    fn is_closed(&self) -> bool {
        self.slot.is_closed(self.seq)
    }
}

// Boxed servers move between tasks and channels as one pointer.
#[allow(clippy::vec_box)]
struct Inner {
    /// Server state SV_IDLE.
    idle: Vec<Box<Server>>,
    /// Every connection that exists or is being made (idle + active + used + login), plus
    /// capacity reserved for a connection about to be made.
    total: u32,
    /// Server state SV_LOGIN (part of total).
    login: u32,
    size: u32,
    /// Client state CL_WAITING.
    waiters: VecDeque<Waiter>,
    /// The upkeep is making a connection (for min_pool_size); one at a time.
    upkeep_connecting: bool,
}

/// Why no server connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error("query_wait_timeout ({0:?}) expired while waiting for a server connection")]
    Timeout(Duration),
    #[error("{0}")]
    Server(#[from] ServerError),
    #[error("the pool was removed")]
    Removed,
}

/// ParameterStatus (name, value) pairs sent to clients at login.
pub type LoginParams = Arc<Vec<(String, String)>>;

/// What every transaction writes: the pool's lock and its client counts. Kept on cache lines of
/// their own so that other clients' check-outs do not keep invalidating the read-mostly fields
/// that every transaction reads (`version`, `drain`); the counts come first, next to the lock's
/// state, because a client changes them right after a lock section, while that line is still in
/// its core's cache.
#[repr(C, align(64))]
struct Hot {
    inner: Mutex<Inner>,
}

/// The cumulative counters, on cache lines of their own: written once per transaction by
/// whichever client ends it, never next to the lock or the read-mostly fields.
#[repr(C, align(64))]
#[derive(Default)]
struct Counters(PoolCounters);

/// SHOW STATS_AVERAGES: per-second rates (and per-transaction/per-query times) over the last
/// completed `STATS_PERIOD`, rolled by the upkeep.
#[derive(Default)]
struct Averages {
    /// Totals at the start of the current period.
    start: Option<(Instant, PoolTotals)>,
    last: PoolTotals,
}

/// PgBouncer's default `stats_period`.
pub const STATS_PERIOD: Duration = Duration::from_secs(60);

/// PAUSE/KILL state of a pool (admin console).
#[derive(Default)]
struct Pause {
    /// New transactions wait (CL_WAITING) until RESUME.
    paused: AtomicBool,
    resumed: tokio::sync::Notify,
    /// Bumped by KILL: clients that logged in before leave at their next request or
    /// transaction end.
    kill_epoch: AtomicU64,
}

/// Lines about failed server logins a pool logs per 10 s, at most.
const CONNECT_LOG_BURST: u32 = 3;

/// One pool.
pub struct Pool {
    pub name: String,
    pub service: Arc<str>,
    state: RwLock<Arc<PoolState>>,
    /// Bumped after every `update`: clients keep a copy of the state and refresh it only when
    /// this changed, instead of taking the lock and a reference count per transaction.
    version: AtomicU64,
    hot: Hot,
    /// Cancelled when the pool is removed: clients leave at their next transaction boundary.
    pub drain: Signal,
    /// ParameterStatus values a client gets at login, learnt from a server connection.
    login_params: Mutex<Option<LoginParams>>,
    /// Failed server logins are logged at most `CONNECT_LOG_BURST` times per 10 s: while the
    /// server is down, every client held for it retries (`acquire`).
    connect_log: crate::log_window::LogWindow,
    /// Logged-in server connections: SHOW SERVERS and the server counts of `stats`.
    pub server_list: crate::sockets::Sockets,
    /// Logged-in clients: SHOW CLIENTS and the client counts of `stats`.
    pub client_list: crate::sockets::Sockets,
    counters: Counters,
    averages: Mutex<Averages>,
    pause: Pause,
    /// The LISTEN connection's task, started at the pool's first client LISTEN.
    listen: std::sync::OnceLock<super::listen::Hub>,
    /// The pooler's notification budgets, for the LISTEN connection's clients.
    notify: Arc<crate::notify::Budget>,
}

impl Pool {
    pub fn new(
        service: Arc<str>,
        state: PoolState,
        notify: Arc<crate::notify::Budget>,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            name: state.cfg.name.clone(),
            service,
            hot: Hot {
                inner: Mutex::new(Inner {
                    idle: Vec::new(),
                    total: 0,
                    login: 0,
                    size: state.cfg.size,
                    waiters: VecDeque::new(),
                    upkeep_connecting: false,
                }),
            },
            state: RwLock::new(Arc::new(state)),
            version: AtomicU64::new(0),
            drain: Signal::new(),
            login_params: Mutex::new(None),
            connect_log: crate::log_window::LogWindow::new(
                CONNECT_LOG_BURST,
                std::time::Duration::from_secs(10),
            ),
            server_list: Default::default(),
            client_list: Default::default(),
            counters: Counters::default(),
            averages: Mutex::new(Averages::default()),
            pause: Pause::default(),
            listen: std::sync::OnceLock::new(),
            notify,
        });
        tokio::spawn(upkeep::maintain(
            Arc::downgrade(&pool),
            pool.drain.token().clone(),
        ));
        pool
    }

    /// The pool's LISTEN connection (`backend::listen`), started on first use.
    pub fn listen_hub(self: &Arc<Self>) -> &super::listen::Hub {
        self.listen
            .get_or_init(|| super::listen::Hub::start(Arc::downgrade(self), self.notify.clone()))
    }

    pub fn state(&self) -> Arc<PoolState> {
        self.state.read().clone()
    }

    /// Changes whenever `state()` does (read it before the state).
    pub fn state_version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The pool's connections by state: its SHOW CLIENTS and SHOW SERVERS entries counted (one
    /// source of truth for the lists and the counts), plus the connections being made, which
    /// have no entry yet.
    pub fn stats(&self) -> PoolStats {
        let (connecting, oldest) = {
            let inner = self.hot.inner.lock();
            (inner.login, inner.waiters.front().map(|w| w.since_us))
        };
        let clients: [u32; 3] = self.client_list.count_states();
        let servers: [u32; 4] = self.server_list.count_states();
        let client = |s: ClientState| clients[s as usize];
        let server = |s: ServerState| servers[s as usize];
        PoolStats {
            cl_active: client(ClientState::Active),
            cl_waiting: client(ClientState::Waiting),
            cl_idle: client(ClientState::Idle),
            sv_active: server(ServerState::Active),
            sv_idle: server(ServerState::Idle),
            sv_used: server(ServerState::Used),
            sv_login: connecting + server(ServerState::Login),
            maxwait: oldest
                .map(|t| checkout::age(crate::stats::now_us(), t))
                .unwrap_or_default(),
        }
    }

    /// The cumulative counters clients fold their tallies into.
    pub(crate) fn counters(&self) -> &PoolCounters {
        &self.counters.0
    }
}

/// One unit of pool capacity; dropping it frees the capacity (or hands it to a waiter).
pub(crate) struct SlotToken {
    pool: Weak<Pool>,
}
