//! A logged-in client's life: idle (no server connection, no buffers), waiting (queued for a
//! server connection), active (attached, bytes relayed by `relay::pump`), and back, until it
//! leaves.

use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;

use super::client::Client;
use super::relay::{self, scan, session_state, ClientCtx, End};
use crate::backend::{Pool, PoolState, Server, ServerGuard};
use crate::config::PoolMode;
use crate::errors;
use crate::net::messages::error::Severity;
use crate::net::messages::extended::{parse_target, CLOSE_COMPLETE};
use crate::net::messages::tag::{self, target, txn};
use crate::net::messages::{header, status, HEADER};
use crate::net::stream::poll_read_buf;
use crate::signal::Watch;
use crate::stats::ClientState;

/// The read buffer a client is lent for the first bytes of its next request (`wait_idle`).
const IDLE_READ: usize = 256;

/// Read buffers a thread keeps for lending, at most.
const SPARE_READS: usize = 8;

thread_local! {
    /// Read buffers this thread lends to its idle clients: a client borrows one to read its
    /// socket and gives it back when nothing was there or once its request is handed to the
    /// relay, so an idle client holds none and a transaction costs no allocation.
    static SPARE_READS_OF_THREAD: std::cell::RefCell<Vec<BytesMut>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A read buffer of this thread's, or a new one.
fn lend_read() -> BytesMut {
    crate::spare::take(&SPARE_READS_OF_THREAD).unwrap_or_else(|| BytesMut::with_capacity(IDLE_READ))
}

/// Gives an emptied read buffer back to this thread (one grown past a few requests' worth is
/// freed instead).
fn give_back_read(mut buf: BytesMut) {
    if buf.capacity() == 0 || buf.capacity() > 4 * IDLE_READ {
        return;
    }
    buf.clear();
    crate::spare::keep(&SPARE_READS_OF_THREAD, buf, SPARE_READS);
}

/// What an idle client did.
enum Idle {
    Data,
    Gone,
    Shutdown,
    Drained,
    /// pgbay drains (takeover or SIGTERM): the client leaves unless a request is on its way.
    Restarting,
    /// A notification for a channel the client LISTENs to.
    Notify(bytes::Bytes),
    /// The client left its notifications unread past a budget.
    NotifyOver(crate::notify::Over),
}

/// Runs a logged-in client until it leaves or is disconnected.
///
/// Only the idle state lives in this future, which every client holds for its whole life; a
/// request is served by `request`, boxed, so that its larger state (checkout, the relay, the
/// read-back) is allocated while a request runs and an idle client does not carry it.
pub async fn run(mut client: Box<Client>) {
    // The signals that tell this client to leave (service shutdown, pool removal) are watched
    // through flags: the shared tokens are only touched to register this task's waker.
    let service = client.service.clone();
    let pool = client.pool.clone();
    let stop_fut = pin!(service.shutdown.cancelled());
    let drain_fut = pin!(pool.drain.cancelled());
    let mut stop = Watch::new(&service.shutdown, stop_fut);
    let mut drain = Watch::new(&pool.drain, drain_fut);
    let restart_fut = pin!(service.restarting.cancelled());
    let mut restart = Watch::new(&service.restarting, restart_fut);
    let mut st = Current {
        version: pool.state_version(),
        state: pool.state(),
    };
    loop {
        client.set_state(ClientState::Idle);
        match wait_idle(&mut client, &mut stop, &mut drain, &mut restart).await {
            Idle::Data => {}
            Idle::Gone => return,
            Idle::Shutdown => return shutdown(&mut client).await,
            Idle::Drained => return drained(&mut client).await,
            Idle::Restarting => {
                if !request_on_its_way(&mut client).await {
                    return restarting(&mut client).await;
                }
            }
            Idle::Notify(msg) => {
                if Box::pin(super::listen::deliver(&mut client, msg))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            Idle::NotifyOver(over) => {
                return Box::pin(super::listen::over_budget(&mut client, over)).await
            }
        }
        let signals = Signals {
            stop: &mut stop,
            drain: &mut drain,
            restart: &mut restart,
        };
        if !Box::pin(request(&mut client, &pool, &mut st, signals)).await {
            return;
        }
    }
}

/// The pool's settings as this client last read them.
struct Current {
    version: u64,
    state: Arc<PoolState>,
}

/// The signals a client watches (`run`).
struct Signals<'a, 'w, 'f> {
    stop: &'a mut Watch<'w, 'f>,
    drain: &'a mut Watch<'w, 'f>,
    restart: &'a mut Watch<'w, 'f>,
}

/// Serves the request that has arrived: a server connection is lent and the client attached
/// to it until the transaction's end. False when the client's session is over.
async fn request(
    client: &mut Client,
    pool: &Arc<Pool>,
    cur: &mut Current,
    signals: Signals<'_, '_, '_>,
) -> bool {
    let Signals {
        stop,
        drain,
        restart,
    } = signals;
    if pool.kill_epoch() != client.kill_epoch {
        killed(client).await;
        return false;
    }
    if pool.is_paused() {
        // PAUSE (admin console): the request waits until RESUME, or a cancel.
        client.set_state(ClientState::Waiting);
        let cancellable = cancellable(&client.pending);
        let slot = client.cancel.slot.clone();
        tokio::select! {
            _ = pool.resumed() => {}
            () = slot.wait_cancelled(), if cancellable.is_some() => {
                return cancelled_waiting(client, cancellable.unwrap_or(0)).await;
            }
            _ = stop.fired() => {
                shutdown(client).await;
                return false;
            }
        }
        if pool.kill_epoch() != client.kill_epoch {
            killed(client).await;
            return false;
        }
    }
    let v = pool.state_version();
    if v != cur.version {
        cur.version = v;
        cur.state = pool.state();
    }
    let st = &cur.state;
    if st.cfg.mode != PoolMode::Session {
        match super::listen::serve(client).await {
            Ok(true) => return true,
            Ok(false) => {}
            Err(()) => return false,
        }
    }
    if st.cfg.mode != PoolMode::Session
        && st.settings.max_prepared_statements > 0
        && name_request(&client.pending).is_some()
    {
        match Box::pin(serve_names(client)).await {
            Ok(true) => return true,
            Ok(false) => {}
            Err(()) => return false,
        }
    }
    if st.cfg.mode != PoolMode::Session && repeated_set(&client.pending, &client.params) {
        return answer_repeated_set(client).await;
    }
    if st.cfg.mode == PoolMode::Statement {
        match refuse_blocks(client).await {
            Ok(true) => return true,
            Ok(false) => {}
            Err(()) => return false,
        }
    }
    // A request arrived: the query (and maybe a transaction) starts now.
    let now_us = client.tally.request_starts();
    client.info.request_us.store(
        client.tally.query_start(),
        std::sync::atomic::Ordering::Relaxed,
    );
    // A connection found dead when the client's settings are applied to it (the server
    // restarted since it was last used) has been sent nothing of the client's: it is
    // closed and another one taken, a few times at most.
    let mut tries = 0;
    let mut guard = loop {
        tries += 1;
        // Counted as waiting only when it has to: a connection at hand goes straight to
        // active.
        let acquired = match pool.try_acquire(st, now_us) {
            Some(g) => Ok(g),
            None => {
                client.set_state(ClientState::Waiting);
                // A cancel request ends the wait of a request that is all here, as PostgreSQL
                // ends a cancelled statement.
                let cancellable = cancellable(&client.pending);
                let slot = client.cancel.slot.clone();
                // The client's wait slot is lent to the wait (a cancel or a shutdown, which
                // end the wait here, may drop it: the next wait makes another).
                let mut place = std::mem::take(&mut client.wait);
                let r = tokio::select! {
                    r = pool.acquire(st, now_us, &mut place) => r,
                    () = slot.wait_cancelled(), if cancellable.is_some() => {
                        client.tally.waited();
                        return cancelled_waiting(client, cancellable.unwrap_or(0)).await;
                    }
                    _ = stop.fired() => {
                        shutdown(client).await;
                        return false;
                    }
                };
                client.tally.waited();
                client.wait = place;
                r
            }
        };
        let mut guard = match acquired {
            Ok(g) => g,
            Err(e) => {
                client.fatal(&errors::acquire_failed(&pool.name, &e)).await;
                return false;
            }
        };
        match sync_params(client, guard.server_mut()).await {
            Ok(()) => break guard,
            Err(Synced::Dead(_)) if tries < 3 => continue,
            Err(Synced::Dead(e)) => {
                client.fatal(&errors::server_lost(&pool.name, &e)).await;
                return false;
            }
            Err(Synced::Refused(refusal)) => {
                client.fatal(&refusal).await;
                return false;
            }
        }
    };
    client.set_state(ClientState::Active);
    client.tally.t.server_assignments += 1;
    if let Some(info) = &guard.server().info {
        info.link
            .store(client.info.id, std::sync::atomic::Ordering::Relaxed);
        client
            .info
            .link
            .store(info.id, std::sync::atomic::Ordering::Relaxed);
    }
    loop {
        match attached(client, pool, st, &mut guard, stop, drain, restart).await {
            Ok(Attachment::Released) => break,
            Ok(Attachment::Kept) => {}
            Ok(Attachment::Over) => return false,
            Err(end) => {
                debug_in_span(client, || tracing::debug!(?end, "session ended"));
                return false;
            }
        }
    }
    guard.release(st, client.tally.clock());
    if pool.drain.is_cancelled() {
        drained(client).await;
        return false;
    }
    if client.service.restarting.is_cancelled() {
        restarting(client).await;
        return false;
    }
    true
}

/// How long a client idle when pgbay starts draining may still send the request it may have on
/// its way (a pgbench -C client logs in and sends its transaction at once): served, it is closed
/// at that transaction's end instead of being refused before it.
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// True when a whole message arrived from the client within `DRAIN_GRACE`.
async fn request_on_its_way(client: &mut Client) -> bool {
    let Client {
        stream,
        pending,
        tally,
        ..
    } = client;
    let read = std::future::poll_fn(|cx| loop {
        if !pending.is_empty() && missing(pending) == 0 {
            return Poll::Ready(pending.first() != Some(&tag::TERMINATE));
        }
        let want = missing(pending).clamp(IDLE_READ, WHOLE_BEFORE_LENDING);
        match poll_read_buf(stream, cx, pending, want) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(false),
            Poll::Ready(Ok(n)) => tally.t.received += n as u64,
        }
    });
    tokio::time::timeout(DRAIN_GRACE, read)
        .await
        .unwrap_or(false)
}

