//! The socket loop of an attached client: reads and writes both sockets in one task until the
//! attachment ends, handing what it reads to the scanners.

use std::pin::Pin;
use std::task::Poll;

use tokio::io::AsyncWrite;

use super::waiting::ClientWait;
use super::{at_boundary, client_input, consume, server_input, ClientCtx, RelayState, ServerEvent};
use crate::backend::server::Server;
use crate::config::PoolMode;
use crate::errors::{self, ClientError};
use crate::net::messages::tag::txn;
use crate::net::stream::poll_read_buf;
use crate::net::ClientStream;
use crate::signal::Watch;

/// Stop reading a side while this much is waiting to be written to the other.
const HIGH_WATER: usize = 256 * 1024;
/// Read granularity.
const READ_CHUNK: usize = 16 * 1024;

/// How an attached period ended.
#[derive(Debug)]
pub enum End {
    /// Server answered everything and the connection can be released.
    Boundary,
    ClientGone,
    Shutdown,
    ServerGone(String),
    /// The session must end with this error.
    Refused(ClientError),
    /// Statement mode: the client opened a transaction block.
    TransactionBlock,
    /// The client held the server connection without sending for too long (`waiting`).
    TimedOut(ClientError),
}

/// Relays until a release boundary (transaction/statement mode), the client leaving, a broken
/// server or shutdown. One task, one `poll_fn`: no per-message futures, no per-message syscalls.
// The connection and the attachment's place in it travel side by side (the state is the
// frontend's, the connection the backend's): one argument more than clippy's default.
#[allow(clippy::too_many_arguments)]
pub async fn pump(
    stream: &mut ClientStream,
    server: &mut Server,
    relay: &mut RelayState,
    ctx: &mut ClientCtx<'_>,
    mode: PoolMode,
    stop: &mut Watch<'_, '_>,
    drain: &mut Watch<'_, '_>,
    restart: &mut Watch<'_, '_>,
) -> End {
    let release_at_boundary = mode != PoolMode::Session;
    let mut draining = false;
    let mut saw_ready = false;
    let mut client_flush = false;
    // TLS to the server: records rustls accepted but could not send yet.
    let mut server_flush = false;
    // The client went past a notification budget: it is disconnected between whole messages.
    let mut notify_over = None;
    let mut wait = ClientWait::default();
    let mut client_bytes = 0u64;
    // The state comes at rest (`RelayState::take`); only the mode's setting is this one's.
    relay.drop_notifications = ctx.session_state;
    // Bytes pending from before attaching (or a release) are processed first.
    if !server.bufs.c2s_in.is_empty() {
        match client_input(server, relay, ctx) {
            Ok(false) => saw_ready = std::mem::take(&mut relay.ready_synthesized),
            Ok(true) => return End::ClientGone,
            Err(e) => return End::Refused(errors::protocol_violation(e.to_string())),
        }
    }
    std::future::poll_fn(|cx| {
        if stop.poll_fired(cx) {
            return Poll::Ready(End::Shutdown);
        }
        if !draining && (drain.poll_fired(cx) || restart.poll_fired(cx)) {
            draining = true;
        }
        // Each socket direction is polled until it would block, at most once per wakeup: a
        // direction that returned Pending has this task's waker registered, so polling it
        // again before the next wakeup would cost without telling anything new.
        let mut server_read = true;
        let mut server_write = true;
        let mut client_read = true;
        let mut client_write = true;
        // A stalled client (`RelayState::c2s_stalled`) is relayed again.
        let mut resume = false;
        loop {
            let mut progress = false;
            // Server to client first: most wakeups are the server's answer.
            if server_read && server.bufs.s2c_out.len() < HIGH_WATER {
                match poll_read_buf(&mut server.stream, cx, &mut server.bufs.s2c_in, READ_CHUNK) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(End::ServerGone("server closed the connection".into()))
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(End::ServerGone(e.to_string())),
                    Poll::Ready(Ok(n)) => {
                        progress = true;
                        ctx.tally.t.sent += n as u64;
                        match server_input(
                            server,
                            relay,
                            ctx.params,
                            ctx.statements,
                            mode == PoolMode::Statement,
                        ) {
                            Ok(ServerEvent::Ready) => {
                                relay.ready_synthesized = false;
                                saw_ready = true;
                                ctx.tally.ready(server.status == txn::IDLE, ctx.counters);
                            }
                            Ok(ServerEvent::TransactionBlock) => {
                                return Poll::Ready(End::TransactionBlock)
                            }
                            // A stale statement's segment, back in `c2s_in` (`retry`).
                            Ok(ServerEvent::Replay) => {
                                // The client's counts take its Binds once.
                                let again = relay.retry.replayed_binds();
                                let binds = &mut ctx.tally.t.client_binds;
                                *binds = binds.saturating_sub(again);
                                match relay_client(server, relay, ctx) {
                                    Ok(synthesized) => saw_ready |= synthesized,
                                    Err(end) => return Poll::Ready(end),
                                }
                            }
                            Ok(ServerEvent::None) => {
                                // A refused Query answered after the server's earlier answers.
                                if std::mem::take(&mut relay.ready_synthesized) {
                                    saw_ready = true;
                                    ctx.tally.ready(server.status == txn::IDLE, ctx.counters);
                                }
                            }
                            Err(e) => return Poll::Ready(End::ServerGone(e.to_string())),
                        }
                        if std::mem::take(&mut relay.discarded_channels) {
                            super::from_client::unlisten_all(relay, ctx);
                        }
                        if let Some(committed) = relay.txn_listens_end.take() {
                            super::from_client::end_txn_listens(relay, ctx, committed);
                        }
                        if let Some(last) = relay.notified_end.take() {
                            let out = &server.bufs.s2c_out;
                            super::from_client::own_notifications(relay, ctx, last, out);
                        }
                        resume = relay.c2s_stalled;
                    }
                    Poll::Pending => server_read = false,
                }
            }
            // Notifications from the pool's listener go out between whole server messages.
            if let Some(sub) = ctx.notify.as_mut() {
                if let Poll::Ready(over) = sub.poll_over(cx) {
                    // Over its notification budget (`notify`): its queue is freed now, and it
                    // is disconnected once what it was sent is out (`notify_over`).
                    *ctx.notify = None;
                    notify_over = Some(over);
                } else if relay.s2c_skip == 0 && !relay.holds_notifications(server.status) {
                    while server.bufs.s2c_out.len() < HIGH_WATER {
                        let Poll::Ready(Some(msg)) = sub.poll_recv(cx) else {
                            break;
                        };
                        server.bufs.s2c_out.extend_from_slice(&msg);
                        progress = true;
                    }
                }
            }
            if let Some(over) = notify_over {
                if server.bufs.s2c_out.is_empty() && relay.s2c_skip == 0 {
                    let e = errors::notify_budget(&ctx.pool.name, over);
                    return Poll::Ready(End::Refused(e));
                }
            }
            // A LISTEN's answers wait for the listener's confirmation (`listen_wait`).
            if let Some(w) = relay.listen_wait.as_mut() {
                if w.poll(cx).is_ready() {
                    let done = relay.listen_wait.take();
                    if let (Some(w), Some(sub)) = (done, ctx.notify.as_mut()) {
                        if !w.drop_after.is_empty() {
                            sub.drop_queued(&w.drop_after);
                            // What stays queued goes out now.
                            progress = true;
                        }
                        if let Some(at) = w.before_ready {
                            notifications_before_ready(&mut server.bufs.s2c_out, at, sub);
                            progress = true;
                        }
                    }
                    resume = relay.c2s_stalled;
                }
            }
            // What waited in `c2s_in` for the server's answers or for the listener goes on (or
            // waits again): once either came, and the listener is not still awaited.
            if resume && relay.listen_wait.is_none() {
                resume = false;
                relay.c2s_stalled = false;
                progress = true;
                match relay_client(server, relay, ctx) {
                    Ok(synthesized) => saw_ready |= synthesized,
                    Err(end) => return Poll::Ready(end),
                }
            }
            // While the listener is awaited the client's answers wait: also for a LISTEN just
            // relayed behind the answers it waited for (`resume`), whose wait is polled next pass.
            if relay.listen_wait.is_some() {
                client_write = false;
            }
            if !server.bufs.s2c_out.is_empty() && client_write {
                match Pin::new(&mut *stream).poll_write(cx, &server.bufs.s2c_out) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Poll::Ready(End::ClientGone)
                    }
                    Poll::Ready(Ok(n)) => {
                        consume(&mut server.bufs.s2c_out, n);
                        client_flush = stream.is_tls();
                        progress = true;
                    }
                    Poll::Pending => client_write = false,
                }
            }
            // Flushed in the same pass as the write that emptied the buffer: once the client
            // can have its answer, the boundary below must be seen before the client is read
            // again, or a client quick to send its next transaction would be relayed on this
            // server without a release (its transaction mode, a drain, a removal ignored).
            if server.bufs.s2c_out.is_empty() && client_flush && client_write {
                match Pin::new(&mut *stream).poll_flush(cx) {
                    Poll::Ready(Ok(())) => client_flush = false,
                    Poll::Ready(Err(_)) => return Poll::Ready(End::ClientGone),
                    Poll::Pending => client_write = false,
                }
            }
            // At rest: the server answered everything asked, and every answer is out to the
            // client (an answer still being written to a slow reader goes out first).
            let at_rest = at_boundary(server, relay)
                && server.bufs.s2c_out.is_empty()
                && !client_flush
                && relay.listen_wait.is_none();
            let idle_point = saw_ready && at_rest && server.bufs.c2s_out.is_empty();
            if idle_point && (release_at_boundary || draining) {
                return Poll::Ready(End::Boundary);
            }
            // A draining client is released at rest also before its first answer of this
            // attachment (no ReadyForQuery seen yet), once nothing more came from it: a
            // session-mode client, or one that keeps its connection between transactions
            // (`session_state::PINS`) and is idle.
            if draining && at_rest && server.bufs.c2s_in.is_empty() {
                return Poll::Ready(End::Boundary);
            }
            // A client whose next message waits for the server's answers (`c2s_stalled`) is
            // read only up to a bound meanwhile (a client gone is still seen).
            if client_read
                && server.bufs.c2s_out.len() < HIGH_WATER
                && (!relay.c2s_stalled || server.bufs.c2s_in.len() < HIGH_WATER)
            {
                match poll_read_buf(&mut *stream, cx, &mut server.bufs.c2s_in, READ_CHUNK) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Poll::Ready(End::ClientGone)
                    }
                    Poll::Ready(Ok(n)) => {
                        progress = true;
                        ctx.tally.t.received += n as u64;
                        client_bytes += n as u64;
                        ctx.tally.query_starts();
                        match relay_client(server, relay, ctx) {
                            Ok(synthesized) => saw_ready |= synthesized,
                            Err(end) => return Poll::Ready(end),
                        }
                    }
                    Poll::Pending => client_read = false,
                }
            }
            if server_write && !server.bufs.c2s_out.is_empty() {
                match Pin::new(&mut server.stream).poll_write(cx, &server.bufs.c2s_out) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(End::ServerGone("server closed the connection".into()))
                    }
                    Poll::Ready(Ok(n)) => {
                        consume(&mut server.bufs.c2s_out, n);
                        server_flush = server.stream.is_tls();
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(End::ServerGone(e.to_string())),
                    Poll::Pending => server_write = false,
                }
            } else if server_flush && server_write {
                match Pin::new(&mut server.stream).poll_flush(cx) {
                    Poll::Ready(Ok(())) => server_flush = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(End::ServerGone(e.to_string())),
                    Poll::Pending => server_write = false,
                }
            }
            if !progress {
                if let Poll::Ready(e) =
                    wait.poll(cx, server, relay, saw_ready, client_bytes, ctx.wait_limits)
                {
                    return Poll::Ready(End::TimedOut(e));
                }
                return Poll::Pending;
            }
        }
    })
    .await
}

