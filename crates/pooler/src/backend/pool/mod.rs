//! A pool of server connections for one (service, pool name).
//!
//! Inner state sits behind one mutex: idle connections, the count of connections that exist or
//! are being made (`total`, capped by `size`) and a FIFO of waiting clients. A waiter is handed
//! either a ready connection or a reserved slot to connect with. `ServerGuard` checks the
//! connection back in when dropped; `SlotToken` gives the capacity back when a connection (or a
//! reservation) dies, so a slot cannot leak whatever path drops it. Timeouts and
//! min_pool_size are the periodic `upkeep`'s.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio::sync::oneshot;

mod upkeep;

use super::server::{ConnectParams, Server, ServerError};
use crate::config::{BackendConfig, PoolConfig, PoolSettings};
use crate::net::messages::tag::txn;
use crate::signal::Signal;
use crate::stats::{ClientCounts, ClientState, PoolCounters, PoolStats, PoolTotals, ServerState};

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
        }
    }
}

/// What a waiter is handed.
enum Grant {
    Server(Box<Server>),
    Connect(SlotToken),
    /// `query_wait_timeout` passed (found by the pool's upkeep, see `Waiter`).
    Expired,
}

/// A client in CL_WAITING. Like PgBouncer, the wait deadline is enforced by the periodic
/// upkeep rather than a timer per wait: registering and cancelling a timer for every queued
/// transaction costs more than the rest of the queueing. Timeouts fire up to `upkeep::TICK` late.
struct Waiter {
    tx: oneshot::Sender<Grant>,
    /// When it started waiting (for `PoolStats::maxwait`).
    since: Instant,
    deadline: Instant,
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
    /// This pool's clients by state (each client keeps its own contribution up to date).
    clients: ClientCounts,
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
    /// Server state SV_USED: lent connections being reset (see `Resetting`).
    used: AtomicU32,
    /// Logged-in server connections, for SHOW SERVERS.
    pub server_list: crate::sockets::Sockets,
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
                clients: ClientCounts::default(),
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
            used: AtomicU32::new(0),
            server_list: Default::default(),
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

    /// Replaces the configuration; retires connections that no longer fit it.
    pub fn update(self: &Arc<Self>, state: PoolState) {
        let new_gen = state.gen;
        let size = state.cfg.size;
        let old_gen = {
            let mut s = self.state.write();
            let old = s.gen;
            *s = Arc::new(state);
            old
        };
        self.version.fetch_add(1, Ordering::Release);
        if old_gen != new_gen {
            *self.login_params.lock() = None;
        }
        let mut retired = Vec::new();
        {
            let mut inner = self.hot.inner.lock();
            inner.size = size;
            let mut keep = Vec::with_capacity(inner.idle.len());
            for s in inner.idle.drain(..) {
                if s.gen == new_gen {
                    keep.push(s);
                } else {
                    retired.push((s, "pool configuration changed"));
                }
            }
            inner.idle = keep;
            let surplus =
                (inner.total.saturating_sub(retired.len() as u32)).saturating_sub(size) as usize;
            for _ in 0..surplus.min(inner.idle.len()) {
                if let Some(s) = inner.idle.pop() {
                    retired.push((s, "pool size reduced"));
                }
            }
        }
        // Closed outside the lock (their slots lock it again).
        for (s, reason) in retired {
            s.close(reason);
        }
        self.grant_slots();
    }

    /// Removes the pool: waiters fail, idle connections close, clients leave at their next
    /// transaction boundary and active connections close when released.
    pub fn remove(&self) {
        self.drain.cancel();
        let (idle, waiters) = {
            let mut inner = self.hot.inner.lock();
            (
                std::mem::take(&mut inner.idle),
                std::mem::take(&mut inner.waiters),
            )
        };
        drop(waiters);
        for s in idle {
            s.close("pool removed");
        }
    }

    pub fn stats(&self) -> PoolStats {
        let (total, idle, login, oldest) = {
            let inner = self.hot.inner.lock();
            (
                inner.total,
                inner.idle.len() as u32,
                inner.login,
                inner.waiters.front().map(|w| w.since),
            )
        };
        let used = self.used.load(Ordering::Relaxed);
        PoolStats {
            cl_active: self.hot.clients.get(ClientState::Active),
            cl_waiting: self.hot.clients.get(ClientState::Waiting),
            cl_idle: self.hot.clients.get(ClientState::Idle),
            // Lent connections not being reset; a slot reserved for a connection about to be
            // made counts here for the moment before its login starts.
            sv_active: total.saturating_sub(idle + login + used),
            sv_idle: idle,
            sv_used: used,
            sv_login: login,
            maxwait: oldest.map(|t| t.elapsed()).unwrap_or_default(),
        }
    }

