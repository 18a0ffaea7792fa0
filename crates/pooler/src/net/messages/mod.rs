//! PostgreSQL protocol v3 messages the pooler builds or parses. Builders append to a caller's
//! buffer (no allocation of their own); parsers borrow from the message bytes.

pub mod auth;
pub mod error;
pub mod extended;
pub mod startup;
pub mod status;
pub mod tag;

use bytes::{BufMut, BytesMut};

/// Length of a message header: type byte + i32 length.
pub const HEADER: usize = 5;

/// Reads the header of the message at the start of `buf`: (type, total length including the
/// type byte). None when fewer than 5 bytes are buffered.
#[inline]
pub fn header(buf: &[u8]) -> Option<(u8, usize)> {
    if buf.len() < HEADER {
        return None;
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    Some((buf[0], len + 1))
}

/// Starts a message: writes type and a length placeholder, returns the length's offset.
pub fn begin(buf: &mut BytesMut, tag: u8) -> usize {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_u32(0);
    at
}

/// Patches the length placeholder written by `begin`.
pub fn finish(buf: &mut BytesMut, at: usize) {
    let len = (buf.len() - at) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn put_cstr(buf: &mut BytesMut, s: &[u8]) {
    buf.put_slice(s);
    buf.put_u8(0);
}

/// Splits a NUL-terminated string off the front of `buf`.
pub fn cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = buf.iter().position(|&b| b == 0)?;
    Some((&buf[..nul], &buf[nul + 1..]))
}

/// A simple Query message.
pub fn query(buf: &mut BytesMut, sql: &str) {
    let at = begin(buf, tag::QUERY);
    put_cstr(buf, sql.as_bytes());
    finish(buf, at);
}

/// A whole Terminate message.
pub const TERMINATE: [u8; 5] = [tag::TERMINATE, 0, 0, 0, 4];
