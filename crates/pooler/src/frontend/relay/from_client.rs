//! Scanning what the client sends: runs of messages pass unchanged; Terminate ends the session;
//! with prepared-statement tracking, Parse/Bind/Describe/Close are rewritten to pooler-wide
//! statement names and statements are prepared on whichever server connection serves.

use std::sync::Arc;

use bytes::BytesMut;

use super::session_state::{self, Deallocate, Found, ListenCmd};
use super::{
    drain_synthesized, finish, flush_run, names, push, scan, scan::literal, Action, ClientCtx,
    DiscardWait, RelayError, RelayState, BOUND, COPY_END, MAX_MESSAGE, UNNAMED_PORTAL,
};
use crate::backend::server::Server;
use crate::errors;
use crate::net::messages::error::Severity;
use crate::net::messages::extended::{
    parse_bind, parse_parse, parse_target, write_bind, write_execute, write_parse, write_target,
    FLUSH,
};
use crate::net::messages::tag::{self, target, txn};
use crate::net::messages::{cstr, header, query, HEADER};
use crate::params::MAX_CUSTOM;
use crate::prepared::{stand_in_tag, ClientStatements, Statement};

fn expected_kind(tag: u8) -> Option<u8> {
    match tag {
        tag::PARSE | tag::BIND | tag::DESCRIBE | tag::CLOSE | tag::EXECUTE | tag::SYNC => Some(tag),
        // Both answered like a simple query: results, then ReadyForQuery.
        tag::QUERY | tag::FUNCTION_CALL => Some(tag::QUERY),
        _ => None,
    }
}

/// How much room a declared but not yet received client message may reserve ahead of its bytes.
const RESERVE_AHEAD: usize = 64 * 1024;

/// Processes client bytes in `c2s_in` into `c2s_out`. Returns Ok(true) when the client sent
/// Terminate. Runs of messages that pass unchanged are copied at once (or not at all).
pub fn client_input(
    server: &mut Server,
    relay: &mut RelayState,
    ctx: &mut ClientCtx<'_>,
) -> Result<bool, RelayError> {
    // Taken out so that `server` can be updated while its bytes are looked at.
    let mut input = std::mem::take(&mut server.bufs.c2s_in);
    let result = client_messages(server, relay, ctx, &input);
    let (pos, run, terminated) = match result {
        Ok(r) => r,
        Err(e) => {
            server.bufs.c2s_in = input;
            return Err(e);
        }
    };
    finish(&mut input, &mut server.bufs.c2s_out, run, pos);
    if relay.c2s_skip == 0 {
        // A message the relay must see (in part or whole) is arriving: make room for more of it
        // at once, but only up to RESERVE_AHEAD: the length is the client's claim, and a client
        // that declares 1 GiB and sends nothing must not make the pooler set aside 1 GiB. The
        // buffer grows further as the bytes really arrive.
        if let Some((_, len)) = header(&input) {
            if len > input.len() && len - 1 <= MAX_MESSAGE {
                input.reserve((len - input.len()).min(RESERVE_AHEAD));
            }
        }
    }
    server.bufs.c2s_in = input;
    drain_synthesized(server, relay, ctx.statements);
    Ok(terminated)
}

