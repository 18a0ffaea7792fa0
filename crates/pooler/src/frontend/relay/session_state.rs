//! Session state in transaction mode: a client's SETs follow it from server connection to
//! server connection; whatever else a client may have left on its server connection is reset
//! before the connection serves anyone else; SQL-level prepared statements, which cannot
//! follow, are refused.
//!
//! Detection is a scan of the whole text of each Query and Parse (`scan::classify`, cheap
//! enough for the hot path: see its docs).
//!
//! What it finds:
//! - a SET/RESET/`set_config` of a tracked parameter marks it dirty on the client
//!   (`ClientParams::dirty`); the value is read back from the server once the transaction is
//!   over (`read_back`, one round trip, only after such statements). Reading back gives
//!   rolled-back SETs, `SET LOCAL` and `set_config(.., true)` their PostgreSQL meaning for free.
//!   The commonest case costs no round trip: a Query that is one plain `SET name TO value`, run
//!   outside a block, carries its value in its text (`scan::literal`). Parameters the server reports (ParameterStatus) are not
//!   marked: the reports already carry them (`params::ServerParams::reported_to`).
//! - anything else that changes the session (`SESSION`): a SET of an untracked parameter,
//!   `SET SESSION AUTHORIZATION`, a DO block, a temporary table, a session advisory lock, a
//!   cursor (`DECLARE`, for `WITH HOLD`), `RESET`, `DISCARD`. Every tracked parameter is read
//!   back (so the client keeps them), and every custom setting (`app.tenant`; `CUSTOM`) the
//!   client has or its statements named (`scan::custom`), and, in the same round trip, the
//!   session is reset (`RESET_SQL`: role, session authorization, every setting, held
//!   cursors, advisory locks, temporary tables); the next client's own settings are then
//!   applied by the usual sync (`params::ServerParams::sync_sql`), the owner's too.
//! - of that, what the client can come back to in a later transaction (`PINS`): a `WITH HOLD`
//!   cursor, a session advisory lock, a temporary table. The server is asked at the
//!   transaction's end whether any is left (`PINNED_SQL`, one round trip, only after such
//!   statements); while one is, the client keeps its server connection and nothing is reset
//!   (as on a direct connection, and as RDS Proxy pins); the question is asked again at the
//!   end of each of its transactions, and once nothing is left the session is reset as above.
//! - `LOAD` (`CLOSE`): a loaded library cannot be unloaded: the connection is closed.
//! - LISTEN/UNLISTEN anywhere: served by the pool's listener when it is the whole statement
//!   (`parse_listen`), refused otherwise; never sent to a pooled connection. Inside a
//!   transaction block they count once it commits (`TxnListens`).
//!
//! Not seen (documented in the README): settings changed inside a server-side function the
//! client calls (a function's own `SET` clause is undone by PostgreSQL itself; `set_config`
//! called from a function body is not).

use std::collections::HashSet;

use crate::backend::server::Server;
use crate::errors;
use crate::net::messages::error::Severity;
use crate::net::messages::status;
use crate::net::messages::tag::txn;
use crate::params::{ClientParams, TRACKED};
use crate::prepared::ClientStatements;

use super::scan::lex::{keyword, skip_noise};
use super::RelayState;

pub use super::scan::{
    classify, Found, ALL, CLOSE, CUSTOM, DISCARD, DROPS, NOTIFIES, PINS, SCAN_MAX, SESSION,
    UNSCANNED,
};

/// Undoes what a client may leave on a session, short of its prepared statements (which the
/// pooler names and shares itself): `DISCARD ALL` without `DEALLOCATE ALL` and `DISCARD PLANS`.
/// `RESET ALL` leaves role and session authorization alone, hence their own RESETs.
pub const RESET_SQL: &str = "RESET SESSION AUTHORIZATION;RESET ROLE;RESET ALL;CLOSE ALL;\
SELECT pg_catalog.pg_advisory_unlock_all();DISCARD TEMP;DISCARD SEQUENCES;";

