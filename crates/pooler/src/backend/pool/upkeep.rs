//! A pool's periodic upkeep: server_idle_timeout, server_lifetime, query_wait_timeout and
//! min_pool_size, enforced by one timer per pool rather than one per connection or waiter.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::checkout::age;
use super::{Grant, Pool, SlotToken};

/// Period of a pool's upkeep (idle timeout, lifetime, min_pool_size, wait timeouts).
pub(super) const TICK: Duration = Duration::from_millis(250);

impl Pool {
    /// Idle timeout, lifetime, wait timeout and min_pool_size upkeep. Returns true when a
    /// slot was reserved for a new connection to reach min_pool_size.
    fn tick(self: &Arc<Self>) -> bool {
        let st = self.state();
        let now = Instant::now();
        let now_us = crate::stats::now_us();
        self.roll_averages(now);
        let mut closing = Vec::new();
        let want_new = {
            let mut inner = self.hot.inner.lock();
            // Waiters that gave up (their client left) or waited too long leave the queue.
            let mut i = 0;
            while i < inner.waiters.len() {
                let w = &inner.waiters[i];
                if w.is_closed() {
                    inner.waiters.remove(i);
                } else if w.deadline_us <= now_us {
                    if let Some(w) = inner.waiters.remove(i) {
                        let _ = w.send(Grant::Expired);
                    }
                } else {
                    i += 1;
                }
            }
            let min = st.settings.min_pool_size.min(inner.size);
            let mut remaining = inner.total;
            let mut i = 0;
            while i < inner.idle.len() {
                let s = &inner.idle[i];
                let too_old = age(now_us, s.created_us) >= st.settings.server_lifetime;
                let idle_too_long = st
                    .settings
                    .server_idle_timeout
                    .is_some_and(|t| age(now_us, s.last_used_us) >= t);
                let reason = if s.gen != st.gen {
                    Some("pool configuration changed")
                } else if too_old {
                    Some("server_lifetime reached")
                } else if idle_too_long && remaining > min {
                    Some("server_idle_timeout reached")
                } else {
                    None
                };
                if let Some(reason) = reason {
                    closing.push((inner.idle.swap_remove(i), reason));
                    remaining -= 1;
                } else {
                    i += 1;
                }
            }
            if remaining < min
                && inner.total < inner.size
                && inner.waiters.is_empty()
                && !inner.upkeep_connecting
                && !self.drain.is_cancelled()
            {
                inner.total += 1;
                inner.upkeep_connecting = true;
                true
            } else {
                false
            }
        };
        // Closed outside the lock: their slots give the capacity back.
        for (s, reason) in closing {
            s.close(reason);
        }
        want_new
    }
}

/// Periodic upkeep of one pool, until it is removed.
pub(super) async fn maintain(pool: Weak<Pool>, drain: CancellationToken) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = drain.cancelled() => return,
            _ = interval.tick() => {}
        }
        let Some(pool) = pool.upgrade() else { return };
        if pool.tick() {
            // Connecting may take seconds; the ticks (and wait timeouts) go on meanwhile.
            tokio::spawn(async move {
                let slot = SlotToken {
                    pool: Arc::downgrade(&pool),
                };
                match pool.connect(slot).await {
                    Ok(mut s) => {
                        s.clean = true;
                        pool.checkin(s, &pool.state(), crate::stats::now_us());
                    }
                    Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                }
                pool.hot.inner.lock().upkeep_connecting = false;
            });
        }
    }
}