    /// The cumulative counters clients fold their tallies into.
    pub(crate) fn counters(&self) -> &PoolCounters {
        &self.counters.0
    }

    /// SHOW STATS_TOTALS.
    pub fn totals(&self) -> PoolTotals {
        self.counters.0.get()
    }

    /// SHOW STATS_AVERAGES: the last completed period's rates, per second for counts and bytes,
    /// per transaction / per query for times, as PgBouncer computes them.
    pub fn averages(&self) -> PoolTotals {
        self.averages.lock().last
    }

    /// Closes a stats period when one has passed (called by the upkeep).
    fn roll_averages(&self, now: Instant) {
        let mut a = self.averages.lock();
        let Some((since, start)) = a.start else {
            a.start = Some((now, self.totals()));
            return;
        };
        let period = now.duration_since(since);
        if period < STATS_PERIOD {
            return;
        }
        let cur = self.totals();
        let d = cur.since(&start);
        let us = period.as_micros().max(1) as u64;
        let rate = |v: u64| ((v as u128) * 1_000_000 / us as u128) as u64;
        let per = |v: u64, n: u64| v.checked_div(n).unwrap_or(0);
        a.last = PoolTotals {
            server_assignments: rate(d.server_assignments),
            xacts: rate(d.xacts),
            queries: rate(d.queries),
            received: rate(d.received),
            sent: rate(d.sent),
            xact_time_us: per(d.xact_time_us, d.xacts),
            query_time_us: per(d.query_time_us, d.queries),
            wait_time_us: per(d.wait_time_us, d.server_assignments),
            client_parses: rate(d.client_parses),
            server_parses: rate(d.server_parses),
            client_binds: rate(d.client_binds),
            server_binds: rate(d.server_binds),
        };
        a.start = Some((now, cur));
    }

    /// One relaxed load, on the hot path: whether new transactions must wait for RESUME.
    #[inline]
    pub fn is_paused(&self) -> bool {
        self.pause.paused.load(Ordering::Relaxed)
    }

    /// PAUSE: transactions not started yet wait until `resume`.
    pub fn pause(&self) {
        self.pause.paused.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.pause.paused.store(false, Ordering::SeqCst);
        self.pause.resumed.notify_waiters();
    }

