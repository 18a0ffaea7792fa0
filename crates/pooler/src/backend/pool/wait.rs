//! A waiting client's place in its pool's queue: one small allocation per client, made at its
//! first wait and reused by every later one, instead of a channel per wait. A client that waits
//! at every transaction (more clients than server connections, the common case under load)
//! would otherwise allocate, wake through and free a channel each time.
//!
//! Each wait has a sequence number; the queue entry (`Waiter`) carries the number of the wait
//! it was made for, and a grant is accepted only by that wait while it is still waiting. So an
//! entry left behind by a wait that was given up (a cancel, a shutdown) can neither wake nor
//! feed a later wait of the same client: its grant goes to the next waiter instead.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Poll, Waker};

use parking_lot::Mutex;

use super::Grant;

/// A client's reusable wait slot (empty until the client first waits).
#[derive(Default)]
pub struct WaitPlace(Option<Arc<Slot>>);

#[derive(Default)]
pub(super) struct Slot(Mutex<SlotState>);

#[derive(Default)]
struct SlotState {
    /// The current (or last) wait's number.
    seq: u64,
    /// A wait is under way and has not been granted yet.
    waiting: bool,
    waker: Option<Waker>,
    grant: Option<Grant>,
}

impl WaitPlace {
    /// Starts a new wait: the slot and the wait's number, for its queue entry.
    pub(super) fn arm(&mut self) -> (Arc<Slot>, u64) {
        let slot = self.0.get_or_insert_with(Arc::default);
        let mut s = slot.0.lock();
        s.seq = s.seq.wrapping_add(1);
        s.waiting = true;
        s.grant = None;
        (slot.clone(), s.seq)
    }

    /// Waits for the grant of wait `seq` (the one `arm` started). If this future is dropped
    /// first, the wait is given up (see `Disarm`).
    pub(super) async fn granted(&self, seq: u64, pool: &Arc<super::Pool>) -> Grant {
        let slot = self.0.as_ref().expect("armed before waiting");
        let mut disarm = Disarm {
            slot,
            seq,
            pool,
            done: false,
        };
        let g = poll_fn(|cx| slot.poll_grant(cx.waker())).await;
        disarm.done = true;
        g
    }
}

/// Gives up a wait whose future was dropped before its grant was taken: later grants for it are
/// refused (and go to the next waiter), and one that already arrived goes back to the pool.
struct Disarm<'a> {
    slot: &'a Arc<Slot>,
    seq: u64,
    pool: &'a Arc<super::Pool>,
    done: bool,
}

impl Drop for Disarm<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let grant = self.slot.give_up(self.seq);
        match grant {
            // A connection handed over just before the wait was given up is checked in again
            // (to the next waiter, or the idle list), not closed.
            Some(Grant::Server(server)) => {
                self.pool
                    .checkin(server, &self.pool.state(), crate::stats::now_us());
            }
            // A reserved slot is freed (or passed on) by dropping it.
            Some(g) => drop(g),
            None => {}
        }
    }
}

impl Slot {
    /// Hands `grant` to wait `seq` if that wait is still waiting; gives it back otherwise.
    pub(super) fn send(&self, seq: u64, grant: Grant) -> Result<(), Grant> {
        let waker = {
            let mut s = self.0.lock();
            if !s.waiting || s.seq != seq {
                return Err(grant);
            }
            s.waiting = false;
            s.grant = Some(grant);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// The grant, once it has arrived; until then `waker` is woken when it does.
    fn poll_grant(&self, waker: &Waker) -> Poll<Grant> {
        let mut s = self.0.lock();
        if let Some(g) = s.grant.take() {
            return Poll::Ready(g);
        }
        match &s.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => s.waker = Some(waker.clone()),
        }
        Poll::Pending
    }

    /// Ends wait `seq` unanswered: later grants for it are refused; one that already arrived
    /// is returned. Nothing if a later wait has started since.
    fn give_up(&self, seq: u64) -> Option<Grant> {
        let mut s = self.0.lock();
        if s.seq != seq {
            return None;
        }
        s.waiting = false;
        s.waker = None;
        s.grant.take()
    }

    /// True when wait `seq` is over (granted or given up): its queue entry is stale.
    pub(super) fn is_closed(&self, seq: u64) -> bool {
        let s = self.0.lock();
        !s.waiting || s.seq != seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Context;

    fn expired(g: Poll<Grant>) -> bool {
        matches!(g, Poll::Ready(Grant::Expired))
    }

    #[test]
    fn a_grant_reaches_only_the_wait_it_was_queued_for() {
        let waker = Waker::noop();
        let mut place = WaitPlace::default();
        let (slot, first) = place.arm();
        assert!(slot.poll_grant(waker).is_pending());
        assert!(!slot.is_closed(first));
        assert!(slot.send(first, Grant::Expired).is_ok());
        assert!(slot.is_closed(first), "a granted wait's entry is stale");
        // A second grant for the same wait is refused (the pool passes it on).
        assert!(slot.send(first, Grant::Expired).is_err());
        assert!(expired(slot.poll_grant(waker)));

        // The next wait reuses the slot; the first wait's entry can no longer feed it.
        let (again, second) = place.arm();
        assert!(Arc::ptr_eq(&slot, &again), "one slot per client, reused");
        assert_ne!(first, second);
        assert!(slot.send(first, Grant::Expired).is_err());
        assert!(slot.poll_grant(waker).is_pending());
        assert!(slot.send(second, Grant::Expired).is_ok());
        assert!(expired(slot.poll_grant(waker)));
    }

    #[test]
    fn a_wait_given_up_refuses_later_grants_and_returns_an_early_one() {
        let waker = Waker::noop();
        let mut place = WaitPlace::default();
        let (slot, seq) = place.arm();
        assert!(slot.give_up(seq).is_none());
        assert!(slot.is_closed(seq));
        assert!(slot.send(seq, Grant::Expired).is_err());

        // Granted, then given up before the grant was taken: the grant comes back.
        let (slot, seq) = place.arm();
        assert!(slot.send(seq, Grant::Expired).is_ok());
        assert!(matches!(slot.give_up(seq), Some(Grant::Expired)));
        assert!(slot.poll_grant(waker).is_pending());

        // Giving up an older wait touches nothing of the current one.
        let (slot, current) = place.arm();
        assert!(slot.give_up(seq).is_none());
        assert!(!slot.is_closed(current));
        assert!(slot.send(current, Grant::Expired).is_ok());
    }

    #[test]
    fn the_grant_wakes_the_waiting_task() {
        struct Count(std::sync::atomic::AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(Default::default()));
        let waker = Waker::from(count.clone());
        let cx = Context::from_waker(&waker);
        let mut place = WaitPlace::default();
        let (slot, seq) = place.arm();
        assert!(slot.poll_grant(cx.waker()).is_pending());
        assert!(
            slot.poll_grant(cx.waker()).is_pending(),
            "polled again: one waker kept"
        );
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert!(slot.send(seq, Grant::Expired).is_ok());
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(expired(slot.poll_grant(cx.waker())));
    }
}