/// Relays what the client sent (`client_input`): Ok(true) when the pooler answered a refused
/// Query with its own ReadyForQuery, as good as one from the server (counted here); Err with
/// how the attachment ends when the client left or broke the protocol.
#[inline]
fn relay_client(
    server: &mut Server,
    relay: &mut RelayState,
    ctx: &mut ClientCtx<'_>,
) -> Result<bool, End> {
    match client_input(server, relay, ctx) {
        Ok(false) => {
            let synthesized = std::mem::take(&mut relay.ready_synthesized);
            if synthesized {
                ctx.tally.ready(server.status == txn::IDLE, ctx.counters);
            }
            Ok(synthesized)
        }
        Ok(true) => Err(End::ClientGone),
        Err(e) => Err(End::Refused(errors::protocol_violation(e.to_string()))),
    }
}

/// What the pool's listener queued for the client goes into `out` before the ReadyForQuery
/// ending at `at` (`ListenWait::before_ready`), up to `HIGH_WATER` (the rest follows later).
/// Nothing moves unless a ReadyForQuery ends there.
fn notifications_before_ready(
    out: &mut bytes::BytesMut,
    at: usize,
    sub: &mut crate::backend::listen::Subscriber,
) {
    before_ready(out, at, || sub.try_recv());
}

