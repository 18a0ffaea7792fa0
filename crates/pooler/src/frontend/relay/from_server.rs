//! Scanning what the server sends: ReadyForQuery ends a transaction or statement, errors skip
//! to the next Sync, ParameterStatus updates the client's parameters, and the answers to the
//! pooler's own messages are swallowed.

use super::{
    drain_synthesized, finish, flush_run, names, scan::literal, Action, Expect, RelayError,
    RelayState, ServerEvent, BOUND, COPY_END, MAX_MESSAGE, UNNAMED_PORTAL,
};
use crate::backend::server::Server;
use crate::net::messages::error::parse_error;
use crate::net::messages::status::{self, parse_parameter_status};
use crate::net::messages::tag::{self, txn};
use crate::net::messages::{header, HEADER};
use crate::params::ClientParams;
use crate::prepared::{stand_in_tag, ClientStatements, Stale};

/// The server entered COPY IN: Syncs the client pipelined before ending the copy are ignored
/// by the server, so they must not wait for a ReadyForQuery.
fn copy_started(relay: &mut RelayState) {
    let mut i = 1;
    while i < relay.expect.len() {
        match relay.expect[i].kind {
            COPY_END => {
                relay.expect.remove(i);
                return;
            }
            tag::SYNC => {
                relay.expect.remove(i);
            }
            _ => i += 1,
        }
    }
    relay.copy_in = true;
}

/// A Bind/Describe of shared statement `id` failed: when the server says the statement went
/// stale, it is marked so that every later use prepares a fresh one (`prepared::Statement::
/// mark_stale`), and true is returned. The segment is then replayed when it can be (`retry`);
/// otherwise the client sees the error, and its next Bind of the same name gets the fresh
/// statement.
#[cold]
fn check_stale(server: &mut Server, id: u64, body: &[u8]) -> Option<Stale> {
    let (_, message) = parse_error(body);
    let how = crate::prepared::stale(&message)?;
    if let Some(stmt) = server.prepared.get(id) {
        stmt.mark_stale();
    }
    Some(how)
}

/// The server skipped the client's (or the pooler's) message `e` after an error, up to the
/// next Sync: it was never answered and did nothing, so what the pooler recorded of it when
/// relaying it is undone.
#[cold]
fn skipped(server: &mut Server, relay: &mut RelayState, e: Expect) {
    match (e.kind, e.action) {
        // Its refusal is not answered.
        (_, Action::Raise | Action::RaiseUnlessFailed) => {
            relay.raised.pop_front();
        }
        // A Parse the pooler answered itself: the server already has that statement.
        (tag::PARSE, Action::Synthesize) => {}
        // Of the unnamed portal, which it then did not replace.
        (tag::BIND, _) if e.stmt & UNNAMED_PORTAL != 0 => unnamed_portal_kept(relay),
        // Statements it would have prepared do not exist.
        (tag::PARSE, _) if e.stmt != 0 => server.prepared.remove(e.stmt),
        // An unnamed Parse, not made: the server has no unnamed statement after a failure,
        // its previous one after a skip. The client's own Parse (or the pooler's in place of a
        // refused one) has its change to the client's unnamed statement undone (`names`); the
        // pooler's Parse of the client's statement (`from_client`'s `ensure_unnamed`) is made
        // again before its next Bind.
        (tag::PARSE, _) => {
            relay.unnamed_here = false;
            if e.named == 0 {
                // The pooler's own: what was relayed after it counted on it.
                names::unnamed_parse_skipped(relay);
            }
        }
        // The pooler's own Close of an evicted statement: the server keeps a statement the
        // pooler forgot, whose name it would Parse again (42P05). The connection serves no one
        // after this client.
        (tag::CLOSE, Action::Swallow) if e.stmt != 0 => {
            server.close_reason = Some("a statement Close the server skipped")
        }
        // The pooler's Close of the unnamed portal (`from_client::close_query_portal`): that
        // portal stays.
        (tag::CLOSE, Action::Swallow) => unnamed_portal_kept(relay),
        _ => {}
    }
    // A client's name it would have made or dropped stays as it was (`names::undo`, after
    // the run).
    names::skipped(relay, e);
}

/// A Bind of the unnamed portal, or the pooler's Close of it, did nothing (it failed or was
/// skipped, and is no longer in `relay.expect`): the unnamed portal is what it was before it,
/// perhaps one a simple Query left (`RelayState::query_portal`), unless a later Bind of it was
/// relayed meanwhile, which replaces it (or, should that one fail too, comes here in its turn).
#[cold]
fn unnamed_portal_kept(relay: &mut RelayState) {
    let rebound = relay
        .expect
        .iter()
        .any(|e| e.kind == tag::BIND && e.stmt & UNNAMED_PORTAL != 0);
    if !rebound {
        relay.query_portal = true;
    }
}