/// Whether the session holds what its client can come back to in a later transaction and that
/// lives on this server connection only (`PINS`): a `WITH HOLD` cursor, a session advisory lock
/// (at a transaction's end every advisory lock left is a session one), a temporary relation.
pub const PINNED_SQL: &str = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_cursors \
WHERE is_holdable) OR EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory' \
AND pid = pg_catalog.pg_backend_pid()) OR EXISTS (SELECT 1 FROM pg_catalog.pg_class \
WHERE relnamespace = pg_catalog.pg_my_temp_schema())";

/// Asks the server `PINNED_SQL`, at a transaction boundary after a statement that marked
/// `PINS`. An error is the caller's to handle as a failed read-back.
pub async fn pinned(server: &mut Server) -> Result<bool, crate::backend::ServerError> {
    let mut row = Vec::new();
    server.run_internal_row(PINNED_SQL, &mut row).await?;
    Ok(matches!(row.first(), Some(Some(v)) if &**v == "t"))
}

/// Reads back the parameters the client's statements may have changed and records them on
/// the server connection and, when the client stays, on the client; resets the session when
/// `SESSION` (or `DISCARD`) is marked. One round trip, at a transaction boundary, only when
/// something is dirty. On a server error the caller must not trust the connection: with a
/// reset asked for, it closes it (`must_close`), else it syncs it in full next time.
pub async fn read_back(
    server: &mut Server,
    mut client: Option<&mut ClientParams>,
    dirty: u64,
) -> Result<(), crate::backend::ServerError> {
    let names: Vec<usize> = (0..TRACKED.len())
        .filter(|i| dirty & ALL & (1 << i) != 0)
        .collect();
    let reset = dirty & (SESSION | DISCARD) != 0;
    // The custom settings the client has, and those its statements may have set: a reset
    // undoes them on the server, the client keeps what they are now.
    let customs = match client.as_deref_mut() {
        Some(client) if reset => client.customs_to_read(),
        _ => Vec::new(),
    };
    let mut sql = String::new();
    if !names.is_empty() || !customs.is_empty() {
        sql.push_str("SELECT ");
        for (n, i) in names.iter().enumerate() {
            if n > 0 {
                sql.push_str(", ");
            }
            // Names come from `TRACKED`, never from the client.
            sql.push_str("pg_catalog.current_setting('");
            sql.push_str(TRACKED[*i]);
            sql.push_str("')");
        }
        for (n, name) in customs.iter().enumerate() {
            if n > 0 || !names.is_empty() {
                sql.push_str(", ");
            }
            // The client's names (checked by `params::custom_name`), as literals; NULL for a
            // setting the server does not have.
            sql.push_str("pg_catalog.current_setting(");
            sql.push_str(&crate::params::literal(name));
            sql.push_str(", true)");
        }
        sql.push(';');
    }
    if reset {
        sql.push_str(RESET_SQL);
    }
    if dirty & DISCARD != 0 {
        sql.push_str("UNLISTEN *;DEALLOCATE ALL;");
    }
    if sql.is_empty() {
        return Ok(());
    }
    let mut row = Vec::new();
    server.run_internal_row(&sql, &mut row).await?;
    let mut row = row.into_iter();
    let read: Vec<(usize, Box<str>)> = names
        .iter()
        .zip(row.by_ref())
        .filter_map(|(i, v)| v.map(|v| (*i, v)))
        .collect();
    server.params.learned(&read, client.as_deref_mut());
    if let Some(client) = client {
        if !customs.is_empty() {
            let read: Vec<_> = customs.into_iter().zip(row).collect();
            client.learned_custom(&read);
        }
    }
    if reset {
        server.params.reset();
    }
    if dirty & DISCARD != 0 {
        server.prepared.clear();
    }
    Ok(())
}

/// Whether a connection whose client marked `dirty` cannot serve anyone else when `read_back`
/// failed (or at all, for `CLOSE`).
pub fn must_close(dirty: u64, read_back_failed: bool) -> bool {
    dirty & CLOSE != 0 || (read_back_failed && dirty & (SESSION | DISCARD) != 0)
}

