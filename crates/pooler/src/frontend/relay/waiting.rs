//! Timeouts on a client that holds a server connection without sending: in the middle of a
//! message (`ClientLimits::client_message_timeout`) or idle in a transaction
//! (`ClientLimits::idle_transaction_timeout`, PgBouncer's). The relay asks only when it has
//! nothing left to do (`ClientWait::poll`), and a timer exists only while the client is waited
//! on: a transaction that flows costs a few comparisons, no clock read.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::RelayState;
use crate::backend::server::Server;
use crate::errors::{self, ClientError};
use crate::net::messages::tag::txn;

/// A client mid-message that sends this much more has its deadline renewed: the timeout bounds
/// a stall, and the rate of a client that trickles a long message.
const RENEW_AFTER: u64 = 8 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Part of a message is in, the rest is not.
    Message,
    /// At a ReadyForQuery that says "in a transaction", or inside an extended-protocol segment
    /// not ended with Sync, nothing asked.
    Transaction,
}

/// The relay's clock on its client (one per attachment).
#[derive(Default)]
pub struct ClientWait {
    timer: Option<Pin<Box<Sleep>>>,
    armed: Option<Kind>,
    /// Client bytes received when the timer was armed.
    received_at_arm: u64,
}

/// The two limits, from the pool's state.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub message: Duration,
    pub idle_transaction: Option<Duration>,
}

impl ClientWait {
    /// Called when the relay has nothing more to do for now. `saw_ready`: the server answered
    /// the client's last request; `received`: client bytes so far. Ready with the error to end
    /// the session with when the client was waited on too long.
    #[inline]
    pub fn poll(
        &mut self,
        cx: &mut Context<'_>,
        server: &Server,
        relay: &RelayState,
        saw_ready: bool,
        received: u64,
        limits: Limits,
    ) -> Poll<ClientError> {
        // The usual case, without a call: a request is with the server.
        if self.armed.is_none()
            && !saw_ready
            && !relay.segment_open
            && relay.c2s_skip == 0
            && server.bufs.c2s_in.is_empty()
        {
            return Poll::Pending;
        }
        self.poll_waited(cx, server, relay, saw_ready, received, limits)
    }

    #[inline(never)]
    fn poll_waited(
        &mut self,
        cx: &mut Context<'_>,
        server: &Server,
        relay: &RelayState,
        saw_ready: bool,
        received: u64,
        limits: Limits,
    ) -> Poll<ClientError> {
        let kind = waited_on(server, relay, saw_ready);
        let timeout = match kind {
            None => None,
            Some(Kind::Message) => Some(limits.message),
            Some(Kind::Transaction) => limits.idle_transaction,
        };
        let Some(timeout) = timeout else {
            self.armed = None;
            return Poll::Pending;
        };
        let renew = kind == Some(Kind::Message)
            && received.saturating_sub(self.received_at_arm) >= RENEW_AFTER;
        if self.armed != kind || renew {
            let deadline = Instant::now() + timeout;
            match self.timer.as_mut() {
                Some(t) => t.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = kind;
            self.received_at_arm = received;
        }
        let Some(timer) = self.timer.as_mut() else {
            return Poll::Pending;
        };
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.armed = None;
        Poll::Ready(match kind {
            Some(Kind::Transaction) => errors::idle_transaction_timeout(&server.pool, timeout),
            _ => errors::client_message_timeout(&server.pool, timeout),
        })
    }
}

/// Whether the server connection waits on the client, and how.
#[inline]
fn waited_on(server: &Server, relay: &RelayState, saw_ready: bool) -> Option<Kind> {
    let bufs = &server.bufs;
    if !bufs.c2s_out.is_empty() || relay.c2s_stalled {
        // The server is slow to take what the client sent, or to answer what the pooler waits
        // for before relaying more of it: not the client's doing.
        return None;
    }
    if relay.c2s_skip > 0 || !bufs.c2s_in.is_empty() {
        return Some(Kind::Message);
    }
    // An extended-protocol segment the client has not ended with Sync is a transaction too,
    // as PostgreSQL reports it ("idle in transaction").
    if (saw_ready && server.status != txn::IDLE || relay.segment_open)
        && relay.expect.is_empty()
        && !relay.copy_in
        && bufs.s2c_out.is_empty()
    {
        return Some(Kind::Transaction);
    }
    None
}