/// The server ran a statement that dropped every prepared statement of its connection
/// (`DEALLOCATE ALL`, `DISCARD ALL`). Those the pooler's Parses relayed after it make again
/// stay known, and so do the client's names made after it (`names::server_dropped_all`).
#[cold]
fn dropped_all(
    server: &mut Server,
    relay: &mut RelayState,
    client_statements: &mut ClientStatements,
) {
    let expect = &relay.expect;
    server
        .prepared
        .retain(|id| expect.iter().any(|e| e.kind == tag::PARSE && e.stmt == id));
    names::server_dropped_all(relay, client_statements);
}

/// The answer to a Query holding a literal SET is complete: its value is the client's and the
/// server's when the SET succeeded outside a transaction block (so it committed with its
/// statement); otherwise the parameter is read back at the transaction's end, as any SET.
fn literal_settled(
    server: &mut Server,
    relay: &mut RelayState,
    client: &mut ClientParams,
    before: u8,
) {
    let Some(set) = relay.sets.pop_front() else {
        return;
    };
    let settled = set.done && before == txn::IDLE && server.status == txn::IDLE;
    let marks = set.marks();
    match set.custom {
        None if settled => server.params.learned_one(set.param, set.value, client),
        None => client.dirty |= marks,
        Some(name) => {
            // A custom setting: as `SET` did not settle it, or the client carries too many
            // already, read back and reset at the transaction's end, as any other SET of one.
            if !(settled && server.params.learned_custom_one(&name, set.value, client)) {
                client.dirty |= marks;
                client.note_custom(name);
            }
        }
    }
}

/// SQLSTATE in_failed_sql_transaction: a failed block refused the statement.
const FAILED_BLOCK: &str = "25P02";

/// Whether the server message `answer` is the last answer to a client message of type `kind`.
fn terminates(kind: u8, answer: u8) -> bool {
    match kind {
        tag::PARSE => answer == tag::PARSE_COMPLETE,
        tag::BIND => answer == tag::BIND_COMPLETE,
        tag::CLOSE => answer == tag::CLOSE_COMPLETE,
        tag::DESCRIBE => answer == tag::ROW_DESCRIPTION || answer == tag::NO_DATA,
        tag::EXECUTE => matches!(
            answer,
            tag::COMMAND_COMPLETE | tag::EMPTY_QUERY_RESPONSE | tag::PORTAL_SUSPENDED
        ),
        _ => false,
    }
}

/// Processes server bytes in `s2c_in` into `s2c_out`. Runs of messages that pass unchanged
/// are copied at once; a read that passes whole (the usual answer) is handed over by swapping
/// the buffers.
pub fn server_input(
    server: &mut Server,
    relay: &mut RelayState,
    client_params: &mut ClientParams,
    client_statements: &mut ClientStatements,
    refuse_transactions: bool,
) -> Result<ServerEvent, RelayError> {
    let mut input = std::mem::take(&mut server.bufs.s2c_in);
    let result = server_messages(
        server,
        relay,
        client_params,
        client_statements,
        refuse_transactions,
        &input,
    );
    match result {
        Ok((pos, run, event)) => {
            finish(&mut input, &mut server.bufs.s2c_out, run, pos);
            server.bufs.s2c_in = input;
            Ok(event)
        }
        Err(e) => {
            server.bufs.s2c_in = input;
            Err(e)
        }
    }
}

