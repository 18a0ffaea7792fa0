//! The value a plain `SET name TO value` gives, taken from the statement itself, so that the
//! commonest SET costs no read-back round trip (`session_state::read_back`).
//!
//! Only a Query that is exactly one `SET [SESSION] name {TO|=} {value[, ...] | DEFAULT}` of a
//! tracked, unreported parameter (not `role`) qualifies, and only with values whose text is
//! certain: what PostgreSQL's `flatten_set_variable_args` makes of them is reproduced here
//! (identifiers folded, integers printed again, `search_path` elements quoted where needed),
//! and `set_config(name, that, false)` on another connection sets the same value. Anything
//! else (escape strings, dollar quotes, typecasts, long or non-ASCII identifiers, a second
//! statement) is left to the read-back.
//!
//! The value is only kept once the server confirmed it in the state that makes it last: the
//! Query's CommandComplete says `SET` and it ran outside a transaction block (the ReadyForQuery
//! before it said idle), so that it committed on its own. Otherwise the parameter is marked
//! dirty and read back as before (`from_server`).

use super::lex::{keyword, skip_noise};
use crate::params::{self, REPORTED};

/// A literal SET waiting for its answer (`RelayState::sets`, one per marked Query).
#[derive(Debug)]
pub struct PendingSet {
    /// Index in `params::TRACKED`.
    pub param: usize,
    /// The flattened value; None for `DEFAULT` (the server's default).
    pub value: Option<Box<str>>,
    /// The Query's CommandComplete said `SET`.
    pub done: bool,
}

/// `Expect::stmt` of a Query whose answer settles the next `RelayState::sets` entry.
pub const MARK: u64 = 1;

/// `Expect::stmt` of a Query that may drop the client's statement names (`scan::DROPS`).
pub const DROPS_MARK: u64 = 2;

/// The literal SET a whole Query text (NUL-terminated) is, if it is one (module docs).
#[cold]
#[inline(never)]
pub fn parse(sql: &[u8]) -> Option<PendingSet> {
    let s = skip_noise(sql);
    let mut s = skip_noise(keyword(s, b"set")?);
    if let Some(rest) = keyword(s, b"session") {
        s = skip_noise(rest);
    }
    let (name, rest) = name(s)?;
    let param = params::index(&name).filter(|&i| i >= REPORTED && name != "role")?;
    let list = name == "search_path";
    let mut s = skip_noise(rest);
    s = match keyword(s, b"to") {
        Some(rest) => rest,
        None => s.strip_prefix(b"=")?,
    };
    s = skip_noise(s);
    let value = match keyword(s, b"default") {
        Some(rest) => {
            s = rest;
            None
        }
        None => {
            let mut out = String::new();
            loop {
                let (v, rest) = value(s, list)?;
                if !out.is_empty() {
                    out.push_str(", ");
                }
                out.push_str(&v);
                s = skip_noise(rest);
                match s.strip_prefix(b",") {
                    // Only a list parameter takes more than one value.
                    Some(rest) if list => s = skip_noise(rest),
                    Some(_) => return None,
                    None => break,
                }
            }
            Some(out.into_boxed_str())
        }
    };
    let s = skip_noise(s);
    let s = s.strip_prefix(b";").map(skip_noise).unwrap_or(s);
    (s == b"\0").then_some(PendingSet {
        param,
        value,
        done: false,
    })
}

/// The longest identifier PostgreSQL keeps as written (NAMEDATALEN - 1): a longer one is
/// truncated, which is not reproduced here.
const MAX_IDENTIFIER: usize = 63;

/// A parameter name: an identifier, folded, or a quoted one (names are case-insensitive:
/// lowercased either way for the lookup).
fn name(s: &[u8]) -> Option<(String, &[u8])> {
    let (word, rest) = match s.first()? {
        b'"' => quoted(s)?,
        _ => identifier(s)?,
    };
    Some((word.to_ascii_lowercase(), rest))
}

/// An unquoted identifier, ASCII only, folded to lower case as PostgreSQL does.
fn identifier(s: &[u8]) -> Option<(String, &[u8])> {
    let first = *s.first()?;
    if !(first.is_ascii_alphabetic() || first == b'_') {
        return None;
    }
    let end = s
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'$'))
        .unwrap_or(s.len());
    if end > MAX_IDENTIFIER || s.get(end).is_some_and(|&b| b >= 0x80) {
        return None;
    }
    let word = std::str::from_utf8(&s[..end]).ok()?.to_ascii_lowercase();
    Some((word, &s[end..]))
}

/// A double-quoted identifier (`""` inside is one `"`), kept as written; never empty.
fn quoted(s: &[u8]) -> Option<(String, &[u8])> {
    let (text, rest) = delimited(s, b'"')?;
    if text.is_empty() || text.len() > MAX_IDENTIFIER {
        return None;
    }
    Some((text, rest))
}

/// A standard single-quoted literal without backslashes (whose meaning depends on
/// `standard_conforming_strings`), or the text between `q`s with doubled `q`s.
fn delimited(s: &[u8], q: u8) -> Option<(String, &[u8])> {
    let mut s = s.strip_prefix(&[q])?;
    let mut out = Vec::new();
    loop {
        let end = s.iter().position(|&b| b == q || b == 0 || b == b'\\')?;
        if s[end] != q {
            return None;
        }
        out.extend_from_slice(&s[..end]);
        s = &s[end + 1..];
        if s.first() == Some(&q) {
            out.push(q);
            s = &s[1..];
        } else {
            break;
        }
    }
    Some((String::from_utf8(out).ok()?, s))
}

