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
use crate::params::{self, REPORTED, SEARCH_PATH, TRACKED};

/// A literal SET waiting for its answer (`RelayState::sets`, one per marked Query).
#[derive(Debug)]
pub struct PendingSet {
    /// Index in `params::TRACKED` (0 for a custom setting).
    pub param: usize,
    /// The name of a custom setting (`params::custom_name`), which is set instead.
    pub custom: Option<Box<str>>,
    /// The flattened value; None for `DEFAULT` (the server's default; never for a custom
    /// setting, whose default the pooler does not know).
    pub value: Option<Box<str>>,
    /// The Query's CommandComplete said `SET`.
    pub done: bool,
}

impl PendingSet {
    /// What the scan marks for this SET (`super::Found::Sets`) when it is not taken literally.
    pub fn marks(&self) -> u64 {
        match self.custom {
            Some(_) => super::SESSION | super::CUSTOM,
            None => 1 << self.param,
        }
    }
}

/// `Expect::stmt` of a Query whose answer settles the next `RelayState::sets` entry.
pub const MARK: u64 = 1;

/// `Expect::stmt` of a Query that may drop the client's statement names (`scan::DROPS`).
pub const DROPS_MARK: u64 = 2;

/// The literal SET a whole Query text (NUL-terminated) is, if it is one (module docs). The value
/// is written into one buffer as it is read (one allocation, no copy per element), and the name
/// is looked up as it was written, without a copy.
#[cold]
#[inline(never)]
pub fn parse(sql: &[u8]) -> Option<PendingSet> {
    let s = skip_noise(sql);
    let mut s = skip_noise(keyword(s, b"set")?);
    if let Some(rest) = keyword(s, b"session") {
        s = skip_noise(rest);
    }
    let (param, custom, rest) = name(s)?;
    if custom.is_none() && (param < REPORTED || TRACKED[param] == "role") {
        return None;
    }
    let list = custom.is_none() && param == SEARCH_PATH;
    let mut s = skip_noise(rest);
    s = match keyword(s, b"to") {
        Some(rest) => rest,
        None => s.strip_prefix(b"=")?,
    };
    s = skip_noise(s);
    let value = match keyword(s, b"default") {
        Some(_) if custom.is_some() => return None,
        Some(rest) => {
            s = rest;
            None
        }
        None => {
            // Room for the elements as written plus their quotes (a quoted element may need
            // more: the buffer grows then).
            let mut out = Vec::with_capacity(s.len() + 8);
            loop {
                if !out.is_empty() {
                    out.extend_from_slice(b", ");
                }
                s = skip_noise(value(s, list, &mut out)?);
                match s.strip_prefix(b",") {
                    // Only a list parameter takes more than one value.
                    Some(rest) if list => s = skip_noise(rest),
                    Some(_) => return None,
                    None => break,
                }
            }
            Some(String::from_utf8(out).ok()?.into_boxed_str())
        }
    };
    let s = skip_noise(s);
    let s = s.strip_prefix(b";").map(skip_noise).unwrap_or(s);
    (s == b"\0").then_some(PendingSet {
        param,
        custom,
        value,
        done: false,
    })
}

/// The longest identifier PostgreSQL keeps as written (NAMEDATALEN - 1): a longer one is
/// truncated, which is not reproduced here.
const MAX_IDENTIFIER: usize = 63;

/// What `name` read: a `TRACKED` index, a custom setting's name, and what follows.
type Named<'a> = (usize, Option<Box<str>>, &'a [u8]);

/// A parameter name, an identifier or a quoted one: its index in `params::TRACKED` (names are
/// case-insensitive either way); or identifiers joined by dots, a custom setting's name
/// (`params::custom_name`, as the index 0 and that name).
fn name(s: &[u8]) -> Option<Named<'_>> {
    let mut quoted_name = Vec::new();
    let (word, rest) = match s.first()? {
        b'"' => {
            let rest = quoted(s, &mut quoted_name)?;
            (&quoted_name[..], rest)
        }
        _ => identifier(s)?,
    };
    if rest.first() == Some(&b'.') {
        return custom(word, rest);
    }
    Some((params::index_bytes(word)?, None, rest))
}

/// A custom setting's name at the start of `s` (identifiers, maybe quoted, joined by dots), as
/// `params::custom_name` keys it, and what follows it (`super::custom`).
pub(super) fn custom_name_at(s: &[u8]) -> Option<(Box<str>, &[u8])> {
    let (_, custom, rest) = name(s)?;
    Some((custom?, rest))
}

/// A standard string literal at the start of `s` (no backslash: its meaning would depend on
/// `standard_conforming_strings`), its text and what follows it (`super::custom`).
pub(super) fn string_at(s: &[u8]) -> Option<(String, &[u8])> {
    let mut out = Vec::new();
    let rest = delimited(s, b'\'', &mut out)?;
    Some((String::from_utf8(out).ok()?, rest))
}

/// The rest of a custom setting's name, after its first part `first` (`name`).
#[cold]
fn custom<'a>(first: &[u8], mut rest: &'a [u8]) -> Option<Named<'a>> {
    let mut name = first.to_vec();
    while let Some(after) = rest.strip_prefix(b".") {
        name.push(b'.');
        rest = match after.first()? {
            b'"' => quoted(after, &mut name)?,
            _ => {
                let (word, rest) = identifier(after)?;
                name.extend_from_slice(word);
                rest
            }
        };
    }
    let name = params::custom_name(std::str::from_utf8(&name).ok()?)?;
    Some((0, Some(name), rest))
}

