//! Admission before authentication: what a client that has not logged in yet may hold.
//!
//! An accepted socket costs a descriptor and a task before it says anything, so a crowd of idle
//! connections (nothing sent) could use up the process's open-files limit and starve every other
//! service, the store and the cluster supervisor. Three bounds, checked at accept time, keep that
//! from happening; a socket over any of them is accepted and closed at once (so the kernel's
//! backlog keeps draining) and counted in the service's [`Refusals`]:
//!
//! - per service, at most `ClientLimits::max_pending_logins` sockets that have not finished
//!   logging in ([`PendingLogin`] is one of them; it ends when the password is checked);
//! - per process, at most [`SocketBudget`]'s limit of client sockets of all services together
//!   (`Pooler::set_client_socket_limit`: the binary sets it to the open-files limit minus a
//!   reserve for its own work);
//! - per service, `max_client_conn` (checked at login, answered with 53300).
//!
//! A pending login also ends after `ClientLimits::login_timeout` (PgBouncer's
//! `client_login_timeout`), counted as `login_timeout`.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Why a connection was refused before it logged in: the `reason` label of
/// `pgbay_pooler_refused_connections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// The service's port had `max_pending_logins` sockets still logging in.
    PendingLogins,
    /// The process's client sockets reached the open-files limit minus the reserve.
    FdReserve,
    /// The service had `max_client_conn` clients.
    MaxClientConn,
    /// The client did not finish logging in within `login_timeout`.
    LoginTimeout,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 4] = [
        RefusalReason::PendingLogins,
        RefusalReason::FdReserve,
        RefusalReason::MaxClientConn,
        RefusalReason::LoginTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::PendingLogins => "pending_logins",
            RefusalReason::FdReserve => "fd_reserve",
            RefusalReason::MaxClientConn => "max_client_conn",
            RefusalReason::LoginTimeout => "login_timeout",
        }
    }
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// At most one warning per reason and service in this interval: a flood must not flood the log.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// One service's refusal counters.
#[derive(Default)]
pub(crate) struct Refusals {
    counts: [AtomicU64; 4],
    warned: Mutex<[Option<Instant>; 4]>,
}

impl Refusals {
    /// Counts one refusal; true when it is time to log a warning about `reason` again.
    pub fn count(&self, reason: RefusalReason) -> bool {
        let i = reason as usize;
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut warned = self.warned.lock();
        if warned[i].is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            return false;
        }
        warned[i] = Some(now);
        true
    }

    pub fn get(&self, reason: RefusalReason) -> u64 {
        self.counts[reason as usize].load(Ordering::Relaxed)
    }
}

/// The process-wide count of pooler client sockets and its limit.
pub(crate) struct SocketBudget {
    open: AtomicU32,
    max: AtomicU32,
}

impl Default for SocketBudget {
    fn default() -> Self {
        SocketBudget {
            open: AtomicU32::new(0),
            max: AtomicU32::new(u32::MAX),
        }
    }
}

impl SocketBudget {
    pub fn set_max(&self, max: u32) {
        self.max.store(max, Ordering::Relaxed);
    }

    pub fn open(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }

    /// One more client socket, unless the limit is reached.
    pub fn try_take(self: &Arc<Self>) -> Option<SocketPermit> {
        let max = self.max.load(Ordering::Relaxed);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(SocketPermit(self.clone()))
    }
}

/// One client socket of the budget, given back on drop.
pub(crate) struct SocketPermit(Arc<SocketBudget>);

impl Drop for SocketPermit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A service's count of sockets still logging in.
#[derive(Default)]
pub(crate) struct PendingLogins(Arc<AtomicU32>);

impl PendingLogins {
    /// One more pending login, unless `max` are pending already.
    pub fn try_take(&self, max: u32) -> Option<PendingLogin> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(PendingLogin(self.0.clone()))
    }

    pub fn count(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A socket that has not finished logging in; dropped once its password is checked.
pub struct PendingLogin(Arc<AtomicU32>);

impl Drop for PendingLogin {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_refuse_past_their_limit_and_free_on_drop() {
        let budget = Arc::new(SocketBudget::default());
        budget.set_max(2);
        let a = budget.try_take().expect("first");
        let _b = budget.try_take().expect("second");
        assert!(budget.try_take().is_none());
        drop(a);
        assert!(budget.try_take().is_some());

        let pending = PendingLogins::default();
        let p = pending.try_take(1).expect("first");
        assert!(pending.try_take(1).is_none());
        assert_eq!(pending.count(), 1);
        drop(p);
        assert_eq!(pending.count(), 0);
    }

    #[test]
    fn refusals_count_every_time_and_warn_once_per_interval() {
        let r = Refusals::default();
        assert!(r.count(RefusalReason::PendingLogins));
        assert!(!r.count(RefusalReason::PendingLogins));
        assert!(r.count(RefusalReason::LoginTimeout));
        assert_eq!(r.get(RefusalReason::PendingLogins), 2);
        assert_eq!(r.get(RefusalReason::FdReserve), 0);
    }
}
