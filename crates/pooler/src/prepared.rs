//! Prepared statements in transaction and statement mode.
//!
//! A client's named statement lives on whatever server connection it was prepared on, but the
//! client's next transaction may run on another one. So the pooler gives every distinct
//! (query, parameter types) a pooler-wide name (`pgbay_N`), remembers per client which of its
//! names maps to which statement, and per server connection which statements it has (an LRU
//! capped at `max_prepared_statements`). Bind/Describe are rewritten to the pooler-wide name and
//! a Parse is injected first when the serving connection lacks the statement.
//!
//! Statements are also told apart by the client's `search_path` (`Registry::intern`'s
//! `scope`): PostgreSQL resolves a statement's names with the search path in effect, and
//! re-plans it when that changes, failing with `cached plan must not change result type` when
//! the result changed shape. Clients that share a text under different search paths get
//! statements of their own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;

use crate::frontend::relay::session_state::{classify, Found, DROPS, NOTIFIES};
use crate::net::messages::extended::write_parse;

/// One distinct statement, shared by every client that prepared the same text and types.
#[derive(Debug)]
pub struct Statement {
    pub id: u64,
    pub name: Box<str>,
    /// The Parse message under the pooler-wide name, ready to send.
    pub parse: Bytes,
    /// Tracked parameters the statement may change (`session_state::classify`), marked dirty
    /// again at every Bind: a prepared SET is executed without a new Parse.
    pub sets: u64,
    /// Running it may drop the connection's prepared statements (a `DISCARD ALL`): a client
    /// name bound behind its Execute is resolved after it ran (`relay::names::waits`).
    pub drops: bool,
    /// Running it may NOTIFY (`session_state::NOTIFIES`): marked at every Bind.
    pub notifies: bool,
    /// The server said a copy of it went stale (`mark_stale`): later Parses and Binds of the
    /// same text and types get a fresh statement under a new name.
    stale: AtomicBool,
}

impl Statement {
    /// A server answered a Bind/Describe of it with an error meaning its prepared form no
    /// longer matches the catalog (`cache lookup failed for type`, a dropped and re-created
    /// type; `cached plan must not change result type`).
    pub fn mark_stale(&self) {
        self.stale.store(true, Ordering::Relaxed);
    }

    #[inline]
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    /// The Parse's query, parameter count and types (what `Registry::intern` keys by, with
    /// the scope).
    pub fn rest(&self) -> &[u8] {
        // Type, length, name, NUL.
        &self.parse[5 + self.name.len() + 1..]
    }
}

/// How a server error text says a prepared statement went stale (see `mark_stale`), if it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stale {
    /// A type it uses is gone (dropped, perhaps created again under another OID).
    Type,
    /// Planned again, its result has another shape: a client that kept the old row
    /// description must not be given rows of the new one unawares.
    ResultShape,
}

pub fn stale(message: &str) -> Option<Stale> {
    if message.starts_with("cache lookup failed for type") {
        Some(Stale::Type)
    } else if message.starts_with("cached plan must not change result type") {
        Some(Stale::ResultShape)
    } else {
        None
    }
}

/// Pooler-wide map from statement text to `Statement`.
#[derive(Default)]
pub struct Registry {
    next: AtomicU64,
    by_text: Mutex<HashMap<Box<[u8]>, Arc<Statement>>>,
}

/// Entries no client refers to any more are dropped once the map grows past this.
const REGISTRY_SOFT_LIMIT: usize = 10_000;

