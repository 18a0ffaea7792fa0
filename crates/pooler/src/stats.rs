//! Named connection states, PgBouncer style, and the per-pool counts of each: what
//! `Pooler::pool_stats` returns and what the admin console's SHOW POOLS will read.
//!
//! One source of truth, as PgBouncer's state lists are: each connection's state is kept in its
//! own SHOW CLIENTS/SERVERS entry (`sockets::SocketInfo`, a relaxed store by the connection
//! itself, never a shared write), and the counts of SHOW POOLS and the metrics are those
//! entries counted when asked (`Pool::stats`). Only what has no entry yet is counted apart:
//! server connections being made (`sv_login`, under the pool's lock) and the wait queue's age.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Client connection states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// CL_IDLE: logged in, no server connection, waiting for the client to send.
    Idle = 0,
    /// CL_WAITING: has sent a query, waiting for a server connection (queued, or while one is
    /// being made for it).
    Waiting = 1,
    /// CL_ACTIVE: attached to a server connection.
    Active = 2,
}

/// Server connection states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// SV_LOGIN: being connected and logged in.
    Login,
    /// SV_IDLE: in the pool, ready to be lent.
    Idle,
    /// SV_ACTIVE: lent to a client.
    Active,
    /// SV_USED: its client is done with it and it is being reset (DISCARD ALL) before it may
    /// serve anyone else.
    Used,
}

/// Counts of one pool's connections by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    pub cl_active: u32,
    pub cl_waiting: u32,
    pub cl_idle: u32,
    pub sv_active: u32,
    pub sv_idle: u32,
    pub sv_used: u32,
    pub sv_login: u32,
    /// How long the oldest client in the wait queue has been waiting (zero when none is).
    pub maxwait: Duration,
}

/// PgBouncer's cumulative per-pool counters (SHOW STATS_TOTALS, Prometheus `_total` series).
/// Times are in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolTotals {
    /// Times a server connection was assigned to a client (a check-out).
    pub server_assignments: u64,
    /// Transactions: from the first query after the connection was idle to the ReadyForQuery
    /// that says idle again.
    pub xacts: u64,
    /// Queries: requests a client sent after a ReadyForQuery (a simple Query, or an extended
    /// protocol batch up to its Sync).
    pub queries: u64,
    /// Bytes received from clients.
    pub received: u64,
    /// Bytes sent to clients (what the server answered).
    pub sent: u64,
    pub xact_time_us: u64,
    pub query_time_us: u64,
    /// Time clients spent in CL_WAITING.
    pub wait_time_us: u64,
    /// Parse messages from clients.
    pub client_parses: u64,
    /// Parse messages sent to servers (with prepared statement tracking, fewer than clients'
    /// when a server already has the statement).
    pub server_parses: u64,
    /// Bind messages from clients.
    pub client_binds: u64,
    /// Bind messages sent to servers.
    pub server_binds: u64,
}

impl PoolTotals {
    /// Field-wise `self - earlier` (for averages over a period).
    pub fn since(&self, earlier: &PoolTotals) -> PoolTotals {
        let mut out = PoolTotals::default();
        for ((o, a), b) in out
            .fields_mut()
            .into_iter()
            .zip(self.fields())
            .zip(earlier.fields())
        {
            *o = a.saturating_sub(b);
        }
        out
    }

    pub fn fields(&self) -> [u64; 12] {
        [
            self.server_assignments,
            self.xacts,
            self.queries,
            self.received,
            self.sent,
            self.xact_time_us,
            self.query_time_us,
            self.wait_time_us,
            self.client_parses,
            self.server_parses,
            self.client_binds,
            self.server_binds,
        ]
    }

    fn fields_mut(&mut self) -> [&mut u64; 12] {
        [
            &mut self.server_assignments,
            &mut self.xacts,
            &mut self.queries,
            &mut self.received,
            &mut self.sent,
            &mut self.xact_time_us,
            &mut self.query_time_us,
            &mut self.wait_time_us,
            &mut self.client_parses,
            &mut self.server_parses,
            &mut self.client_binds,
            &mut self.server_binds,
        ]
    }
}

