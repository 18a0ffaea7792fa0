//! Session state in transaction mode: a client's SETs follow it from server connection to
//! server connection, and SQL-level prepared statements, which cannot, are refused.
//!
//! Detection is a keyword test on the start of each Query and Parse text (`classify`): the
//! first byte decides whether anything more is looked at, so ordinary statements pay one
//! comparison (a `SELECT` a few more, to tell it from `SELECT set_config(...)`). A statement
//! that may change a tracked parameter marks it dirty on the client (`ClientParams::dirty`);
//! the value is not parsed from the statement but read back from the server once the
//! transaction is over (`read_back`, one round trip, only after such statements). Reading back
//! gives rolled-back SETs, `SET LOCAL` and `set_config(.., true)` their PostgreSQL meaning for
//! free: what is read is what the session has. Parameters the server reports (ParameterStatus)
//! are not marked: the reports already carry them (`params::ServerParams::reported_to`).
//!
//! Limits, by design of a keyword test: only the first statement of a simple Query is looked
//! at (when it is a SET, every tracked parameter is read back, so `SET a = 1; SET b = 2` is
//! covered, but `SELECT 1; SET b = 2` is not); a SET inside a function or DO block is not seen;
//! parameters outside `params::TRACKED` (custom `app.*` settings among them) are not carried.

use crate::backend::server::Server;
use crate::errors;
use crate::net::messages::error::Severity;
use crate::net::messages::status;
use crate::net::messages::tag;
use crate::params::{self, ClientParams, REPORTED, TRACKED};

use super::block::{keyword, skip_noise};

/// Not a parameter: the client's transaction ran a LISTEN on the server connection (extended
/// protocol), which `read_back` undoes with `UNLISTEN *` (the pool's listener serves it).
pub const UNLISTEN: u64 = 1 << 63;

/// Every tracked parameter that the server does not report.
pub const ALL: u64 = ((1u64 << TRACKED.len()) - 1) & !((1u64 << REPORTED) - 1);

/// What a statement's first words say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    Nothing,
    /// May change these tracked parameters (bit i: `TRACKED[i]`).
    Sets(u64),
    /// PREPARE / EXECUTE / DEALLOCATE: SQL-level prepared statements live on one server
    /// connection, which a transaction-mode client does not keep.
    SqlPrepared,
    /// LISTEN / UNLISTEN: served by the pool's listener (`backend::listen`, `parse_listen`).
    Listen,
}

/// Classifies the start of a statement text (see the module docs for the cost).
#[inline]
pub fn classify(sql: &[u8]) -> Found {
    match sql.first() {
        Some(b) if b.is_ascii_alphabetic() => {
            // The first three letters, lowercased, of every statement that may matter; anything
            // else (SELECT aside, see below) is done with after one load and a few compares.
            let Some(head) = sql.get(..3) else {
                return Found::Nothing;
            };
            let head = [head[0] | 0x20, head[1] | 0x20, head[2] | 0x20];
            match &head {
                b"set" | b"res" | b"pre" | b"exe" | b"dea" | b"dis" | b"lis" | b"unl" => {}
                // Only `SELECT [pg_catalog.]set_config(...)` matters: the first byte after
                // `select ` must be an `s` or a `p` (or noise) for it to be looked at further.
                b"sel" => match sql.get(6..8) {
                    Some([b' ' | b'\t' | b'\n' | b'\r', next])
                        if !matches!(
                            next | 0x20,
                            b's' | b'p' | b' ' | b'\t' | b'\n' | b'\r' | b'-' | b'/'
                        ) && next.is_ascii_graphic() =>
                    {
                        return Found::Nothing
                    }
                    _ => {}
                },
                _ => return Found::Nothing,
            }
        }
        Some(b' ' | b'\t' | b'\n' | b'\r' | b'-' | b'/') => {}
        _ => return Found::Nothing,
    }
    classify_slow(skip_noise(sql))
}

#[cold]
fn classify_slow(s: &[u8]) -> Found {
    match classify_first(s) {
        // What follows a first statement that sets something is not classified: when there
        // is more (or the text was cut), everything is read back.
        Found::Sets(bits) if more_statements(s) => Found::Sets(bits | ALL),
        found => found,
    }
}

