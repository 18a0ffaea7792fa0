//! Messages sent to a client at login: ParameterStatus, BackendKeyData, ReadyForQuery.

use bytes::{BufMut, BytesMut};

use super::{begin, cstr, finish, put_cstr, tag};

pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    let at = begin(buf, tag::PARAMETER_STATUS);
    put_cstr(buf, name.as_bytes());
    put_cstr(buf, value.as_bytes());
    finish(buf, at);
}

/// Name and value of a ParameterStatus body.
pub fn parse_parameter_status(body: &[u8]) -> Option<(&str, &str)> {
    let (name, rest) = cstr(body)?;
    let (value, _) = cstr(rest)?;
    Some((
        std::str::from_utf8(name).ok()?,
        std::str::from_utf8(value).ok()?,
    ))
}

pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    buf.put_u8(tag::BACKEND_KEY_DATA);
    buf.put_u32(12);
    buf.put_i32(pid);
    buf.put_i32(secret);
}

/// A CommandComplete with its tag text (`LISTEN`, `SHOW`, `SELECT 3`, …), for answers the pooler
/// gives itself.
pub fn command_complete(buf: &mut BytesMut, tag_text: &[u8]) {
    let at = begin(buf, tag::COMMAND_COMPLETE);
    put_cstr(buf, tag_text);
    finish(buf, at);
}

pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    buf.put_slice(&[tag::READY_FOR_QUERY, 0, 0, 0, 5, status]);
}

/// The fields of a DataRow body as text (NULL as None); None when malformed or not UTF-8.
pub fn parse_data_row(body: &[u8]) -> Option<Vec<Option<Box<str>>>> {
    let n = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
    let mut rest = &body[2..];
    let mut fields = Vec::with_capacity(n);
    for _ in 0..n {
        let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        rest = &rest[4..];
        if len < 0 {
            fields.push(None);
            continue;
        }
        let (field, tail) = rest.split_at_checked(len as usize)?;
        fields.push(Some(std::str::from_utf8(field).ok()?.into()));
        rest = tail;
    }
    Some(fields)
}
