//! The pooler-wide side of the notification budgets: the limits, the bytes queued for all
//! clients together, a rate limit on the log lines about clients disconnected for their
//! notifications, and giving freed memory back to the system.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::queue::Shared;
use crate::config::NotifyBudget;
use crate::log_window::LogWindow;

/// At most this many lines about disconnected clients per `LOG_WINDOW`; the first line of the
/// next window says how many were left out.
pub const LOG_BURST: u32 = 10;
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// Freed queue bytes after which the allocator is asked to return free memory.
const TRIM_AFTER: usize = 4 << 20;
/// At most one trim per this long (a trim walks the whole heap).
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// Shared by every pool's listener and every subscribed client of one `Pooler`.
pub struct Budget {
    client: AtomicUsize,
    total: AtomicUsize,
    /// Bytes queued for all clients, as `queue::cost` counts them.
    used: AtomicUsize,
    /// Of `used`, what is queued for clients already disconnected for their budget, freed as
    /// soon as their tasks drop their queues: not counted against the total meanwhile, so that
    /// one slow client is not followed by others while its memory is being given back.
    doomed: AtomicUsize,
    /// Every client's queue, for finding the largest when the total is passed.
    pub(super) members: Mutex<HashMap<usize, Weak<Shared>>>,
    log: LogWindow,
    trim: Mutex<TrimState>,
}

#[derive(Default)]
struct TrimState {
    freed: usize,
    last: Option<Instant>,
    /// A trim is due (waiting out `TRIM_EVERY`), or one ran and the frees since are watched.
    scheduled: bool,
}

impl Budget {
    pub fn new(limits: NotifyBudget) -> Budget {
        Budget {
            client: AtomicUsize::new(limits.client_bytes),
            total: AtomicUsize::new(limits.total_bytes),
            used: AtomicUsize::new(0),
            doomed: AtomicUsize::new(0),
            members: Mutex::default(),
            log: LogWindow::new(LOG_BURST, LOG_WINDOW),
            trim: Mutex::default(),
        }
    }

    pub fn set(&self, limits: NotifyBudget) {
        self.client.store(limits.client_bytes, Ordering::Relaxed);
        self.total.store(limits.total_bytes, Ordering::Relaxed);
    }

    pub fn client_limit(&self) -> usize {
        self.client.load(Ordering::Relaxed)
    }

    pub fn total_limit(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Bytes queued for all clients right now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Bytes queued for clients still served (see `doomed`).
    pub(super) fn live(&self) -> usize {
        self.used()
            .saturating_sub(self.doomed.load(Ordering::Relaxed))
    }

    pub(super) fn doom(&self, bytes: usize) {
        self.doomed.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(super) fn undoom(&self, bytes: usize) {
        self.doomed.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub(super) fn take(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(super) fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Whether a line about one more disconnected client may be logged now, and how many were
    /// left out before it.
    pub fn may_log(&self) -> Option<u64> {
        self.log.may_log()
    }

    /// A client's queue was dropped with `bytes` still in it. glibc's malloc keeps freed
    /// memory in its arenas (one per thread that allocated), so after large frees the pages are
    /// handed back explicitly (`malloc_trim`, on a blocking thread, at most once per
    /// `TRIM_EVERY`: frees during that time are trimmed at its end). A trim is followed by
    /// another one `TRIM_EVERY` later while queues are still being freed, so that the tail of
    /// a burst of disconnections, smaller than `TRIM_AFTER`, is given back too.
    pub fn freed(self: &Arc<Self>, bytes: usize) {
        let mut t = self.trim.lock();
        t.freed = t.freed.saturating_add(bytes);
        if t.freed < TRIM_AFTER || t.scheduled {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let wait = t
            .last
            .map(|l| TRIM_EVERY.saturating_sub(l.elapsed()))
            .unwrap_or_default();
        t.scheduled = true;
        drop(t);
        let me = self.clone();
        rt.spawn(async move {
            tokio::time::sleep(wait).await;
            loop {
                {
                    let mut t = me.trim.lock();
                    t.freed = 0;
                    t.last = Some(Instant::now());
                }
                let _ = tokio::task::spawn_blocking(trim).await;
                tokio::time::sleep(TRIM_EVERY).await;
                let mut t = me.trim.lock();
                if t.freed == 0 {
                    t.scheduled = false;
                    break;
                }
            }
        });
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks and releases the allocator's own free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