/// The scanning part of `client_input`: returns (bytes consumed, start of the unflushed run,
/// terminated).
fn client_messages(
    server: &mut Server,
    relay: &mut RelayState,
    ctx: &mut ClientCtx<'_>,
    input: &[u8],
) -> Result<(usize, usize, bool), RelayError> {
    let mut pos = 0;
    let mut run = 0;
    loop {
        if relay.c2s_skip > 0 {
            let n = relay.c2s_skip.min(input.len() - pos);
            if n == 0 {
                break;
            }
            pos += n;
            relay.c2s_skip -= n;
            continue;
        }
        let Some((tag, len)) = header(&input[pos..]) else {
            break;
        };
        if !(HEADER - 1..=MAX_MESSAGE).contains(&(len - 1)) {
            return Err(RelayError::BadLength(len));
        }
        tracing::trace!(tag = %(tag as char), len, "client message");
        let avail = input.len() - pos;
        if relay.discard_wait != DiscardWait::No && discard_holds(relay, tag) {
            // Behind a `DISCARD ALL` the client listens across: relayed once its answer is
            // in (asked for now when its segment's Sync is not relayed yet) and the listener
            // dropped the client's channels.
            flush_run(&mut server.bufs.c2s_out, input, &mut run, pos);
            drain_synthesized(server, relay, ctx.statements);
            stall_for_answers(server, relay);
            break;
        }
        if (!relay.names.is_empty()
            || !relay.deallocs.is_empty()
            || (matches!(tag, tag::PARSE | tag::BIND | tag::DESCRIBE) && !relay.expect.is_empty()))
            && ctx.track
            && !relay.c2s_discard
            && avail >= len
            && names::waits(relay, ctx.statements, tag, &input[pos..pos + len])
            && {
                // What the pooler answers itself (an SQL `DEALLOCATE` at the front) is
                // answered now, so that nothing waits for an answer no server will send.
                flush_run(&mut server.bufs.c2s_out, input, &mut run, pos);
                drain_synthesized(server, relay, ctx.statements);
                names::waits(relay, ctx.statements, tag, &input[pos..pos + len])
            }
        {
            // It names a statement whose change waits for its answer (`names::waits`): relayed
            // once that answer is in.
            stall_for_answers(server, relay);
            break;
        }
        if relay.retry.recording() {
            relay
                .retry
                .record(tag, (avail >= len).then(|| &input[pos..pos + len]));
        }
        if relay.c2s_discard && tag != tag::SYNC {
            // The rest of a refused extended-protocol statement: the server never sees it.
            if avail < len {
                break;
            }
            flush_run(&mut server.bufs.c2s_out, input, &mut run, pos);
            pos += len;
            run = pos;
            if tag == tag::TERMINATE {
                return Ok((pos, run, true));
            }
            continue;
        }
        // The Sync that ends the refused statement goes to the server, which answers it with
        // ReadyForQuery: cheaper to ask than to know whether this Sync also ends messages that
        // were forwarded before the refused Parse.
        relay.c2s_discard = false;
        // A Query whose answer settles a literal SET (`scan::literal`).
        let mut mark = 0;
        // A Parse of a statement that may drop the connection's prepared statements.
        let mut parse_drops = false;
        // A Parse of a statement that may bind a custom setting's name (`set_config($1, ..)`).
        let mut parse_names = false;
        // Statement mode implies session state tracking: a Query or Parse is read whole (up to
        // `SCAN_MAX`) by the one scanner, for a transaction block to refuse and for what it
        // may change in the session.
        if ctx.track && tag == tag::QUERY {
            // A simple Query drops the unnamed statement, as in PostgreSQL.
            ctx.statements.clear_unnamed();
            relay.unnamed_here = false;
        }
        if ctx.session_state && (tag == tag::QUERY || tag == tag::PARSE) {
            if len <= HEADER + session_state::SCAN_MAX {
                // The whole text is scanned before any of it goes out.
                if avail < len {
                    break;
                }
                let msg = &input[pos..pos + len];
                let text = scan::statement_text(tag, msg);
                let st = scan::statement(text, tag == tag::QUERY);
                if st.opens_block && ctx.refuse_blocks {
                    flush_run(&mut server.bufs.c2s_out, input, &mut run, pos);
                    pos += len;
                    run = pos;
                    push(&mut relay.expect, tag, Action::Refuse, 0);
                    relay.c2s_discard = tag == tag::PARSE;
                    continue;
                }
                if let Found::Sets(bits) = st.found {
                    if bits & session_state::CUSTOM != 0 {
                        if let Some(name) = scan::custom::one_too_many(text, ctx.params) {
                            // Refused before it runs, as PostgreSQL refuses a statement
                            // (failing an open block), rather than reset at its end.
                            flush_run(&mut server.bufs.c2s_out, input, &mut run, pos);
                            pos += len;
                            run = pos;
                            let e = errors::one_custom_setting_too_many(&name, MAX_CUSTOM);
                            if tag == tag::QUERY {
                                raised_by_server(server, relay, &e);
                            } else {
                                raised_in_place(server, relay, ctx.statements, msg, &e);
                            }
                            continue;
                        }
                    }
                }
                match st.found {
                    Found::Nothing => {}
                    Found::Sets(bits) => match st.literal {
                        // One plain SET in a Query carries its value.
                        Some(set) => {
                            relay.sets.push_back(set);
                            mark = literal::MARK;
                        }
                        None => {
                            if bits & session_state::DROPS != 0 {
                                if tag == tag::QUERY {
                                    mark = literal::DROPS_MARK;
                                } else {
                                    parse_drops = true;
                                }
                            }
                            const DISCARD_ALL: u64 = session_state::ALL | session_state::DROPS;
                            if bits & DISCARD_ALL == DISCARD_ALL && listens(ctx) {
                                relay.discard_wait = if tag == tag::QUERY {
                                    DiscardWait::Ran
                                } else {
                                    DiscardWait::Parsed
                                };
                            }
                            if bits & session_state::NOTIFIES != 0 {
                                relay.notified = true;
                            }
                            if bits & session_state::CUSTOM != 0 {
                                scan::custom::note(text, ctx.params);
                                parse_names = tag == tag::PARSE;
                            }
                            ctx.params.dirty |=
                                bits & !(session_state::DROPS | session_state::NOTIFIES);
                        }
                    },
                    Found::Listen
                        if tag == tag::QUERY
                            && only_unlisten_all(text)
                            && session_state::parse_listen(text).is_none() =>
                    {
                        // Among other statements: goes to the server as it is (a pooled
                        // connection listens to nothing, so its UNLISTEN * is a no-op there);
                        // the pool's listener drops the client's channels, and the rest of the
                        // text resets the session. (Alone, it is served as any UNLISTEN.)
                        unlisten_all(relay, ctx);
                        ctx.params.dirty |= session_state::ALL | session_state::SESSION;
                    }
                    Found::Listen => {
                        flush_run(&mut server.bufs.c2s_out, input, &mut run, pos);
                        // Whether it runs depends on the earlier answers (a failed block runs
                        // none; an error earlier in its segment has it skipped): it waits for
                        // them, asking the server for those of its own segment with a Flush.
                        drain_synthesized(server, relay, ctx.statements);
                        if !listen_fate_known(relay) {
                            stall_for_answers(server, relay);
                            break;
                        }
                        pos += len;
                        run = pos;
                        listen(server, relay, ctx, tag, msg)?;
                        if relay.listen_wait.is_some() {
                            // Nothing after it goes out before the listener listens: a NOTIFY
                            // that what follows commits (even in the same transaction) is
                            // heard, as on a direct connection.
                            relay.c2s_stalled = true;
                            break;
                        }
                        continue;
                    }
                    Found::SqlPrepared => {
                        if tag == tag::QUERY
                            && ctx.track
                            && names::earlier_segments_only(relay)
                            && session_state::parse_deallocate(text).is_some()
                        {
                            // An SQL `DEALLOCATE` acts on the names the client has once the
                            // answers owed are in (a `DEALLOCATE ALL` or `DISCARD ALL` the
                            // server runs may drop them): it waits for them.
                            flush_run(&mut server.bufs.c2s_out, input, &mut run, pos);
                            drain_synthesized(server, relay, ctx.statements);
                            if names::earlier_segments_only(relay) {
                                relay.c2s_stalled = true;
                                break;
                            }
                        }
                        flush_run(&mut server.bufs.c2s_out, input, &mut run, pos);
                        pos += len;
                        run = pos;
                        if ctx.track {
                            if let Some(cmd) = session_state::parse_deallocate(text) {
                                if tag == tag::QUERY {
                                    deallocate(server, relay, ctx, cmd);
                                    continue;
                                }
                                if deallocate_parse(server, relay, ctx, msg, cmd)? {
                                    continue;
                                }
                            }
                        }
                        if tag == tag::QUERY {
                            let e = errors::sql_prepared_in_transaction_mode(&server.pool);
                            raised_by_server(server, relay, &e);
                            continue;
                        }
                        let e = errors::sql_prepared_in_transaction_mode(&server.pool);
                        raised_in_place(server, relay, ctx.statements, msg, &e);
                        continue;
                    }
                }
                if tag == tag::PARSE && !ctx.track && msg.get(HEADER).is_some_and(|&b| b != 0) {
                    // A named statement left on the server as it is: gone before anyone else
                    // could Bind it.
                    ctx.params.dirty |= session_state::DISCARD;
                }
            } else {
                ctx.params.dirty |= session_state::UNSCANNED;
            }
        }
        match tag {
            tag::QUERY => relay.query_portal = true,
            // A Bind of the unnamed portal replaces it (if it fails, `from_server` says so:
            // `UNNAMED_PORTAL` marks its answer, here for an untracked Bind, in `rewrite` else).
            tag::BIND if len > HEADER => match input.get(pos + HEADER) {
                Some(0) => {
                    relay.query_portal = false;
                    mark = UNNAMED_PORTAL;
                }
                Some(_) => {}
                None => break,
            },
            tag::EXECUTE if relay.query_portal => {
                // Perhaps an Execute of the portal a failed simple Query left: read whole.
                if avail < len {
                    break;
                }
                if input.get(pos + HEADER) == Some(&0) {
                    flush_run(&mut server.bufs.c2s_out, input, &mut run, pos);
                    close_query_portal(server, relay);
                }
            }
            _ => {}
        }
        if tag == tag::EXECUTE && !relay.tag_portals.is_empty() {
            // Perhaps the Execute of a `DEALLOCATE` the pooler serves: read whole (a few bytes).
            if avail < len {
                break;
            }
            mark = execute_tag(relay, &input[pos..pos + len]);
            if mark == stand_in_tag::DROPS as u64 && listens(ctx) {
                // A `DISCARD ALL` parsed in an earlier segment runs: what follows waits for
                // it, as behind one parsed in this segment (`discard_holds`).
                relay.discard_wait = DiscardWait::Ran;
            }
        }
        let inspect = tag == tag::TERMINATE
            || (ctx.track && matches!(tag, tag::PARSE | tag::BIND | tag::DESCRIBE | tag::CLOSE));
        if !inspect {
            match tag {
                // Fixed-length messages: PostgreSQL answers a payload with an error and then
                // waits for a Sync that, for it, never comes.
                tag::SYNC | tag::FLUSH | tag::COPY_DONE if len != HEADER => {
                    return Err(RelayError::Malformed(fixed_name(tag)))
                }
                tag::SYNC if relay.copy_in => {}
                tag::COPY_DONE | tag::COPY_FAIL if relay.copy_in => relay.copy_in = false,
                // CopyDone sent before the server's CopyInResponse was seen (pipelined): a marker
                // that tells `copy_started` where the copy ends. With nothing unanswered that
                // could start a COPY, the server ignores it, and it waits for nothing.
                tag::COPY_DONE | tag::COPY_FAIL => {
                    if relay
                        .expect
                        .iter()
                        .any(|e| matches!(e.kind, tag::QUERY | tag::EXECUTE))
                    {
                        push(&mut relay.expect, COPY_END, Action::Forward, 0)
                    }
                }
                // The fast-path call protocol can run any function (`set_config` by OID).
                tag::FUNCTION_CALL if ctx.session_state => {
                    ctx.params.dirty |= session_state::ALL | session_state::SESSION;
                    push(&mut relay.expect, tag::QUERY, Action::Forward, 0);
                }
                _ => {
                    if let Some(kind) = expected_kind(tag) {
                        push(&mut relay.expect, kind, Action::Forward, mark);
                        // Untracked Parse/Bind go to the server as they are.
                        let parse = (tag == tag::PARSE) as u64;
                        let bind = (tag == tag::BIND) as u64;
                        ctx.tally.t.client_parses += parse;
                        ctx.tally.t.server_parses += parse;
                        ctx.tally.t.client_binds += bind;
                        ctx.tally.t.server_binds += bind;
                    }
                }
            }
            let n = len.min(avail);
            pos += n;
            relay.c2s_skip = len - n;
            continue;
        }
        if avail < len {
            break;
        }
        flush_run(&mut server.bufs.c2s_out, input, &mut run, pos);
        let msg = &input[pos..pos + len];
        pos += len;
        run = pos;
        if tag == tag::TERMINATE {
            if len != HEADER {
                return Err(RelayError::Malformed("Terminate"));
            }
            return Ok((pos, run, true));
        }
        rewrite(server, relay, ctx, tag, msg)?;
        if parse_drops && msg.get(HEADER) == Some(&0) {
            // The client's unnamed statement: a portal bound to it is one whose Execute may
            // drop names (`tag_portal`), as for a named one (`Statement::drops`).
            ctx.statements.set_unnamed_tag(stand_in_tag::DROPS);
        }
        if parse_names && msg.get(HEADER) == Some(&0) {
            ctx.statements.set_unnamed_binds_names();
        }
    }
    Ok((pos, run, false))
}

