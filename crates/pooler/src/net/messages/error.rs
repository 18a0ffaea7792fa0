//! ErrorResponse: built for the pooler's own errors, parsed when a server refuses a login.

use bytes::{BufMut, BytesMut};

use super::{begin, cstr, finish, put_cstr, tag};

// Field types of an ErrorResponse.
const FIELD_SEVERITY: u8 = b'S';
/// The severity again, never localized (PostgreSQL 9.6+).
const FIELD_SEVERITY_V: u8 = b'V';
const FIELD_CODE: u8 = b'C';
const FIELD_MESSAGE: u8 = b'M';

/// Severity of an error the pooler sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

/// Appends an ErrorResponse with severity, SQLSTATE and message.
pub fn error_response(buf: &mut BytesMut, severity: Severity, code: &str, message: &str) {
    let sev: &[u8] = match severity {
        Severity::Error => b"ERROR",
        Severity::Fatal => b"FATAL",
    };
    let at = begin(buf, tag::ERROR_RESPONSE);
    buf.put_u8(FIELD_SEVERITY);
    put_cstr(buf, sev);
    buf.put_u8(FIELD_SEVERITY_V);
    put_cstr(buf, sev);
    buf.put_u8(FIELD_CODE);
    put_cstr(buf, code.as_bytes());
    buf.put_u8(FIELD_MESSAGE);
    put_cstr(buf, message.as_bytes());
    buf.put_u8(0);
    finish(buf, at);
}

/// The SQLSTATE and message of an ErrorResponse body (after the header).
pub fn parse_error(body: &[u8]) -> (String, String) {
    let mut code = String::new();
    let mut message = String::new();
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let Some((value, tail)) = cstr(tail) else {
            break;
        };
        match field {
            FIELD_CODE => code = String::from_utf8_lossy(value).into_owned(),
            FIELD_MESSAGE => message = String::from_utf8_lossy(value).into_owned(),
            _ => {}
        }
        rest = tail;
    }
    (code, message)
}
