//! Statement mode refuses transaction blocks. A server connection goes back to the pool after
//! every statement, so a `BEGIN` could never be followed by the statements it was meant to
//! group. Rather than forwarding it and undoing it once the server says "in a transaction"
//! (the client would see BEGIN succeed and then fail: psycopg's "received 2 results"), the
//! pooler recognises a Query or Parse that opens a block and answers it itself with one error.
//!
//! The check is a keyword test, not a parse: leading whitespace and comments, then `BEGIN` or
//! `START TRANSACTION`. A block opened some other way (`SELECT 1; BEGIN`) is still caught when
//! the server's ReadyForQuery says "in a transaction" (see `End::TransactionBlock`).

use crate::net::messages::{cstr, tag, HEADER};

/// How many bytes of a message's body the check needs at most. Longer leading comments are
/// not looked past: such a statement is left to the ReadyForQuery check.
pub const PEEK: usize = 256;

/// The start of the SQL text of a whole or cut Query or Parse message (header included).
pub fn statement_text(kind: u8, msg: &[u8]) -> &[u8] {
    let body = msg.get(HEADER..).unwrap_or_default();
    if kind == tag::PARSE {
        // Statement name first.
        cstr(body).map(|(_, rest)| rest).unwrap_or_default()
    } else {
        body
    }
}

/// Whether `sql` opens a transaction block. `sql` is the text as sent, NUL terminator included
/// when whole: a keyword must be followed by something, so a text cut right after `BEGIN`
/// (maybe `BEGINNING_...`) does not count.
pub fn opens_block(sql: &[u8]) -> bool {
    let s = skip_noise(sql);
    if keyword(s, b"begin").is_some() {
        return true;
    }
    keyword(s, b"start").is_some_and(|rest| keyword(skip_noise(rest), b"transaction").is_some())
}

/// `s` without `kw` (case-insensitive) at its start, if it starts with that whole word.
pub(super) fn keyword<'a>(s: &'a [u8], kw: &[u8]) -> Option<&'a [u8]> {
    let head = s.get(..kw.len())?;
    let next = *s.get(kw.len())?;
    let ident = next.is_ascii_alphanumeric() || next == b'_' || next == b'$' || next >= 0x80;
    (head.eq_ignore_ascii_case(kw) && !ident).then(|| &s[kw.len()..])
}

/// Skips whitespace, `-- line` and (nested) `/* block */` comments.
pub(super) fn skip_noise(mut s: &[u8]) -> &[u8] {
    loop {
        s = s.trim_ascii_start();
        if let Some(rest) = s.strip_prefix(b"--") {
            s = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => &rest[i + 1..],
                None => &[],
            };
        } else if s.starts_with(b"/*") {
            let mut depth = 0usize;
            let mut i = 0;
            while i + 1 < s.len() {
                match &s[i..i + 2] {
                    b"/*" => {
                        depth += 1;
                        i += 2;
                    }
                    b"*/" => {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => i += 1,
                }
            }
            if depth > 0 {
                return &[];
            }
            s = &s[i..];
        } else {
            return s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_block_openers_only() {
        for sql in [
            "BEGIN\0",
            "begin;\0",
            "  \n\tBegin ISOLATION LEVEL SERIALIZABLE\0",
            "-- hi\nBEGIN\0",
            "/* a /* nested */ comment */ begin work\0",
            "START TRANSACTION\0",
            "start /* x */ transaction read only\0",
            "BEGIN; SELECT 1\0",
        ] {
            assert!(opens_block(sql.as_bytes()), "{sql:?}");
        }
        for sql in [
            "SELECT 1\0",
            "BEGINNING\0",
            "begin_x\0",
            "START\0",
            "START_TRANSACTION\0",
            "DO $$ BEGIN NULL; END $$\0",
            "/* unterminated BEGIN\0",
            "COMMIT\0",
            // Cut right after the keyword: not enough to tell.
            "BEGIN",
            "",
        ] {
            assert!(!opens_block(sql.as_bytes()), "{sql:?}");
        }
    }

    #[test]
    fn finds_the_text_of_query_and_parse() {
        let q = b"Q\0\0\0\x0aBEGIN\0";
        assert_eq!(statement_text(tag::QUERY, q), b"BEGIN\0");
        let p = b"P\0\0\0\x0es1\0BEGIN\0\0\0";
        assert_eq!(statement_text(tag::PARSE, p), b"BEGIN\0\0\0");
        assert_eq!(statement_text(tag::PARSE, b"P\0\0\0"), b"");
    }
}