impl Registry {
    /// The statement for a Parse's `rest` (query, parameter count and types) prepared by a
    /// client whose `search_path` is `scope` (empty: the server's default).
    pub fn intern(&self, rest: &[u8], scope: &[u8]) -> Arc<Statement> {
        // `rest` delimits itself (a NUL-terminated text, then a count and that many OIDs), so
        // the scope appended after it cannot make two keys collide.
        let mut key = Vec::with_capacity(rest.len() + scope.len());
        key.extend_from_slice(rest);
        key.extend_from_slice(scope);
        let mut map = self.by_text.lock();
        if let Some(s) = map.get(key.as_slice()) {
            if !s.is_stale() {
                return s.clone();
            }
        }
        if map.len() >= REGISTRY_SOFT_LIMIT {
            map.retain(|_, s| Arc::strong_count(s) > 1);
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let name = format!("pgbay_{id}");
        let sets = match classify(rest) {
            Found::Sets(bits) => bits,
            _ => 0,
        };
        let mut parse = BytesMut::with_capacity(rest.len() + name.len() + 6);
        write_parse(&mut parse, name.as_bytes(), rest);
        let stmt = Arc::new(Statement {
            id,
            name: name.into(),
            parse: parse.freeze(),
            sets: sets & !(DROPS | NOTIFIES),
            drops: sets & DROPS != 0,
            notifies: sets & NOTIFIES != 0,
            stale: AtomicBool::new(false),
        });
        map.insert(key.into(), stmt.clone());
        stmt
    }
}

/// The bytes of a statement name PostgreSQL tells apart: its prepared statements are keyed by
/// the name's first NAMEDATALEN - 1 bytes, so a longer name is the same statement as its first
/// 63 bytes (as a Parse, Bind, Describe, Close or `DEALLOCATE` of either).
#[inline]
pub fn key(name: &[u8]) -> &[u8] {
    &name[..name.len().min(63)]
}

/// Command tags of the statements the pooler serves through the extended protocol with a
/// stand-in the server runs (`DEALLOCATE`, `LISTEN`, `UNLISTEN`: `relay::session_state::
/// LISTEN_NOOP`, which does nothing, or a `DO` that raises), for `ClientStatements::unnamed_tag`
/// and the Execute that runs one.
pub mod stand_in_tag {
    pub const NAME: u8 = 1;
    pub const ALL: u8 = 2;
    pub const LISTEN: u8 = 3;
    pub const UNLISTEN: u8 = 4;
    /// Not a stand-in: a statement the server runs that may drop the connection's prepared
    /// statements (a `DISCARD ALL`, `Statement::drops`). Its Execute's answer is waited for by
    /// a client name bound behind it (`relay::names::waits`).
    pub const DROPS: u8 = 5;

    /// The command tag PostgreSQL completes `tag`'s statement with.
    pub fn text(tag: u8) -> &'static [u8] {
        match tag {
            ALL => b"DEALLOCATE ALL",
            LISTEN => b"LISTEN",
            UNLISTEN => b"UNLISTEN",
            _ => b"DEALLOCATE",
        }
    }
}

/// A client's own statement names, and its unnamed statement.
#[derive(Default)]
pub struct ClientStatements {
    map: HashMap<Box<[u8]>, Arc<Statement>>,
    /// The client's last Parse of the unnamed statement, whole (empty: it has none). The
    /// unnamed statement stays unnamed and the client's own: it lives on the server
    /// connection it was parsed on, so a Bind/Describe of it on another one (a later
    /// transaction, PostgreSQL keeps it until the next unnamed Parse or simple Query) is
    /// preceded by this Parse again, and a client without one cannot bind another client's
    /// (`frontend::relay`'s `ensure_unnamed`).
    unnamed: Vec<u8>,
    /// What the pooler knows of the unnamed statement's text.
    marks: UnnamedMarks,
}

/// What the pooler knows of the unnamed statement's text (`ClientStatements`), kept and put
/// back with it (`replace_unnamed`, `restore_unnamed`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnnamedMarks {
    /// It is a stand-in for a `DEALLOCATE`, `LISTEN` or `UNLISTEN` the pooler serves
    /// (`stand_in_tag`): the command tag its Execute completes with (0: none).
    tag: u8,
    /// It may take a custom setting's name as a bound parameter (`set_config($1, ...)`): each
    /// Bind of it is read for the name (`scan::custom::note_bound`).
    binds_names: bool,
}

impl ClientStatements {
    /// The client's unnamed statement becomes the Parse `now` (whole message; None: it has
    /// none); returns what it was (message and command tag), so that a Parse or Close the
    /// server skips can put it back (`restore_unnamed`). Each text has a buffer of its size:
    /// an idle client holds no more than its own statement.
    #[inline]
    pub fn replace_unnamed(&mut self, now: Option<&[u8]>) -> (Vec<u8>, UnnamedMarks) {
        let now = now.map(<[u8]>::to_vec).unwrap_or_default();
        let before = std::mem::replace(&mut self.unnamed, now);
        (before, std::mem::take(&mut self.marks))
    }