/// Handles one whole Parse/Bind/Describe/Close with statement tracking on.
fn rewrite(
    server: &mut Server,
    relay: &mut RelayState,
    ctx: &mut ClientCtx<'_>,
    tag: u8,
    msg: &[u8],
) -> Result<(), RelayError> {
    match tag {
        tag::PARSE => {
            let p = parse_parse(msg).ok_or(RelayError::Malformed("Parse"))?;
            ctx.tally.t.client_parses += 1;
            if p.name.is_empty() {
                ctx.tally.t.server_parses += 1;
                server.bufs.c2s_out.extend_from_slice(msg);
                push(&mut relay.expect, tag::PARSE, Action::Forward, 0);
                names::change_unnamed(relay, ctx.statements, Some(msg));
                mark_named(relay);
                return Ok(());
            }
            if ctx.statements.get(p.name).is_some() && !names::pending(relay, p.name) {
                // PostgreSQL's answer to a name the client has (a name whose change waits for
                // the server's answer is let through: it may be gone by then).
                let name = String::from_utf8_lossy(p.name);
                let e = errors::duplicate_statement(&name);
                raised_in_place(server, relay, ctx.statements, msg, &e);
                return Ok(());
            }
            let stmt = ctx.registry.intern(p.rest, ctx.params.search_path());
            names::change(relay, ctx.statements, p.name, Some(stmt.clone()));
            if server.prepared.touch(stmt.id) {
                if server.status == txn::FAILED || names::earlier_unanswered(relay) {
                    // The server has it, but answers a Parse in a failed block itself (25P02
                    // but for a ROLLBACK or COMMIT); and an earlier segment it has not answered
                    // yet may fail the block.
                    probe_parse(server, relay, p.rest, Action::Forward);
                } else {
                    push(&mut relay.expect, tag::PARSE, Action::Synthesize, 0);
                }
            } else {
                ctx.tally.t.server_parses += 1;
                prepare_on_server(server, relay, &stmt, ctx.max_prepared, Action::Forward);
            }
            mark_named(relay);
        }
        tag::BIND => {
            let b = parse_bind(msg).ok_or(RelayError::Malformed("Bind"))?;
            ctx.tally.t.client_binds += 1;
            if !relay.tag_portals.is_empty()
                || (b.statement.is_empty() && ctx.statements.unnamed_tag() != 0)
            {
                let tag = if b.statement.is_empty() {
                    ctx.statements.unnamed_tag()
                } else {
                    0
                };
                tag_portal(relay, b.portal, tag);
            }
            let mut bound = 0;
            match lookup(ctx, b.statement) {
                Some(stmt) => {
                    if stmt.sets & session_state::CUSTOM != 0 {
                        let text = scan::statement_text(tag::PARSE, &stmt.parse);
                        if refused_past_room(server, relay, ctx, text, b.rest) {
                            return Ok(());
                        }
                        scan::custom::note(text, ctx.params);
                        scan::custom::note_bound(text, b.rest, ctx.params);
                    }
                    if stmt.drops {
                        tag_portal(relay, b.portal, stand_in_tag::DROPS);
                    }
                    bound = stmt.id | BOUND;
                    relay.retry.arm(&relay.expect, server.status, stmt.id, msg);
                    ctx.params.dirty |= stmt.sets;
                    relay.notified |= stmt.notifies;
                    ctx.tally.t.server_parses +=
                        ensure_prepared(server, relay, &stmt, ctx.max_prepared) as u64;
                    write_bind(
                        &mut server.bufs.c2s_out,
                        b.portal,
                        stmt.name.as_bytes(),
                        b.rest,
                    );
                }
                None => {
                    if b.statement.is_empty() {
                        if let Some(parse) = ctx.statements.unnamed_binding_names() {
                            let text = scan::statement_text(tag::PARSE, parse);
                            if refused_past_room(server, relay, ctx, text, b.rest) {
                                return Ok(());
                            }
                            scan::custom::note_bound(text, b.rest, ctx.params);
                        }
                        ensure_unnamed(server, relay, ctx);
                    }
                    server.bufs.c2s_out.extend_from_slice(msg)
                }
            }
            ctx.tally.t.server_binds += 1;
            if b.portal.is_empty() {
                bound |= UNNAMED_PORTAL;
            }
            push(&mut relay.expect, tag::BIND, Action::Forward, bound);
        }
        tag::DESCRIBE => {
            let (kind, name) = parse_target(msg).ok_or(RelayError::Malformed("Describe"))?;
            let mut bound = 0;
            match (kind, lookup(ctx, name)) {
                (target::STATEMENT, Some(stmt)) => {
                    bound = stmt.id | BOUND;
                    relay.retry.arm(&relay.expect, server.status, stmt.id, msg);
                    ctx.tally.t.server_parses +=
                        ensure_prepared(server, relay, &stmt, ctx.max_prepared) as u64;
                    write_target(
                        &mut server.bufs.c2s_out,
                        tag::DESCRIBE,
                        target::STATEMENT,
                        stmt.name.as_bytes(),
                    );
                }
                (target::STATEMENT, None) if name.is_empty() => {
                    ensure_unnamed(server, relay, ctx);
                    server.bufs.c2s_out.extend_from_slice(msg);
                }
                _ => server.bufs.c2s_out.extend_from_slice(msg),
            }
            push(&mut relay.expect, tag::DESCRIBE, Action::Forward, bound);
        }
        tag::CLOSE => {
            let (kind, name) = parse_target(msg).ok_or(RelayError::Malformed("Close"))?;
            if kind == target::STATEMENT && !name.is_empty() {
                // The server copy may serve other clients; only the client's name goes away.
                // Closing an unknown name is not an error in PostgreSQL either.
                names::change(relay, ctx.statements, name, None);
                push(&mut relay.expect, tag::CLOSE, Action::Synthesize, 0);
                mark_named(relay);
            } else {
                server.bufs.c2s_out.extend_from_slice(msg);
                push(&mut relay.expect, tag::CLOSE, Action::Forward, 0);
                if kind == target::STATEMENT {
                    // The unnamed statement: the client's goes, and whichever the server has.
                    names::change_unnamed(relay, ctx.statements, None);
                    mark_named(relay);
                } else if !relay.tag_portals.is_empty() {
                    tag_portal(relay, name, 0);
                }
            }
        }
        _ => unreachable!("only P/B/D/C are rewritten"),
    }
    Ok(())
}