/// Whether `s` (a statement text, NUL-terminated when whole) has anything after a `;`, or was
/// cut before its end. Quotes are not looked at: a `;` in a literal only widens the read-back.
fn more_statements(s: &[u8]) -> bool {
    let Some(end) = s.iter().position(|&b| b == 0) else {
        return true;
    };
    match s[..end].iter().position(|&b| b == b';') {
        Some(semi) => !skip_noise(&s[semi + 1..end]).iter().all(|&b| b == b';'),
        None => false,
    }
}

fn classify_first(s: &[u8]) -> Found {
    if let Some(rest) = keyword(s, b"set") {
        return Found::Sets(set_target(skip_noise(rest)));
    }
    if let Some(rest) = keyword(s, b"reset") {
        let rest = skip_noise(rest);
        if keyword(rest, b"all").is_some() {
            return Found::Sets(ALL);
        }
        return Found::Sets(name_bit(rest));
    }
    if let Some(rest) = keyword(s, b"select") {
        let mut rest = skip_noise(rest);
        if rest.len() >= 11 && rest[..11].eq_ignore_ascii_case(b"pg_catalog.") {
            rest = &rest[11..];
        }
        if let Some(args) = keyword(rest, b"set_config") {
            let args = skip_noise(args);
            if let Some(args) = args.strip_prefix(b"(") {
                return Found::Sets(literal_bit(skip_noise(args)));
            }
        }
        return Found::Nothing;
    }
    if let Some(rest) = keyword(s, b"discard") {
        if keyword(skip_noise(rest), b"all").is_some() {
            return Found::Sets(ALL);
        }
        return Found::Nothing;
    }
    if keyword(s, b"listen").is_some() || keyword(s, b"unlisten").is_some() {
        return Found::Listen;
    }
    if keyword(s, b"prepare")
        .is_some_and(|rest| keyword(skip_noise(rest), b"transaction").is_none())
        || keyword(s, b"execute").is_some()
        || keyword(s, b"deallocate").is_some()
    {
        return Found::SqlPrepared;
    }
    Found::Nothing
}

/// What follows `SET`: `[SESSION] name {TO|=} ...` and the special forms.
fn set_target(s: &[u8]) -> u64 {
    if keyword(s, b"local").is_some() {
        return 0;
    }
    let s = match keyword(s, b"session") {
        Some(rest) => {
            let rest = skip_noise(rest);
            if keyword(rest, b"authorization").is_some()
                || keyword(rest, b"characteristics").is_some()
            {
                return 0;
            }
            rest
        }
        None => s,
    };
    if keyword(s, b"schema").is_some() {
        return bit("search_path");
    }
    name_bit(s)
}

/// The bit of the parameter named at the start of `s` (identifier, maybe double-quoted).
fn name_bit(s: &[u8]) -> u64 {
    let name = if let Some(q) = s.strip_prefix(b"\"") {
        match q.iter().position(|&b| b == b'"') {
            Some(end) => &q[..end],
            None => return 0,
        }
    } else {
        let end = s
            .iter()
            .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'$'))
            .unwrap_or(s.len());
        &s[..end]
    };
    std::str::from_utf8(name).map(bit).unwrap_or(0)
}

/// The bit of the parameter named by a string literal at the start of `s` (`set_config`).
fn literal_bit(s: &[u8]) -> u64 {
    let Some(q) = s.strip_prefix(b"'") else {
        // A name that is not a plain literal (a parameter, an expression): assume the worst.
        return ALL;
    };
    match q.iter().position(|&b| b == b'\'') {
        Some(end) => std::str::from_utf8(&q[..end]).map(bit).unwrap_or(0),
        None => 0,
    }
}

/// The dirty bit of a tracked, unreported parameter (0 for the others).
fn bit(name: &str) -> u64 {
    match params::index(name) {
        Some(i) if i >= REPORTED => 1 << i,
        _ => 0,
    }
}

/// Reads back the parameters the client's statements may have changed and records them on
/// the server connection and, when the client stays, on the client. Called at a transaction
/// boundary, only when something is dirty. A server error leaves the server's record unsure:
/// the connection is then not trusted to match anyone (it is synced in full next time).
pub async fn read_back(
    server: &mut Server,
    client: Option<&mut ClientParams>,
    dirty: u64,
) -> Result<(), crate::backend::ServerError> {
    if dirty & UNLISTEN != 0 {
        server.run_internal("UNLISTEN *").await?;
    }
    let names: Vec<usize> = (0..TRACKED.len())
        .filter(|i| dirty & (1 << i) != 0)
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    let mut sql = String::from("SELECT ");
    for (n, i) in names.iter().enumerate() {
        if n > 0 {
            sql.push_str(", ");
        }
        // Names come from `TRACKED`, never from the client.
        sql.push_str("pg_catalog.current_setting('");
        sql.push_str(TRACKED[*i]);
        sql.push_str("')");
    }
    let mut row = Vec::new();
    server.run_internal_row(&sql, &mut row).await?;
    let read: Vec<(usize, Box<str>)> = names
        .iter()
        .zip(row)
        .filter_map(|(i, v)| v.map(|v| (*i, v)))
        .collect();
    server.params.learned(&read, client);
    Ok(())
}

