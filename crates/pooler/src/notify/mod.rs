//! Memory held for notifications that LISTENing clients have not read yet.
//!
//! In transaction and statement mode one listening server connection per pool fans each
//! notification out to its subscribed clients (`backend::listen`). It cannot wait for a slow
//! client (that would stall every other one), so what a client does not read piles up in the
//! pooler. Two byte budgets bound it (`NotifyBudget`): one per client, one for the whole pooler.
//! A client past its own budget gets nothing more and is disconnected (FATAL 53200 naming the
//! budget); past the total, the clients with the most queued are, so that clients that keep up
//! still receive. The memory goes back when the client's queue is dropped, and after
//! large frees the allocator is asked to return free pages to the system (`budget::Budget::freed`).

pub mod budget;
pub mod queue;

pub use budget::Budget;
pub use queue::{Inbox, Offer, Over, Sink};
