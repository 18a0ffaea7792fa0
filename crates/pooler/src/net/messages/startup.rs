//! The untyped first packet of a connection: StartupMessage, SSLRequest, GSSENCRequest,
//! CancelRequest.

use bytes::{BufMut, BytesMut};

use super::{cstr, put_cstr};

pub const SSL_REQUEST: u32 = 80877103;
pub const GSSENC_REQUEST: u32 = 80877104;
pub const CANCEL_REQUEST: u32 = 80877102;
pub const PROTOCOL_3_0: u32 = 196608;
/// The one-byte answers to SSLRequest and GSSENCRequest.
pub const ENCRYPTION_ACCEPTED: &[u8] = b"S";
pub const ENCRYPTION_REFUSED: &[u8] = b"N";
/// Larger startup packets are refused, as PostgreSQL does.
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// What the first packet asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Startup {
    Ssl,
    GssEnc,
    Cancel {
        pid: i32,
        secret: i32,
    },
    /// A StartupMessage (protocol 3.0) with its parameters.
    Message {
        params: Vec<(String, String)>,
    },
    Unsupported(u32),
}

/// Parses a first packet's body (after its 4-byte length).
pub fn parse(body: &[u8]) -> Result<Startup, &'static str> {
    if body.len() < 4 {
        return Err("startup packet too short");
    }
    let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let rest = &body[4..];
    match code {
        SSL_REQUEST => Ok(Startup::Ssl),
        GSSENC_REQUEST => Ok(Startup::GssEnc),
        CANCEL_REQUEST => {
            if rest.len() < 8 {
                return Err("cancel request too short");
            }
            let pid = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let secret = i32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
            Ok(Startup::Cancel { pid, secret })
        }
        PROTOCOL_3_0 => {
            let mut params = Vec::new();
            let mut rest = rest;
            loop {
                let (name, tail) = cstr(rest).ok_or("startup packet not NUL-terminated")?;
                if name.is_empty() {
                    break;
                }
                let (value, tail) = cstr(tail).ok_or("startup parameter without value")?;
                let name =
                    std::str::from_utf8(name).map_err(|_| "startup parameter name is not UTF-8")?;
                let value = std::str::from_utf8(value)
                    .map_err(|_| "startup parameter value is not UTF-8")?;
                params.push((name.to_string(), value.to_string()));
                rest = tail;
            }
            Ok(Startup::Message { params })
        }
        other => Ok(Startup::Unsupported(other)),
    }
}

/// Appends a StartupMessage (protocol 3.0) with the given parameters.
pub fn startup_message(buf: &mut BytesMut, params: &[(&str, &str)]) {
    let at = buf.len();
    buf.put_u32(0);
    buf.put_u32(PROTOCOL_3_0);
    for (name, value) in params {
        put_cstr(buf, name.as_bytes());
        put_cstr(buf, value.as_bytes());
    }
    buf.put_u8(0);
    let len = (buf.len() - at) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends a CancelRequest.
pub fn cancel_request(buf: &mut BytesMut, pid: i32, secret: i32) {
    buf.put_u32(16);
    buf.put_u32(CANCEL_REQUEST);
    buf.put_i32(pid);
    buf.put_i32(secret);
}