/// Writes the refusal of an SQL-level PREPARE/EXECUTE/DEALLOCATE, answering a Query (with
/// ReadyForQuery in the server's state: the refusal does not touch an open block) or a Parse
/// (whose Sync the server answers).
#[cold]
pub fn refuse_sql_prepared(server: &mut Server, kind: u8) {
    let out = &mut server.bufs.s2c_out;
    errors::sql_prepared_in_transaction_mode(&server.pool).write(out, Severity::Error);
    if kind == tag::QUERY {
        status::ready_for_query(out, server.status);
        server.relay.ready_synthesized = true;
    }
}

/// A LISTEN or UNLISTEN the pooler answers itself.
#[derive(Debug, PartialEq, Eq)]
pub enum ListenCmd {
    Listen(Box<str>),
    Unlisten(Box<str>),
    UnlistenAll,
}

/// A whole Query or Parse text that is exactly one `LISTEN ch` / `UNLISTEN ch` / `UNLISTEN *` (the
/// channel folded as PostgreSQL folds identifiers). None for anything else, which is then
/// forwarded as before.
pub fn parse_listen(sql: &[u8]) -> Option<ListenCmd> {
    let s = skip_noise(sql);
    let (listen, rest) = match keyword(s, b"listen") {
        Some(rest) => (true, rest),
        None => (false, keyword(s, b"unlisten")?),
    };
    let rest = skip_noise(rest);
    let (name, rest) = match rest.strip_prefix(b"*") {
        Some(rest) if !listen => (None, rest),
        _ => {
            let (name, rest) = identifier(rest)?;
            (Some(name), rest)
        }
    };
    let rest = skip_noise(rest);
    let rest = rest.strip_prefix(b";").map(skip_noise).unwrap_or(rest);
    // A Query's text ends the message; a Parse's is followed by its parameter types.
    if rest.first() != Some(&0) {
        return None;
    }
    Some(match (listen, name) {
        (true, Some(n)) => ListenCmd::Listen(n),
        (false, Some(n)) => ListenCmd::Unlisten(n),
        (false, None) => ListenCmd::UnlistenAll,
        (true, None) => return None,
    })
}

/// An SQL identifier at the start of `s`: quoted (kept as is) or not (ASCII-lowercased).
/// Names longer than PostgreSQL keeps (63 bytes) are not handled here.
fn identifier(s: &[u8]) -> Option<(Box<str>, &[u8])> {
    let (name, rest) = if let Some(q) = s.strip_prefix(b"\"") {
        let mut name = Vec::new();
        let mut i = 0;
        loop {
            match q.get(i)? {
                b'"' if q.get(i + 1) == Some(&b'"') => {
                    name.push(b'"');
                    i += 2;
                }
                b'"' => break,
                0 => return None,
                &b => {
                    name.push(b);
                    i += 1;
                }
            }
        }
        (name, &q[i + 1..])
    } else {
        let first = *s.first()?;
        if !(first.is_ascii_alphabetic() || first == b'_' || first >= 0x80) {
            return None;
        }
        let end = s
            .iter()
            .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80))
            .unwrap_or(s.len());
        (s[..end].to_ascii_lowercase(), &s[end..])
    };
    if name.is_empty() || name.len() > 63 {
        return None;
    }
    Some((String::from_utf8(name).ok()?.into(), rest))
}