/// The client's next message waits for the answers to what was relayed before it: those of
/// its own segment, which the server holds until a Sync or Flush, are asked for with a Flush;
/// the client's messages are relayed again once the answers are in (`RelayState::c2s_stalled`).
#[cold]
fn stall_for_answers(server: &mut Server, relay: &mut RelayState) {
    if !names::earlier_segments_only(relay) {
        server.bufs.c2s_out.extend_from_slice(&FLUSH);
    }
    relay.c2s_stalled = true;
}

/// Before an Execute of the unnamed portal when no Bind of it came since the last simple
/// Query (`RelayState::query_portal`): a Close of that portal, answered to nobody. Its answer
/// is then PostgreSQL's for a portal that does not exist (34000), which it is for the client,
/// instead of a run of the portal a simple Query that failed inside a transaction block left
/// behind, whose plan PostgreSQL 15 has freed: that Execute crashes the server process (a
/// segmentation fault, and every session of the server restarts).
#[cold]
fn close_query_portal(server: &mut Server, relay: &mut RelayState) {
    write_target(&mut server.bufs.c2s_out, tag::CLOSE, target::PORTAL, b"");
    push(&mut relay.expect, tag::CLOSE, Action::Swallow, 0);
    relay.query_portal = false;
}

/// How many portals `RelayState::tag_portals` remembers (the latest bound).
const TAG_PORTALS: usize = 8;

/// `portal` was bound (or closed, `tag` 0): its Execute completes with `tag`'s command tag
/// when it runs a statement the pooler serves with a stand-in, or waits for names behind it
/// when it runs a `DISCARD ALL` (`prepared::stand_in_tag`); a portal of the same name bound to
/// anything else does not.
#[cold]
fn tag_portal(relay: &mut RelayState, portal: &[u8], tag: u8) {
    relay.tag_portals.retain(|(p, _)| **p != *portal);
    if tag != 0 {
        if relay.tag_portals.len() == TAG_PORTALS {
            relay.tag_portals.remove(0);
        }
        relay.tag_portals.push((portal.into(), tag));
    }
}

