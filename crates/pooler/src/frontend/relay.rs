//! The hot path: moving bytes between an attached client and its server connection.
//!
//! Input is scanned header by header. Messages the pooler does not need to see are copied to
//! the other side whole or, when large, streamed through as they arrive (`*_skip` counts the
//! bytes of the current message still to pass). Only ReadyForQuery, ParameterStatus, the tiny
//! completion messages and CommandComplete are looked into on the server side; on the client
//! side only Terminate and, with prepared-statement tracking, Parse/Bind/Describe/Close.
//!
//! Every client message that the server answers is recorded in `Server::expect`, in order,
//! with what to do with the answer: forward it, swallow it (the pooler sent the message
//! itself, e.g. a re-Parse before a Bind) or synthesize it (the pooler answered itself, e.g. a
//! Parse of a statement the server already has). That keeps pipelines, Describe and errors in
//! the middle of a pipeline exactly as the client would see them on a direct connection.

use bytes::{Buf, BytesMut};

use crate::backend::server::{Action, Expect, Server};
use crate::net::messages::extended::{
    parse_bind, parse_parse, parse_target, write_bind, write_target, CLOSE_COMPLETE, PARSE_COMPLETE,
};
use crate::net::messages::status::parse_parameter_status;
use crate::net::messages::{header, HEADER};
use crate::params::ClientParams;
use crate::prepared::{ClientStatements, Registry, Statement};

/// PostgreSQL refuses messages over 1 GiB; so do we, before buffering one whole.
const MAX_MESSAGE: usize = 1 << 30;

/// Client-side state the relay updates.
pub struct ClientCtx<'a> {
    pub statements: &'a mut ClientStatements,
    pub params: &'a mut ClientParams,
    pub registry: &'a Registry,
    /// Prepared statement rewriting is on (transaction/statement mode, max > 0).
    pub track: bool,
    pub max_prepared: usize,
}

/// Why the relay stopped.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("invalid message length {0}")]
    BadLength(usize),
    #[error("malformed {0} message")]
    Malformed(&'static str),
}

/// Something the session must act on after server input was processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerEvent {
    None,
    /// A ReadyForQuery arrived.
    Ready,
    /// Statement mode: a ReadyForQuery said "in a transaction block". It was not forwarded;
    /// input after it is left unprocessed.
    TransactionBlock,
}

fn expected_kind(tag: u8) -> Option<u8> {
    match tag {
        b'P' | b'B' | b'D' | b'C' | b'E' | b'S' => Some(tag),
        b'Q' | b'F' => Some(b'Q'),
        _ => None,
    }
}

/// Expect-queue marker for a client's CopyDone/CopyFail (no answer of its own).
const COPY_END: u8 = b'c';

/// The server entered COPY IN: Syncs the client pipelined before ending the copy are ignored
/// by the server, so they must not wait for a ReadyForQuery.
fn copy_started(server: &mut Server) {
    let mut i = 1;
    while i < server.expect.len() {
        match server.expect[i].kind {
            COPY_END => {
                server.expect.remove(i);
                return;
            }
            b'S' => {
                server.expect.remove(i);
            }
            _ => i += 1,
        }
    }
    server.copy_in = true;
}

fn push(expect: &mut std::collections::VecDeque<Expect>, kind: u8, action: Action, stmt: u64) {
    expect.push_back(Expect { kind, action, stmt });
}

/// Appends `input[*run..pos]` (messages passed through unchanged) to `out` as one copy.
fn flush_run(out: &mut BytesMut, input: &[u8], run: &mut usize, pos: usize) {
    if pos > *run {
        out.extend_from_slice(&input[*run..pos]);
    }
    *run = pos;
}

/// Drops the first `pos` bytes of `input`; an emptied buffer keeps its start, so the next
/// read reuses it without moving anything.
pub fn consume(input: &mut BytesMut, pos: usize) {
    if pos >= input.len() {
        input.clear();
    } else {
        input.advance(pos);
    }
}