/// An unquoted identifier, ASCII only, as written (PostgreSQL folds it to lower case), and
/// what follows it.
fn identifier(s: &[u8]) -> Option<(&[u8], &[u8])> {
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
    Some(s.split_at(end))
}

/// A double-quoted identifier (`""` inside is one `"`), kept as written, appended to `out`;
/// never empty. What follows it.
fn quoted<'a>(s: &'a [u8], out: &mut Vec<u8>) -> Option<&'a [u8]> {
    let start = out.len();
    let rest = delimited(s, b'"', out)?;
    let len = out.len() - start;
    (len > 0 && len <= MAX_IDENTIFIER).then_some(rest)
}

/// A standard single-quoted literal without backslashes (whose meaning depends on
/// `standard_conforming_strings`), or the text between `q`s with doubled `q`s: its text
/// appended to `out`, and what follows it.
fn delimited<'a>(s: &'a [u8], q: u8, out: &mut Vec<u8>) -> Option<&'a [u8]> {
    let mut s = s.strip_prefix(&[q])?;
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
            return Some(s);
        }
    }
}

/// One value as `flatten_set_variable_args` prints it, appended to `out`: an integer again in
/// decimal, any other number as written, a string or word as it is (for a list parameter, as
/// an identifier, quoted where needed). What follows it.
fn value<'a>(s: &'a [u8], list: bool, out: &mut Vec<u8>) -> Option<&'a [u8]> {
    let start = out.len();
    let rest = match *s.first()? {
        b'\'' => delimited(s, b'\'', out)?,
        b'"' => quoted(s, out)?,
        b'-' => {
            // `doNegateFloat` strips a sign already there; a number here has none.
            out.push(b'-');
            return number(&s[1..], out);
        }
        b'0'..=b'9' | b'.' => return number(s, out),
        _ => {
            let (word, rest) = identifier(s)?;
            out.extend(word.iter().map(u8::to_ascii_lowercase));
            rest
        }
    };
    if list && !plain_identifier(&out[start..]) {
        let text = out.split_off(start);
        out.push(b'"');
        for b in text {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    }
    Some(rest)
}

/// A name `quote_identifier` would leave alone for its characters (keywords aside: a list
/// parameter reads a keyword element the same quoted or not).
fn plain_identifier(s: &[u8]) -> bool {
    let mut bytes = s.iter();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || *b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
}

/// An unsigned integer or decimal number (no exponent, no PostgreSQL 16 forms such as `0x1F`
/// or `1_000`), appended to `out`: an integer that fits 32 bits is printed again (`007` is
/// `7`), any other as written. Must be followed by something that ends a value. What follows
/// it.
fn number<'a>(s: &'a [u8], out: &mut Vec<u8>) -> Option<&'a [u8]> {
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
    let text = &s[..len];
    if !decimal {
        // ASCII digits, so UTF-8.
        if let Some(n) = std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse::<i32>().ok())
        {
            use std::io::Write;
            let _ = write!(out, "{n}");
            return Some(rest);
        }
    }
    out.extend_from_slice(text);
    Some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(sql: &str) -> Option<(&'static str, Option<String>)> {
        let mut text = sql.as_bytes().to_vec();
        text.push(0);
        parse(&text).map(|p| {
            assert!(p.custom.is_none(), "{sql:?}");
            (params::TRACKED[p.param], p.value.map(String::from))
        })
    }

    fn custom(sql: &str) -> Option<(String, String)> {
        let mut text = sql.as_bytes().to_vec();
        text.push(0);
        parse(&text).map(|p| (p.custom.unwrap().into(), p.value.unwrap().into()))
    }

    /// A custom setting takes one value, flattened as a string setting's (checked against
    /// PostgreSQL 15's `SHOW` after the same SETs by the session differential test).
    #[test]
    fn takes_custom_settings_values() {
        let got = |name: &str, value: &str| Some((name.to_string(), value.to_string()));
        assert_eq!(custom("SET app.tenant = 'Acme'"), got("app.tenant", "Acme"));
        assert_eq!(
            custom("set session App.Tenant to Acme;"),
            got("app.tenant", "acme")
        );
        assert_eq!(custom("SET \"App\".\"T\" = 007"), got("app.t", "7"));
        assert_eq!(custom("SET a.b.c = -1.50"), got("a.b.c", "-1.50"));
        assert_eq!(custom("SET app.x = \"Q\""), got("app.x", "Q"));
        for sql in [
            "SET app.x TO DEFAULT",
            "SET app.x = 'a', 'b'",
            "SET app. x = 1",
            "SET app.\"x y\" = 1",
            "SET app.x = 1; SELECT 1",
            "SET LOCAL app.x = 1",
        ] {
            assert!(custom(sql).is_none(), "{sql:?}");
        }
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
        // As PostgreSQL 15's SHOW has them after the same SETs.
        assert_eq!(val("SET search_path = a$b, C"), "\"a$b\", c");
        assert_eq!(val("SET search_path = \"A\"\"b\""), "\"A\"\"b\"");
        assert_eq!(
            lit("SET \"Search_Path\" = x"),
            Some(("search_path", Some("x".into())))
        );
        assert_eq!(val("SET search_path = 'ü'"), "\"ü\"");
        assert_eq!(
            val("SET search_path = 'a b', _x9, \"x\""),
            "\"a b\", _x9, x"
        );
    }

    #[test]
    fn leaves_the_rest_to_the_read_back() {
        for sql in [
            "SET LOCAL work_mem = '1MB'",
            "SET ROLE r",
            "SET role = r",
            "SET TimeZone = 'UTC'",
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
