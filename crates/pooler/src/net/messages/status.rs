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

pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    buf.put_slice(&[tag::READY_FOR_QUERY, 0, 0, 0, 5, status]);
}