/// Answers a LISTEN/UNLISTEN the pooler served: CommandComplete and ReadyForQuery in the
/// server's state.
#[cold]
pub fn listen_done(server: &mut Server, listen: bool) {
    let out = &mut server.bufs.s2c_out;
    status::command_complete(out, if listen { b"LISTEN" } else { b"UNLISTEN" });
    status::ready_for_query(out, server.status);
    server.relay.ready_synthesized = true;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sets(sql: &str) -> u64 {
        match classify(sql.as_bytes()) {
            Found::Sets(m) => m,
            other => panic!("{sql:?}: {other:?}"),
        }
    }

    #[test]
    fn finds_session_settings() {
        let st = bit("statement_timeout");
        assert_ne!(st, 0);
        assert_eq!(sets("SET statement_timeout = 5\0"), st);
        assert_eq!(sets("set Statement_Timeout to 5\0"), st);
        assert_eq!(sets("  SET SESSION statement_timeout = 5\0"), st);
        assert_eq!(sets("/* c */ set \"statement_timeout\" = 5\0"), st);
        assert_eq!(sets("SET search_path = a, b\0"), bit("search_path"));
        assert_eq!(sets("SET SCHEMA 'a'\0"), bit("search_path"));
        assert_eq!(sets("RESET work_mem\0"), bit("work_mem"));
        assert_eq!(sets("RESET ALL\0"), ALL);
        assert_eq!(sets("DISCARD ALL\0"), ALL);
        assert_eq!(
            sets("SELECT set_config('search_path', 'x', false)\0"),
            bit("search_path")
        );
        assert_eq!(
            sets("select pg_catalog.set_config ( 'work_mem', '8MB', false)\0"),
            bit("work_mem")
        );
        assert_eq!(sets("SELECT set_config($1, $2, false)\0"), ALL);
        // The quick SELECT test lets noise and line breaks through to the full check.
        assert_eq!(
            sets("SELECT\n  /* x */ set_config('work_mem', '8MB', false)\0"),
            bit("work_mem")
        );
        assert_eq!(
            sets("SELECT  PG_CATALOG.set_config('work_mem', '8MB', false)\0"),
            bit("work_mem")
        );
        // More than one statement, or a cut text: everything is read back.
        assert_eq!(sets("SET work_mem = 1; SET search_path = a\0"), ALL);
        assert_eq!(sets("SET work_mem = 1\0"), bit("work_mem"));
        assert_eq!(sets("SET work_mem = 1 ;  \0"), bit("work_mem"));
        assert_eq!(sets("SET work_mem = 1"), ALL);
        // Local or reported or unknown: nothing to read back.
        assert_eq!(sets("SET LOCAL statement_timeout = 5\0"), 0);
        assert_eq!(sets("SET TimeZone = 'UTC'\0"), 0);
        assert_eq!(sets("SET TIME ZONE 'UTC'\0"), 0);
        assert_eq!(sets("SET my.setting = 1\0"), 0);
        assert_eq!(sets("SET SESSION AUTHORIZATION x\0"), 0);
        assert_eq!(ALL & ((1 << REPORTED) - 1), 0);
    }

    #[test]
    fn ignores_everything_else() {
        for sql in [
            "SELECT 1\0",
            "select abalance from pgbench_accounts\0",
            "SETTINGS\0",
            "UPDATE t SET a = 1\0",
            "INSERT INTO t VALUES (1)\0",
            "PREPARE TRANSACTION 'x'\0",
            "DELETE FROM t\0",
            "",
        ] {
            assert_eq!(classify(sql.as_bytes()), Found::Nothing, "{sql:?}");
        }
        for sql in [
            "PREPARE s AS SELECT 1\0",
            "execute s\0",
            "DEALLOCATE s\0",
            "deallocate all\0",
        ] {
            assert_eq!(classify(sql.as_bytes()), Found::SqlPrepared, "{sql:?}");
        }
    }

    #[test]
    fn parses_listen_and_unlisten() {
        let p = |s: &str| parse_listen(s.as_bytes());
        assert_eq!(p("LISTEN Chan\0"), Some(ListenCmd::Listen("chan".into())));
        assert_eq!(
            p("listen \"My \"\"C\";\0"),
            Some(ListenCmd::Listen("My \"C".into()))
        );
        assert_eq!(
            p("UNLISTEN chan ;\0"),
            Some(ListenCmd::Unlisten("chan".into()))
        );
        assert_eq!(p("unlisten *\0"), Some(ListenCmd::UnlistenAll));
        for other in [
            "LISTEN *\0",
            "LISTEN a; SELECT 1\0",
            "LISTEN\0",
            "LISTEN a",
            "LISTEN 1a\0",
        ] {
            assert_eq!(p(other), None, "{other:?}");
        }
        assert_eq!(classify(b"LISTEN a\0"), Found::Listen);
        assert_eq!(classify(b"UPDATE t SET a = 1\0"), Found::Nothing);
    }
}