/// One value as `flatten_set_variable_args` prints it: an integer again in decimal, any other
/// number as written, a string or word as it is (for a list parameter, as an identifier,
/// quoted where needed).
fn value(s: &[u8], list: bool) -> Option<(String, &[u8])> {
    let first = *s.first()?;
    let (text, rest) = match first {
        b'\'' => delimited(s, b'\'')?,
        b'"' => quoted(s)?,
        b'-' => {
            let (n, rest) = number(&s[1..])?;
            // `doNegateFloat` strips a sign already there; a number here has none.
            (format!("-{n}"), rest)
        }
        b'0'..=b'9' | b'.' => return number(s),
        _ => identifier(s)?,
    };
    if first == b'-' {
        return Some((text, rest));
    }
    if list && !plain_identifier(&text) {
        let mut q = String::with_capacity(text.len() + 2);
        q.push('"');
        q.push_str(&text.replace('"', "\"\""));
        q.push('"');
        return Some((q, rest));
    }
    Some((text, rest))
}

/// A name `quote_identifier` would leave alone for its characters (keywords aside: a list
/// parameter reads a keyword element the same quoted or not).
fn plain_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// An unsigned integer or decimal number (no exponent, no PostgreSQL 16 forms such as `0x1F`
/// or `1_000`): an integer that fits 32 bits is printed again (`007` is `7`), any other as
/// written. Must be followed by something that ends a value.
fn number(s: &[u8]) -> Option<(String, &[u8])> {
    let digits = |s: &[u8]| s.iter().take_while(|b| b.is_ascii_digit()).count();
    let int = digits(s);
    let (len, decimal) = match s.get(int) {
        Some(b'.') => (int + 1 + digits(&s[int + 1..]), true),
        _ => (int, false),
    };
    if len == 0 || (decimal && len == 1) {
        return None;
    }
    let rest = &s[len..];
    let next = *rest.first()?;
    if next.is_ascii_alphanumeric() || next == b'_' || next == b'$' || next == b'.' {
        return None;
    }
    let text = std::str::from_utf8(&s[..len]).ok()?;
    if !decimal {
        if let Ok(n) = text.parse::<i32>() {
            return Some((n.to_string(), rest));
        }
    }
    Some((text.to_string(), rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(sql: &str) -> Option<(&'static str, Option<String>)> {
        let mut text = sql.as_bytes().to_vec();
        text.push(0);
        parse(&text).map(|p| (params::TRACKED[p.param], p.value.map(String::from)))
    }

    fn val(sql: &str) -> String {
        lit(sql).unwrap_or_else(|| panic!("{sql:?}")).1.unwrap()
    }

    #[test]
    fn takes_values_as_postgresql_flattens_them() {
        assert_eq!(
            lit("SET search_path = public, pg_catalog;"),
            Some(("search_path", Some("public, pg_catalog".into())))
        );
        assert_eq!(
            val("set search_path to \"My Schema\", Public"),
            "\"My Schema\", public"
        );
        assert_eq!(
            val("SET search_path = 'a,b', \"$user\""),
            "\"a,b\", \"$user\""
        );
        assert_eq!(val("SET search_path = 'x\"y'"), "\"x\"\"y\"");
        assert_eq!(val("SET search_path = 007"), "7");
        assert_eq!(val("SET SESSION work_mem = '64MB' ; "), "64MB");
        assert_eq!(val("set statement_timeout to 007"), "7");
        assert_eq!(val("set statement_timeout to -5"), "-5");
        assert_eq!(val("set statement_timeout to 1.50"), "1.50");
        assert_eq!(val("set statement_timeout to 99999999999"), "99999999999");
        assert_eq!(val("set statement_timeout to 'it''s'"), "it's");
        assert_eq!(val("SET jit = ON"), "on");
        assert_eq!(val("SET jit TO Off"), "off");
        assert_eq!(val("SET \"Lock_Timeout\" = 5"), "5");
        assert_eq!(val("/* c */ SET lock_timeout = 5 -- why\n"), "5");
        assert_eq!(
            val("SET default_transaction_isolation = \"Repeatable Read\""),
            "Repeatable Read"
        );
        assert_eq!(lit("SET work_mem TO DEFAULT"), Some(("work_mem", None)));
    }

    #[test]
    fn leaves_the_rest_to_the_read_back() {
        for sql in [
            "SET LOCAL work_mem = '1MB'",
            "SET ROLE r",
            "SET role = r",
            "SET TimeZone = 'UTC'",
            "SET my.setting = 1",
            "SET work_mem = E'1MB'",
            "SET work_mem = '1\\MB'",
            "SET work_mem = $$1MB$$",
            "SET work_mem = 1MB",
            "SET work_mem = 0x10",
            "SET work_mem = '1', '2'",
            "SET work_mem = '1' '2'",
            "SET work_mem = '1'\n'2'",
            "SET work_mem = ",
            "SET work_mem",
            "SET work_mem = '1'; SELECT 1",
            "SET work_mem = '1';;",
            "SET search_path = ééé",
            "SET search_path = \"\"",
            "SET search_path = default, a",
            "SET SCHEMA 'a'",
            "SET statement_timeout = 1e3",
            "SET statement_timeout = - 5",
            "SELECT 1",
        ] {
            assert_eq!(lit(sql), None, "{sql:?}");
        }
        let long = format!("SET search_path = {}", "a".repeat(64));
        assert_eq!(lit(&long), None);
        // A cut text (no NUL) is not a whole statement.
        assert!(parse(b"SET work_mem = '1MB'").is_none());
    }
}