    /// Returns once the pool is not paused.
    pub async fn resumed(&self) {
        loop {
            let notified = self.pause.resumed.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if !self.pause.paused.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// The KILL epoch a client saw at login; a different one later means it was killed.
    pub fn kill_epoch(&self) -> u64 {
        self.pause.kill_epoch.load(Ordering::Relaxed)
    }

    /// KILL: pauses the pool, marks its clients killed, and closes its server connections
    /// (idle ones now, lent ones when released).
    pub fn kill(self: &Arc<Self>, new_gen: u64) {
        self.pause();
        self.pause.kill_epoch.fetch_add(1, Ordering::SeqCst);
        self.reconnect(new_gen);
    }

    /// RECONNECT: server connections made so far are closed (idle ones now, lent ones when
    /// released); new ones are made for the new generation as needed.
    pub fn reconnect(self: &Arc<Self>, new_gen: u64) {
        let st = self.state();
        self.update(PoolState {
            cfg: st.cfg.clone(),
            settings: st.settings.clone(),
            backend: st.backend.clone(),
            password: st.password.clone(),
            gen: new_gen,
            wait_timeout: st.wait_timeout,
            idle_transaction_timeout: st.idle_transaction_timeout,
            message_timeout: st.message_timeout,
        });
    }

    /// This pool's clients by state.
    pub(crate) fn clients(&self) -> &ClientCounts {
        &self.hot.clients
    }

    /// Counts `server` as SV_USED until the returned guard is dropped: its client is done with
    /// it and it is being reset.
    pub fn resetting<'a>(&'a self, server: &'a mut Server) -> Resetting<'a> {
        self.used.fetch_add(1, Ordering::Relaxed);
        server.set_state(ServerState::Used);
        Resetting { pool: self, server }
    }

    /// The fast path of `acquire`: an idle connection, if there is one, without waiting.
    /// `st` is the caller's copy of `state()` (see `state_version`).
    pub fn try_acquire(self: &Arc<Self>, st: &PoolState) -> Option<ServerGuard> {
        if self.drain.is_cancelled() {
            return None;
        }
        loop {
            let s = self.hot.inner.lock().idle.pop()?;
            if let Some(g) = self.lend(s, st) {
                return Some(g);
            }
        }
    }

    /// Lends a connection taken from the idle list if it may still serve; closes it otherwise.
    /// (`server_lifetime` is checked at check-in and by the upkeep, not here: a clock read
    /// per transaction saved, at the price of a connection living up to one `upkeep::TICK` longer.)
    fn lend(self: &Arc<Self>, mut s: Box<Server>, st: &PoolState) -> Option<ServerGuard> {
        if s.gen == st.gen && s.is_alive() {
            s.clean = false;
            s.set_state(ServerState::Active);
            return Some(ServerGuard {
                pool: self.clone(),
                server: Some(s),
            });
        }
        let reason = if s.gen != st.gen {
            "pool configuration changed"
        } else {
            "found closed or unusable when lent"
        };
        s.close(reason);
        None
    }

    /// Gets a server connection, waiting FIFO behind other clients up to `query_wait_timeout`.
    pub async fn acquire(self: &Arc<Self>) -> Result<ServerGuard, AcquireError> {
        let state = self.state();
        let since = Instant::now();
        let deadline = since + state.wait_timeout;
        loop {
            if self.drain.is_cancelled() {
                return Err(AcquireError::Removed);
            }
            let waiting = {
                let mut inner = self.hot.inner.lock();
                if let Some(s) = inner.idle.pop() {
                    Ok(Grant::Server(s))
                } else if inner.total < inner.size {
                    inner.total += 1;
                    Ok(Grant::Connect(SlotToken {
                        pool: Arc::downgrade(self),
                    }))
                } else {
                    let (tx, rx) = oneshot::channel();
                    inner.waiters.push_back(Waiter {
                        tx,
                        since,
                        deadline,
                    });
                    Err(rx)
                }
            };
            let grant = match waiting {
                Ok(g) => g,
                // A waiter is removed from the queue by whoever sends to it, so it gets
                // exactly one grant (or the expiry).
                Err(rx) => match rx.await {
                    Ok(g) => g,
                    Err(_) => return Err(AcquireError::Removed),
                },
            };
            match grant {
                Grant::Server(s) => {
                    if let Some(g) = self.lend(s, &self.state()) {
                        return Ok(g);
                    }
                }
                Grant::Connect(slot) => {
                    let mut s = self.connect(slot).await?;
                    s.set_state(ServerState::Active);
                    return Ok(ServerGuard {
                        pool: self.clone(),
                        server: Some(s),
                    });
                }
                Grant::Expired => return Err(AcquireError::Timeout(state.wait_timeout)),
            }
        }
    }

    async fn connect(self: &Arc<Self>, slot: SlotToken) -> Result<Box<Server>, ServerError> {
        let st = self.state();
        self.hot.inner.lock().login += 1;
        // Boxed: a login future (TCP, TLS handshake, SCRAM) is large, and inline it would size
        // every client task that may wait here, idle ones included (~1 KiB each).
        let timeout = CONNECT_TIMEOUT.min(st.wait_timeout.max(Duration::from_secs(1)));
        let result = Box::pin(Server::connect(
            st.connect_params(&self.name, timeout),
            slot,
        ))
        .await;
        self.hot.inner.lock().login -= 1;
        let mut result = result;
        match &mut result {
            Ok(s) => {
                let mut info =
                    crate::sockets::SocketInfo::new(st.cfg.username.clone(), self.name.clone());
                info.host = Some((st.backend.host.clone(), st.backend.port));
                info.tls = s.stream.is_tls();
                info.pid = s.pid;
                info.state = std::sync::atomic::AtomicU8::new(ServerState::Login as u8);
                s.info = Some(self.server_list.register(info));
                let mut lp = self.login_params.lock();
                if lp.is_none() && s.gen == self.state().gen {
                    *lp = Some(Arc::new(s.startup_params.clone()));
                }
                tracing::debug!(pool = %self.name, pid = s.pid, "server connection established");
            }
            Err(e) => {
                tracing::warn!(service = %self.service, pool = %self.name, error = %e, "server connection failed")
            }
        }
        result
    }

    /// The ParameterStatus set for logins; connects once to learn it if needed.
    pub async fn login_params(self: &Arc<Self>) -> Result<LoginParams, AcquireError> {
        if let Some(p) = self.login_params.lock().clone() {
            return Ok(p);
        }
        let guard = self.acquire().await?;
        let params = Arc::new(guard.server().startup_params.clone());
        let mut guard = guard;
        guard.server_mut().clean = true;
        drop(guard);
        *self.login_params.lock() = Some(params.clone());
        Ok(params)
    }

    /// Takes a connection back. Connections that are not clean, too old, from an older
    /// configuration or beyond the pool's size are closed.
    fn checkin(self: &Arc<Self>, server: Box<Server>, st: &PoolState) {
        let now = Instant::now();
        let unusable = if !server.clean
            || server.status != txn::IDLE
            || !server.relay.expect.is_empty()
            || !server.bufs.is_empty()
        {
            Some("not at a clean transaction boundary")
        } else if server.gen != st.gen {
            Some("pool configuration changed")
        } else if now.duration_since(server.created) >= st.settings.server_lifetime {
            Some("server_lifetime reached")
        } else if self.drain.is_cancelled() {
            Some("pool removed")
        } else {
            None
        };
        if let Some(reason) = unusable {
            server.close(reason);
            return;
        }
        let mut server = server;
        server.bufs.shrink();
        server.last_used = now;
        server.set_state(ServerState::Idle);
        loop {
            // The waiter is woken outside the lock.
            let waiter = {
                let mut inner = self.hot.inner.lock();
                if inner.total > inner.size {
                    None
                } else if let Some(w) = inner.waiters.pop_front() {
                    Some(w)
                } else {
                    inner.idle.push(server);
                    return;
                }
            };
            let Some(w) = waiter else {
                server.close("pool size reduced"); // frees its slot
                return;
            };
            server.set_state(ServerState::Active);
            match w.tx.send(Grant::Server(server)) {
                Ok(()) => return,
                Err(Grant::Server(mut s)) => {
                    s.set_state(ServerState::Idle);
                    server = s;
                }
                Err(_) => unreachable!("sent a server"),
            }
        }
    }

    /// Gives a dead connection's capacity to the first waiter, or frees it.
    fn release_slot(self: &Arc<Self>) {
        let mut inner = self.hot.inner.lock();
        while inner.total <= inner.size {
            let Some(w) = inner.waiters.pop_front() else {
                break;
            };
            match w.tx.send(Grant::Connect(SlotToken {
                pool: Arc::downgrade(self),
            })) {
                Ok(()) => return,
                // The waiter left; the reservation stays and goes to the next one.
                Err(g) => std::mem::forget(g),
            }
        }
        inner.total -= 1;
    }

    /// After growing: waiters get slots up to the new size.
    fn grant_slots(self: &Arc<Self>) {
        let mut inner = self.hot.inner.lock();
        while inner.total < inner.size {
            let Some(w) = inner.waiters.pop_front() else {
                break;
            };
            inner.total += 1;
            if let Err(g) = w.tx.send(Grant::Connect(SlotToken {
                pool: Arc::downgrade(self),
            })) {
                std::mem::forget(g);
                inner.total -= 1;
            }
        }
    }
}

/// One unit of pool capacity; dropping it frees the capacity (or hands it to a waiter).
pub(crate) struct SlotToken {
    pool: Weak<Pool>,
}

impl SlotToken {
    /// For a connection outside every pool's accounting (the LISTEN connection).
    pub(crate) fn unaccounted() -> SlotToken {
        SlotToken { pool: Weak::new() }
    }
}

impl Drop for SlotToken {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.release_slot();
        }
    }
}

