//! The relay's one scanner of what a client sends: a Query's or Parse's SQL text is read once
//! (`statement`) for everything the relay decides from it:
//! - whether it opens a transaction block (`BEGIN`, `START TRANSACTION` as its first words),
//!   which statement mode refuses: a server connection goes back to the pool after every
//!   statement, so a `BEGIN` could never be followed by the statements it was meant to group.
//!   A block opened some other way (`SELECT 1; BEGIN`) is still caught when the server's
//!   ReadyForQuery says "in a transaction" (`End::TransactionBlock`);
//! - which session state it may change (`Found`, acted on by `session_state`, whose module docs
//!   say what is done about it);
//! - for a Query that is exactly one plain SET, the value it gives (`literal`), so that the
//!   commonest SET costs no read-back.
//!
//! `lex` holds the lexical primitives all of it is built on.
//!
//! Cost: the first statement's first word, then one pass over the whole text, 16 bytes at a
//! time, for the few bytes that may start something that matters (`;` a next statement, `_`
//! `set_config`, `pg_advisory_*` and `pg_temp`, `t` `TEMP`/`TEMPORARY`, `&` a `U&"..."`
//! identifier that could spell any of them); most hits are dropped by an inline test, the rest
//! are checked in full off the hot path (`candidate`). Conservative: a `;` or a keyword inside a
//! literal or a comment only costs a reset.

pub mod custom;
pub mod lex;
pub mod literal;

use crate::params::{self, REPORTED, TRACKED};

use super::session_state::LISTEN_NOOP;
pub use lex::statement_text;
use lex::{keyword, skip_noise};
use literal::PendingSet;

/// Not a parameter: untracked session state may have changed; the session is reset
/// (`RESET_SQL`) before the connection serves anyone else.
pub const SESSION: u64 = 1 << 62;
/// Not a parameter: statement names or LISTENs may be on the server connection (a named Parse
/// with statement tracking off, or a statement too long to scan): `DEALLOCATE ALL` and
/// `UNLISTEN *` join the reset.
pub const DISCARD: u64 = 1 << 61;
/// Not a parameter: the client ran something that cannot be undone (`LOAD`): the connection
/// is closed instead of being reused.
pub const CLOSE: u64 = 1 << 60;

/// Not a parameter, never part of a client's `dirty` set: a `DEALLOCATE ALL` the server runs
/// (among other statements) or a `DISCARD` may drop the connection's statements and so the
/// client's names; a name used in a message pipelined behind such a Query waits for its answer
/// (`names::waits`).
pub const DROPS: u64 = 1 << 59;

/// Not a parameter, never part of a client's `dirty` set: a `NOTIFY` or `pg_notify(...)`. A
/// client that listens gets what its transaction notified before the ReadyForQuery that ends
/// it, as PostgreSQL delivers a session's own notifications (`relay::own_notifications`).
pub const NOTIFIES: u64 = 1 << 58;

/// Not a parameter: the statement may leave what the client can come back to in a later
/// transaction of its session and that lives on the server connection only — a `WITH HOLD`
/// cursor, a session advisory lock, a temporary table. At the transaction's end the pooler asks
/// the server whether any is left (`session_state::PINNED_SQL`); while one is, the client keeps
/// its server connection (`frontend::session::attached`), as on a direct connection. Always with
/// `SESSION`.
pub const PINS: u64 = 1 << 57;

/// Not a parameter: a SET, RESET or `set_config` of a custom setting (`params::custom_name`),
/// always with `SESSION`. Its name is noted on the client (`custom::note`), so that the reset
/// reads its value back first and the client keeps it on its next server connections.
pub const CUSTOM: u64 = 1 << 56;

/// Statements longer than this are not scanned: they mark everything dirty (`UNSCANNED`).
pub const SCAN_MAX: usize = 1 << 20;
/// What an unscanned statement marks.
pub const UNSCANNED: u64 = ALL | SESSION | DISCARD | PINS;

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

/// What the relay needs from one statement text (`statement`).
#[derive(Debug)]
pub struct Statement {
    /// What it may change in the session.
    pub found: Found,
    /// Its first words open a transaction block.
    pub opens_block: bool,
    /// It is exactly one plain SET whose value is certain (asked for Queries only).
    pub literal: Option<PendingSet>,
}

