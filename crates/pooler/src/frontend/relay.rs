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

/// Processes client bytes in `c2s_in` into `c2s_out`. Returns Ok(true) when the client sent
/// Terminate.
pub fn client_input(server: &mut Server, ctx: &mut ClientCtx<'_>) -> Result<bool, RelayError> {
    let mut terminated = false;
    loop {
        let input = &mut server.bufs.c2s_in;
        if server.c2s_skip > 0 {
            let n = server.c2s_skip.min(input.len());
            if n == 0 {
                break;
            }
            server.bufs.c2s_out.extend_from_slice(&input[..n]);
            input.advance(n);
            server.c2s_skip -= n;
            continue;
        }
        let Some((tag, len)) = header(input) else {
            break;
        };
        if !(HEADER - 1..=MAX_MESSAGE).contains(&(len - 1)) {
            return Err(RelayError::BadLength(len));
        }
        tracing::trace!(tag = %(tag as char), len, "client message");
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
            let n = len.min(input.len());
            server.bufs.c2s_out.extend_from_slice(&input[..n]);
            input.advance(n);
            server.c2s_skip = len - n;
            continue;
        }
        if input.len() < len {
            input.reserve(len - input.len());
            break;
        }
        let msg = input.split_to(len);
        if tag == b'X' {
            terminated = true;
            break;
        }
        rewrite(server, ctx, tag, &msg)?;
    }
    drain_synthesized(server);
    Ok(terminated)
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

/// Processes server bytes in `s2c_in` into `s2c_out`.
pub fn server_input(
    server: &mut Server,
    client_params: &mut ClientParams,
    refuse_transactions: bool,
) -> Result<ServerEvent, RelayError> {
    let mut event = ServerEvent::None;
    loop {
        if server.s2c_skip > 0 {
            let input = &mut server.bufs.s2c_in;
            let n = server.s2c_skip.min(input.len());
            if n == 0 {
                break;
            }
            server.bufs.s2c_out.extend_from_slice(&input[..n]);
            input.advance(n);
            server.s2c_skip -= n;
            continue;
        }
        drain_synthesized(server);
        let Some((tag, len)) = header(&server.bufs.s2c_in) else {
            break;
        };
        if !(HEADER - 1..=MAX_MESSAGE).contains(&(len - 1)) {
            return Err(RelayError::BadLength(len));
        }
        tracing::trace!(tag = %(tag as char), len, expect = ?server.expect.front(), "server message");
        let whole = matches!(tag, b'Z' | b'S' | b'1' | b'3' | b'C');
        if whole && server.bufs.s2c_in.len() < len {
            break;
        }
        let mut forward = true;
        match tag {
            b'Z' => {
                server.status = server.bufs.s2c_in.get(HEADER).copied().unwrap_or(b'I');
                while let Some(e) = server.expect.pop_front() {
                    if e.kind == b'S' || e.kind == b'Q' {
                        break;
                    }
                }
                if refuse_transactions && server.status != b'I' {
                    server.bufs.s2c_in.advance(len);
                    return Ok(ServerEvent::TransactionBlock);
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
                let body = &server.bufs.s2c_in[HEADER..len];
                if let Some((name, value)) = parse_parameter_status(body) {
                    server.params.reported_to(name, value, client_params);
                }
            }
            _ => {
                if tag == b'C' {
                    let body = &server.bufs.s2c_in[HEADER..len];
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
        let input = &mut server.bufs.s2c_in;
        if !forward {
            input.advance(len);
            continue;
        }
        let n = len.min(input.len());
        server.bufs.s2c_out.extend_from_slice(&input[..n]);
        input.advance(n);
        server.s2c_skip = len - n;
    }
    Ok(event)
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