/// What the server runs in place of a LISTEN/UNLISTEN sent with Parse (which the pool's
/// listener serves) or a `DEALLOCATE` the pooler serves: a statement that does nothing,
/// answers like LISTEN (no rows; a failed block's 25P02), leaves nothing on the connection
/// (a connection that listens to nothing queues nothing for an UNLISTEN) and, unlike a `DO`,
/// takes no snapshot, so a `SET TRANSACTION ISOLATION LEVEL` after it still works. Its command
/// tag says UNLISTEN; the relay puts PostgreSQL's where it knows it (`prepared::stand_in_tag`).
pub const LISTEN_NOOP: &str = "UNLISTEN pgbay_stand_in";

/// A LISTEN or UNLISTEN the pooler answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenCmd {
    Listen(Box<str>),
    Unlisten(Box<str>),
    UnlistenAll,
}

/// The LISTEN/UNLISTENs a client ran inside a transaction block, which PostgreSQL applies
/// when the block commits and forgets when it rolls back. The relay serves a LISTEN at once
/// (so that a NOTIFY committed with it, or right after it, is heard) and undoes it at a
/// ROLLBACK when it was new; an UNLISTEN waits for the COMMIT (`TxnListens::end`). Savepoints
/// are followed by their command tags, innermost first: a `ROLLBACK TO` forgets what came
/// after the latest savepoint still open (as PostgreSQL does when the client rolls back to its
/// innermost one, as drivers' nested transactions do), a `RELEASE` closes it.
///
/// Outside a block, an extended-protocol LISTEN/UNLISTEN runs in the transaction PostgreSQL
/// keeps open up to the segment's Sync (`implicit`): it holds when that transaction commits,
/// as it does at the Sync unless an error or a ROLLBACK came first (`failed`).
#[derive(Debug, Default)]
pub struct TxnListens {
    /// The channels the client listened to before the block's first LISTEN/UNLISTEN.
    before: HashSet<Box<str>>,
    /// The block's LISTEN/UNLISTENs, in order.
    ops: Vec<ListenCmd>,
    /// For each savepoint open, innermost last: how many of `ops` came before it.
    marks: Vec<usize>,
    /// The transaction is the one of an extended-protocol segment, not a block the client
    /// began (until a BEGIN in that segment makes it one).
    implicit: bool,
    /// An error or a ROLLBACK of the whole transaction came: it does not commit.
    failed: bool,
}

impl TxnListens {
    /// A block's first LISTEN/UNLISTEN, with `savepoints` open before it; `implicit` for
    /// the transaction of an extended-protocol segment outside a block.
    pub fn new(before: HashSet<Box<str>>, savepoints: usize, implicit: bool) -> Self {
        TxnListens {
            before,
            ops: Vec::new(),
            marks: vec![0; savepoints],
            implicit,
            failed: false,
        }
    }

    /// The server answered an error: the transaction rolls back (a block the client began
    /// tells at its end, by its COMMIT's tag).
    pub fn error(&mut self) {
        self.failed = true;
    }

    /// The transaction's ReadyForQuery came: still open (`idle` false), it is a block the
    /// client began, and None; ended, whether it committed, when nothing told so before (a
    /// COMMIT's tag): a segment's transaction commits unless it failed, a block the client
    /// began and ended without a COMMIT did not.
    pub fn ready(&mut self, idle: bool) -> Option<bool> {
        if !idle {
            self.implicit = false;
            return None;
        }
        Some(self.implicit && !self.failed)
    }

    pub fn push(&mut self, cmd: ListenCmd) {
        self.ops.push(cmd);
    }

    /// A `SAVEPOINT` completed.
    pub fn savepoint(&mut self) {
        self.marks.push(self.ops.len());
    }

    /// A `RELEASE` completed.
    pub fn release(&mut self) {
        self.marks.pop();
    }

    /// A `ROLLBACK` completed: to the innermost savepoint (which stays open), or of the whole
    /// block, which its ReadyForQuery then tells (`end`).
    pub fn rollback_to(&mut self) {
        match self.marks.last() {
            Some(&mark) => self.ops.truncate(mark),
            None => self.failed = true,
        }
    }

