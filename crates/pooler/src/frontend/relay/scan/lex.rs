//! The scanner's lexical primitives: where a message's SQL text starts, whole keywords, and
//! the noise (whitespace, comments) between them. Every statement check of the relay is built
//! on these (`super`).

use crate::net::messages::{cstr, tag, HEADER};

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

/// `s` without `kw` (case-insensitive) at its start, if it starts with that whole word.
pub fn keyword<'a>(s: &'a [u8], kw: &[u8]) -> Option<&'a [u8]> {
    let head = s.get(..kw.len())?;
    let next = *s.get(kw.len())?;
    let ident = next.is_ascii_alphanumeric() || next == b'_' || next == b'$' || next >= 0x80;
    (head.eq_ignore_ascii_case(kw) && !ident).then(|| &s[kw.len()..])
}

/// Skips whitespace, `-- line` and (nested) `/* block */` comments.
pub fn skip_noise(mut s: &[u8]) -> &[u8] {
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
    fn finds_the_text_of_query_and_parse() {
        let q = b"Q\0\0\0\x0aBEGIN\0";
        assert_eq!(statement_text(tag::QUERY, q), b"BEGIN\0");
        let p = b"P\0\0\0\x0es1\0BEGIN\0\0\0";
        assert_eq!(statement_text(tag::PARSE, p), b"BEGIN\0\0\0");
        assert_eq!(statement_text(tag::PARSE, b"P\0\0\0"), b"");
    }
}
