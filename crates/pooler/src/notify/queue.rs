//! One client's notification queue, counted in bytes: the pool's listener offers each
//! notification to the client's `Sink`; the client's task takes them from its `Inbox` and
//! writes them out. Past its own budget the sink refuses, marks the client over budget and
//! wakes its task, which disconnects it. Past the pooler's total, the client with the most
//! queued (whichever pool it is in) is the one disconnected: clients that keep up are spared.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::Budget;

/// What a queued notification is counted as: its bytes and roughly what holding it costs
/// besides (the shared buffer's header, the channel's slot).
#[inline]
fn cost(msg: &Bytes) -> usize {
    msg.len() + 64
}

/// The channel a NotificationResponse (`A`, length, sender's pid, channel, payload) is of.
fn notification_channel(msg: &[u8]) -> Option<&[u8]> {
    let rest = msg.get(9..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    Some(&rest[..end])
}

/// Which budget a client went past, and its size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    Client(usize),
    Total(usize),
}

pub(super) struct Shared {
    /// Bytes in the queue, as `cost` counts them.
    queued: AtomicUsize,
    /// `state.over` is set: read on every offer and receive without the lock.
    is_over: AtomicBool,
    state: Mutex<State>,
    /// The client's task, woken when it goes over budget.
    waker: AtomicWaker,
    budget: Arc<Budget>,
}

/// Changed only under the lock, by whoever kicks the client (its pool's listener, or another
/// pool's making room under the total) and by the queue's drop.
#[derive(Default)]
struct State {
    over: Option<Over>,
    /// What was queued when the client went over budget (counted in `Budget::doomed` until the
    /// queue is dropped).
    doomed: usize,
    /// The queue was dropped: nothing more to kick.
    closed: bool,
}

impl Shared {
    fn is_over(&self) -> bool {
        self.is_over.load(Ordering::Acquire)
    }
}

/// What the pool's listener holds for one subscribed client.
#[derive(Clone)]
pub struct Sink {
    tx: mpsc::UnboundedSender<Bytes>,
    shared: Arc<Shared>,
}

/// What became of an offered notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// Not queued: the client is (now) over a budget and will be disconnected.
    OverBudget,
    /// The client is gone.
    Gone,
}

impl Sink {
    pub fn offer(&self, msg: &Bytes) -> Offer {
        let s = &*self.shared;
        if s.is_over() {
            return Offer::OverBudget;
        }
        if self.tx.is_closed() {
            return Offer::Gone;
        }
        let cost = cost(msg);
        let budget = &s.budget;
        let client = budget.client_limit();
        if s.queued.load(Ordering::Relaxed) + cost > client {
            kick(s, Over::Client(client));
            return Offer::OverBudget;
        }
        if budget.live() + cost > budget.total_limit() && !make_room(&self.shared, cost) {
            return Offer::OverBudget;
        }
        s.queued.fetch_add(cost, Ordering::Relaxed);
        budget.take(cost);
        if self.tx.send(msg.clone()).is_err() {
            s.queued.fetch_sub(cost, Ordering::Relaxed);
            budget.give_back(cost);
            return Offer::Gone;
        }
        Offer::Queued
    }
}

/// Marks a client over budget (once) and wakes its task.
fn kick(s: &Shared, over: Over) {
    let mut st = s.state.lock();
    if st.over.is_some() || st.closed {
        return;
    }
    st.over = Some(over);
    st.doomed = s.queued.load(Ordering::Relaxed);
    s.budget.doom(st.doomed);
    s.is_over.store(true, Ordering::Release);
    drop(st);
    s.waker.wake();
}

/// The pooler is past its total budget: disconnects the clients with the most queued until
/// `cost` more fits. False when `me` is the one with the most (it gets nothing more). A
/// message that does not fit even with nothing else queued is let through.
#[cold]
fn make_room(me: &Arc<Shared>, cost: usize) -> bool {
    let budget = &me.budget;
    let total = budget.total_limit();
    let members = budget.members.lock();
    while budget.live() + cost > total {
        let largest = members
            .values()
            .filter_map(Weak::upgrade)
            .filter(|m| !m.is_over())
            .max_by_key(|m| m.queued.load(Ordering::Relaxed));
        let Some(victim) = largest else {
            return true;
        };
        if victim.queued.load(Ordering::Relaxed) == 0 {
            return true;
        }
        kick(&victim, Over::Total(total));
        if Arc::ptr_eq(&victim, me) {
            return false;
        }
    }
    true
}

/// The client's end of its queue. Dropping it frees what is still queued.
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Bytes>,
    /// What `drop_channels` took from `rx` and kept, in order: delivered before `rx`'s.
    front: VecDeque<Bytes>,
    shared: Arc<Shared>,
}