/// Passes `input[..pos]` to `out` (already holding `run` bytes' worth of earlier output),
/// swapping the buffers instead of copying when everything read goes out unchanged.
fn finish(input: &mut BytesMut, out: &mut BytesMut, mut run: usize, pos: usize) {
    if run == 0 && pos == input.len() && pos > 0 && out.is_empty() {
        std::mem::swap(input, out);
        input.clear();
        return;
    }
    flush_run(out, input, &mut run, pos);
    consume(input, pos);
}

/// Processes client bytes in `c2s_in` into `c2s_out`. Returns Ok(true) when the client sent
/// Terminate. Runs of messages that pass unchanged are copied at once (or not at all).
pub fn client_input(server: &mut Server, ctx: &mut ClientCtx<'_>) -> Result<bool, RelayError> {
    // Taken out so that `server` can be updated while its bytes are looked at.
    let mut input = std::mem::take(&mut server.bufs.c2s_in);
    let result = client_messages(server, ctx, &input);
    let (pos, run, terminated) = match result {
        Ok(r) => r,
        Err(e) => {
            server.bufs.c2s_in = input;
            return Err(e);
        }
    };
    finish(&mut input, &mut server.bufs.c2s_out, run, pos);
    if server.c2s_skip == 0 {
        // A message the relay must see whole is arriving: make room for all of it at once.
        if let Some((_, len)) = header(&input) {
            if len > input.len() && len - 1 <= MAX_MESSAGE {
                input.reserve(len - input.len());
            }
        }
    }
    server.bufs.c2s_in = input;
    drain_synthesized(server);
    Ok(terminated)
}