    /// The channels the client listens to once its block ended: what it listened to before,
    /// with the block's LISTEN/UNLISTENs applied in order when it `committed`.
    pub fn end(self, committed: bool) -> HashSet<Box<str>> {
        let mut channels = self.before;
        if committed {
            for op in self.ops {
                match op {
                    ListenCmd::Listen(c) => {
                        channels.insert(c);
                    }
                    ListenCmd::Unlisten(c) => {
                        channels.remove(&c);
                    }
                    ListenCmd::UnlistenAll => channels.clear(),
                }
            }
        }
        channels
    }
}

/// A whole Query or Parse text that is exactly one `LISTEN ch` / `UNLISTEN ch` / `UNLISTEN *` (the
/// channel folded as PostgreSQL folds identifiers). None for anything else, which the relay
/// refuses (raised by the server in its place): a LISTEN must never reach a pooled connection.
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

/// An SQL `DEALLOCATE` the pooler answers itself from the client's own protocol-level
/// statements (`prepared::ClientStatements`): the server copies are shared and stay.
#[derive(Debug, PartialEq, Eq)]
pub enum Deallocate {
    Name(Box<str>),
    All,
}

/// A whole Query text that is exactly one `DEALLOCATE [PREPARE] {name | ALL}` (the name folded
/// as PostgreSQL folds identifiers). None for anything else, which stays refused.
pub fn parse_deallocate(sql: &[u8]) -> Option<Deallocate> {
    let s = skip_noise(sql);
    let rest = skip_noise(keyword(s, b"deallocate")?);
    // `DEALLOCATE prepare` names a statement called "prepare".
    let rest = match keyword(rest, b"prepare") {
        Some(after)
            if skip_noise(after)
                .first()
                .is_some_and(|&b| b != b';' && b != 0) =>
        {
            skip_noise(after)
        }
        _ => rest,
    };
    let (cmd, rest) = match keyword(rest, b"all") {
        Some(after) => (Deallocate::All, after),
        None => {
            let (name, after) = identifier(rest)?;
            (Deallocate::Name(name), after)
        }
    };
    // Empty statements may follow (`deallocate x;;`): PostgreSQL runs nothing for them.
    let mut rest = skip_noise(rest);
    while let Some(after) = rest.strip_prefix(b";") {
        rest = skip_noise(after);
    }
    (rest.first() == Some(&0)).then_some(cmd)
}

/// What the server runs in place of a `DEALLOCATE name` the client has no statement for: the
/// error PostgreSQL gives (26000), raised by the server so that it fails an open transaction
/// block as PostgreSQL would (and answers 25P02 in a failed one).
pub fn unknown_statement_sql(name: &str) -> String {
    raise_sql(&errors::unknown_statement(name))
}

/// What the server runs in place of a Query the pooler refuses (an SQL-level PREPARE/EXECUTE,
/// a LISTEN it cannot serve): the refusal's error, raised by the server so that it fails an open
/// transaction block as PostgreSQL's own error would (a later COMMIT rolls back), and answers
/// 25P02 in a failed one.
pub fn raise_sql(e: &errors::ClientError) -> String {
    // The message goes inside dollar-quoted literals whose tags it does not hold, so that it
    // is kept as it is, `$` and all.
    let message = e.message();
    let body = dollar_tag(message, "pgbay");
    let text = dollar_tag(message, "pgbay_m");
    format!(
        "DO {body}BEGIN RAISE EXCEPTION USING ERRCODE = '{}', \
         MESSAGE = {text}{message}{text}; END{body}",
        e.code()
    )
}

/// A dollar-quote tag (`$base$`, else `$base1$`, `$base2$`, ...) that `text` does not hold.
fn dollar_tag(text: &str, base: &str) -> String {
    let mut tag = format!("${base}$");
    let mut n = 0u32;
    while text.contains(&tag) {
        n += 1;
        tag = format!("${base}{n}$");
    }
    tag
}