    /// Puts back the unnamed statement `replace_unnamed` returned.
    #[cold]
    pub fn restore_unnamed(&mut self, parse: Vec<u8>, marks: UnnamedMarks) {
        self.unnamed = parse;
        self.marks = marks;
    }

    /// The unnamed statement just set may bind a custom setting's name
    /// (`UnnamedMarks::binds_names`).
    #[cold]
    pub fn set_unnamed_binds_names(&mut self) {
        self.marks.binds_names = true;
    }

    /// The unnamed statement's text, when it may bind a custom setting's name.
    #[inline]
    pub fn unnamed_binding_names(&self) -> Option<&[u8]> {
        if self.marks.binds_names {
            self.unnamed()
        } else {
            None
        }
    }

    /// The unnamed statement just set is a stand-in (a `DEALLOCATE`, `LISTEN` or `UNLISTEN`
    /// the pooler serves) whose Execute completes with `tag` (`stand_in_tag`).
    pub fn set_unnamed_tag(&mut self, tag: u8) {
        self.marks.tag = tag;
    }

    #[inline]
    pub fn unnamed_tag(&self) -> u8 {
        self.marks.tag
    }

    /// A simple Query drops it, as in PostgreSQL (as does a Parse of it that fails).
    #[inline]
    pub fn clear_unnamed(&mut self) {
        self.unnamed = Vec::new();
        self.marks = UnnamedMarks::default();
    }

    pub fn unnamed(&self) -> Option<&[u8]> {
        (!self.unnamed.is_empty()).then_some(&self.unnamed[..])
    }

    /// Names `stmt` `name`; returns what the name named before.
    pub fn insert(&mut self, name: &[u8], stmt: Arc<Statement>) -> Option<Arc<Statement>> {
        let name = key(name);
        if let Some(slot) = self.map.get_mut(name) {
            Some(std::mem::replace(slot, stmt))
        } else {
            self.map.insert(name.into(), stmt);
            None
        }
    }

    pub fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.map.get(key(name))
    }

    pub fn remove(&mut self, name: &[u8]) -> Option<Arc<Statement>> {
        self.map.remove(key(name))
    }

    /// Names `stmt` `name`, or drops the name (None); returns what it named before.
    pub fn set(&mut self, name: &[u8], stmt: Option<Arc<Statement>>) -> Option<Arc<Statement>> {
        match stmt {
            Some(stmt) => self.insert(name, stmt),
            None => self.remove(name),
        }
    }

    /// Only the names `keep` says to keep stay.
    pub fn retain(&mut self, mut keep: impl FnMut(&[u8]) -> bool) {
        self.map.retain(|name, _| keep(name));
    }

    /// Every name goes, returned (an extended-protocol `DEALLOCATE ALL` the server may yet
    /// skip; `restore_names` undoes it).
    pub fn take_names(&mut self) -> HashMap<Box<[u8]>, Arc<Statement>> {
        std::mem::take(&mut self.map)
    }

    /// Names taken by `take_names` come back, except those named again since.
    pub fn restore_names(&mut self, names: HashMap<Box<[u8]>, Arc<Statement>>) {
        for (name, stmt) in names {
            self.map.entry(name).or_insert(stmt);
        }
    }
}

/// Statements prepared on one server connection, least recently used evicted first.
#[derive(Default)]
pub struct ServerStatements {
    tick: u64,
    used: HashMap<u64, (u64, Arc<Statement>)>,
}

impl ServerStatements {
    /// Marks `id` used; false when the server does not have it.
    pub fn touch(&mut self, id: u64) -> bool {
        self.tick += 1;
        match self.used.get_mut(&id) {
            Some(e) => {
                e.0 = self.tick;
                true
            }
            None => false,
        }
    }

    /// Records that the server now has `stmt`; returns the statement evicted to make room
    /// (the caller closes it on the server).
    pub fn add(&mut self, stmt: &Arc<Statement>, max: usize) -> Option<Arc<Statement>> {
        self.tick += 1;
        let mut evicted = None;
        if self.used.len() >= max.max(1) {
            if let Some((&oldest, _)) = self.used.iter().min_by_key(|(_, (t, _))| *t) {
                evicted = self.used.remove(&oldest).map(|(_, s)| s);
            }
        }
        self.used.insert(stmt.id, (self.tick, stmt.clone()));
        evicted
    }