/// The scanning part of `client_input`: returns (bytes consumed, start of the unflushed run,
/// terminated).
fn client_messages(
    server: &mut Server,
    ctx: &mut ClientCtx<'_>,
    input: &[u8],
) -> Result<(usize, usize, bool), RelayError> {
    let mut pos = 0;
    let mut run = 0;
    loop {
        if server.c2s_skip > 0 {
            let n = server.c2s_skip.min(input.len() - pos);
            if n == 0 {
                break;
            }
            pos += n;
            server.c2s_skip -= n;
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
        let inspect = tag == b'X' || (ctx.track && matches!(tag, b'P' | b'B' | b'D' | b'C'));
        if !inspect {
            match tag {
                b'S' if server.copy_in => {}
                b'c' | b'f' if server.copy_in => server.copy_in = false,
                // CopyDone sent before the server's CopyInResponse was seen (pipelined): a marker
                // that tells `copy_started` where the copy ends.
                b'c' | b'f' => push(&mut server.expect, COPY_END, Action::Forward, 0),
                _ => {
                    if let Some(kind) = expected_kind(tag) {
                        push(&mut server.expect, kind, Action::Forward, 0);
                    }
                }
            }
            let n = len.min(avail);
            pos += n;
            server.c2s_skip = len - n;
            continue;
        }
        if avail < len {
            break;
        }
        flush_run(&mut server.bufs.c2s_out, input, &mut run, pos);
        let msg = &input[pos..pos + len];
        pos += len;
        run = pos;
        if tag == b'X' {
            return Ok((pos, run, true));
        }
        rewrite(server, ctx, tag, msg)?;
    }
    Ok((pos, run, false))
}

/// Handles one whole Parse/Bind/Describe/Close with statement tracking on.
fn rewrite(
    server: &mut Server,
    ctx: &mut ClientCtx<'_>,
    tag: u8,
    msg: &[u8],
) -> Result<(), RelayError> {
    match tag {
        b'P' => {
            let p = parse_parse(msg).ok_or(RelayError::Malformed("Parse"))?;
            if p.name.is_empty() {
                server.bufs.c2s_out.extend_from_slice(msg);
                push(&mut server.expect, b'P', Action::Forward, 0);
                return Ok(());
            }
            let stmt = ctx.registry.intern(p.rest);
            ctx.statements.insert(p.name, stmt.clone());
            if server.prepared.touch(stmt.id) {
                push(&mut server.expect, b'P', Action::Synthesize, 0);
            } else {
                prepare_on_server(server, &stmt, ctx.max_prepared, Action::Forward);
            }
        }
        b'B' => {
            let b = parse_bind(msg).ok_or(RelayError::Malformed("Bind"))?;
            match lookup(ctx, b.statement) {
                Some(stmt) => {
                    ensure_prepared(server, &stmt, ctx.max_prepared);
                    write_bind(
                        &mut server.bufs.c2s_out,
                        b.portal,
                        stmt.name.as_bytes(),
                        b.rest,
                    );
                }
                None => server.bufs.c2s_out.extend_from_slice(msg),
            }
            push(&mut server.expect, b'B', Action::Forward, 0);
        }
        b'D' => {
            let (kind, name) = parse_target(msg).ok_or(RelayError::Malformed("Describe"))?;
            match (kind, lookup(ctx, name)) {
                (b'S', Some(stmt)) => {
                    ensure_prepared(server, &stmt, ctx.max_prepared);
                    write_target(&mut server.bufs.c2s_out, b'D', b'S', stmt.name.as_bytes());
                }
                _ => server.bufs.c2s_out.extend_from_slice(msg),
            }
            push(&mut server.expect, b'D', Action::Forward, 0);
        }
        b'C' => {
            let (kind, name) = parse_target(msg).ok_or(RelayError::Malformed("Close"))?;
            if kind == b'S' && !name.is_empty() {
                // The server copy may serve other clients; only the client's name goes away.
                // Closing an unknown name is not an error in PostgreSQL either.
                ctx.statements.remove(name);
                push(&mut server.expect, b'C', Action::Synthesize, 0);
            } else {
                server.bufs.c2s_out.extend_from_slice(msg);
                push(&mut server.expect, b'C', Action::Forward, 0);
            }
        }
        _ => unreachable!("only P/B/D/C are rewritten"),
    }
    Ok(())
}

fn lookup(ctx: &ClientCtx<'_>, name: &[u8]) -> Option<std::sync::Arc<Statement>> {
    if name.is_empty() {
        return None;
    }
    ctx.statements.get(name).cloned()
}

/// Sends the pooler-wide Parse if this server lacks the statement (answer swallowed).
fn ensure_prepared(server: &mut Server, stmt: &std::sync::Arc<Statement>, max: usize) {
    if !server.prepared.touch(stmt.id) {
        prepare_on_server(server, stmt, max, Action::Swallow);
    }
}

fn prepare_on_server(
    server: &mut Server,
    stmt: &std::sync::Arc<Statement>,
    max: usize,
    action: Action,
) {
    if let Some(evicted) = server.prepared.add(stmt, max) {
        write_target(
            &mut server.bufs.c2s_out,
            b'C',
            b'S',
            evicted.name.as_bytes(),
        );
        push(&mut server.expect, b'C', Action::Swallow, 0);
    }
    server.bufs.c2s_out.extend_from_slice(&stmt.parse);
    push(&mut server.expect, b'P', action, stmt.id);
}

/// Emits answers the pooler owes the client, once everything before them has been answered.
fn drain_synthesized(server: &mut Server) {
    if server.s2c_skip > 0 {
        return;
    }
    while let Some(front) = server.expect.front() {
        if front.action != Action::Synthesize {
            break;
        }
        let reply: &[u8] = if front.kind == b'P' {
            &PARSE_COMPLETE
        } else {
            &CLOSE_COMPLETE
        };
        server.bufs.s2c_out.extend_from_slice(reply);
        server.expect.pop_front();
    }
}

fn terminates(kind: u8, tag: u8) -> bool {
    match kind {
        b'P' => tag == b'1',
        b'B' => tag == b'2',
        b'C' => tag == b'3',
        b'D' => tag == b'T' || tag == b'n',
        b'E' => matches!(tag, b'C' | b'I' | b's'),
        _ => false,
    }
}

/// Processes server bytes in `s2c_in` into `s2c_out`. Runs of messages that pass unchanged
/// are copied at once; a read that passes whole (the usual answer) is handed over by swapping
/// the buffers.
pub fn server_input(
    server: &mut Server,
    client_params: &mut ClientParams,
    refuse_transactions: bool,
) -> Result<ServerEvent, RelayError> {
    let mut input = std::mem::take(&mut server.bufs.s2c_in);
    let result = server_messages(server, client_params, refuse_transactions, &input);
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
    client_params: &mut ClientParams,
    refuse_transactions: bool,
    input: &[u8],
) -> Result<(usize, usize, ServerEvent), RelayError> {
    let mut event = ServerEvent::None;
    let mut pos = 0;
    let mut run = 0;
    loop {
        if server.s2c_skip > 0 {
            let n = server.s2c_skip.min(input.len() - pos);
            if n == 0 {
                break;
            }
            pos += n;
            server.s2c_skip -= n;
            continue;
        }
        if server
            .expect
            .front()
            .is_some_and(|e| e.action == Action::Synthesize)
        {
            // Answers the pooler owes go out in order, after what was forwarded so far.
            flush_run(&mut server.bufs.s2c_out, input, &mut run, pos);
            drain_synthesized(server);
        }
        let Some((tag, len)) = header(&input[pos..]) else {
            break;
        };
        if !(HEADER - 1..=MAX_MESSAGE).contains(&(len - 1)) {
            return Err(RelayError::BadLength(len));
        }
        tracing::trace!(tag = %(tag as char), len, expect = ?server.expect.front(), "server message");
        let avail = input.len() - pos;
        let whole = matches!(tag, b'Z' | b'S' | b'1' | b'3' | b'C');
        if whole && avail < len {
            break;
        }
        let mut forward = true;
        match tag {
            b'Z' => {
                server.status = input.get(pos + HEADER).copied().unwrap_or(b'I');
                while let Some(e) = server.expect.pop_front() {
                    if e.kind == b'S' || e.kind == b'Q' {
                        break;
                    }
                }
                if refuse_transactions && server.status != b'I' {
                    // Not forwarded; what follows stays unprocessed.
                    flush_run(&mut server.bufs.s2c_out, input, &mut run, pos);
                    pos += len;
                    return Ok((pos, pos, ServerEvent::TransactionBlock));
                }
                event = ServerEvent::Ready;
            }
            b'E' => {
                if let Some(front) = server.expect.front().copied() {
                    if matches!(front.kind, b'P' | b'B' | b'D' | b'C' | b'E') {
                        // The server skips everything up to the next Sync: those messages will
                        // never be answered, and statements they would have prepared do not exist.
                        while let Some(e) = server.expect.front().copied() {
                            if e.kind == b'S' || e.kind == b'Q' {
                                break;
                            }
                            if e.stmt != 0 {
                                server.prepared.remove(e.stmt);
                            }
                            server.expect.pop_front();
                        }
                    }
                }
            }
            b'G' => copy_started(server),
            b'S' => {
                let body = &input[pos + HEADER..pos + len];
                if let Some((name, value)) = parse_parameter_status(body) {
                    server.params.reported_to(name, value, client_params);
                }
            }
            _ => {
                if tag == b'C' {
                    let body = &input[pos + HEADER..pos + len];
                    if body.starts_with(b"DISCARD ALL\0") {
                        server.prepared.clear();
                        server.params.reset();
                    } else if body.starts_with(b"DEALLOCATE ALL\0") {
                        server.prepared.clear();
                    }
                }
                if let Some(front) = server.expect.front().copied() {
                    if terminates(front.kind, tag) {
                        server.expect.pop_front();
                        if front.action == Action::Swallow {
                            forward = false;
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
        server.s2c_skip = len - n;
    }
    Ok((pos, run, event))
}

/// True when the server has answered everything and the connection could serve someone else.
pub fn at_boundary(server: &Server) -> bool {
    server.status == b'I'
        && !server.copy_in
        && server.expect.is_empty()
        && server.c2s_skip == 0
        && server.s2c_skip == 0
        && server.bufs.s2c_in.is_empty()
}

/// Moves not-yet-forwarded client bytes out of the server's buffer (on release).
pub fn take_pending(server: &mut Server, pending: &mut BytesMut) {
    if !server.bufs.c2s_in.is_empty() {
        pending.extend_from_slice(&server.bufs.c2s_in);
        server.bufs.c2s_in.clear();
    }
}