/// A lent server connection counted as SV_USED (see `Pool::resetting`).
pub struct Resetting<'a> {
    pool: &'a Pool,
    server: &'a mut Server,
}

impl std::ops::Deref for Resetting<'_> {
    type Target = Server;
    fn deref(&self) -> &Server {
        self.server
    }
}

impl std::ops::DerefMut for Resetting<'_> {
    fn deref_mut(&mut self) -> &mut Server {
        self.server
    }
}

impl Drop for Resetting<'_> {
    fn drop(&mut self) {
        self.server.set_state(ServerState::Active);
        self.pool.used.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A server connection lent to one client; returned to the pool on drop.
pub struct ServerGuard {
    pool: Arc<Pool>,
    server: Option<Box<Server>>,
}

impl ServerGuard {
    pub fn server(&self) -> &Server {
        match &self.server {
            Some(s) => s,
            None => unreachable!("server taken before drop"),
        }
    }

    pub fn server_mut(&mut self) -> &mut Server {
        match &mut self.server {
            Some(s) => s,
            None => unreachable!("server taken before drop"),
        }
    }
}

impl ServerGuard {
    /// Checks the connection in with the caller's copy of the pool state (dropping the guard
    /// does the same but reads the state again).
    pub fn release(mut self, st: &PoolState) {
        if let Some(s) = self.server.take() {
            self.pool.checkin(s, st);
        }
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            self.pool.checkin(s, &self.pool.state());
        }
    }
}