/// The command tag an Execute (whole message `msg`) completes with when its portal runs a
/// statement the pooler serves with a stand-in, or `stand_in_tag::DROPS` (`tag_portal`); else 0.
#[cold]
fn execute_tag(relay: &RelayState, msg: &[u8]) -> u64 {
    let Some((name, _)) = msg.get(HEADER..).and_then(cstr) else {
        return 0;
    };
    relay
        .tag_portals
        .iter()
        .find(|(p, _)| **p == *name)
        .map_or(0, |(_, tag)| *tag as u64)
}

/// The entry just pushed is a client's Parse/Close with one more change to the client's
/// statement names waiting for its answer (`names`).
#[inline]
fn mark_named(relay: &mut RelayState) {
    if let Some(e) = relay.expect.back_mut() {
        e.named += 1;
    }
}

/// The client's statement `name`; one a server said went stale is replaced by a fresh one
/// (same text and types, new server name) for this client.
fn lookup(ctx: &mut ClientCtx<'_>, name: &[u8]) -> Option<Arc<Statement>> {
    if name.is_empty() {
        return None;
    }
    let stmt = ctx.statements.get(name)?;
    if !stmt.is_stale() {
        return Some(stmt.clone());
    }
    Some(refresh(ctx, name))
}

#[cold]
fn refresh(ctx: &mut ClientCtx<'_>, name: &[u8]) -> Arc<Statement> {
    let old = ctx.statements.get(name).cloned();
    let fresh = match old {
        Some(old) => ctx.registry.intern(old.rest(), ctx.params.search_path()),
        None => unreachable!("looked up by the caller"),
    };
    ctx.statements.insert(name, fresh.clone());
    fresh
}

/// Before a Bind/Describe of the unnamed statement: when the server connection may hold
/// another one than the client's (another client's, or none), the client's own Parse goes
/// first (answer swallowed); a client without one gets PostgreSQL's error (26000) from the
/// server, which is made to drop whatever unnamed statement it has (a Close, answer swallowed).
#[inline]
fn ensure_unnamed(server: &mut Server, relay: &mut RelayState, ctx: &mut ClientCtx<'_>) {
    if relay.unnamed_here {
        return;
    }
    match ctx.statements.unnamed() {
        Some(parse) => {
            server.bufs.c2s_out.extend_from_slice(parse);
            push(&mut relay.expect, tag::PARSE, Action::Swallow, 0);
            ctx.tally.t.server_parses += 1;
            relay.unnamed_here = true;
        }
        None => {
            write_target(&mut server.bufs.c2s_out, tag::CLOSE, target::STATEMENT, b"");
            push(&mut relay.expect, tag::CLOSE, Action::Swallow, 0);
        }
    }
}

/// Sends the pooler-wide Parse if this server lacks the statement (answer swallowed); true
/// when it did.
fn ensure_prepared(
    server: &mut Server,
    relay: &mut RelayState,
    stmt: &Arc<Statement>,
    max: usize,
) -> bool {
    if server.prepared.touch(stmt.id) {
        return false;
    }
    prepare_on_server(server, relay, stmt, max, Action::Swallow);
    true
}

fn prepare_on_server(
    server: &mut Server,
    relay: &mut RelayState,
    stmt: &Arc<Statement>,
    max: usize,
    action: Action,
) {
    if let Some(evicted) = server.prepared.add(stmt, max) {
        write_target(
            &mut server.bufs.c2s_out,
            tag::CLOSE,
            target::STATEMENT,
            evicted.name.as_bytes(),
        );
        // The evicted statement's id marks the pooler's Close as an eviction (`from_server`).
        push(&mut relay.expect, tag::CLOSE, Action::Swallow, evicted.id);
    }
    server.bufs.c2s_out.extend_from_slice(&stmt.parse);
    push(&mut relay.expect, tag::PARSE, action, stmt.id);
}

fn fixed_name(tag: u8) -> &'static str {
    match tag {
        tag::SYNC => "Sync",
        tag::FLUSH => "Flush",
        _ => "CopyDone",
    }
}

/// A Query the pooler refuses (or answers with an error), sent to the server as a statement
/// raising that error (`session_state::raise_sql`) in its place, so that it fails an open
/// transaction block as PostgreSQL's own error would.
#[cold]
fn raised_by_server(server: &mut Server, relay: &mut RelayState, e: &errors::ClientError) {
    query(&mut server.bufs.c2s_out, &session_state::raise_sql(e));
    push(&mut relay.expect, tag::QUERY, Action::Forward, 0);
}

/// Refuses (true) a Bind of the statement `text` (its parameters `bind`) that would give its
/// client a custom setting past `MAX_CUSTOM` (54000, naming it): the statement was prepared
/// while the client had room, or the name is a bound parameter. Asked only of a statement that
/// may set one. The Bind is not sent; the server raises the error in its place, as for a
/// refused Parse (`raised_in_place`, without parsing the client's text again: it was parsed
/// when prepared), so that it fails an open block and is skipped after an earlier error in its
/// segment. The client's unnamed statement and portal stay, as PostgreSQL keeps them after a
/// failed Bind (the pooler's Parse of the raising statement in the server's unnamed statement
/// has the client's prepared again before its next Bind: `ensure_unnamed`). Not in a failed
/// block, where the server refuses the Bind itself (25P02) and it sets nothing.
#[cold]
#[inline(never)]
fn refused_past_room(
    server: &mut Server,
    relay: &mut RelayState,
    ctx: &ClientCtx<'_>,
    text: &[u8],
    bind: &[u8],
) -> bool {
    if !ctx.session_state || server.status == txn::FAILED {
        return false;
    }
    let Some(name) = scan::custom::one_too_many_bound(text, bind, ctx.params) else {
        return false;
    };
    let e = errors::one_custom_setting_too_many(&name, MAX_CUSTOM);
    relay.unnamed_here = false;
    relay.c2s_discard = true;
    raise_in_place(server, relay, &e);
    true
}

