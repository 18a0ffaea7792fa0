//! An idle transaction-mode client's LISTEN/UNLISTEN, answered without a server connection:
//! the pool's listener (`backend::listen`) subscribes it, and the answer waits until the
//! listener's server confirmed, so that a NOTIFY sent after LISTEN returned is heard (as on a
//! direct connection). A LISTEN that reaches the relay instead (in a transaction block, or
//! pipelined behind other messages) is answered at once (`relay::session_state`).
//!
//! Also an idle client's notifications: written out in batches, and the client disconnected
//! when it leaves them unread past a budget (`notify`).

use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use super::client::Client;
use super::relay::scan::statement_text;
use super::relay::session_state::{parse_listen, ListenCmd};
use crate::backend::listen::{Hub, Subscriber};
use crate::errors;
use crate::net::messages::error::Severity;
use crate::net::messages::tag::{self, txn};
use crate::net::messages::{header, status, HEADER};
use crate::notify::Over;

/// How long a LISTEN waits for the listener's server.
const CONFIRM: Duration = Duration::from_secs(5);

/// Serves the LISTEN/UNLISTEN Queries at the head of what an idle client sent. Ok(true) when
/// nothing else is left to serve; Err when the client is gone.
pub async fn serve(client: &mut Client) -> Result<bool, ()> {
    let mut out = BytesMut::new();
    while let Some((kind, len)) = header(&client.pending) {
        if kind != tag::QUERY || client.pending.len() < len {
            break;
        }
        let first = client.pending.get(HEADER..).and_then(|b| b.first());
        if !first.is_some_and(|b| matches!(b | 0x20, b'l' | b'u')) {
            break;
        }
        let Some(cmd) = parse_listen(statement_text(kind, &client.pending[..len])) else {
            break;
        };
        client.pending.advance(len);
        let listen = matches!(cmd, ListenCmd::Listen(_));
        let mut confirmed = true;
        if let Some(wait) = subscribe(&mut client.notify, client.pool.listen_hub(), cmd) {
            // An UNLISTEN not confirmed in time is done all the same (the listener applies
            // it in its turn): only a LISTEN reports the listener missing.
            confirmed = matches!(tokio::time::timeout(CONFIRM, wait).await, Ok(Ok(()))) || !listen;
        }
        if confirmed {
            status::command_complete(&mut out, if listen { b"LISTEN" } else { b"UNLISTEN" });
        } else {
            // Subscribed all the same: the listener keeps trying and delivers once it is back.
            errors::listen_unavailable(&client.pool.name).write(&mut out, Severity::Error);
        }
        status::ready_for_query(&mut out, txn::IDLE);
    }
    if out.is_empty() {
        return Ok(false);
    }
    if client.stream.write_all(&out).await.is_err() || client.stream.flush().await.is_err() {
        return Err(());
    }
    Ok(client.pending.is_empty())
}

/// Hands a LISTEN/UNLISTEN to the pool's listener; a first LISTEN gives the client its
/// notification channel. A LISTEN returns the listener's confirmation, an UNLISTEN of a
/// channel the client listens to the listener's word that it is unsubscribed (the client's
/// answer waits for either).
pub fn subscribe(
    notify: &mut Option<Box<Subscriber>>,
    hub: &Hub,
    cmd: ListenCmd,
) -> Option<oneshot::Receiver<()>> {
    match cmd {
        ListenCmd::Listen(channel) => {
            let sub = notify.get_or_insert_with(|| Box::new(Subscriber::new(hub)));
            return Some(sub.listen(channel));
        }
        ListenCmd::Unlisten(channel) => {
            if let Some(sub) = notify {
                return sub.unlisten(channel);
            }
        }
        ListenCmd::UnlistenAll => {
            if let Some(sub) = notify {
                return sub.unlisten_all();
            }
        }
    }
    None
}

/// Most bytes of queued notifications written to an idle client at once.
const BATCH: usize = 64 * 1024;
/// How long a client disconnected for its unread notifications is given to take what was
/// already on its way and the FATAL: it is not reading, so the write may never finish.
const FAREWELL: Duration = Duration::from_secs(10);

/// Writes an idle client's notification, and those queued behind it. Err when the session is
/// over: the client is gone, or went past its notification budget meanwhile (then it was told).
pub async fn deliver(client: &mut Client, first: Bytes) -> Result<(), ()> {
    let Some(sub) = client.notify.as_mut() else {
        return Err(());
    };
    let mut out = BytesMut::with_capacity(first.len().max(8192));
    out.extend_from_slice(&first);
    drop(first);
    while out.len() < BATCH {
        let Some(msg) = sub.try_recv() else { break };
        out.extend_from_slice(&msg);
    }
    let stream = &mut client.stream;
    let mut written = 0;
    // Never stuck on a client that does not read: going over budget ends the write.
    let r = std::future::poll_fn(|cx| {
        if let Poll::Ready(over) = sub.poll_over(cx) {
            return Poll::Ready(Err(Some(over)));
        }
        while written < out.len() {
            match Pin::new(&mut *stream).poll_write(cx, &out[written..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Err(None)),
                Poll::Ready(Ok(n)) => written += n,
                Poll::Pending => return Poll::Pending,
            }
        }
        match Pin::new(&mut *stream).poll_flush(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(_)) => Poll::Ready(Err(None)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    match r {
        Ok(()) => Ok(()),
        Err(None) => Err(()),
        Err(Some(over)) => {
            // Whole messages only: the rest of what was started goes out before the FATAL.
            out.advance(written);
            farewell(client, over, out).await;
            Err(())
        }
    }
}

/// Disconnects an idle client that went past a notification budget.
pub async fn over_budget(client: &mut Client, over: Over) {
    farewell(client, over, BytesMut::new()).await;
}

/// Frees the client's queue at once (and unsubscribes it), logs one line (rate-limited across
/// the pooler) and sends `unsent` then the FATAL, for at most `FAREWELL`.
async fn farewell(client: &mut Client, over: Over, mut unsent: BytesMut) {
    let error = errors::notify_budget(&client.pool.name, over);
    if let Some(sub) = client.notify.take() {
        if let Some(suppressed) = sub.budget().may_log() {
            let (budget, bytes) = match over {
                Over::Client(n) => ("client", n),
                Over::Total(n) => ("total", n),
            };
            client.span().in_scope(|| {
                tracing::warn!(
                    pool = %client.pool.name,
                    code = error.code(),
                    budget,
                    bytes,
                    suppressed,
                    "disconnecting client: notifications not read, notification budget used up"
                )
            });
        }
    }
    error.write(&mut unsent, Severity::Fatal);
    let stream = &mut client.stream;
    let _ = tokio::time::timeout(FAREWELL, async {
        stream.write_all(&unsent).await?;
        stream.flush().await?;
        stream.shutdown().await
    })
    .await;
}
