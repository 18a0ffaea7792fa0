//! Extended-protocol messages the pooler rewrites for prepared statements: Parse, Bind,
//! Describe and Close. Parsers borrow from the message; writers append the rewritten message
//! to the output buffer directly, so a rewrite costs a copy, not an allocation.

use bytes::{BufMut, BytesMut};

use super::{cstr, put_cstr, tag, HEADER};

/// A Parse message split at its statement name: `rest` is query, parameter count and types.
pub struct Parse<'a> {
    pub name: &'a [u8],
    pub rest: &'a [u8],
}

pub fn parse_parse(msg: &[u8]) -> Option<Parse<'_>> {
    let (name, rest) = cstr(msg.get(HEADER..)?)?;
    Some(Parse { name, rest })
}

/// Writes a Parse with `name` and the original `rest`.
pub fn write_parse(out: &mut BytesMut, name: &[u8], rest: &[u8]) {
    out.put_u8(tag::PARSE);
    out.put_u32((4 + name.len() + 1 + rest.len()) as u32);
    put_cstr(out, name);
    out.put_slice(rest);
}

/// A Bind message split at its names.
pub struct Bind<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    pub rest: &'a [u8],
}

pub fn parse_bind(msg: &[u8]) -> Option<Bind<'_>> {
    let (portal, rest) = cstr(msg.get(HEADER..)?)?;
    let (statement, rest) = cstr(rest)?;
    Some(Bind {
        portal,
        statement,
        rest,
    })
}

pub fn write_bind(out: &mut BytesMut, portal: &[u8], statement: &[u8], rest: &[u8]) {
    out.put_u8(tag::BIND);
    out.put_u32((4 + portal.len() + 1 + statement.len() + 1 + rest.len()) as u32);
    put_cstr(out, portal);
    put_cstr(out, statement);
    out.put_slice(rest);
}

/// Describe or Close: the target kind ('S' statement, 'P' portal) and its name.
pub fn parse_target(msg: &[u8]) -> Option<(u8, &[u8])> {
    let body = msg.get(HEADER..)?;
    let (&kind, rest) = body.split_first()?;
    let (name, _) = cstr(rest)?;
    Some((kind, name))
}

/// Writes a Describe ('D') or Close ('C') of a statement/portal.
pub fn write_target(out: &mut BytesMut, tag: u8, kind: u8, name: &[u8]) {
    out.put_u8(tag);
    out.put_u32((4 + 1 + name.len() + 1) as u32);
    out.put_u8(kind);
    put_cstr(out, name);
}

/// Execute of portal `portal`, all rows.
pub fn write_execute(out: &mut BytesMut, portal: &[u8]) {
    out.put_u8(tag::EXECUTE);
    out.put_u32((4 + portal.len() + 1 + 4) as u32);
    put_cstr(out, portal);
    out.put_u32(0);
}

/// A Flush: the server sends what it owes so far, without ending the segment.
pub const FLUSH: [u8; 5] = [tag::FLUSH, 0, 0, 0, 4];

pub const PARSE_COMPLETE: [u8; 5] = [tag::PARSE_COMPLETE, 0, 0, 0, 4];
pub const CLOSE_COMPLETE: [u8; 5] = [tag::CLOSE_COMPLETE, 0, 0, 0, 4];