/// Logs a DEBUG event of this module in the client's span, made only when the event is on (see
/// `Client::span`).
fn debug_in_span(client: &Client, event: impl FnOnce()) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        client.span().in_scope(event);
    }
}

async fn restarting(client: &mut Client) {
    let reason = client
        .service
        .restart_reason
        .load(std::sync::atomic::Ordering::Relaxed);
    client.fatal(&errors::pgbay_draining(reason)).await;
}

async fn shutdown(client: &mut Client) {
    let e = errors::admin_shutdown(&client.service.name);
    client.fatal(&e).await;
}

async fn killed(client: &mut Client) {
    let e = errors::pool_killed(&client.pool.name);
    client.fatal(&e).await;
}

async fn drained(client: &mut Client) {
    let e = errors::pool_removed(&client.pool.name);
    client.fatal(&e).await;
}

/// Waits, holding no buffer, until the client sends something.
async fn wait_idle(
    client: &mut Client,
    stop: &mut Watch<'_, '_>,
    drain: &mut Watch<'_, '_>,
    restart: &mut Watch<'_, '_>,
) -> Idle {
    drop_ignored(&mut client.pending);
    if !client.pending.is_empty() {
        return Idle::Data;
    }
    let Client {
        stream,
        pending,
        notify,
        tally,
        ..
    } = client;
    // Reading here (rather than peeking and reading again once attached) saves a syscall per
    // transaction; the buffer is the thread's, lent for the read (`lend_read`), so this costs
    // no allocation either. A plain `poll_read` that fills less than the buffer also tells
    // tokio the socket is drained, so the relay does not try (and fail) to read it again.
    std::future::poll_fn(|cx| {
        if stop.poll_fired(cx) {
            return Poll::Ready(Idle::Shutdown);
        }
        if drain.poll_fired(cx) {
            return Poll::Ready(Idle::Drained);
        }
        if restart.poll_fired(cx) {
            return Poll::Ready(Idle::Restarting);
        }
        if let Some(sub) = notify {
            if let Poll::Ready(over) = sub.poll_over(cx) {
                return Poll::Ready(Idle::NotifyOver(over));
            }
            if let Poll::Ready(Some(msg)) = sub.poll_recv(cx) {
                return Poll::Ready(Idle::Notify(msg));
            }
        }
        loop {
            if pending.capacity() == 0 {
                *pending = lend_read();
            }
            let want = missing(pending).clamp(IDLE_READ, WHOLE_BEFORE_LENDING);
            match poll_read_buf(stream, cx, pending, want) {
                Poll::Pending => {
                    if pending.is_empty() {
                        give_back_read(std::mem::take(pending));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Idle::Gone),
                // Every byte is counted where it is read from the client (here, or by the relay).
                Poll::Ready(Ok(n)) => {
                    tally.t.received += n as u64;
                    // Terminate needs no server connection.
                    if pending.first() == Some(&tag::TERMINATE) {
                        return Poll::Ready(Idle::Gone);
                    }
                    if missing(pending) == 0 {
                        drop_ignored(pending);
                        if !pending.is_empty() {
                            return Poll::Ready(Idle::Data);
                        }
                    }
                    // Half a message: no server connection is lent for it yet.
                }
            }
        }
    })
    .await
}

/// Drops the whole messages at the head of what an idle client sent that PostgreSQL ignores
/// outside a COPY and that ask for no answer — CopyData, CopyDone and CopyFail (left over from
/// a COPY that failed before it started), and Flush — so that they take no server connection:
/// relayed, nothing would come back to end the attachment, and the client would hold its
/// connection while at rest.
fn drop_ignored(pending: &mut BytesMut) {
    while let Some((kind, len)) = header(pending) {
        let ignored = match kind {
            tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL => true,
            tag::FLUSH => len == HEADER,
            _ => false,
        };
        if !ignored || !(HEADER..=WHOLE_BEFORE_LENDING).contains(&len) || pending.len() < len {
            return;
        }
        pending.advance(len);
    }
}

/// What an idle client may have answered without a server connection (`serve_names`).
enum NameRequest {
    /// Closes of its named statements through their Sync: this many bytes.
    Closes(usize),
    /// A Query that is one SQL `DEALLOCATE`: this many bytes.
    Deallocate(usize, session_state::Deallocate),
}

/// The request at the head of an idle client's `pending` that acts only on its own statement
/// names, whole: Closes of named statements through their Sync (what tokio-postgres sends when
/// a statement is dropped, and drivers when their cache evicts one), or a Query that is one SQL
/// `DEALLOCATE` (psycopg's `DEALLOCATE ALL` after a rollback, pgx's and libpq-based drivers'
/// evictions). None for anything else, or when not all of it is there yet; one look at the
/// first byte for most requests.
fn name_request(pending: &[u8]) -> Option<NameRequest> {
    match header(pending)? {
        (tag::CLOSE, _) => closes_through_sync(pending).map(NameRequest::Closes),
        (tag::QUERY, len) if (HEADER + 1..=WHOLE_BEFORE_LENDING).contains(&len) => {
            let msg = pending.get(..len)?;
            if msg[HEADER] | 0x20 != b'd' {
                return None;
            }
            let cmd = session_state::parse_deallocate(scan::statement_text(tag::QUERY, msg))?;
            Some(NameRequest::Deallocate(len, cmd))
        }
        _ => None,
    }
}

/// Answers, without a server connection, the requests at the head of an idle client's
/// `pending` that act only on its own statement names (`name_request`), as PostgreSQL answers
/// them between transactions. The names are the client's own (the server copies are shared and
/// stay, as when the relay serves these); a Close of a name the client lacks is no error, a
/// `DEALLOCATE` of one is (26000), and either way the client is left outside a transaction, so
/// the answer ends with ReadyForQuery 'I'. A `DEALLOCATE` Query also drops the client's unnamed
/// statement, as every simple Query does in PostgreSQL. So no server connection is taken (nor a
/// dying one met) for a request that would not use it. Ok(true) when nothing else is left to
/// serve; Err when the client is gone.
#[cold]
async fn serve_names(client: &mut Client) -> Result<bool, ()> {
    let Client {
        stream,
        pending,
        statements,
        ..
    } = client;
    let mut out = BytesMut::new();
    while let Some(request) = name_request(pending) {
        let end = match request {
            NameRequest::Closes(end) => {
                for (kind, msg) in whole_messages(&pending[..end]) {
                    if kind == tag::CLOSE {
                        if let Some((_, name)) = parse_target(msg) {
                            statements.remove(name);
                        }
                        out.extend_from_slice(&CLOSE_COMPLETE);
                    }
                }
                end
            }
            NameRequest::Deallocate(end, cmd) => {
                statements.clear_unnamed();
                match cmd {
                    session_state::Deallocate::All => {
                        statements.take_names();
                        status::command_complete(&mut out, b"DEALLOCATE ALL");
                    }
                    session_state::Deallocate::Name(name) => {
                        match statements.remove(name.as_bytes()) {
                            Some(_) => status::command_complete(&mut out, b"DEALLOCATE"),
                            None => {
                                errors::unknown_statement(&name).write(&mut out, Severity::Error)
                            }
                        }
                    }
                }
                end
            }
        };
        status::ready_for_query(&mut out, txn::IDLE);
        pending.advance(end);
    }
    if stream.write_all(&out).await.is_err() || stream.flush().await.is_err() {
        return Err(());
    }
    Ok(pending.is_empty())
}

/// Whether `pending` is one whole Query that is a literal SET (`scan::literal`) of the value
/// the client's session already has: in PostgreSQL a SET of a parameter to its current value
/// outside a transaction block changes nothing and reports nothing (the parameters taken
/// literally are unreported), so it needs no server connection. Applications that set
/// `search_path` at every checkout repeat the same SET. Only a text that starts with the word
/// `SET` is read further (a `SELECT` costs three byte compares).
fn repeated_set(pending: &[u8], params: &crate::params::ClientParams) -> bool {
    let Some((tag::QUERY, len)) = header(pending) else {
        return false;
    };
    let text = &pending[HEADER.min(pending.len())..];
    let starts_with_set =
        text.len() > 4 && text[..3].eq_ignore_ascii_case(b"set") && text[3].is_ascii_whitespace();
    if len != pending.len() || params.dirty != 0 || !starts_with_set {
        return false;
    }
    scan::literal::parse(text).is_some_and(|set| {
        let current = match &set.custom {
            Some(name) => params.custom_value(name),
            None => params.value(set.param),
        };
        current == set.value.as_deref()
    })
}

/// Answers a repeated SET (`repeated_set`) as PostgreSQL does: CommandComplete `SET`, then
/// ReadyForQuery, idle. False when the client is gone.
async fn answer_repeated_set(client: &mut Client) -> bool {
    client.pending.clear();
    let mut out = BytesMut::with_capacity(16);
    status::command_complete(&mut out, b"SET");
    status::ready_for_query(&mut out, txn::IDLE);
    client.stream.write_all(&out).await.is_ok() && client.stream.flush().await.is_ok()
}

/// The length of the whole Closes of named statements and their Sync at the head of `pending`
/// (`name_request`); None when it holds anything else there, or not all of it yet.
fn closes_through_sync(pending: &[u8]) -> Option<usize> {
    let mut pos = 0;
    for (kind, msg) in whole_messages(pending) {
        pos += msg.len();
        match kind {
            tag::CLOSE => match parse_target(msg) {
                Some((target::STATEMENT, name)) if !name.is_empty() => {}
                _ => return None,
            },
            tag::SYNC if pos > msg.len() => return Some(pos),
            _ => return None,
        }
    }
    None
}

/// The whole, well-formed messages at the head of `buf` (type and message), up to the first
/// that is not all there or has a length below the header's.
fn whole_messages(buf: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let (kind, len) = header(rest)?;
        if len < HEADER || rest.len() < len {
            return None;
        }
        let (msg, after) = rest.split_at(len);
        rest = after;
        Some((kind, msg))
    })
}