/// A pool's `PoolTotals` as atomics. Nobody adds to them per message: each client accumulates
/// its own `Tally` and folds it in with one add per non-zero field when a transaction ends (or
/// when it leaves), so the shared cache line is written once per transaction.
#[derive(Debug, Default)]
pub(crate) struct PoolCounters([AtomicU64; 12]);

impl PoolCounters {
    pub fn add(&self, t: &PoolTotals) {
        for (c, v) in self.0.iter().zip(t.fields()) {
            if v != 0 {
                c.fetch_add(v, Ordering::Relaxed);
            }
        }
    }

    pub fn get(&self) -> PoolTotals {
        let mut out = PoolTotals::default();
        for (o, c) in out.fields_mut().into_iter().zip(&self.0) {
            *o = c.load(Ordering::Relaxed);
        }
        out
    }
}

/// Monotonic microseconds: the clock of the counters. One `clock_gettime` and a subtraction
/// per interval, where `Instant` arithmetic (`duration_since` normalising a timespec, then
/// `as_micros` in 128 bits) costs several times the read itself, twice per transaction.
#[inline]
pub(crate) fn now_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given, which lives on this stack
    // frame; CLOCK_MONOTONIC cannot fail on the platforms pgbay runs on.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// One client's counts not yet folded into its pool's `PoolCounters`, and the start of its
/// current query and transaction in `now_us` time (0: none running). A clock read per query
/// start and per ReadyForQuery are the only clock reads on the hot path.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub t: PoolTotals,
    query_start: u64,
    xact_start: u64,
    /// The latest clock reading (`now_us`) taken here, for the check-out and check-in around
    /// it to use instead of reading the clock again.
    clock: u64,
}

impl Tally {
    /// More of a request arrives from the client: a query starts unless one is running.
    #[inline]
    pub fn query_starts(&mut self) {
        if self.query_start == 0 {
            self.start_query_at(now_us());
        }
    }

    /// A request arrives and needs a server connection: `query_starts`, returning the clock's
    /// reading (`now_us`, always a new one) for the check-out that follows.
    #[inline]
    pub fn request_starts(&mut self) -> u64 {
        let now = now_us();
        if self.query_start == 0 {
            self.start_query_at(now);
        }
        self.clock = now;
        now
    }

    /// `now_us` when the running query started (0: none is).
    pub fn query_start(&self) -> u64 {
        self.query_start
    }

    /// The latest `now_us` reading taken by this tally (at a request's or query's start, after
    /// a wait or at a ReadyForQuery): for checking a server connection in right after its last
    /// ReadyForQuery, where a reading older than that (a period that ended otherwise) only
    /// makes its next check-out probe it sooner and its `server_lifetime` end a moment later.
    pub fn clock(&self) -> u64 {
        self.clock
    }

    fn start_query_at(&mut self, now: u64) {
        self.clock = now;
        self.t.queries += 1;
        self.query_start = now;
        if self.xact_start == 0 {
            self.t.xacts += 1;
            self.xact_start = now;
        }
    }

    /// The client got a server connection after waiting for one since its query started: the
    /// wait is counted as such, and the query (and transaction) time starts now.
    pub fn waited(&mut self) {
        let q = self.query_start;
        if q != 0 {
            let now = now_us();
            self.clock = now;
            self.t.wait_time_us += now.saturating_sub(q);
            self.query_start = now;
            if self.xact_start == q {
                self.xact_start = now;
            }
        }
    }

    /// The server said ReadyForQuery: the query is over, and the transaction too when `idle`,
    /// then everything is folded into `counters`.
    #[inline]
    pub fn ready(&mut self, idle: bool, counters: &PoolCounters) {
        let now = now_us();
        self.clock = now;
        if self.query_start != 0 {
            self.t.query_time_us += now.saturating_sub(self.query_start);
            self.query_start = 0;
        }
        if idle {
            if self.xact_start != 0 {
                self.t.xact_time_us += now.saturating_sub(self.xact_start);
                self.xact_start = 0;
            }
            self.fold(counters);
        }
    }

    /// Adds what was counted to the pool and starts over (the running query stays running).
    pub fn fold(&mut self, counters: &PoolCounters) {
        counters.add(&self.t);
        self.t = PoolTotals::default();
    }
}