/// Reads a whole statement text (NUL-terminated; see the module docs for what and at what
/// cost). `literal`: look for a literal SET's value (a Query's text).
#[inline]
pub fn statement(sql: &[u8], literal: bool) -> Statement {
    let (first, opens_block) = classify_start(sql);
    let found = match (first, scan(sql)) {
        (Found::Listen, _) | (_, Found::Listen) => Found::Listen,
        (Found::SqlPrepared, _) | (_, Found::SqlPrepared) => Found::SqlPrepared,
        (Found::Sets(a), Found::Sets(b)) => Found::Sets(a | b),
        (Found::Sets(a), _) | (_, Found::Sets(a)) => Found::Sets(a),
        _ => Found::Nothing,
    };
    let literal = match found {
        // One parameter, named by a first word `SET`: maybe a literal one.
        Found::Sets(bits)
            if literal
                && (bits.count_ones() == 1 || bits == SESSION | CUSTOM)
                && matches!(first, Found::Sets(_)) =>
        {
            literal::parse(sql).filter(|set| bits == set.marks())
        }
        _ => None,
    };
    Statement {
        found,
        opens_block,
        literal,
    }
}

/// What a whole statement text may change in the session (`statement` without the rest).
#[inline]
pub fn classify(sql: &[u8]) -> Found {
    statement(sql, false).found
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

/// The first statement's first word: what it may change, and whether it opens a transaction
/// block. The first byte decides whether anything more is looked at, so ordinary statements pay
/// one comparison (a few for words starting like a keyword).
#[inline]
fn classify_start(sql: &[u8]) -> (Found, bool) {
    match sql.first() {
        Some(b) if b.is_ascii_alphabetic() => {
            // The first three letters, lowercased, of every statement that may matter.
            let Some(head) = sql.get(..3) else {
                return (Found::Nothing, false);
            };
            let head = [head[0] | 0x20, head[1] | 0x20, head[2] | 0x20];
            match &head {
                b"set" | b"res" | b"pre" | b"exe" | b"dea" | b"dis" | b"lis" | b"unl" | b"loa"
                | b"dec" | b"beg" | b"sta" | b"not" => {}
                [b'd', b'o', _] => {}
                _ => return (Found::Nothing, false),
            }
        }
        Some(b' ' | b'\t' | b'\n' | b'\r' | b'-' | b'/') => {}
        _ => return (Found::Nothing, false),
    }
    let s = skip_noise(sql);
    if opens_block(s) {
        return (Found::Nothing, true);
    }
    (classify_slow(s), false)
}

#[cold]
fn classify_slow(s: &[u8]) -> Found {
    match classify_first(s) {
        // One among others goes to the server as it is (`later_statement`).
        Found::SqlPrepared if deallocate_all(s) && more_statements(s) => Found::Sets(DROPS),
        // What follows a first statement that sets something is read back as a whole: when
        // there is more (or the text was cut), everything is read back. (A NOTIFY sets
        // nothing: what follows it is scanned as any later statement.)
        Found::Sets(bits) if bits != NOTIFIES && more_statements(s) => Found::Sets(bits | ALL),
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

/// What a statement (after leading noise) starts with.
fn classify_first(s: &[u8]) -> Found {
    // Most statements start with none of the words below: one test instead of a dozen.
    if !s.first().is_some_and(|b| {
        matches!(
            b | 0x20,
            b's' | b'r' | b'd' | b'l' | b'u' | b'p' | b'e' | b'c' | b'n'
        )
    }) {
        return Found::Nothing;
    }
    if let Some(rest) = keyword(s, b"set") {
        return Found::Sets(set_target(skip_noise(rest)));
    }
    if let Some(rest) = keyword(s, b"reset") {
        let rest = skip_noise(rest);
        if keyword(rest, b"all").is_some() {
            return Found::Sets(ALL | SESSION);
        }
        return Found::Sets(name_bit(rest));
    }
    if let Some(rest) = keyword(s, b"select") {
        let mut rest = skip_noise(rest);
        if rest.len() >= 11 && rest[..11].eq_ignore_ascii_case(b"pg_catalog.") {
            rest = &rest[11..];
        }
        if let Some(args) = keyword(rest, b"set_config") {
            return Found::Sets(set_config_bit(args));
        }
        return Found::Nothing;
    }
    if keyword(s, b"discard").is_some() {
        // DISCARD ALL is seen by the relay (`from_server`); the others drop plans, sequences'
        // state or temporary tables: resetting again is the simple answer.
        return Found::Sets(ALL | SESSION | DROPS);
    }
    if s.strip_prefix(LISTEN_NOOP.as_bytes())
        .is_some_and(|rest| matches!(rest.first(), None | Some(0 | b';')))
    {
        return Found::Nothing;
    }
    if keyword(s, b"do").is_some() {
        // A DO block may SET anything, lock, or create a temporary table.
        return Found::Sets(ALL | SESSION | PINS);
    }
    if let Some(rest) = keyword(s, b"declare") {
        // A cursor may be declared WITH HOLD: it outlives the transaction.
        return Found::Sets(ALL | SESSION | if holds(rest) { PINS } else { 0 });
    }
    if keyword(s, b"notify").is_some() {
        return Found::Sets(NOTIFIES);
    }
    if keyword(s, b"load").is_some() {
        return Found::Sets(CLOSE);
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

/// One pass over the whole text for what may matter beyond the first word (module docs): 16
/// bytes at a time, a bit per byte that is (lowercased) `;`, `_`, `t` or `&`.
#[inline]
fn scan(sql: &[u8]) -> Found {
    let mut found = Found::Nothing;
    let mut at = 0;
    while at < sql.len() {
        let (chunk, skip) = match sql.get(at..at + 16) {
            Some(c) => (c, 0),
            // The tail: the last 16 bytes again when there are that many (bytes already seen
            // are masked off), else a padded copy.
            None if sql.len() >= 16 => (&sql[sql.len() - 16..], at + 16 - sql.len()),
            None => {
                let mut pad = [0u8; 16];
                pad[..sql.len() - at].copy_from_slice(&sql[at..]);
                let mut hits = triggers(&pad);
                while hits != 0 {
                    let i = at + hits.trailing_zeros() as usize;
                    hits &= hits - 1;
                    if i < sql.len() && worth_a_look(sql, i) {
                        found = merge(found, candidate(sql, i));
                    }
                }
                return found;
            }
        };
        let base = at - skip;
        let mut hits = triggers(chunk) >> skip << skip;
        while hits != 0 {
            let i = base + hits.trailing_zeros() as usize;
            hits &= hits - 1;
            if worth_a_look(sql, i) {
                found = merge(found, candidate(sql, i));
            }
        }
        at += 16 - skip;
    }
    found
}

/// Whether a `DECLARE`'s rest (up to the end of its statement) says `HOLD` (`WITH HOLD`; a
/// `WITHOUT HOLD` too, which only costs the question at the transaction's end).
fn holds(rest: &[u8]) -> bool {
    let end = rest
        .iter()
        .position(|&b| b == b';' || b == 0)
        .unwrap_or(rest.len());
    rest[..end]
        .windows(4)
        .any(|w| w.eq_ignore_ascii_case(b"hold"))
}

/// What a statement after the first one starts with. A `DEALLOCATE ALL` there (one alone is
/// answered by the pooler from the client's own names, `session_state::deallocate`) runs on the
/// server as it is: it drops that connection's statements, and the relay, seeing its command
/// tag, forgets them and the client's names (`from_server`); an error before it leaves both.
#[cold]
fn later_statement(s: &[u8]) -> Found {
    match classify_first(s) {
        Found::SqlPrepared if deallocate_all(s) => Found::Sets(DROPS),
        found => found,
    }
}

/// Whether the statement at `s` is `DEALLOCATE [PREPARE] ALL`.
fn deallocate_all(s: &[u8]) -> bool {
    let Some(rest) = keyword(s, b"deallocate") else {
        return false;
    };
    let mut rest = skip_noise(rest);
    if let Some(after) = keyword(rest, b"prepare") {
        rest = skip_noise(after);
    }
    keyword(rest, b"all")
        .is_some_and(|after| matches!(skip_noise(after).first(), None | Some(&b';') | Some(&0)))
}

/// The quick part of `candidate`, without a call: most hits in ordinary statements are a `t`
/// inside a word (not `TEMP`), a `_` inside a name other than `set_config`, `pg_advisory_*`,
/// `pg_try_advisory_*` or `pg_temp` (those follow a `t`, `g` or `y`), or the `;` that ends the
/// text.
#[inline(always)]
fn worth_a_look(sql: &[u8], i: usize) -> bool {
    let prev = match i {
        0 => b' ',
        _ => sql[i - 1],
    };
    match sql[i] | 0x20 {
        b't' => !ident(prev),
        0x7f => matches!(prev | 0x20, b't' | b'g' | b'y'),
        b';' => sql.get(i + 1).is_some_and(|&b| b != 0),
        _ => true,
    }
}

/// Bit i set when `chunk[i]`, lowercased, is `;`, `_` (0x7f once lowercased), `t` or `&`.
#[inline(always)]
fn triggers(chunk: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128,
            _mm_set1_epi8,
        };
        debug_assert_eq!(chunk.len(), 16);
        // SAFETY: SSE2 is part of the x86_64 baseline; `chunk` holds 16 bytes and the load is
        // unaligned.
        unsafe {
            let v = _mm_loadu_si128(chunk.as_ptr() as *const __m128i);
            let l = _mm_or_si128(v, _mm_set1_epi8(0x20));
            let semi = _mm_cmpeq_epi8(l, _mm_set1_epi8(b';' as i8));
            let under = _mm_cmpeq_epi8(l, _mm_set1_epi8(0x7f));
            let t = _mm_cmpeq_epi8(l, _mm_set1_epi8(b't' as i8));
            let amp = _mm_cmpeq_epi8(l, _mm_set1_epi8(b'&' as i8));
            let any = _mm_or_si128(_mm_or_si128(semi, under), _mm_or_si128(t, amp));
            _mm_movemask_epi8(any) as u32
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let mut m = 0;
        for (i, &b) in chunk.iter().enumerate() {
            if matches!(b | 0x20, b';' | 0x7f | b't' | b'&') {
                m |= 1 << i;
            }
        }
        m
    }
}

fn merge(a: Found, b: Found) -> Found {
    match (a, b) {
        (Found::Listen, _) | (_, Found::Listen) => Found::Listen,
        (Found::SqlPrepared, _) | (_, Found::SqlPrepared) => Found::SqlPrepared,
        (Found::Sets(x), Found::Sets(y)) => Found::Sets(x | y),
        (Found::Sets(x), _) | (_, Found::Sets(x)) => Found::Sets(x),
        _ => Found::Nothing,
    }
}

/// Whether `b` may be part of an identifier or keyword.
#[inline]
pub(super) fn ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Checks a byte the scan stopped at (`sql[i]` is one of `;`, `_`, `t`/`T`, `&`, or a byte
/// that lowercases like them).
#[cold]
#[inline(never)]
fn candidate(sql: &[u8], i: usize) -> Found {
    let before = |n: usize| i.checked_sub(n).map(|s| &sql[s..i]);
    let after = &sql[i + 1..];
    let starts =
        |s: &[u8], kw: &[u8]| s.len() >= kw.len() && s[..kw.len()].eq_ignore_ascii_case(kw);
    match sql[i] {
        b';' => later_statement(skip_noise(after)),
        b'_' => {
            if before(3).is_some_and(|b| b.eq_ignore_ascii_case(b"set")) && starts(after, b"config")
            {
                return Found::Sets(set_config_bit(&after[6..]));
            }
            if starts(after, b"advisory") {
                // pg_advisory_lock, pg_try_advisory_lock(_shared); the _xact_ ones end with the
                // transaction.
                if starts(&after[8..], b"_xact") {
                    return Found::Nothing;
                }
                return Found::Sets(SESSION | PINS);
            }
            if before(2).is_some_and(|b| b.eq_ignore_ascii_case(b"pg")) {
                if starts(after, b"temp") {
                    return Found::Sets(SESSION | PINS);
                }
                if starts(after, b"notify") {
                    return Found::Sets(NOTIFIES);
                }
            }
            Found::Nothing
        }
        b't' | b'T' => {
            if i > 0 && ident(sql[i - 1]) {
                return Found::Nothing;
            }
            let word = &sql[i..];
            let end = word.iter().position(|&b| !ident(b)).unwrap_or(word.len());
            let w = &word[..end];
            if w.eq_ignore_ascii_case(b"temp") || w.eq_ignore_ascii_case(b"temporary") {
                return Found::Sets(SESSION | PINS);
            }
            Found::Nothing
        }
        b'&' => {
            // U&"..." spells an identifier with escapes: it could name anything.
            let quoted = after.first() == Some(&b'"');
            if quoted && before(1).is_some_and(|b| b[0] | 0x20 == b'u') {
                return Found::Sets(ALL | SESSION);
            }
            Found::Nothing
        }
        _ => Found::Nothing,
    }
}

/// What `set_config` changes, from what follows its name.
fn set_config_bit(args: &[u8]) -> u64 {
    let args = skip_noise(args);
    match args.strip_prefix(b"(") {
        Some(args) => literal_bit(skip_noise(args)),
        // Not a call (a column named so?): assume the worst all the same.
        None => ALL | SESSION,
    }
}

/// What follows `SET`: `[SESSION] name {TO|=} ...` and the special forms.
fn set_target(s: &[u8]) -> u64 {
    if keyword(s, b"local").is_some()
        || keyword(s, b"transaction").is_some()
        || keyword(s, b"constraints").is_some()
    {
        // Undone by the end of the transaction.
        return 0;
    }
    let s = match keyword(s, b"session") {
        Some(rest) => {
            let rest = skip_noise(rest);
            if keyword(rest, b"authorization").is_some() {
                return SESSION | bit("role");
            }
            if keyword(rest, b"characteristics").is_some() {
                return ALL;
            }
            rest
        }
        None => s,
    };
    if keyword(s, b"schema").is_some() {
        return bit("search_path");
    }
    // Reported, so carried by ParameterStatus.
    if keyword(s, b"time").is_some() || keyword(s, b"names").is_some() {
        return 0;
    }
    name_bit(s)
}

/// The bit of the parameter named at the start of `s` (identifier, maybe double-quoted).
fn name_bit(s: &[u8]) -> u64 {
    let name = if let Some(q) = s.strip_prefix(b"\"") {
        match q.iter().position(|&b| b == b'"') {
            // `"app".tenant`: a custom setting's name.
            Some(end) if q.get(end + 1) == Some(&b'.') => return SESSION | CUSTOM,
            Some(end) => &q[..end],
            None => return ALL | SESSION,
        }
    } else {
        let end = s
            .iter()
            .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'$'))
            .unwrap_or(s.len());
        &s[..end]
    };
    bit_bytes(name)
}

/// The bit of the parameter named by a string literal at the start of `s` (`set_config`).
fn literal_bit(s: &[u8]) -> u64 {
    let Some(q) = s.strip_prefix(b"'") else {
        // A name that is not a plain literal (an expression): assume the worst; a parameter
        // may also be a custom setting's name, read from the Bind (`custom::note_bound`).
        return ALL | SESSION | if s.first() == Some(&b'$') { CUSTOM } else { 0 };
    };
    match q.iter().position(|&b| b == b'\'') {
        Some(end) => bit_bytes(&q[..end]),
        None => ALL | SESSION,
    }
}

/// What changing the parameter `name` marks: its dirty bit when tracked and unreported,
/// nothing when reported (ParameterStatus carries it), `SESSION` when untracked (and `CUSTOM`
/// when it is a custom setting's name).
fn bit(name: &str) -> u64 {
    bit_bytes(name.as_bytes())
}

/// `bit` of a name as the statement's bytes have it; one that is not UTF-8 marks everything.
fn bit_bytes(name: &[u8]) -> u64 {
    if !name.is_ascii() && std::str::from_utf8(name).is_err() {
        return ALL | SESSION;
    }
    match params::index_bytes(name) {
        Some(i) if i >= REPORTED => 1 << i,
        Some(_) => 0,
        None if name.contains(&b'.') => SESSION | CUSTOM,
        None => SESSION,
    }
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
        assert_eq!(sets("RESET ALL\0"), ALL | SESSION);
        assert_eq!(sets("DISCARD ALL\0"), ALL | SESSION | DROPS);
        assert_eq!(
            sets("SELECT set_config('search_path', 'x', false)\0"),
            bit("search_path")
        );
        assert_eq!(
            sets("select pg_catalog.set_config ( 'work_mem', '8MB', false)\0"),
            bit("work_mem")
        );
        // Its name bound as a parameter: perhaps a custom setting's (read from the Bind).
        assert_eq!(
            sets("SELECT set_config($1, $2, false)\0"),
            ALL | SESSION | CUSTOM
        );
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
        // Local or reported: nothing to read back; untracked: reset.
        assert_eq!(sets("SET LOCAL statement_timeout = 5\0"), 0);
        assert_eq!(sets("SET TRANSACTION READ ONLY\0"), 0);
        assert_eq!(sets("SET TimeZone = 'UTC'\0"), 0);
        assert_eq!(sets("SET TIME ZONE 'UTC'\0"), 0);
        assert_eq!(sets("SET my.setting = 1\0"), SESSION | CUSTOM);
        assert_eq!(sets("RESET app.tenant\0"), SESSION | CUSTOM);
        assert_eq!(sets("SET \"App\".\"T\" = 1\0"), SESSION | CUSTOM);
        assert_eq!(
            sets("SELECT set_config('app.tenant', $1, false)\0"),
            SESSION | CUSTOM
        );
        assert_eq!(sets("SET LOCAL app.tenant = 'a'\0"), 0);
        assert_eq!(sets("SET enable_seqscan = off\0"), SESSION);
        assert_eq!(sets("SET SESSION AUTHORIZATION x\0"), SESSION | bit("role"));
        assert_eq!(sets("SET ROLE x\0"), bit("role"));
        assert_eq!(ALL & ((1 << REPORTED) - 1), 0);
    }

    /// The repros of issue 15: state changed past the first word of a statement.
    #[test]
    fn finds_changes_anywhere_in_the_text() {
        let sp = bit("search_path");
        let has = |sql: &str, want: u64| {
            let got = sets(sql);
            assert_eq!(got & want, want, "{sql:?}: {got:#x}");
        };
        has("select 1; set search_path to x\0", sp);
        has("create schema if not exists x; set search_path to x\0", sp);
        has("select 1, set_config('search_path', 'x', false)\0", sp);
        has(
            "SELECT 1,\n  PG_CATALOG.SET_CONFIG('role', 'r', false)\0",
            bit("role"),
        );
        has(
            "do $$ begin perform set_config('search_path', 'x', false); end $$\0",
            SESSION,
        );
        has(
            "select 1;\n\tDO $x$ BEGIN EXECUTE 'SET app.x = 1'; END $x$\0",
            SESSION,
        );
        has("select 1; set app.x = '1'\0", SESSION | CUSTOM);
        has(
            "select 1; SET statement_timeout = 5\0",
            bit("statement_timeout"),
        );
        has("set role r\0", bit("role"));
        has("select 1; reset role\0", bit("role"));
        has("CREATE TEMP TABLE t (a int)\0", SESSION | PINS);
        has("create local temporary table t (a int)\0", SESSION | PINS);
        has("select * into temp t from x\0", SESSION | PINS);
        has("create table pg_temp.t (a int)\0", SESSION | PINS);
        has("select pg_advisory_lock(1)\0", SESSION | PINS);
        has("SELECT PG_TRY_ADVISORY_LOCK_SHARED(1)\0", SESSION | PINS);
        has(
            "select 1; declare c cursor with hold for select 1\0",
            SESSION | PINS,
        );
        has(
            "select U&\"\\0073et_config\"('role', 'r', false)\0",
            SESSION,
        );
        has("select 1; discard temp\0", SESSION | DROPS);
        // A cursor without HOLD ends with its transaction; one WITH HOLD may outlive it.
        assert_eq!(
            sets("declare c cursor for select 1\0") & PINS,
            0,
            "a cursor that ends with its transaction"
        );
        has(
            "DECLARE c NO SCROLL CURSOR WITH HOLD FOR SELECT 1\0",
            ALL | SESSION | PINS,
        );
        has(
            "do $$ begin perform pg_advisory_lock(1); end $$\0",
            SESSION | PINS,
        );
        has("LOAD 'auto_explain'\0", CLOSE);
        has("select 1; load 'auto_explain'\0", CLOSE);
        // Wherever the text puts it against the 16-byte chunks of the scan.
        for n in 0..40 {
            let pad = "x".repeat(n);
            has(&format!("select {pad}; set app.x = 1\0"), SESSION | CUSTOM);
            has(
                &format!("select {pad} from pg_advisory_lock(1)\0"),
                SESSION | PINS,
            );
            has(&format!("select {pad} into temp t\0"), SESSION | PINS);
            has(
                &format!("select '{pad}', set_config('role', 'r', false)\0"),
                bit("role"),
            );
            has(&format!("select U&\"{pad}\"\0"), SESSION);
        }
        // Found past the first 256 bytes too.
        let long = format!("select '{}'; set search_path to x\0", "a".repeat(5000));
        has(&long, sp);
        assert_eq!(classify(b"select 1; listen x\0"), Found::Listen);
        assert_eq!(
            classify(b"select 1; PREPARE p AS SELECT 1\0"),
            Found::SqlPrepared
        );
        // DEALLOCATE ALL among other statements runs on the server; alone it is the pooler's;
        // a DEALLOCATE of a name is the pooler's alone and refused among others.
        for sql in [
            "select 1; deallocate all\0",
            "select 1;DEALLOCATE PREPARE ALL ;\0",
            "deallocate all; select 1\0",
        ] {
            assert_eq!(classify(sql.as_bytes()), Found::Sets(DROPS), "{sql:?}");
        }
        assert_eq!(
            classify(b"reset all; deallocate /* c */ all; select 2\0"),
            Found::Sets(ALL | SESSION | DROPS)
        );
        for sql in [
            "deallocate all\0",
            "deallocate all;\0",
            "select 1; deallocate x\0",
            "deallocate all; deallocate x\0",
            "select 1; deallocate allx\0",
            "select 1; deallocate all x\0",
        ] {
            assert_eq!(classify(sql.as_bytes()), Found::SqlPrepared, "{sql:?}");
        }
        // Transaction-scoped: nothing to do.
        assert_eq!(
            classify(b"select pg_advisory_xact_lock(1)\0"),
            Found::Nothing
        );
        assert_eq!(
            classify(b"select 1; set local work_mem = '1MB'\0"),
            Found::Sets(0)
        );
        // The no-op the pooler runs in place of a LISTEN sent with Parse.
        let mut noop = LISTEN_NOOP.as_bytes().to_vec();
        noop.push(0);
        assert_eq!(classify(&noop), Found::Nothing);
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
            "SELECT abalance FROM pgbench_accounts WHERE aid = 52671;\0",
            "select attempt, temperature, t.template from t_temp_x\0",
            "select offset_settings from dataset\0",
            "UPDATE t SET a = 1 WHERE b = 'x' RETURNING id;\0",
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
    fn finds_notifies_as_a_first_word_a_later_statement_or_pg_notify() {
        for sql in [
            "NOTIFY ch\0",
            "notify ch, 'x'\0",
            "  /* c */ Notify ch\0",
            "NOTIFY ch; SELECT 1\0",
            "SELECT 1; NOTIFY ch\0",
            "SELECT pg_notify('ch', 'x')\0",
            "select PG_NOTIFY($1, $2)\0",
            "select pg_catalog.pg_notify('ch', 'x') from t\0",
        ] {
            assert_eq!(sets(sql), NOTIFIES, "{sql:?}");
        }
        // With a SET: both, and nothing read back for the NOTIFY.
        assert_eq!(
            sets("NOTIFY ch; SET search_path = a\0"),
            NOTIFIES | 1 << params::index("search_path").unwrap()
        );
        for sql in [
            "SELECT notify FROM t\0",
            "SELECT 1 AS notifying\0",
            "UPDATE t SET notify = 1\0",
            "NOTIFYING\0",
        ] {
            assert_eq!(classify(sql.as_bytes()), Found::Nothing, "{sql:?}");
        }
    }

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
    fn one_pass_gives_block_state_and_literal() {
        let st = statement(b"SET search_path TO app, public\0", true);
        assert_eq!(st.found, Found::Sets(st.literal.as_ref().unwrap().marks()));
        assert!(!st.opens_block);
        assert_eq!(st.literal.unwrap().value.as_deref(), Some("app, public"));
        // Not asked for (a Parse), or not one plain SET: no literal.
        assert!(statement(b"SET search_path TO app\0", false)
            .literal
            .is_none());
        assert!(statement(b"SET search_path TO app; SELECT 1\0", true)
            .literal
            .is_none());
        assert!(
            statement(b"SELECT set_config('search_path', 'a', false)\0", true)
                .literal
                .is_none()
        );
        // A block opener that also sets something: both are seen.
        let st = statement(
            b"BEGIN; SET LOCAL search_path TO x; SET work_mem = '1MB'\0",
            true,
        );
        assert!(st.opens_block);
        assert!(matches!(st.found, Found::Sets(bits) if bits != 0), "{st:?}");
        assert!(st.literal.is_none());
        assert!(!statement(b"SELECT 1\0", true).opens_block);
    }
}