/// An extended-protocol Parse the pooler refuses or answers with an error: the server parses
/// the client's text, then raises that error in its place (an unnamed Parse, Bind and Execute
/// of `session_state::raise_sql` in a portal of the pooler's, only the error forwarded), so
/// that it fails an open transaction block as PostgreSQL's own error would, and is skipped
/// after an earlier error in its segment as PostgreSQL skips. The client's messages up to its
/// Sync are dropped, as the server drops them after an error. A refused Parse of the unnamed
/// statement (`parse`) drops the client's, as PostgreSQL drops it before parsing.
#[cold]
fn raised_in_place(
    server: &mut Server,
    relay: &mut RelayState,
    statements: &mut ClientStatements,
    parse: &[u8],
    e: &errors::ClientError,
) {
    // The client's text is parsed first (its answer swallowed), as PostgreSQL parses and
    // analyses a statement before it finds a name taken: a syntax error, an unknown table or a
    // failed block (25P02) is the client's error then.
    let unnamed = parse.get(HEADER) == Some(&0);
    if unnamed {
        // The client's unnamed statement goes as with a Parse that fails, and stays if the
        // server skips this one (`names`).
        names::change_unnamed(relay, statements, None);
    }
    let rest = parse_parse(parse).map_or(&[0u8, 0, 0][..], |p| p.rest);
    probe_parse(server, relay, rest, Action::Swallow);
    if unnamed {
        mark_named(relay);
    }
    relay.unnamed_here = false;
    relay.c2s_discard = true;
    if server.status == txn::FAILED {
        // Nothing runs in a failed block but its end, so the server cannot raise the error:
        // the pooler answers it once the server parsed the text (a ROLLBACK or COMMIT; any
        // other statement gets 25P02 there, and this is skipped).
        let mut error = BytesMut::new();
        e.write(&mut error, Severity::Error);
        relay.raised.push_back(error.to_vec());
        push(&mut relay.expect, tag::PARSE, Action::Raise, 0);
        return;
    }
    raise_in_place(server, relay, e);
}

/// Has the server raise `e` with an unnamed Parse, Bind and Execute of
/// `session_state::raise_sql` in a portal of the pooler's, only the error forwarded
/// (`raised_in_place`, `refused_past_room`).
fn raise_in_place(server: &mut Server, relay: &mut RelayState, e: &errors::ClientError) {
    let out = &mut server.bufs.c2s_out;
    let mut rest = session_state::raise_sql(e).into_bytes();
    // The text's end, and no parameter types.
    rest.extend_from_slice(&[0, 0, 0]);
    write_parse(out, b"", &rest);
    // An earlier message still unanswered may fail the block before this runs (25P02): the
    // pooler answers the error then (`Action::RaiseUnlessFailed`).
    let mut error = BytesMut::new();
    e.write(&mut error, Severity::Error);
    relay.raised.push_back(error.to_vec());
    push(&mut relay.expect, tag::PARSE, Action::RaiseUnlessFailed, 0);
    // Run in a portal of the pooler's own (closed first: one may be left in a failed block),
    // so that the client's unnamed portal stays, as PostgreSQL leaves it after a failed Parse.
    write_target(out, tag::CLOSE, target::PORTAL, RAISE_PORTAL);
    push(&mut relay.expect, tag::CLOSE, Action::Swallow, 0);
    // No parameters, no formats.
    write_bind(out, RAISE_PORTAL, b"", &[0; 6]);
    push(&mut relay.expect, tag::BIND, Action::Swallow, 0);
    write_execute(out, RAISE_PORTAL);
    push(&mut relay.expect, tag::EXECUTE, Action::Forward, 0);
}

/// The portal a refusal raised in place runs in (`raised_in_place`).
const RAISE_PORTAL: &[u8] = b"pgbay_raise";

/// The server parses `rest` (a Parse's text and parameter types) as its unnamed statement, for
/// its answer: forwarded to the client (`Action::Forward`) or only its error (`Swallow`).
#[cold]
fn probe_parse(server: &mut Server, relay: &mut RelayState, rest: &[u8], action: Action) {
    write_parse(&mut server.bufs.c2s_out, b"", rest);
    push(&mut relay.expect, tag::PARSE, action, 0);
    relay.unnamed_here = false;
}

/// A whole Query that is one SQL `DEALLOCATE`: it acts on the client's own protocol-level
/// statements, whose server copies are shared and stay. A name the client does not have goes
/// to the server as a statement raising PostgreSQL's error (26000), so that an open block
/// fails as it would; the rest is answered by the pooler in its turn (`session_state::deallocate`).
#[cold]
fn deallocate(
    server: &mut Server,
    relay: &mut RelayState,
    ctx: &mut ClientCtx<'_>,
    cmd: Deallocate,
) {
    if let Deallocate::Name(name) = &cmd {
        if ctx.statements.get(name.as_bytes()).is_none() {
            raised_by_server(server, relay, &errors::unknown_statement(name));
            return;
        }
    }
    relay.deallocs.push_back(cmd);
    push(&mut relay.expect, tag::QUERY, Action::Deallocate, 0);
}

/// An unnamed Parse of an SQL `DEALLOCATE` (psycopg in pipeline mode sends its
/// `DEALLOCATE ALL` so): the client's names go with the Parse (back if the server skips or
/// refuses it, `names`), and the server runs a statement that does nothing in its place (its
/// command tag says DO), or raises 26000 for a name the client does not have, so that
/// Bind/Describe/Execute get their usual answers. False for a named Parse (executed later,
/// maybe never), which stays refused.
#[cold]
fn deallocate_parse(
    server: &mut Server,
    relay: &mut RelayState,
    ctx: &mut ClientCtx<'_>,
    msg: &[u8],
    cmd: Deallocate,
) -> Result<bool, RelayError> {
    let p = parse_parse(msg).ok_or(RelayError::Malformed("Parse"))?;
    if !p.name.is_empty() {
        return Ok(false);
    }
    let (known, command) = match &cmd {
        Deallocate::All => (true, stand_in_tag::ALL),
        Deallocate::Name(name) => (
            ctx.statements.get(name.as_bytes()).is_some(),
            stand_in_tag::NAME,
        ),
    };
    let sql: Vec<u8> = match &cmd {
        Deallocate::Name(name) if !known => session_state::unknown_statement_sql(name).into_bytes(),
        _ => session_state::LISTEN_NOOP.as_bytes().to_vec(),
    };
    let types = cstr(p.rest).map(|(_, types)| types).unwrap_or_default();
    let mut rest = Vec::with_capacity(sql.len() + 1 + types.len());
    rest.extend_from_slice(&sql);
    rest.push(0);
    rest.extend_from_slice(types);
    let mut noop = bytes::BytesMut::new();
    write_parse(&mut noop, p.name, &rest);
    rewrite(server, relay, ctx, tag::PARSE, &noop)?;
    if known {
        // Its Execute completes with PostgreSQL's tag, not the stand-in's `UNLISTEN`.
        ctx.statements.set_unnamed_tag(command);
        match &cmd {
            Deallocate::All => names::drop_all(relay, ctx.statements),
            Deallocate::Name(name) => names::change(relay, ctx.statements, name.as_bytes(), None),
        }
        mark_named(relay);
    }
    Ok(true)
}