/// Answers the next SQL `DEALLOCATE` the pooler serves, in its turn (every earlier answer
/// sent, so the transaction state is the server's): in a failed block it is refused (25P02)
/// and nothing is deallocated, as PostgreSQL does; otherwise the client's names go (the
/// server copies are shared and stay) and it completes, in a block too (deallocation is not
/// transactional). A name gone since it was sent (a pipelined second DEALLOCATE) gets 26000.
#[cold]
pub fn deallocate(server: &mut Server, relay: &mut RelayState, statements: &mut ClientStatements) {
    let Some(cmd) = relay.deallocs.pop_front() else {
        return;
    };
    let out = &mut server.bufs.s2c_out;
    relay.ready_synthesized = true;
    if server.status == txn::FAILED {
        errors::in_failed_transaction().write(out, Severity::Error);
    } else {
        match cmd {
            Deallocate::All => {
                super::names::server_dropped_all(relay, statements);
                status::command_complete(out, b"DEALLOCATE ALL");
            }
            Deallocate::Name(name) => match statements.remove(name.as_bytes()) {
                Some(_) => status::command_complete(out, b"DEALLOCATE"),
                None => errors::unknown_statement(&name).write(out, Severity::Error),
            },
        }
    }
    status::ready_for_query(out, server.status);
}

/// The longest identifier PostgreSQL keeps (NAMEDATALEN - 1 bytes).
const MAX_IDENTIFIER: usize = 63;

/// An SQL identifier at the start of `s`: quoted (kept as is) or not (ASCII-lowercased),
/// truncated as PostgreSQL does. `U&"..."` is not one (its escapes are not decoded): such a
/// LISTEN is refused.
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
    if name.is_empty() {
        return None;
    }
    let mut name = String::from_utf8(name).ok()?;
    if name.len() > MAX_IDENTIFIER {
        // PostgreSQL truncates a longer name (at a character boundary), with a NOTICE.
        let mut end = MAX_IDENTIFIER;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    Some((name.into(), rest))
}