/// A message up to this long is received whole before a server connection is lent for it, so
/// that a client that stops in the middle of one holds nothing; a longer one is lent a
/// connection at its header (buffering it whole would cost its size per client), and a client
/// that then stalls is disconnected after `client_message_timeout` (`relay::pump`).
const WHOLE_BEFORE_LENDING: usize = 16 * 1024;

/// How many bytes of the first message in `pending` are still to come before it may be
/// relayed (0: relay now).
fn missing(pending: &[u8]) -> usize {
    match header(pending) {
        None => HEADER - pending.len(),
        // A length the relay refuses (or a long message): relay now, it deals with it.
        Some((_, len)) if !(HEADER..=WHOLE_BEFORE_LENDING).contains(&len) => 0,
        Some((_, len)) => len.saturating_sub(pending.len()),
    }
}

/// The length of the request at the head of a waiting client's `pending` that a cancel ends:
/// a whole Query or FunctionCall, or whole extended-protocol messages through their Sync. None
/// while part of it is still to come (a cancel then does nothing: the request is served once a
/// connection is free, as before).
fn cancellable(pending: &[u8]) -> Option<usize> {
    let mut pos = 0;
    for (kind, msg) in whole_messages(pending) {
        pos += msg.len();
        match kind {
            tag::QUERY | tag::FUNCTION_CALL if pos == msg.len() => return Some(pos),
            tag::SYNC => return Some(pos),
            tag::PARSE | tag::BIND | tag::DESCRIBE | tag::EXECUTE | tag::CLOSE | tag::FLUSH => {}
            _ => return None,
        }
    }
    None
}