fn before_ready(
    out: &mut bytes::BytesMut,
    at: usize,
    mut next: impl FnMut() -> Option<bytes::Bytes>,
) {
    if !ready_ends_at(out, at) {
        return;
    }
    let tail = out.split_off(at - READY_LEN);
    while out.len() < HIGH_WATER {
        let Some(msg) = next() else {
            break;
        };
        out.extend_from_slice(&msg);
    }
    out.extend_from_slice(&tail);
}

/// The length of a ReadyForQuery.
const READY_LEN: usize = crate::net::messages::HEADER + 1;

/// Whether a ReadyForQuery ends at `at` in `out`.
pub(super) fn ready_ends_at(out: &[u8], at: usize) -> bool {
    at >= READY_LEN
        && at <= out.len()
        && out[at - READY_LEN] == crate::net::messages::tag::READY_FOR_QUERY
        && out[at - READY_LEN + 1..at - 1] == (READY_LEN as u32 - 1).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};

    #[test]
    fn notifications_go_in_before_the_ready_for_query_that_ended_the_transaction() {
        let note = Bytes::from_static(b"A\0\0\0\x0c\0\0\0\x01c\0p\0");
        let complete: &[u8] = b"C\0\0\0\x0bNOTIFY\0";
        let ready: &[u8] = b"Z\0\0\0\x05I";
        let mut out = BytesMut::new();
        out.extend_from_slice(complete);
        out.extend_from_slice(ready);
        let at = out.len();
        // Answers of a later query came behind it meanwhile: they stay behind.
        out.extend_from_slice(complete);
        let mut queue = vec![note.clone(), note.clone()];
        before_ready(&mut out, at, || queue.pop());
        let want = [complete, &note, &note, ready, complete].concat();
        assert_eq!(&out[..], &want[..]);

        // No ReadyForQuery ending there: nothing is taken or moved.
        for at in [0, 3, complete.len(), want.len() + 1] {
            let mut out = BytesMut::from(&want[..]);
            let mut queue = vec![note.clone()];
            before_ready(&mut out, at, || queue.pop());
            assert_eq!(&out[..], &want[..]);
            assert_eq!(queue.len(), 1);
        }
    }
}