/// Answers a LISTEN/UNLISTEN the pooler served: CommandComplete and ReadyForQuery in the
/// server's state.
#[cold]
pub fn listen_done(server: &mut Server, relay: &mut RelayState, listen: bool) {
    let out = &mut server.bufs.s2c_out;
    status::command_complete(out, if listen { b"LISTEN" } else { b"UNLISTEN" });
    status::ready_for_query(out, server.status);
    relay.ready_synthesized = true;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block's LISTEN/UNLISTENs count once it committed, in order; a rollback leaves what
    /// the client listened to before.
    #[test]
    fn a_blocks_listens_count_at_commit_only() {
        let set = |v: &[&str]| {
            v.iter()
                .map(|c| Box::<str>::from(*c))
                .collect::<HashSet<_>>()
        };
        let block = |before: &[&str], ops: Vec<ListenCmd>| {
            let mut t = TxnListens::new(set(before), 0, false);
            for op in ops {
                t.push(op);
            }
            t
        };
        let l = |c: &str| ListenCmd::Listen(c.into());
        let u = |c: &str| ListenCmd::Unlisten(c.into());
        assert_eq!(block(&["a"], vec![l("b"), u("a")]).end(true), set(&["b"]));
        assert_eq!(block(&["a"], vec![l("b"), u("a")]).end(false), set(&["a"]));
        assert_eq!(block(&["a"], vec![u("a"), l("a")]).end(true), set(&["a"]));
        assert_eq!(block(&[], vec![l("a"), u("a")]).end(true), set(&[]));
        assert_eq!(
            block(&["a", "b"], vec![l("c"), ListenCmd::UnlistenAll, l("d")]).end(true),
            set(&["d"])
        );
        // LISTEN b; SAVEPOINT; LISTEN c; SAVEPOINT; UNLISTEN a; ROLLBACK TO (the inner);
        // RELEASE (the inner); ROLLBACK TO (the outer); LISTEN d; COMMIT.
        let mut t = TxnListens::new(set(&["a"]), 0, false);
        t.push(l("b"));
        t.savepoint();
        t.push(l("c"));
        t.savepoint();
        t.push(u("a"));
        t.rollback_to();
        t.release();
        t.push(l("e"));
        t.rollback_to();
        t.push(l("d"));
        assert_eq!(t.end(true), set(&["a", "b", "d"]));
        // Savepoints open before the block's first LISTEN.
        let mut t = TxnListens::new(set(&[]), 2, false);
        t.push(l("x"));
        t.rollback_to();
        t.release();
        t.push(l("y"));
        t.release();
        assert_eq!(t.end(true), set(&["y"]));
    }

    #[test]
    fn a_segments_transaction_commits_at_its_ready_unless_it_failed() {
        let set = |names: &[&str]| names.iter().map(|n| Box::from(*n)).collect::<HashSet<_>>();
        let listen = |implicit: bool| {
            let mut t = TxnListens::new(set(&[]), 0, implicit);
            t.push(ListenCmd::Listen("a".into()));
            t
        };
        assert_eq!(listen(true).ready(true), Some(true));
        let mut t = listen(true);
        t.error();
        assert_eq!(t.ready(true), Some(false));
        // A ROLLBACK of it (no savepoint open).
        let mut t = listen(true);
        t.rollback_to();
        assert_eq!(t.ready(true), Some(false));
        // A BEGIN in the segment made it a block: its COMMIT tells.
        let mut t = listen(true);
        assert_eq!(t.ready(false), None);
        assert_eq!(t.ready(true), Some(false));
        // A block the client began, ended without a COMMIT.
        assert_eq!(listen(false).ready(true), Some(false));
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
        // Longer names are truncated as PostgreSQL does.
        let long = format!("LISTEN {}\0", "c".repeat(100));
        assert_eq!(p(&long), Some(ListenCmd::Listen("c".repeat(63).into())));
        let long = format!("LISTEN \"{}\"\0", "é".repeat(40));
        assert_eq!(p(&long), Some(ListenCmd::Listen("é".repeat(31).into())));
        for other in [
            "LISTEN U&\"a\\0062\"\0",
            "select 1; LISTEN a\0",
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

    #[test]
    fn parses_deallocate() {
        let p = |s: &str| parse_deallocate(s.as_bytes());
        let name = |n: &str| Some(Deallocate::Name(n.into()));
        assert_eq!(p("DEALLOCATE foo\0"), name("foo"));
        assert_eq!(p("  deallocate\n PREPARE   Foo ; \0"), name("foo"));
        assert_eq!(p("DEALLOCATE \"Stmt 1\"\0"), name("Stmt 1"));
        assert_eq!(p("deallocate \"ALL\"\0"), name("ALL"));
        assert_eq!(p("DEALLOCATE prepare\0"), name("prepare"));
        assert_eq!(p("DEALLOCATE ALL\0"), Some(Deallocate::All));
        assert_eq!(p("deallocate prepare all;\0"), Some(Deallocate::All));
        for other in [
            "DEALLOCATE\0",
            "DEALLOCATE a; SELECT 1\0",
            "DEALLOCATE a b\0",
            "DEALLOCATE allx y\0",
            "PREPARE a AS SELECT 1\0",
        ] {
            assert_eq!(p(other), None, "{other:?}");
        }
        assert_eq!(p("DEALLOCATE allx\0"), name("allx"));
        assert_eq!(classify(b"DEALLOCATE a\0"), Found::SqlPrepared);
        assert!(unknown_statement_sql("a$b").contains("\"a$b\""));
        // A name holding the quotes' own tags gets other tags.
        let sql = unknown_statement_sql("x$pgbay_m$y$pgbay$");
        assert!(sql.starts_with("DO $pgbay1$BEGIN"), "{sql}");
        assert!(sql.contains("$pgbay_m1$prepared statement \"x$pgbay_m$y$pgbay$\""));
        assert!(sql.ends_with("END$pgbay1$"), "{sql}");
        // Empty statements after it change nothing (`deallocate x;;`).
        assert_eq!(p("DEALLOCATE x;; ;\0"), name("x"));
        assert_eq!(p("DEALLOCATE x;; select 1\0"), None);
    }
}