/// The scanning part of `server_input`: returns (bytes consumed, start of the unflushed run,
/// event).
fn server_messages(
    server: &mut Server,
    relay: &mut RelayState,
    client_params: &mut ClientParams,
    client_statements: &mut ClientStatements,
    refuse_transactions: bool,
    input: &[u8],
) -> Result<(usize, usize, ServerEvent), RelayError> {
    let mut event = ServerEvent::None;
    let mut pos = 0;
    let mut run = 0;
    loop {
        if relay.s2c_skip > 0 {
            let n = relay.s2c_skip.min(input.len() - pos);
            if n == 0 {
                break;
            }
            pos += n;
            relay.s2c_skip -= n;
            continue;
        }
        if relay
            .expect
            .front()
            .is_some_and(|e| e.action.pooler_answers())
        {
            // Answers the pooler owes go out in order, after what was forwarded so far.
            flush_run(&mut server.bufs.s2c_out, input, &mut run, pos);
            drain_synthesized(server, relay, client_statements);
        }
        let Some((tag, len)) = header(&input[pos..]) else {
            break;
        };
        if !(HEADER - 1..=MAX_MESSAGE).contains(&(len - 1)) {
            return Err(RelayError::BadLength(len));
        }
        tracing::trace!(tag = %(tag as char), len, expect = ?relay.expect.front(), "server message");
        let avail = input.len() - pos;
        let whole = matches!(
            tag,
            tag::READY_FOR_QUERY
                | tag::PARAMETER_STATUS
                | tag::PARSE_COMPLETE
                | tag::CLOSE_COMPLETE
                | tag::COMMAND_COMPLETE
                | tag::NOTIFICATION_RESPONSE
        );
        if whole && avail < len {
            break;
        }
        // A stale statement's error kept from the client for a replay (`retry`).
        let mut held = false;
        if tag == tag::ERROR_RESPONSE
            && relay
                .expect
                .front()
                .is_some_and(|e| e.kind != tag::PARSE && e.stmt & BOUND != 0)
        {
            // An error about a shared statement: read whole, it may say the statement is stale.
            if avail < len {
                break;
            }
            if let Some(front) = relay.expect.front().copied() {
                let id = front.stmt & !(BOUND | UNNAMED_PORTAL);
                if let Some(how) = check_stale(server, id, &input[pos + HEADER..pos + len]) {
                    held = relay.retry.hold(id, how, &input[pos..pos + len]);
                }
            }
        }
        let mut forward = !held;
        if tag == tag::ERROR_RESPONSE
            && relay
                .expect
                .front()
                .is_some_and(|e| e.action == Action::RaiseUnlessFailed)
        {
            // The raising statement's Parse refused in a block failed meanwhile: the pooler's
            // own error is the answer (the entry and the error are dropped below, `skipped`).
            if avail < len {
                break;
            }
            if parse_error(&input[pos + HEADER..pos + len]).0 == FAILED_BLOCK {
                if let Some(error) = relay.raised.front() {
                    flush_run(&mut server.bufs.s2c_out, input, &mut run, pos);
                    server.bufs.s2c_out.extend_from_slice(error);
                    forward = false;
                }
            }
        }
        match tag {
            tag::READY_FOR_QUERY => {
                let before = server.status;
                server.status = input.get(pos + HEADER).copied().unwrap_or(txn::IDLE);
                relay.segment_open = false;
                relay.segment_failed = false;
                relay.block_in_segment = None;
                if server.status == txn::IDLE {
                    relay.savepoints = 0;
                    if std::mem::take(&mut relay.notified) {
                        // Whether its ReadyForQuery ends what the server sent so far (what the
                        // client's notifications may be put before: `own_notifications`).
                        relay.notified_end = Some(pos + len == input.len());
                    }
                }
                if let Some(t) = relay.txn_listens.as_mut() {
                    // Ended without a COMMIT: a block rolled back, a segment's transaction
                    // committed unless it failed.
                    let ended = t.ready(server.status == txn::IDLE);
                    if relay.txn_listens_end.is_none() {
                        relay.txn_listens_end = ended;
                    }
                }
                while let Some(e) = relay.expect.pop_front() {
                    if e.kind == tag::QUERY && e.stmt == literal::MARK {
                        literal_settled(server, relay, client_params, before);
                    }
                    if e.kind == tag::SYNC || e.kind == tag::QUERY {
                        // A CopyDone/CopyFail the client sent behind it that no COPY IN took
                        // (the COPY failed first, or there was none): the server ignores it.
                        while relay.expect.front().is_some_and(|e| e.kind == COPY_END) {
                            relay.expect.pop_front();
                        }
                        break;
                    }
                    // Unanswered before its Sync: sent after an error the server answered
                    // before this message arrived, so skipped as well.
                    skipped(server, relay, e);
                }
                if relay.names_skipped > 0 {
                    names::undo(relay, client_statements);
                }
                if relay.retry.holding() {
                    // The held error goes out (if it does) after what came before it.
                    flush_run(&mut server.bufs.s2c_out, input, &mut run, pos);
                }
                if relay.retry.ready(
                    server.status,
                    &mut server.bufs.c2s_in,
                    &mut server.bufs.s2c_out,
                ) {
                    // Swallowed: the segment is relayed again.
                    pos += len;
                    run = pos;
                    event = ServerEvent::Replay;
                    continue;
                }
                if refuse_transactions && server.status != txn::IDLE {
                    // Not forwarded; what follows stays unprocessed.
                    flush_run(&mut server.bufs.s2c_out, input, &mut run, pos);
                    pos += len;
                    return Ok((pos, pos, ServerEvent::TransactionBlock));
                }
                event = ServerEvent::Ready;
            }
            tag::ERROR_RESPONSE => {
                if let Some(t) = relay.txn_listens.as_mut() {
                    t.error();
                }
                if let Some(front) = relay.expect.front().copied() {
                    if matches!(
                        front.kind,
                        tag::PARSE | tag::BIND | tag::DESCRIBE | tag::CLOSE | tag::EXECUTE
                    ) {
                        // The server skips everything up to the next Sync: those messages will
                        // never be answered, and statements they would have prepared do not exist.
                        relay.segment_open = true;
                        relay.segment_failed = true;
                        let failed_unnamed = names::failed_unnamed(relay, front);
                        while let Some(e) = relay.expect.front().copied() {
                            if e.kind == tag::SYNC || e.kind == tag::QUERY {
                                break;
                            }
                            relay.expect.pop_front();
                            skipped(server, relay, e);
                        }
                        if relay.names_skipped > 0 {
                            names::undo(relay, client_statements);
                        }
                        if failed_unnamed {
                            // PostgreSQL dropped the previous one before parsing.
                            client_statements.clear_unnamed();
                            relay.unnamed_here = false;
                        }
                    }
                }
            }
            tag::COPY_IN_RESPONSE => copy_started(relay),
            tag::NOTIFICATION_RESPONSE if relay.drop_notifications => forward = false,
            tag::PARAMETER_STATUS => {
                let body = &input[pos + HEADER..pos + len];
                if let Some((name, value)) = parse_parameter_status(body) {
                    server.params.reported_to(name, value, client_params);
                }
            }
            _ => {
                if tag == tag::COMMAND_COMPLETE {
                    let body = &input[pos + HEADER..pos + len];
                    if body.starts_with(b"DISCARD ALL\0") {
                        // The client's own statement names go too, as on a direct connection;
                        // its settings are read back (now the defaults) by `read_back`.
                        server.params.reset();
                        dropped_all(server, relay, client_statements);
                        relay.discarded_channels = relay.drop_notifications;
                    } else if body == b"SET\0" {
                        if let Some(front) = relay.expect.front() {
                            if front.kind == tag::QUERY && front.stmt == literal::MARK {
                                if let Some(set) = relay.sets.front_mut() {
                                    set.done = true;
                                }
                            }
                        }
                    } else if body.starts_with(b"DEALLOCATE ALL\0") {
                        // Run by the server (among other statements, `scan`): its statements
                        // are gone, and the client's names with them, as on a direct connection.
                        dropped_all(server, relay, client_statements);
                    } else if body == b"COMMIT\0" {
                        relay.block_in_segment = Some(false);
                        if relay.txn_listens.is_some() {
                            relay.txn_listens_end = Some(true);
                        }
                    } else if body == b"BEGIN\0" || body == b"START TRANSACTION\0" {
                        relay.block_in_segment = Some(true);
                    } else if body == b"SAVEPOINT\0" {
                        relay.savepoints += 1;
                        if let Some(t) = relay.txn_listens.as_mut() {
                            t.savepoint();
                        }
                    } else if body == b"RELEASE\0" {
                        relay.savepoints = relay.savepoints.saturating_sub(1);
                        if let Some(t) = relay.txn_listens.as_mut() {
                            t.release();
                        }
                    } else if body == b"ROLLBACK\0" {
                        if let Some(t) = relay.txn_listens.as_mut() {
                            t.rollback_to();
                        }
                    } else if body == b"UNLISTEN\0" {
                        if let Some(&front) = relay.expect.front() {
                            if front.kind == tag::EXECUTE && front.stmt != 0 {
                                // A statement the pooler served with a stand-in: PostgreSQL's tag.
                                flush_run(&mut server.bufs.s2c_out, input, &mut run, pos);
                                status::command_complete(
                                    &mut server.bufs.s2c_out,
                                    stand_in_tag::text(front.stmt as u8),
                                );
                                forward = false;
                            }
                        }
                    }
                }
                if let Some(front) = relay.expect.front().copied() {
                    if terminates(front.kind, tag) {
                        relay.expect.pop_front();
                        // Only extended-protocol messages end here (a Query or Sync ends with
                        // its ReadyForQuery).
                        relay.segment_open = true;
                        names::answered(relay, front);
                        match front.action {
                            Action::Swallow => forward = false,
                            Action::RaiseUnlessFailed => {
                                // The server raises the error itself.
                                relay.raised.pop_front();
                                forward = false;
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        if !forward {
            // Swallowed answers are always whole (see `whole`).
            flush_run(&mut server.bufs.s2c_out, input, &mut run, pos);
            pos += len;
            run = pos;
            continue;
        }
        let n = len.min(avail);
        pos += n;
        relay.s2c_skip = len - n;
    }
    Ok((pos, run, event))
}
