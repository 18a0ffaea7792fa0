//! Configuration changes of a live pool: a new `PoolState` (a new generation when old
//! connections can no longer serve), removal, and the admin console's KILL and RECONNECT.

use super::*;

impl Pool {
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
        // Every waiting client is told (a queue entry dropped would leave it waiting).
        for w in waiters {
            let _ = w.send(Grant::Removed);
        }
        for s in idle {
            s.close("pool removed");
        }
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
}
