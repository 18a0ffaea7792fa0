//! Lending server connections: the idle list, the FIFO of waiters, connecting within the
//! pool's size (`SlotToken`), and checking connections back in (`ServerGuard`, `Resetting`).

use super::*;

impl Pool {
    /// Counts `server` as SV_USED until the returned guard is dropped: its client is done with
    /// it and it is being reset.
    pub fn resetting<'a>(&'a self, server: &'a mut Server) -> Resetting<'a> {
        server.set_state(ServerState::Used);
        Resetting { server }
    }

    /// The fast path of `acquire`: an idle connection, if there is one, without waiting.
    /// `st` is the caller's copy of `state()` (see `state_version`); `now_us` the caller's
    /// latest `stats::now_us` reading (its request's start: a clock read saved).
    pub fn try_acquire(self: &Arc<Self>, st: &PoolState, now_us: u64) -> Option<ServerGuard> {
        if self.drain.is_cancelled() {
            return None;
        }
        loop {
            let s = self.hot.inner.lock().idle.pop()?;
            if let Some(g) = self.lend(s, st, now_us) {
                return Some(g);
            }
        }
    }

    /// Lends a connection taken from the idle list if it may still serve; closes it otherwise.
    /// (`server_lifetime` is checked at check-in and by the upkeep, not here: a clock read
    /// per transaction saved, at the price of a connection living up to one `upkeep::TICK` longer.)
    fn lend(
        self: &Arc<Self>,
        mut s: Box<Server>,
        st: &PoolState,
        now_us: u64,
    ) -> Option<ServerGuard> {
        if s.gen == st.gen && s.is_alive(now_us) {
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
    /// `st` is the caller's copy of `state()`, `now_us` its latest `stats::now_us` reading (the
    /// wait's start), and `place` the client's wait slot, reused from one wait to the next.
    pub async fn acquire(
        self: &Arc<Self>,
        st: &PoolState,
        now_us: u64,
        place: &mut WaitPlace,
    ) -> Result<ServerGuard, AcquireError> {
        let since_us = now_us;
        let wait_timeout = st.wait_timeout;
        let deadline_us = since_us.saturating_add(wait_timeout.as_micros() as u64);
        let mut backoff = Duration::from_millis(50);
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
                    let (slot, seq) = place.arm();
                    inner.waiters.push_back(Waiter {
                        slot,
                        seq,
                        since_us,
                        deadline_us,
                    });
                    Err(seq)
                }
            };
            let grant = match waiting {
                Ok(g) => g,
                // A waiter is removed from the queue by whoever sends to it, so it gets
                // exactly one grant (or the expiry).
                Err(seq) => place.granted(seq, self).await,
            };
            match grant {
                // A connection handed over by a check-in was in use until then, so the wait's
                // start is a recent enough reading for `lend`'s idle probe (no clock read); the
                // pool's state is read again only if the caller's copy is older than it.
                Grant::Server(s) => {
                    let fresh;
                    let st = if s.gen == st.gen {
                        st
                    } else {
                        fresh = self.state();
                        &fresh
                    };
                    if let Some(g) = self.lend(s, st, now_us) {
                        return Ok(g);
                    }
                }
                Grant::Connect(slot) => match self.connect(slot).await {
                    Ok(mut s) => {
                        s.set_state(ServerState::Active);
                        return Ok(ServerGuard {
                            pool: self.clone(),
                            server: Some(s),
                        });
                    }
                    // Held: the server may come back, or a new configuration (a failover)
                    // name another one; the next attempt reads the pool's state again.
                    Err(e)
                        if e.is_unavailable()
                            && age(crate::stats::now_us(), since_us) + backoff
                                < self.state().backend.unavailable_hold.min(wait_timeout) =>
                    {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_millis(500));
                    }
                    Err(e) => return Err(e.into()),
                },
                Grant::Expired => return Err(AcquireError::Timeout(wait_timeout)),
                Grant::Removed => return Err(AcquireError::Removed),
            }
        }
    }

    pub(super) async fn connect(
        self: &Arc<Self>,
        slot: SlotToken,
    ) -> Result<Box<Server>, ServerError> {
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
                if let Some(not_logged) = self.connect_log.may_log() {
                    tracing::warn!(
                        service = %self.service,
                        pool = %self.name,
                        error = %e,
                        not_logged,
                        "server connection failed (logged at most {} times per 10 s)",
                        super::CONNECT_LOG_BURST
                    )
                }
            }
        }
        result
    }

    /// The ParameterStatus set for logins; connects once to learn it if needed.
    pub async fn login_params(self: &Arc<Self>) -> Result<LoginParams, AcquireError> {
        if let Some(p) = self.login_params.lock().clone() {
            return Ok(p);
        }
        let guard = self
            .acquire(
                &self.state(),
                crate::stats::now_us(),
                &mut WaitPlace::default(),
            )
            .await?;
        let params = Arc::new(guard.server().startup_params.clone());
        let mut guard = guard;
        guard.server_mut().clean = true;
        drop(guard);
        *self.login_params.lock() = Some(params.clone());
        Ok(params)
    }

    /// Takes a connection back. Connections that are not clean, too old, from an older
    /// configuration or beyond the pool's size are closed.
    /// `now`: a `stats::now_us` reading taken just before (the caller's, or a new one).
    pub(super) fn checkin(self: &Arc<Self>, server: Box<Server>, st: &PoolState, now: u64) {
        let unusable = if server.close_reason.is_some() {
            server.close_reason
        } else if !server.clean || server.status != txn::IDLE || !server.bufs.is_empty() {
            Some("not at a clean transaction boundary")
        } else if server.gen != st.gen {
            Some("pool configuration changed")
        } else if age(now, server.created_us) >= st.settings.server_lifetime {
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
        server.last_used_us = now;
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
            match w.send(Grant::Server(server)) {
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
            match w.send(Grant::Connect(SlotToken {
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
    pub(super) fn grant_slots(self: &Arc<Self>) {
        let mut inner = self.hot.inner.lock();
        while inner.total < inner.size {
            let Some(w) = inner.waiters.pop_front() else {
                break;
            };
            inner.total += 1;
            if let Err(g) = w.send(Grant::Connect(SlotToken {
                pool: Arc::downgrade(self),
            })) {
                std::mem::forget(g);
                inner.total -= 1;
            }
        }
    }
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
    /// Checks the connection in with the caller's copy of the pool state and its latest
    /// `stats::now_us` reading (dropping the guard does the same but reads both again).
    pub fn release(mut self, st: &PoolState, now_us: u64) {
        if let Some(s) = self.server.take() {
            self.pool.checkin(s, st, now_us);
        }
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            self.pool
                .checkin(s, &self.pool.state(), crate::stats::now_us());
        }
    }
}

/// How long ago `since` was, both in `stats::now_us` time.
pub(super) fn age(now_us: u64, since_us: u64) -> Duration {
    Duration::from_micros(now_us.saturating_sub(since_us))
}