/// A whole Query or Parse holding a LISTEN/UNLISTEN: served by the pool's listener when the
/// pooler can parse it, refused otherwise; never sent to the server as it is. A Parse is
/// answered by the server running `LISTEN_NOOP` in its place, so that the rest of the
/// client's extended-protocol messages (Bind, Describe, Execute) get their usual answers.
#[cold]
fn listen(
    server: &mut Server,
    relay: &mut RelayState,
    ctx: &mut ClientCtx<'_>,
    tag: u8,
    msg: &[u8],
) -> Result<(), RelayError> {
    let Some(cmd) = session_state::parse_listen(scan::statement_text(tag, msg)) else {
        if tag == tag::QUERY {
            raised_by_server(server, relay, &errors::listen_form_refused(&server.pool));
            return Ok(());
        }
        let e = errors::listen_form_refused(&server.pool);
        raised_in_place(server, relay, ctx.statements, msg, &e);
        return Ok(());
    };
    let is_listen = matches!(cmd, ListenCmd::Listen(_));
    // In a failed transaction block, or behind an error in its segment (`listen_fate_known`),
    // PostgreSQL runs no LISTEN or UNLISTEN: the server answers the stand-in with its 25P02
    // (or skips it), and nothing is subscribed.
    let failed = relay.segment_failed || (relay.expect.is_empty() && server.status == txn::FAILED);
    if failed && tag == tag::QUERY {
        crate::net::messages::query(&mut server.bufs.c2s_out, session_state::LISTEN_NOOP);
        push(&mut relay.expect, tag, Action::Forward, 0);
        return Ok(());
    }
    if !failed {
        let in_block = relay.block_in_segment.unwrap_or(server.status != txn::IDLE);
        // Outside one, an extended-protocol LISTEN runs in the transaction of its segment,
        // which commits at the Sync unless a later message fails it first.
        let implicit = !in_block && tag == tag::PARSE;
        // Inside a transaction block PostgreSQL applies it at COMMIT (`TxnListens`): a LISTEN
        // is served now and undone at a ROLLBACK, an UNLISTEN waits for the COMMIT.
        let now = if in_block || implicit {
            let before = || ctx.notify.as_ref().map(|s| s.channels().clone());
            relay
                .txn_listens
                .get_or_insert_with(|| {
                    Box::new(session_state::TxnListens::new(
                        before().unwrap_or_default(),
                        relay.savepoints,
                        implicit,
                    ))
                })
                .push(cmd.clone());
            is_listen
        } else {
            true
        };
        if now {
            if let Some(confirmed) = subscribe(ctx, cmd) {
                wait_for_listener(relay, confirmed);
            }
        }
    }
    if tag == tag::QUERY {
        push(&mut relay.expect, tag, Action::ListenDone(is_listen), 0);
        return Ok(());
    }
    let p = parse_parse(msg).ok_or(RelayError::Malformed("Parse"))?;
    // The parameter types the client declared stay (its Bind supplies as many values).
    let types = cstr(p.rest).map(|(_, types)| types).unwrap_or_default();
    let mut rest = Vec::with_capacity(session_state::LISTEN_NOOP.len() + 1 + types.len());
    rest.extend_from_slice(session_state::LISTEN_NOOP.as_bytes());
    rest.push(0);
    rest.extend_from_slice(types);
    let mut noop = bytes::BytesMut::new();
    write_parse(&mut noop, p.name, &rest);
    if ctx.track {
        rewrite(server, relay, ctx, tag::PARSE, &noop)?;
        if p.name.is_empty() {
            // Its Execute completes with PostgreSQL's tag, not the stand-in's `UNLISTEN`.
            let command = if is_listen {
                stand_in_tag::LISTEN
            } else {
                stand_in_tag::UNLISTEN
            };
            ctx.statements.set_unnamed_tag(command);
        }
        Ok(())
    } else {
        server.bufs.c2s_out.extend_from_slice(&noop);
        push(&mut relay.expect, tag::PARSE, Action::Forward, 0);
        ctx.tally.t.client_parses += 1;
        ctx.tally.t.server_parses += 1;
        Ok(())
    }
}

/// The client listens to a channel.
fn listens(ctx: &ClientCtx<'_>) -> bool {
    ctx.notify
        .as_ref()
        .is_some_and(|s| !s.channels().is_empty())
}

/// Whether the client's message `tag` waits behind a `DISCARD ALL` it listens across
/// (`RelayState::discard_wait`): everything after the messages that run the statement waits
/// until every answer owed is in (then the wait is over), or until an error has the server
/// skip the rest of the segment, the `DISCARD ALL` too.
fn discard_holds(relay: &mut RelayState, tag: u8) -> bool {
    match relay.discard_wait {
        DiscardWait::No => false,
        DiscardWait::Parsed if matches!(tag, tag::BIND | tag::DESCRIBE | tag::FLUSH) => false,
        DiscardWait::Parsed if tag == tag::EXECUTE => {
            relay.discard_wait = DiscardWait::Ran;
            false
        }
        _ if relay.expect.is_empty() || relay.skipping_segment() => {
            relay.discard_wait = DiscardWait::No;
            false
        }
        _ => true,
    }
}

/// Whether the earlier answers that decide if a LISTEN/UNLISTEN about to be relayed runs are
/// in: every answer (then the transaction status is the server's), or an error in its own
/// segment with every earlier segment answered (then the server skips it).
fn listen_fate_known(relay: &RelayState) -> bool {
    relay.expect.is_empty() || relay.skipping_segment()
}

/// The client's transaction block ended: what it listens to is what its LISTEN/UNLISTENs in
/// the block made of it if it `committed`, else what it was before the block.
#[cold]
pub(super) fn end_txn_listens(relay: &mut RelayState, ctx: &mut ClientCtx<'_>, committed: bool) {
    let Some(block) = relay.txn_listens.take() else {
        return;
    };
    let keep = block.end(committed);
    if let Some(sub) = ctx.notify.as_mut() {
        // PostgreSQL reads the notifications committed during the transaction (its own
        // NOTIFYs among them) after it, when what it unsubscribed from is gone.
        if let Some((unsubscribed, gone)) = sub.keep_only(&keep) {
            relay.listen_wait = Some(super::listen_wait::ListenWait::new(unsubscribed, gone));
        }
    }
}

