//! A LISTEN the relay handed to the pool's listener (`from_client::listen`): the client's
//! answers wait until the listener's server confirmed it, so that a NOTIFY another session
//! commits after the client saw its LISTEN complete is heard, as on a direct connection.
//! Drivers that send LISTEN through the extended protocol (pgjdbc, asyncpg, postgres.js) do
//! exactly that: LISTEN, then NOTIFY from another connection. An UNLISTEN (or `DISCARD ALL`,
//! or a COMMIT that ends a block's UNLISTEN) waits the same way for the listener to unsubscribe
//! the client, after delivering what was committed before it (`backend::listen::release`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Sleep;

/// How long answers wait for the listener (as the idle path's `frontend::listen::CONFIRM`):
/// past it they go out anyway, the subscription stays and is served once the listener is back.
const CONFIRM: Duration = Duration::from_secs(5);

/// The listener's confirmation of a LISTEN, with its deadline.
#[derive(Debug)]
pub struct ListenWait {
    confirmed: oneshot::Receiver<()>,
    deadline: Pin<Box<Sleep>>,
    /// The channels a transaction's end unsubscribed the client from: what is queued for it of
    /// them once the listener confirmed is dropped, and nothing is delivered to it until then
    /// (`TxnListens`: PostgreSQL reads its notifications after the transaction, when its
    /// UNLISTENs hold).
    pub drop_after: Vec<Box<str>>,
    /// What the listener delivered to the client by then goes out before the ReadyForQuery
    /// that ended its transaction, which ends at this offset of the answers held for the
    /// client (`from_client::own_notifications`).
    pub before_ready: Option<usize>,
}

impl ListenWait {
    pub fn new(confirmed: oneshot::Receiver<()>, drop_after: Vec<Box<str>>) -> Self {
        Self::with_deadline(confirmed, drop_after, CONFIRM)
    }

    fn with_deadline(
        confirmed: oneshot::Receiver<()>,
        drop_after: Vec<Box<str>>,
        wait: Duration,
    ) -> Self {
        Self {
            confirmed,
            deadline: Box::pin(tokio::time::sleep(wait)),
            drop_after,
            before_ready: None,
        }
    }

    /// Ready once the listener confirmed (or dropped the request), or at the deadline.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if Pin::new(&mut self.confirmed).poll(cx).is_ready() {
            return Poll::Ready(());
        }
        self.deadline.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    fn ready_now(w: &mut ListenWait) -> bool {
        let waker = std::task::Waker::noop();
        w.poll(&mut Context::from_waker(waker)).is_ready()
    }

    #[tokio::test]
    async fn waits_for_the_listener_then_for_its_deadline_and_keeps_what_to_drop() {
        // Confirmed: ready at once.
        let (done, confirmed) = oneshot::channel();
        let mut w = ListenWait::new(confirmed, Vec::new());
        assert!(!ready_now(&mut w));
        done.send(()).unwrap();
        assert!(ready_now(&mut w));

        // The listener dropped the request (it went away): ready, as confirmed.
        let (done, confirmed) = oneshot::channel::<()>();
        let mut w = ListenWait::new(confirmed, Vec::new());
        drop(done);
        assert!(ready_now(&mut w));

        // Never answered: pending until the deadline, then ready, with the channels whose
        // queued notifications the pump drops once it is.
        let (_done, confirmed) = oneshot::channel::<()>();
        let wait = Duration::from_millis(200);
        let start = tokio::time::Instant::now();
        let mut w = ListenWait::with_deadline(confirmed, vec!["gone".into()], wait);
        assert!(!ready_now(&mut w));
        poll_fn(|cx| w.poll(cx)).await;
        assert!(start.elapsed() >= wait);
        assert_eq!(w.drop_after, [Box::from("gone")]);
    }
}