impl Inbox {
    pub fn new(budget: Arc<Budget>) -> (Sink, Inbox) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(0),
            is_over: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            waker: AtomicWaker::new(),
            budget,
        });
        shared
            .budget
            .members
            .lock()
            .insert(Arc::as_ptr(&shared) as usize, Arc::downgrade(&shared));
        (
            Sink {
                tx,
                shared: shared.clone(),
            },
            Inbox {
                rx,
                front: VecDeque::new(),
                shared,
            },
        )
    }

    /// The next notification; Pending once the client is over budget (see `poll_over`).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.shared.is_over() {
            return Poll::Pending;
        }
        if let Some(msg) = self.front.pop_front() {
            self.release(cost(&msg));
            return Poll::Ready(Some(msg));
        }
        let r = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(msg)) = &r {
            self.release(cost(msg));
        }
        r
    }

    /// A notification already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Bytes> {
        if self.shared.is_over() {
            return None;
        }
        let msg = match self.front.pop_front() {
            Some(msg) => msg,
            None => self.rx.try_recv().ok()?,
        };
        self.release(cost(&msg));
        Some(msg)
    }

    /// Drops the queued notifications of the channels `gone` says (given a channel's name as
    /// it is in the message); the others stay queued, in order. Returns how many it dropped.
    pub fn drop_channels(&mut self, gone: impl Fn(&[u8]) -> bool) -> usize {
        while let Ok(msg) = self.rx.try_recv() {
            self.front.push_back(msg);
        }
        let mut freed = 0;
        let mut dropped = 0;
        self.front.retain(|msg| {
            let keep = !notification_channel(msg).is_some_and(&gone);
            if !keep {
                freed += cost(msg);
                dropped += 1;
            }
            keep
        });
        if freed > 0 {
            self.release(freed);
            self.shared.budget.freed(freed);
        }
        dropped
    }

    /// Ready once the client went past a budget; registers the task to be woken when it does.
    pub fn poll_over(&self, cx: &mut Context<'_>) -> Poll<Over> {
        if let Some(over) = self.over() {
            return Poll::Ready(over);
        }
        self.shared.waker.register(cx.waker());
        match self.over() {
            Some(over) => Poll::Ready(over),
            None => Poll::Pending,
        }
    }

    pub fn over(&self) -> Option<Over> {
        if !self.shared.is_over() {
            return None;
        }
        self.shared.state.lock().over
    }

    pub fn budget(&self) -> &Arc<Budget> {
        &self.shared.budget
    }

    fn release(&self, cost: usize) {
        self.shared.queued.fetch_sub(cost, Ordering::Relaxed);
        self.shared.budget.give_back(cost);
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let budget = &self.shared.budget;
        budget
            .members
            .lock()
            .remove(&(Arc::as_ptr(&self.shared) as usize));
        // Closed first: the listener's later offers fail instead of queueing.
        self.rx.close();
        let mut freed = 0;
        for msg in std::mem::take(&mut self.front) {
            let c = cost(&msg);
            self.release(c);
            freed += c;
        }
        while let Ok(msg) = self.rx.try_recv() {
            let c = cost(&msg);
            self.release(c);
            freed += c;
        }
        {
            let mut st = self.shared.state.lock();
            st.closed = true;
            self.shared.budget.undoom(std::mem::take(&mut st.doomed));
        }
        if freed > 0 {
            self.shared.budget.freed(freed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NotifyBudget;

    fn note(channel: &str, payload: &str) -> Bytes {
        let mut body = 7u32.to_be_bytes().to_vec();
        body.extend_from_slice(channel.as_bytes());
        body.push(0);
        body.extend_from_slice(payload.as_bytes());
        body.push(0);
        let mut msg = vec![b'A'];
        msg.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        msg.extend_from_slice(&body);
        Bytes::from(msg)
    }

    #[test]
    fn dropping_channels_keeps_the_others_in_order_and_gives_back_their_bytes() {
        let budget = Arc::new(Budget::new(NotifyBudget::default()));
        let (sink, mut inbox) = Inbox::new(budget.clone());
        for (c, p) in [("a", "1"), ("b", "2"), ("ab", "3"), ("b", "4")] {
            assert_eq!(sink.offer(&note(c, p)), Offer::Queued);
        }
        let before = budget.live();
        assert_eq!(inbox.drop_channels(|c| c == b"b"), 2);
        assert_eq!(budget.live(), before - 2 * cost(&note("b", "2")));
        // Queued after the drop: behind what was kept.
        assert_eq!(sink.offer(&note("b", "5")), Offer::Queued);
        let mut got = Vec::new();
        while let Some(msg) = inbox.try_recv() {
            got.push(msg);
        }
        assert_eq!(got, [note("a", "1"), note("ab", "3"), note("b", "5")]);
        assert_eq!(budget.live(), 0);
    }
}
