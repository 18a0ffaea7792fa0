//! One client's notification queue, counted in bytes: the pool's listener offers each
//! notification to the client's `Sink`; the client's task takes them from its `Inbox` and
//! writes them out. Past a budget the sink refuses, marks the client over budget and wakes its
//! task, which disconnects it.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::sync::mpsc;

use super::Budget;

/// While the pooler is past its total budget, a client with more than this queued (or its own
/// budget, if smaller) gets nothing more; clients that keep up (less queued) still receive.
pub const FAIR_SHARE: usize = 64 * 1024;

/// What a queued notification is counted as: its bytes and roughly what holding it costs
/// besides (the shared buffer's header, the channel's slot).
#[inline]
fn cost(msg: &Bytes) -> usize {
    msg.len() + 64
}

/// Which budget a client went past, and its size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    Client(usize),
    Total(usize),
}

const NOT_OVER: u8 = 0;
const OVER_CLIENT: u8 = 1;
const OVER_TOTAL: u8 = 2;

struct Shared {
    /// Bytes in the queue, as `cost` counts them.
    queued: AtomicUsize,
    over: AtomicU8,
    /// The value of the budget that was passed (when `over` is set).
    limit: AtomicUsize,
    /// The client's task, woken when it goes over budget.
    waker: AtomicWaker,
    budget: Arc<Budget>,
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
        if s.over.load(Ordering::Relaxed) != NOT_OVER {
            return Offer::OverBudget;
        }
        if self.tx.is_closed() {
            return Offer::Gone;
        }
        let cost = cost(msg);
        let queued = s.queued.load(Ordering::Relaxed);
        let client = s.budget.client_limit();
        let total = s.budget.total_limit();
        let over = if queued + cost > client {
            Some((OVER_CLIENT, client))
        } else if s.budget.used() + cost > total && queued + cost > FAIR_SHARE.min(client) {
            Some((OVER_TOTAL, total))
        } else {
            None
        };
        if let Some((which, limit)) = over {
            s.limit.store(limit, Ordering::Relaxed);
            s.over.store(which, Ordering::Release);
            s.waker.wake();
            return Offer::OverBudget;
        }
        s.queued.fetch_add(cost, Ordering::Relaxed);
        s.budget.take(cost);
        if self.tx.send(msg.clone()).is_err() {
            s.queued.fetch_sub(cost, Ordering::Relaxed);
            s.budget.give_back(cost);
            return Offer::Gone;
        }
        Offer::Queued
    }
}

/// The client's end of its queue. Dropping it frees what is still queued.
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Bytes>,
    shared: Arc<Shared>,
}

impl Inbox {
    pub fn new(budget: Arc<Budget>) -> (Sink, Inbox) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(0),
            over: AtomicU8::new(NOT_OVER),
            limit: AtomicUsize::new(0),
            waker: AtomicWaker::new(),
            budget,
        });
        (
            Sink {
                tx,
                shared: shared.clone(),
            },
            Inbox { rx, shared },
        )
    }

    /// The next notification; Pending once the client is over budget (see `poll_over`).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.shared.over.load(Ordering::Relaxed) != NOT_OVER {
            return Poll::Pending;
        }
        let r = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(msg)) = &r {
            self.release(cost(msg));
        }
        r
    }

    /// A notification already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Bytes> {
        if self.shared.over.load(Ordering::Relaxed) != NOT_OVER {
            return None;
        }
        let msg = self.rx.try_recv().ok()?;
        self.release(cost(&msg));
        Some(msg)
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
        let limit = || self.shared.limit.load(Ordering::Relaxed);
        match self.shared.over.load(Ordering::Acquire) {
            OVER_CLIENT => Some(Over::Client(limit())),
            OVER_TOTAL => Some(Over::Total(limit())),
            _ => None,
        }
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
        // Closed first: the listener's later offers fail instead of queueing.
        self.rx.close();
        let mut freed = 0;
        while let Ok(msg) = self.rx.try_recv() {
            let c = cost(&msg);
            self.release(c);
            freed += c;
        }
        if freed > 0 {
            self.shared.budget.freed(freed);
        }
    }
}