/// A transaction that NOTIFYed ended (`RelayState::notified`): if the client listens, its
/// answers wait for a round trip of the pool's listener, and what that delivered to the client
/// goes out before the ReadyForQuery that ended the transaction (`ListenWait::before_ready`):
/// PostgreSQL delivers a session's own notifications so, and a driver that reads them with its
/// query's answers (psycopg's notify handlers) finds them there. A wait already under way (the
/// end of a block's UNLISTEN) takes the same place. Only when that ReadyForQuery is the last
/// answer held for the client (`last`, and `out` ends with it); otherwise they follow it.
pub(super) fn own_notifications(
    relay: &mut RelayState,
    ctx: &mut ClientCtx<'_>,
    last: bool,
    out: &[u8],
) {
    if !last || !super::pump::ready_ends_at(out, out.len()) {
        return;
    }
    if let Some(w) = relay.listen_wait.as_mut() {
        w.before_ready = Some(out.len());
        return;
    }
    if let Some(synced) = ctx.notify.as_mut().and_then(|sub| sub.sync()) {
        let mut w = super::listen_wait::ListenWait::new(synced, Vec::new());
        w.before_ready = Some(out.len());
        relay.listen_wait = Some(w);
    }
}

/// The pool's listener drops every channel of the client (`UNLISTEN *`, or a `DISCARD ALL`).
pub(super) fn unlisten_all(relay: &mut RelayState, ctx: &mut ClientCtx<'_>) {
    if let Some(unsubscribed) = subscribe(ctx, ListenCmd::UnlistenAll) {
        wait_for_listener(relay, unsubscribed);
    }
}

/// The client's answers wait for the pool's listener (`listen_wait`): the last request
/// handed to it, which it serves after the earlier ones.
fn wait_for_listener(relay: &mut RelayState, done: tokio::sync::oneshot::Receiver<()>) {
    relay.listen_wait = Some(super::listen_wait::ListenWait::new(done, Vec::new()));
}

/// A Query whose only LISTEN-like words are `UNLISTEN *` among other statements (asyncpg's
/// reset on release: `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;`).
/// Conservative: any other `listen` in the text, even in a literal, says no.
#[cold]
fn only_unlisten_all(sql: &[u8]) -> bool {
    const WORD: &[u8] = b"listen";
    let mut found = false;
    let mut i = 0;
    while i + WORD.len() <= sql.len() {
        if !sql[i..i + WORD.len()].eq_ignore_ascii_case(WORD) {
            i += 1;
            continue;
        }
        let un = i >= 2 && sql[i - 2..i].eq_ignore_ascii_case(b"un");
        let before = i.checked_sub(3).and_then(|j| sql.get(j)).copied();
        let after = super::scan::lex::skip_noise(&sql[i + WORD.len()..]);
        if !un || before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return false;
        }
        if after.first() != Some(&b'*') {
            return false;
        }
        found = true;
        i += WORD.len();
    }
    found
}

/// Hands a LISTEN/UNLISTEN to the pool's listener (`frontend::listen::subscribe`): what it
/// returns (the listener's confirmation of a LISTEN, or of an unsubscribe) the client's answers
/// wait for (`listen_wait`).
#[cold]
fn subscribe(
    ctx: &mut ClientCtx<'_>,
    cmd: ListenCmd,
) -> Option<tokio::sync::oneshot::Receiver<()>> {
    crate::frontend::listen::subscribe(ctx.notify, ctx.pool.listen_hub(), cmd)
}

#[cfg(test)]
mod tests {
    use super::{execute_tag, only_unlisten_all, tag_portal, RelayState, TAG_PORTALS};
    use crate::net::messages::tag;
    use crate::prepared::stand_in_tag;

    fn execute(portal: &str) -> Vec<u8> {
        let mut msg = vec![tag::EXECUTE, 0, 0, 0, 0];
        msg.extend_from_slice(portal.as_bytes());
        msg.extend_from_slice(&[0, 0, 0, 0, 0]);
        let len = (msg.len() - 1) as u32;
        msg[1..5].copy_from_slice(&len.to_be_bytes());
        msg
    }

    #[test]
    fn tag_portals_keep_the_latest_and_forget_a_rebound_or_closed_one() {
        let mut relay = RelayState::default();
        tag_portal(&mut relay, b"", stand_in_tag::ALL);
        tag_portal(&mut relay, b"p1", stand_in_tag::DROPS);
        assert_eq!(execute_tag(&relay, &execute("")), stand_in_tag::ALL as u64);
        assert_eq!(
            execute_tag(&relay, &execute("p1")),
            stand_in_tag::DROPS as u64
        );
        assert_eq!(execute_tag(&relay, &execute("p2")), 0);
        // Bound to something else, or closed: no tag.
        tag_portal(&mut relay, b"", 0);
        assert_eq!(execute_tag(&relay, &execute("")), 0);
        assert_eq!(
            execute_tag(&relay, &execute("p1")),
            stand_in_tag::DROPS as u64
        );
        // Past `TAG_PORTALS`, the oldest goes.
        for i in 0..TAG_PORTALS {
            tag_portal(&mut relay, format!("q{i}").as_bytes(), stand_in_tag::LISTEN);
        }
        assert_eq!(relay.tag_portals.len(), TAG_PORTALS);
        assert_eq!(execute_tag(&relay, &execute("p1")), 0);
        assert_eq!(
            execute_tag(&relay, &execute("q0")),
            stand_in_tag::LISTEN as u64
        );
    }

    #[test]
    fn unlisten_all_among_other_statements() {
        assert!(only_unlisten_all(
            b"SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL;\0"
        ));
        assert!(only_unlisten_all(b"unlisten/* c */ * ; select 1\0"));
        assert!(!only_unlisten_all(b"select 1; unlisten x\0"));
        assert!(!only_unlisten_all(b"select 1; listen x; unlisten *\0"));
        assert!(!only_unlisten_all(b"unlisten *; select 'listen'\0"));
        assert!(!only_unlisten_all(b"select 1; xunlisten *\0"));
        assert!(!only_unlisten_all(b"select 1\0"));
    }
}