    pub fn remove(&mut self, id: u64) {
        self.used.remove(&id);
    }

    pub fn get(&self, id: u64) -> Option<&Arc<Statement>> {
        self.used.get(&id).map(|(_, s)| s)
    }

    /// Only the statements `keep` says to keep stay.
    pub fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) {
        self.used.retain(|&id, _| keep(id));
    }

    pub fn clear(&mut self) {
        self.used.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_same_statement_and_lru_eviction() {
        let reg = Registry::default();
        let a = reg.intern(b"select 1\0\0\0", b"");
        let a2 = reg.intern(b"select 1\0\0\0", b"");
        let b = reg.intern(b"select 2\0\0\0", b"");
        let c = reg.intern(b"select 3\0\0\0", b"");
        assert_eq!(a.id, a2.id);
        assert_ne!(a.id, b.id);
        let mut server = ServerStatements::default();
        assert!(server.add(&a, 2).is_none());
        assert!(server.add(&b, 2).is_none());
        assert!(server.touch(a.id));
        let evicted = server.add(&c, 2).unwrap();
        assert_eq!(evicted.id, b.id);
        assert!(!server.touch(b.id));
        assert_eq!(a.rest(), b"select 1\0\0\0");
        a.mark_stale();
        let fresh = reg.intern(b"select 1\0\0\0", b"");
        assert_ne!(fresh.id, a.id);
        assert_eq!(reg.intern(b"select 1\0\0\0", b"").id, fresh.id);
        assert_eq!(
            stale("cache lookup failed for type 16389"),
            Some(Stale::Type)
        );
        assert_eq!(
            stale("cached plan must not change result type"),
            Some(Stale::ResultShape)
        );
        assert_eq!(stale("relation \"t\" does not exist"), None);
    }

    #[test]
    fn a_large_unnamed_statement_is_not_kept_for_good() {
        let mut c = ClientStatements::default();
        c.replace_unnamed(Some(&[b'x'; 100_000]));
        assert_eq!(c.unnamed().map(<[u8]>::len), Some(100_000));
        let (before, _) = c.replace_unnamed(Some(b"P small"));
        assert_eq!(before.len(), 100_000);
        assert_eq!(c.unnamed(), Some(&b"P small"[..]));
        assert!(c.unnamed.capacity() < 4096);
        c.set_unnamed_tag(3);
        c.set_unnamed_binds_names();
        let (before, tag) = c.replace_unnamed(None);
        assert_eq!((c.unnamed(), c.unnamed_tag()), (None, 0));
        assert_eq!(c.unnamed_binding_names(), None);
        // What was known of it comes back with it.
        c.restore_unnamed(before, tag);
        assert_eq!((c.unnamed(), c.unnamed_tag()), (Some(&b"P small"[..]), 3));
        assert_eq!(c.unnamed_binding_names(), Some(&b"P small"[..]));
        c.clear_unnamed();
        assert_eq!((c.unnamed(), c.unnamed_binding_names()), (None, None));
    }

    #[test]
    fn a_name_is_its_first_63_bytes() {
        let reg = Registry::default();
        let mut names = ClientStatements::default();
        let long = [b'x'; 70];
        names.insert(&long, reg.intern(b"select 1\0\0\0", b""));
        assert!(names.get(&long[..63]).is_some() && names.get(&long[..62]).is_none());
        assert!(names.remove(&long[..64]).is_some());
        assert!(names.get(&long).is_none());
    }

    #[test]
    fn another_search_path_another_statement() {
        let reg = Registry::default();
        let default = reg.intern(b"select * from t\0\0\0", b"");
        let s1 = reg.intern(b"select * from t\0\0\0", b"s1");
        let s2 = reg.intern(b"select * from t\0\0\0", b"s2");
        assert!(default.id != s1.id && s1.id != s2.id && default.id != s2.id);
        assert_eq!(reg.intern(b"select * from t\0\0\0", b"s1").id, s1.id);
        assert_eq!(s1.rest(), b"select * from t\0\0\0");
    }
}