/// Answers a request whose wait for a server connection a cancel ended as PostgreSQL answers
/// a cancelled statement — 57014, then ReadyForQuery (the client is between transactions: one
/// in a transaction holds its connection) — and drops its `len` bytes; what the client sent
/// after them is served next. False when the client is gone.
#[cold]
async fn cancelled_waiting(client: &mut Client, len: usize) -> bool {
    debug_in_span(client, || {
        tracing::debug!("cancel request: the request waiting for a server is dropped")
    });
    client.pending.advance(len);
    client.tally.ready(true, client.pool.counters());
    let mut out = BytesMut::new();
    errors::query_canceled().write(&mut out, Severity::Error);
    status::ready_for_query(&mut out, txn::IDLE);
    client.stream.write_all(&out).await.is_ok() && client.stream.flush().await.is_ok()
}

/// Statement mode: answers the Queries at the head of what an idle client sent that open a
/// transaction block, without taking a server connection (the relay refuses those that arrive
/// later or behind other messages). Ok(true) when nothing else is left to serve.
async fn refuse_blocks(client: &mut Client) -> Result<bool, ()> {
    let mut out = BytesMut::new();
    while let Some((kind, len)) = header(&client.pending) {
        if kind != tag::QUERY
            || client.pending.len() < len
            || !scan::opens_block(scan::statement_text(kind, &client.pending[..len]))
        {
            break;
        }
        client.pending.advance(len);
        errors::statement_mode_transaction(&client.pool.name).write(&mut out, Severity::Error);
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

/// How an attached period ended, when the session goes on.
enum Attachment {
    /// At a boundary, the connection back to the pool (or closed): the client goes on.
    Released,
    /// At a boundary, the connection still the client's (`session_state::PINS`): its next
    /// transaction is relayed on it.
    Kept,
    /// The session is over.
    Over,
}

/// One attached period, and how it ended (`Attachment`).
async fn attached(
    client: &mut Client,
    pool: &Arc<Pool>,
    st: &PoolState,
    guard: &mut ServerGuard,
    stop: &mut Watch<'_, '_>,
    drain: &mut Watch<'_, '_>,
    restart: &mut Watch<'_, '_>,
) -> Result<Attachment, End> {
    let mode = st.cfg.mode;
    let server = guard.server_mut();
    let track = mode != PoolMode::Session && st.settings.max_prepared_statements > 0;
    // Where this attachment is in the server connection's byte streams: the frontend's, for
    // this attachment only (a connection goes back to the pool only at rest, `at_boundary`),
    // taken from and given back to the worker thread's spare states.
    let mut relay_state = relay::RelayState::take();
    client.cancel.attach(&st.backend, server.pid, server.secret);
    let end = {
        feed_pending(client, server);
        let (stream, mut ctx) = relay_ctx(client, pool, st, track);
        relay::pump(
            stream,
            server,
            &mut relay_state,
            &mut ctx,
            mode,
            stop,
            drain,
            restart,
        )
        .await
    };
    client.cancel.detach();
    match end {
        End::Boundary => {
            relay::take_pending(server, &mut client.pending);
            // What the client may come back to stays with it (`session_state::PINS`): it
            // keeps this connection for its next transaction (boxed: only such clients pay
            // for the question, and every request's future stays as small as it was).
            if pins(mode, client) && Box::pin(keeps_its_server(client, pool, server)).await {
                return Ok(Attachment::Kept);
            }
            let dirty = std::mem::take(&mut client.params.dirty);
            let mut keep = true;
            if dirty != 0 {
                match Box::pin(settle(client, server, dirty)).await {
                    Settled::Keep => {}
                    Settled::Retire => keep = false,
                    Settled::Gone => return Ok(Attachment::Over),
                }
            }
            if !keep {
                // Checked in unclean: closed, its slot freed for a fresh connection.
                return Ok(Attachment::Released);
            }
            if mode == PoolMode::Session || st.settings.server_reset_query_always {
                if let Err(e) = reset(pool, server).await {
                    debug_in_span(
                        client,
                        || tracing::debug!(error = %e, "reset failed, closing server connection"),
                    );
                    server.close_reason = Some("reset failed");
                    return Ok(if mode != PoolMode::Session {
                        Attachment::Released
                    } else {
                        Attachment::Over
                    });
                }
            }
            server.clean = true;
            if mode == PoolMode::Session {
                // Only a removed pool or a draining pgbay ends a session-mode attachment at a
                // boundary.
                if pool.drain.is_cancelled() {
                    drained(client).await;
                } else {
                    restarting(client).await;
                }
                return Ok(Attachment::Over);
            }
            Ok(Attachment::Released)
        }
        End::ClientGone => {
            // Keep the connection only if it is exactly at a transaction boundary: anything
            // else (open transaction, query running, half a message) is closed with it.
            server.bufs.c2s_in.clear();
            if relay::at_boundary(server, &relay_state)
                && server.bufs.c2s_out.is_empty()
                && server.bufs.s2c_out.is_empty()
            {
                server.bufs.s2c_out.clear();
                let dirty = std::mem::take(&mut client.params.dirty);
                if dirty != 0 {
                    let failed = session_state::read_back(server, None, dirty).await.is_err();
                    if failed || session_state::must_close(dirty, false) {
                        server.close_reason = Some(if failed {
                            "could not reset the session"
                        } else {
                            "client loaded a library"
                        });
                        return Ok(Attachment::Over);
                    }
                }
                if (mode == PoolMode::Session || st.settings.server_reset_query_always)
                    && reset(pool, server).await.is_err()
                {
                    server.close_reason = Some("reset failed");
                    return Ok(Attachment::Over);
                }
                server.clean = true;
            } else {
                server.close_reason = Some("client left in the middle of a transaction");
            }
            Ok(Attachment::Over)
        }
        End::Shutdown => {
            server.close_reason = Some("service shutting down");
            shutdown(client).await;
            Ok(Attachment::Over)
        }
        End::ServerGone(cause) => {
            server.close_reason = Some("server connection lost");
            // Lost after the client's transaction ended but before the connection went back
            // to the pool (a server shut down right after answering): no transaction of the
            // client's was on it, so it keeps its session; its next one gets a new server.
            // Not a client that kept the connection for what it held there (`PINS`): a cursor,
            // a lock or a table it counts on went with it, and it is told, as a direct
            // connection's client would be.
            if mode != PoolMode::Session
                && !pins(mode, client)
                && server.status == txn::IDLE
                && relay_state.expect.is_empty()
                && !relay_state.copy_in
                && relay_state.c2s_skip == 0
                && server.bufs.c2s_in.is_empty()
                && server.bufs.c2s_out.is_empty()
                && server.bufs.s2c_out.is_empty()
            {
                return Ok(Attachment::Released);
            }
            client.fatal(&errors::server_lost(&pool.name, cause)).await;
            Ok(Attachment::Over)
        }
        End::TransactionBlock => {
            let refusal = errors::statement_mode_transaction(&pool.name);
            // When nothing else is in flight, roll the block back and tell the client with a
            // plain ERROR; it stays connected. Otherwise there is no clean way back: disconnect.
            if relay_state.expect.is_empty()
                && server.bufs.s2c_in.is_empty()
                && relay_state.c2s_skip == 0
                && server.run_internal("ROLLBACK").await.is_ok()
                && server.status == txn::IDLE
            {
                relay::take_pending(server, &mut client.pending);
                // What the statements before the block changed is settled as at any boundary.
                let dirty = std::mem::take(&mut client.params.dirty);
                server.clean = dirty == 0
                    || match Box::pin(settle(client, server, dirty)).await {
                        Settled::Keep => true,
                        Settled::Retire => false,
                        Settled::Gone => return Ok(Attachment::Over),
                    };
                // What the server answered before the refused ReadyForQuery, then the error.
                let mut out = std::mem::take(&mut server.bufs.s2c_out);
                refusal.write(&mut out, Severity::Error);
                crate::net::messages::status::ready_for_query(&mut out, txn::IDLE);
                let sent = client.stream.write_all(&out).await.is_ok()
                    && client.stream.flush().await.is_ok();
                out.clear();
                server.bufs.s2c_out = out;
                return Ok(if sent {
                    Attachment::Released
                } else {
                    Attachment::Over
                });
            }
            server.close_reason = Some("transaction block refused in statement mode");
            client.fatal(&refusal).await;
            Ok(Attachment::Over)
        }
        End::TimedOut(error) => {
            server.close_reason = Some("client held it without sending");
            client.fatal(&error).await;
            Ok(Attachment::Over)
        }
        End::Refused(refusal) => {
            server.close_reason = Some("client broke the protocol");
            client.fatal(&refusal).await;
            Ok(Attachment::Over)
        }
    }
}

/// Hands the relay what the client sent before its attachment (`wait_idle`, or held back from
/// the attachment before: `relay::take_pending`), counted when it was read.
fn feed_pending(client: &mut Client, server: &mut Server) {
    if !client.pending.is_empty() {
        server.bufs.c2s_in.extend_from_slice(&client.pending);
        give_back_read(std::mem::take(&mut client.pending));
    }
}

/// The client's socket and what the relay needs of the client and its pool (`relay::pump`).
fn relay_ctx<'a>(
    client: &'a mut Client,
    pool: &'a Pool,
    st: &PoolState,
    track: bool,
) -> (&'a mut crate::net::ClientStream, ClientCtx<'a>) {
    let mode = st.cfg.mode;
    let Client {
        stream,
        service,
        params,
        statements,
        tally,
        pool: client_pool,
        notify,
        ..
    } = client;
    let ctx = ClientCtx {
        tally,
        counters: pool.counters(),
        statements,
        params,
        registry: &service.statements,
        track,
        max_prepared: st.settings.max_prepared_statements as usize,
        refuse_blocks: mode == PoolMode::Statement,
        session_state: mode != PoolMode::Session,
        pool: client_pool,
        notify,
        wait_limits: relay::WaitLimits {
            message: st.message_timeout,
            idle_transaction: st.idle_transaction_timeout,
        },
    };
    (stream, ctx)
}

/// Whether the client's transactions may have left what it can come back to.
fn pins(mode: PoolMode, client: &Client) -> bool {
    mode != PoolMode::Session && client.params.dirty & session_state::PINS != 0
}

/// At a transaction boundary after a statement that may have left what the client can come
/// back to (`session_state::PINS`): whether it did, so that the client keeps this connection.
/// Not when the pool is going away, pgbay restarting or the client killed (its session ends at
/// its next request: what it held goes with the reset), nor when the server cannot say (the
/// reset that follows meets the same trouble and handles it).
async fn keeps_its_server(client: &mut Client, pool: &Pool, server: &mut Server) -> bool {
    if pool.drain.is_cancelled()
        || client.service.restarting.is_cancelled()
        || pool.kill_epoch() != client.kill_epoch
    {
        return false;
    }
    match session_state::pinned(server).await {
        Ok(pinned) => {
            if pinned {
                debug_in_span(client, || {
                    tracing::debug!(
                        "keeps its server connection: held cursor, session lock or temporary table"
                    )
                });
            }
            pinned
        }
        Err(e) => {
            debug_in_span(
                client,
                || tracing::debug!(error = %e, "could not ask what the session holds"),
            );
            false
        }
    }
}

/// Why the client's settings could not be applied to a server connection.
enum Synced {
    /// The connection is dead (closed, or the server is shutting down): nothing was sent for
    /// the client yet, another connection may serve it.
    Dead(crate::backend::ServerError),
    /// The server refused a value (a bad `-c` in `options`, a role no longer granted): the
    /// client gets the server's own error, as it would at login.
    Refused(errors::ClientError),
}

/// Gives the serving connection this client's parameters.
async fn sync_params(client: &mut Client, server: &mut Server) -> Result<(), Synced> {
    let Some(sql) = server.params.sync_sql(&client.params) else {
        return Ok(());
    };
    match server.run_internal(&sql).await {
        Ok(_) => {
            server.params.synced(&client.params);
            Ok(())
        }
        // Operator intervention (57: shutdown, crash recovery) and connection exceptions (08)
        // end the connection, whatever the settings.
        Err(crate::backend::ServerError::Server { code, message })
            if !code.starts_with("57") && !code.starts_with("08") =>
        {
            client.span().in_scope(
                || tracing::warn!(code = %code, "the server refused the client's parameters"),
            );
            // The connection itself is fine, its values unsure.
            server.params.reset_unsure();
            let e = crate::backend::ServerError::Server { code, message };
            Err(Synced::Refused(errors::server_error(&client.pool.name, &e)))
        }
        Err(e) => {
            client
                .span()
                .in_scope(|| tracing::info!(error = %e, "server connection dead when lent"));
            server.close_reason = Some("server connection lost");
            Err(Synced::Dead(e))
        }
    }
}

/// What became of a server connection after `settle`.
enum Settled {
    Keep,
    /// It must not serve anyone else (the reset failed, or the client ran `LOAD`).
    Retire,
    /// It broke: the client was told and the session is over.
    Gone,
}

/// Records the parameters the client's transaction may have changed and resets the session
/// when it may have changed more (`session_state`). A server error on a mere read-back only
/// leaves the connection unmatched, to be synced in full at its next use; a failed reset
/// retires it.
///
/// Its callers box it: only a transaction that changed session state settles, and inline its
/// future would size every request's future past 1,032 bytes, the largest block glibc keeps in
/// its per-thread cache, for a slower `malloc`/`free` pair on every transaction.
async fn settle(client: &mut Client, server: &mut Server, dirty: u64) -> Settled {
    let result = session_state::read_back(server, Some(&mut client.params), dirty).await;
    if let Err(e) = &result {
        client
            .span()
            .in_scope(|| tracing::warn!(error = %e, "could not read back session parameters"));
        if !matches!(e, crate::backend::ServerError::Server { .. }) {
            server.close_reason = Some("server connection lost");
            client
                .fatal(&errors::server_lost(&client.pool.name, e))
                .await;
            return Settled::Gone;
        }
        server.params.reset_unsure();
    }
    if session_state::must_close(dirty, result.is_err()) {
        server.close_reason = Some(if result.is_err() {
            "could not reset the session"
        } else {
            "client loaded a library"
        });
        return Settled::Retire;
    }
    Settled::Keep
}

/// DISCARD ALL between session-mode clients.
async fn reset(pool: &Pool, server: &mut Server) -> Result<(), crate::backend::ServerError> {
    let mut server = pool.resetting(server);
    server.run_internal("DISCARD ALL").await?;
    server.prepared.clear();
    server.params.reset();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frontend message: type, length, body.
    fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// What a cancel of a waiting client drops: its first request when it is all there.
    #[test]
    fn a_waiting_request_is_cancellable_once_it_is_all_there() {
        let q = msg(b'Q', b"SELECT 1\0");
        let parse = msg(b'P', b"\0SELECT 1\0\0\0");
        let bind = msg(b'B', b"\0\0\0\0\0\0\0\0");
        let exec = msg(b'E', b"\0\0\0\0\0");
        let sync = msg(b'S', b"");
        let two_queries = [q.clone(), q.clone()].concat();
        assert_eq!(
            cancellable(&two_queries),
            Some(q.len()),
            "the first Query only"
        );
        let segment = [
            parse.clone(),
            bind.clone(),
            exec.clone(),
            sync.clone(),
            q.clone(),
        ]
        .concat();
        assert_eq!(
            cancellable(&segment),
            Some(segment.len() - q.len()),
            "through the Sync"
        );
        let unsynced = [parse.clone(), bind.clone(), exec.clone()].concat();
        assert_eq!(cancellable(&unsynced), None, "no Sync yet");
        assert_eq!(cancellable(&q[..q.len() - 1]), None, "half a Query");
        assert_eq!(cancellable(&[parse.clone(), q.clone()].concat()), None);
        assert_eq!(cancellable(&msg(b'd', b"x")), None, "not a request");
        assert_eq!(cancellable(&[]), None);
    }

    /// What an idle client may have answered without a server connection: Closes of named
    /// statements through their Sync, or a Query that is one DEALLOCATE, whole, and nothing
    /// else.
    #[test]
    fn closes_of_named_statements_through_their_sync_are_told_apart() {
        let close = |target: u8, name: &[u8]| msg(b'C', &[&[target][..], name, b"\0"].concat());
        let sync = msg(b'S', b"");
        let q = msg(b'Q', b"SELECT 1\0");
        let two = [close(b'S', b"s1"), close(b'S', b"s2"), sync.clone()].concat();
        assert_eq!(closes_through_sync(&two), Some(two.len()));
        let then_query = [two.clone(), q.clone()].concat();
        assert_eq!(
            closes_through_sync(&then_query),
            Some(two.len()),
            "up to the Sync"
        );
        assert_eq!(
            closes_through_sync(&two[..two.len() - 1]),
            None,
            "half the Sync"
        );
        assert_eq!(
            closes_through_sync(&close(b'S', b"s1")),
            None,
            "no Sync yet"
        );
        assert_eq!(closes_through_sync(&sync), None, "a Sync alone");
        let unnamed = [close(b'S', b""), sync.clone()].concat();
        assert_eq!(closes_through_sync(&unnamed), None, "the unnamed statement");
        let portal = [close(b'P', b"p1"), sync.clone()].concat();
        assert_eq!(closes_through_sync(&portal), None, "a portal");
        let parse = msg(b'P', b"s1\0SELECT 1\0\0\0");
        let mixed = [close(b'S', b"s1"), parse, sync.clone()].concat();
        assert_eq!(closes_through_sync(&mixed), None, "with a Parse");
        assert_eq!(closes_through_sync(&[]), None);

        // And a Query that is one DEALLOCATE, whole.
        let is_deallocate = |q: &[u8]| match name_request(q) {
            Some(NameRequest::Deallocate(len, cmd)) => Some((len, cmd)),
            _ => None,
        };
        let one = msg(b'Q', b"DEALLOCATE s1\0");
        let (len, cmd) = is_deallocate(&[one.clone(), q.clone()].concat()).unwrap();
        assert_eq!(len, one.len());
        assert!(matches!(cmd, session_state::Deallocate::Name(n) if &*n == "s1"));
        let all = msg(b'Q', b"deallocate all;\0");
        assert!(matches!(
            is_deallocate(&all),
            Some((_, session_state::Deallocate::All))
        ));
        assert!(is_deallocate(&one[..one.len() - 1]).is_none(), "half of it");
        assert!(is_deallocate(&msg(b'Q', b"DEALLOCATE s1; SELECT 1\0")).is_none());
        assert!(is_deallocate(&msg(b'Q', b"DISCARD ALL\0")).is_none());
        assert!(is_deallocate(&q).is_none());
        assert!(matches!(name_request(&two), Some(NameRequest::Closes(n)) if n == two.len()));
    }

    /// A read buffer given back is lent again (the same allocation); one grown past a few
    /// requests is freed; a thread keeps at most `SPARE_READS`.
    #[test]
    fn a_thread_lends_its_read_buffers_again() {
        std::thread::spawn(|| {
            let mut first = lend_read();
            assert!(first.is_empty() && first.capacity() >= IDLE_READ);
            first.extend_from_slice(b"Q\0\0\0\x0dSELECT 1\0");
            let addr = first.as_ptr() as usize;
            give_back_read(first);
            let again = lend_read();
            assert!(again.is_empty(), "given back empty");
            assert_eq!(again.as_ptr() as usize, addr, "the same allocation");
            give_back_read(BytesMut::with_capacity(64 * IDLE_READ));
            let fresh = lend_read();
            assert!(
                fresh.capacity() < 64 * IDLE_READ,
                "a grown buffer is not kept"
            );
            for _ in 0..SPARE_READS + 3 {
                give_back_read(BytesMut::with_capacity(IDLE_READ));
            }
            let kept = SPARE_READS_OF_THREAD.with(|s| s.borrow().len());
            assert_eq!(kept, SPARE_READS);
            drop((again, fresh));
        })
        .join()
        .unwrap();
    }
}
