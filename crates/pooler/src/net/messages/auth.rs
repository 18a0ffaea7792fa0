//! Authentication request messages ('R') and the client's answers ('p').

use bytes::{BufMut, BytesMut};

use super::{begin, finish, put_cstr, tag};

pub const AUTH_OK: i32 = 0;
pub const AUTH_CLEARTEXT: i32 = 3;
pub const AUTH_MD5: i32 = 5;
pub const AUTH_SASL: i32 = 10;
pub const AUTH_SASL_CONTINUE: i32 = 11;
pub const AUTH_SASL_FINAL: i32 = 12;

pub fn auth_ok(buf: &mut BytesMut) {
    buf.put_slice(&[tag::AUTHENTICATION, 0, 0, 0, 8, 0, 0, 0, 0]);
}

pub fn auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    buf.put_slice(&[tag::AUTHENTICATION, 0, 0, 0, 12, 0, 0, 0, 5]);
    buf.put_slice(&salt);
}

pub fn auth_sasl(buf: &mut BytesMut, mechanism: &str) {
    let at = begin(buf, tag::AUTHENTICATION);
    buf.put_i32(AUTH_SASL);
    put_cstr(buf, mechanism.as_bytes());
    buf.put_u8(0);
    finish(buf, at);
}

/// AuthenticationSASL offering several mechanisms, preferred first.
pub fn auth_sasl_list(buf: &mut BytesMut, mechanisms: &[&str]) {
    let at = begin(buf, tag::AUTHENTICATION);
    buf.put_i32(AUTH_SASL);
    for m in mechanisms {
        put_cstr(buf, m.as_bytes());
    }
    buf.put_u8(0);
    finish(buf, at);
}

/// SASLContinue (11) or SASLFinal (12) with its data.
pub fn auth_sasl_data(buf: &mut BytesMut, kind: i32, data: &[u8]) {
    let at = begin(buf, tag::AUTHENTICATION);
    buf.put_i32(kind);
    buf.put_slice(data);
    finish(buf, at);
}

/// PasswordMessage (cleartext or md5 answer).
pub fn password(buf: &mut BytesMut, password: &[u8]) {
    let at = begin(buf, tag::PASSWORD);
    put_cstr(buf, password);
    finish(buf, at);
}

/// SASLInitialResponse.
pub fn sasl_initial(buf: &mut BytesMut, mechanism: &str, data: &[u8]) {
    let at = begin(buf, tag::PASSWORD);
    put_cstr(buf, mechanism.as_bytes());
    buf.put_i32(data.len() as i32);
    buf.put_slice(data);
    finish(buf, at);
}

/// SASLResponse.
pub fn sasl_response(buf: &mut BytesMut, data: &[u8]) {
    let at = begin(buf, tag::PASSWORD);
    buf.put_slice(data);
    finish(buf, at);
}
