//! Client session parameters the pooler carries from client to server connection.
//!
//! A server connection serves many clients in turn; each client expects the settings it asked
//! for at startup (or later SET, for the parameters PostgreSQL reports back). Like PgBouncer,
//! the pooler remembers them per client and per server connection and, when a client gets a
//! server whose values differ, sends one `set_config`/`RESET` query first.

use std::collections::HashMap;
use std::ops::{Index, IndexMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

/// Parameters tracked per client, in a fixed order so that state is a small array. Beyond the
/// startup parameters drivers send, the session settings applications most often SET (timeouts,
/// memory, transaction defaults, and those results are read with: `bytea_output`, locales,
/// `xmloption`, …) so that, in transaction mode, they follow their client
/// (`frontend::relay::session_state`), and the role (`SET ROLE`; PostgreSQL checked the
/// client may have it when it was SET, and checks again when the pooler sets it on another
/// connection). A SET of a parameter not listed here is not carried: the session is reset
/// after it instead; custom settings (`custom_name`) are read back before that reset and
/// carried (`Values::custom`).
pub const TRACKED: [&str; 32] = [
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "standard_conforming_strings",
    "search_path",
    "extra_float_digits",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "work_mem",
    "maintenance_work_mem",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "synchronous_commit",
    "jit",
    "row_security",
    "role",
    // How results read (drivers parse them) and what the client is told.
    "bytea_output",
    "client_min_messages",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "xmloption",
    "xmlbinary",
    "quote_all_identifiers",
    "array_nulls",
    "transform_null_equals",
    // Statements and transactions.
    "plan_cache_mode",
    "default_transaction_deferrable",
    "check_function_bodies",
];

/// Index of `search_path` in `TRACKED`.
pub const SEARCH_PATH: usize = 6;

/// The first `REPORTED` entries of `TRACKED` are reported by the server with ParameterStatus,
/// so the pooler learns their defaults and changes; the others only change when the pooler
/// sets them.
pub const REPORTED: usize = 6;

/// Index of a tracked parameter (names are case-insensitive in PostgreSQL).
pub fn index(name: &str) -> Option<usize> {
    index_bytes(name.as_bytes())
}

/// `index` of a name as the statement's bytes have it (no UTF-8 check: tracked names are ASCII).
pub fn index_bytes(name: &[u8]) -> Option<usize> {
    TRACKED
        .iter()
        .position(|t| t.as_bytes().eq_ignore_ascii_case(name))
}

/// A client's values: one per tracked parameter (`None` means "the server's default"), indexed
/// as `TRACKED`, and its custom settings (`app.tenant` and the like, see `custom_name`), sorted
/// by name. A custom setting the client has not set is not listed: on a server connection it is
/// at its default (that of the database or role, or none).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Values {
    tracked: [Option<Box<str>>; TRACKED.len()],
    custom: Box<[(Box<str>, Box<str>)]>,
}

impl Index<usize> for Values {
    type Output = Option<Box<str>>;

    #[inline]
    fn index(&self, i: usize) -> &Option<Box<str>> {
        &self.tracked[i]
    }
}

impl IndexMut<usize> for Values {
    #[inline]
    fn index_mut(&mut self, i: usize) -> &mut Option<Box<str>> {
        &mut self.tracked[i]
    }
}

/// At most this many custom settings are carried per client: a statement whose text would set
/// another is refused before it runs (`scan::custom::one_too_many`); one the text does not show
/// (a parameter of `set_config`, a statement prepared while the client had room) is undone at
/// the end of its transaction, as every custom setting was before they were carried.
pub const MAX_CUSTOM: usize = 64;

/// A custom setting's name longer than this is not carried (PostgreSQL sets no limit).
const MAX_CUSTOM_NAME: usize = 255;

impl Values {
    /// The tracked values, in `TRACKED`'s order.
    pub fn iter(&self) -> std::slice::Iter<'_, Option<Box<str>>> {
        self.tracked.iter()
    }

    /// The custom settings, sorted by name.
    pub fn custom(&self) -> &[(Box<str>, Box<str>)] {
        &self.custom
    }

    /// The value of custom setting `name` (a name `custom_name` gave).
    pub fn custom_value(&self, name: &str) -> Option<&str> {
        self.custom
            .binary_search_by(|(n, _)| (**n).cmp(name))
            .ok()
            .map(|i| &*self.custom[i].1)
    }

    /// Sets custom setting `name` (a name `custom_name` gave) to `value`, or forgets it (None).
    /// False when that would carry more than `MAX_CUSTOM`: nothing changes then.
    pub fn set_custom(&mut self, name: &str, value: Option<Box<str>>) -> bool {
        let mut custom = std::mem::take(&mut self.custom).into_vec();
        let ok = match (custom.binary_search_by(|(n, _)| (**n).cmp(name)), value) {
            (Ok(i), Some(v)) => {
                custom[i].1 = v;
                true
            }
            (Ok(i), None) => {
                custom.remove(i);
                true
            }
            (Err(i), Some(v)) if custom.len() < MAX_CUSTOM => {
                custom.insert(i, (name.into(), v));
                true
            }
            (Err(_), Some(_)) => false,
            (Err(_), None) => true,
        };
        self.custom = custom.into_boxed_slice();
        ok
    }
}

/// A custom setting's name as the pooler keys it (lower case: PostgreSQL's setting names are
/// case-insensitive), when `name` is one: two or more simple identifiers separated by dots, as
/// PostgreSQL requires of a name no parameter of its own has (`app.tenant`,
/// `myext.option`). ASCII only here: another name is not carried.
pub fn custom_name(name: &str) -> Option<Box<str>> {
    if name.len() > MAX_CUSTOM_NAME || !name.contains('.') {
        return None;
    }
    let valid = name.split('.').all(|part| {
        let mut bytes = part.bytes();
        bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
    });
    valid.then(|| name.to_ascii_lowercase().into_boxed_str())
}

/// Source of `ClientParams::id`s; 0 is never issued.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Value sets seen so far and their ids, so that clients with equal values share an id, and the
/// values themselves: an idle client holds a pointer, not its own copy of every slot.
static INTERNED: OnceLock<Mutex<HashMap<Arc<Values>, u64>>> = OnceLock::new();

/// At most this many value sets are interned; beyond, new sets get ids of their own (still
/// correct, only compared in full more often).
const MAX_INTERNED: usize = 4096;

/// A set of values, shared with every client that has the same, and its id: equal ids mean
/// equal values. Called at login and when a value changes, never per transaction.
fn intern(values: Values) -> (Arc<Values>, u64) {
    let mut map = INTERNED.get_or_init(Default::default).lock();
    if let Some((shared, id)) = map.get_key_value(&values) {
        return (shared.clone(), *id);
    }
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let values = Arc::new(values);
    if map.len() < MAX_INTERNED {
        map.insert(values.clone(), id);
    }
    (values, id)
}

/// A client's values plus an identity shared by every client with the same values and
/// changed whenever they change: a server connection synced with an identity still has
/// exactly those values, which spares comparing them all on every transaction.
#[derive(Debug)]
pub struct ClientParams {
    /// Shared and copied on change (`intern`).
    values: Arc<Values>,
    id: u64,
    /// Bit i: the client's statements since the last read-back may have changed `TRACKED[i]`
    /// (only unreported ones are marked; see `frontend::relay::session_state`).
    pub dirty: u64,
    /// Custom settings the client's statements may have set or reset since the last read-back
    /// (`frontend::relay::scan::custom`), read back with those it has.
    custom_pending: Vec<Box<str>>,
}

impl ClientParams {
    pub fn new(values: Values) -> ClientParams {
        let (values, id) = intern(values);
        ClientParams {
            values,
            id,
            dirty: 0,
            custom_pending: Vec::new(),
        }
    }

    #[cfg(test)]
    pub fn values(&self) -> &Values {
        &self.values
    }

    /// The client's value of `TRACKED[i]` as the pooler knows it (None: the server's default).
    #[inline]
    pub fn value(&self, i: usize) -> Option<&str> {
        self.values[i].as_deref()
    }

    /// The client's `search_path` as the pooler knows it (empty: the server's default), what
    /// its prepared statements are told apart by (`prepared::Registry::intern`).
    #[inline]
    pub fn search_path(&self) -> &[u8] {
        self.values[SEARCH_PATH].as_deref().unwrap_or("").as_bytes()
    }

    /// The client's custom settings, sorted by name.
    pub fn custom(&self) -> &[(Box<str>, Box<str>)] {
        self.values.custom()
    }

    /// The client's value of custom setting `name` (a name `custom_name` gave).
    pub fn custom_value(&self, name: &str) -> Option<&str> {
        self.values.custom_value(name)
    }

    /// A custom setting (a name `custom_name` gave) the client's statements may have set.
    pub fn note_custom(&mut self, name: Box<str>) {
        if self.custom_pending.len() < MAX_CUSTOM && !self.custom_pending.contains(&name) {
            self.custom_pending.push(name);
        }
    }

    /// How many custom settings the client carries or its statements named since the last
    /// read-back (which it may carry after it).
    pub fn customs_named(&self) -> usize {
        let carried = self.custom();
        carried.len()
            + self
                .custom_pending
                .iter()
                .filter(|n| self.custom_value(n).is_none())
                .count()
    }

    /// Whether a SET of custom setting `name` would add one to `customs_named`.
    pub fn would_add_custom(&self, name: &str) -> bool {
        self.custom_value(name).is_none() && !self.custom_pending.iter().any(|n| **n == *name)
    }

    /// The custom settings to read back at a reset: those the client has and those its
    /// statements may have set since the last read-back (which are forgotten here).
    pub fn customs_to_read(&mut self) -> Vec<Box<str>> {
        let mut names: Vec<Box<str>> = self.custom().iter().map(|(n, _)| n.clone()).collect();
        for name in std::mem::take(&mut self.custom_pending) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }

    /// Custom settings read back from the server: each one's value, or None when the server
    /// has no such setting.
    pub fn learned_custom(&mut self, read: &[(Box<str>, Option<Box<str>>)]) {
        let mut values = (*self.values).clone();
        for (name, value) in read {
            values.set_custom(name, value.clone());
        }
        if values != *self.values {
            (self.values, self.id) = intern(values);
        }
    }

    /// Gives the values in `changes` (index, value): a set of their own (or the one shared by
    /// clients with those values) and its id when one differs, nothing otherwise.
    fn set(&mut self, changes: impl IntoIterator<Item = (usize, Option<Box<str>>)>) {
        let mut changed: Option<Values> = None;
        for (i, value) in changes {
            if self.values[i] != value {
                changed.get_or_insert_with(|| (*self.values).clone())[i] = value;
            }
        }
        if let Some(values) = changed {
            (self.values, self.id) = intern(values);
        }
    }
}

/// What a server connection has: current values and, for reported ones, the defaults it
/// started with.
#[derive(Default, Debug)]
pub struct ServerParams {
    pub current: Values,
    pub defaults: Values,
    /// The `ClientParams::id` these values are known to match (0: none).
    matches: u64,
}

impl ServerParams {
    /// Records a ParameterStatus from the server.
    pub fn reported(&mut self, name: &str, value: &str, at_startup: bool) {
        if let Some(i) = index(name) {
            if self.current[i].as_deref() != Some(value) {
                self.current[i] = Some(value.into());
                self.matches = 0;
            }
            if at_startup {
                self.defaults[i] = Some(value.into());
                self.matches = 0;
            }
        }
    }

    /// A ParameterStatus while serving `client` (e.g. after its SET): the client takes the
    /// value too, so a server that matched it still does.
    pub fn reported_to(&mut self, name: &str, value: &str, client: &mut ClientParams) {
        let Some(i) = index(name) else { return };
        let matched = self.matches != 0 && self.matches == client.id;
        self.reported(name, value, false);
        if client.values[i].as_deref() != Some(value) {
            client.set([(i, Some(value.into()))]);
        }
        if matched {
            self.matches = client.id;
        }
    }

    /// Values read back from the server after a client's statements changed them: the server
    /// has them, and so does the client (if it is still there). A server that matched the
    /// client still does.
    pub fn learned(&mut self, read: &[(usize, Box<str>)], client: Option<&mut ClientParams>) {
        for (i, v) in read {
            self.current[*i] = Some(v.clone());
        }
        match client {
            Some(client) => {
                let matched = self.matches != 0 && self.matches == client.id;
                let differing: Vec<_> = read
                    .iter()
                    .filter(|(i, v)| client.values[*i].as_deref() != Some(&**v))
                    .map(|(i, v)| (*i, Some(v.clone())))
                    .collect();
                client.set(differing);
                self.matches = if matched { client.id } else { 0 };
            }
            None => self.matches = 0,
        }
    }

    /// The value of unreported parameter `i` a client's own SET gave the server (taken from
    /// the statement: `frontend::relay::scan::literal`; None is the default). As `learned`, for
    /// one value, and without work when it is the value both already had (a SET repeated on
    /// every transaction).
    pub fn learned_one(&mut self, i: usize, value: Option<Box<str>>, client: &mut ClientParams) {
        let matched = self.matches != 0 && self.matches == client.id;
        if client.values[i] != value {
            client.set([(i, value.clone())]);
        }
        if self.current[i] != value {
            self.current[i] = value;
        }
        self.matches = if matched { client.id } else { 0 };
    }

    /// The value of a custom setting a client's own SET gave the server (as `learned_one`).
    /// False, changing nothing, when the client already carries `MAX_CUSTOM` others.
    #[cold]
    pub fn learned_custom_one(
        &mut self,
        name: &str,
        value: Option<Box<str>>,
        client: &mut ClientParams,
    ) -> bool {
        let full = |v: &Values| v.custom_value(name).is_none() && v.custom().len() >= MAX_CUSTOM;
        if full(&client.values) || full(&self.current) {
            return false;
        }
        let matched = self.matches != 0 && self.matches == client.id;
        if client.custom_value(name) != value.as_deref() {
            let mut values = (*client.values).clone();
            values.set_custom(name, value.clone());
            (client.values, client.id) = intern(values);
        }
        self.current.set_custom(name, value);
        self.matches = if matched { client.id } else { 0 };
        true
    }

    /// SQL that makes this server's values match `client`, or None when they already match
    /// (remembered, so the next check for this client is one comparison).
    pub fn sync_sql(&mut self, client: &ClientParams) -> Option<String> {
        if self.matches == client.id {
            return None;
        }
        let sql = self.diff_sql(&client.values);
        if sql.is_none() {
            self.matches = client.id;
        }
        sql
    }

    fn diff_sql(&self, client: &Values) -> Option<String> {
        let mut sets: Vec<String> = Vec::new();
        let mut resets: Vec<&str> = Vec::new();
        for (i, name) in TRACKED.iter().enumerate() {
            if i < REPORTED {
                let desired = client[i].as_deref().or(self.defaults[i].as_deref());
                if let Some(d) = desired {
                    if self.current[i].as_deref() != Some(d) {
                        sets.push(format!(
                            "pg_catalog.set_config('{name}', {}, false)",
                            literal(d)
                        ));
                    }
                }
            } else if client[i] != self.current[i] {
                match client[i].as_deref() {
                    Some(d) => sets.push(format!(
                        "pg_catalog.set_config('{name}', {}, false)",
                        literal(d)
                    )),
                    None => resets.push(name),
                }
            }
        }
        // The client's custom settings, and a reset of those an earlier client left (a NULL
        // value resets). Names and values are the client's: quoted as literals.
        for (name, value) in client.custom() {
            if self.current.custom_value(name) != Some(&**value) {
                sets.push(format!(
                    "pg_catalog.set_config({}, {}, false)",
                    literal(name),
                    literal(value)
                ));
            }
        }
        for (name, _) in self.current.custom() {
            if client.custom_value(name).is_none() {
                sets.push(format!(
                    "pg_catalog.set_config({}, NULL, false)",
                    literal(name)
                ));
            }
        }
        if sets.is_empty() && resets.is_empty() {
            return None;
        }
        let mut sql = String::new();
        if !sets.is_empty() {
            sql.push_str("SELECT ");
            sql.push_str(&sets.join(", "));
            sql.push(';');
        }
        for r in resets {
            sql.push_str("RESET ");
            sql.push_str(r);
            sql.push(';');
        }
        Some(sql)
    }

    /// After a successful sync (or a `sync_sql` of None) the server has exactly the
    /// client's values.
    pub fn synced(&mut self, client: &ClientParams) {
        self.matches = client.id;
        for (i, wanted) in client.values.iter().enumerate() {
            if i < REPORTED {
                if let Some(d) = wanted.as_ref().or(self.defaults[i].as_ref()) {
                    self.current[i] = Some(d.clone());
                }
            } else {
                self.current[i] = wanted.clone();
            }
        }
        self.current.custom = client.values.custom.clone();
    }

    /// The pooler could not learn what a client changed: trust no match, so that the next
    /// client's sync compares (and sets) everything. Custom settings change only with a reset
    /// (`SESSION`), whose failure closes the connection, or by a sync, whose failure changes
    /// nothing (one statement): they are still known.
    pub fn reset_unsure(&mut self) {
        self.matches = 0;
        for i in REPORTED..TRACKED.len() {
            // Unknown: a value no client has, so the next sync sets or resets it.
            self.current[i] = Some("\u{0}unknown".into());
        }
    }

    /// After DISCARD ALL / RESET ALL every parameter is back to its default.
    pub fn reset(&mut self) {
        self.matches = 0;
        for i in 0..TRACKED.len() {
            self.current[i] = if i < REPORTED {
                self.defaults[i].clone()
            } else {
                None
            };
        }
        self.current.custom = Box::default();
    }
}

/// An escape-string literal: safe whatever standard_conforming_strings is.
pub fn literal(value: &str) -> String {
    let mut s = String::with_capacity(value.len() + 4);
    s.push_str("E'");
    for c in value.chars() {
        match c {
            '\'' => s.push_str("''"),
            '\\' => s.push_str("\\\\"),
            c => s.push(c),
        }
    }
    s.push('\'');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_path_index() {
        assert_eq!(TRACKED[SEARCH_PATH], "search_path");
    }

    #[test]
    fn sync_sets_differences_and_resets_unreported() {
        let mut server = ServerParams::default();
        server.reported("DateStyle", "ISO, MDY", true);
        server.reported("application_name", "", true);
        server.current[6] = Some("other".into());
        let mut values: Values = Default::default();
        values[0] = Some("app's".into());
        let client = ClientParams::new(values);
        let sql = server.sync_sql(&client).unwrap();
        assert_eq!(
            sql,
            "SELECT pg_catalog.set_config('application_name', E'app''s', false);RESET search_path;"
        );
        server.synced(&client);
        assert_eq!(server.sync_sql(&client), None);
        // Another client with the same values shares the identity.
        let other = ClientParams::new(client.values().clone());
        assert_eq!(other.id, client.id);
        assert_eq!(server.sync_sql(&other), None);
        // A SET reported while serving `client` keeps the two in step.
        let mut client = client;
        server.reported_to("application_name", "changed", &mut client);
        assert_ne!(other.id, client.id);
        assert_eq!(server.sync_sql(&client), None);
        assert!(server.sync_sql(&other).is_some());
    }

    /// A client's custom settings are set on a server connection that lacks them, and those an
    /// earlier client left there are reset (NULL), names and values quoted as literals.
    #[test]
    fn sync_sets_custom_settings_and_resets_another_clients() {
        assert_eq!(custom_name("App.Tenant").as_deref(), Some("app.tenant"));
        assert_eq!(custom_name("a.b.c_1$").as_deref(), Some("a.b.c_1$"));
        for bad in [
            "tenant", "app.", ".x", "app..x", "app.1x", "app.x y", "äpp.x", "a'.b",
        ] {
            assert_eq!(custom_name(bad), None, "{bad}");
        }
        let mut a: Values = Default::default();
        assert!(a.set_custom("app.tenant", Some("a'1".into())));
        let a = ClientParams::new(a);
        let b = ClientParams::new(Default::default());
        let mut server = ServerParams::default();
        assert_eq!(
            server.sync_sql(&a).unwrap(),
            "SELECT pg_catalog.set_config(E'app.tenant', E'a''1', false);"
        );
        server.synced(&a);
        assert_eq!(server.sync_sql(&a), None);
        assert_eq!(
            server.sync_sql(&b).unwrap(),
            "SELECT pg_catalog.set_config(E'app.tenant', NULL, false);"
        );
        server.synced(&b);
        assert_eq!(server.sync_sql(&b), None);
        // What a reset read back: a value kept, a setting the server does not have forgotten.
        let mut c = ClientParams::new(Default::default());
        c.note_custom("app.x".into());
        c.note_custom("app.y".into());
        assert_eq!(
            c.customs_to_read(),
            [Box::from("app.x"), Box::from("app.y")]
        );
        c.learned_custom(&[("app.x".into(), Some("v".into())), ("app.y".into(), None)]);
        assert_eq!(c.custom(), [(Box::from("app.x"), Box::from("v"))]);
        assert_eq!(c.customs_to_read(), [Box::from("app.x")]);
        // At most `MAX_CUSTOM` are carried.
        let mut many: Values = Default::default();
        for i in 0..MAX_CUSTOM {
            assert!(many.set_custom(&format!("app.s{i:03}"), Some("1".into())));
        }
        assert!(!many.set_custom("app.z", Some("1".into())));
        assert!(many.set_custom("app.s000", None));
        assert!(many.set_custom("app.z", Some("1".into())));
    }

    /// Clients with the same values hold one shared set; a change gives the changed client a
    /// copy of its own (or the set another client with those values holds), leaving the
    /// others' as they were.
    #[test]
    fn equal_values_are_shared_and_copied_on_change() {
        let mut values: Values = Default::default();
        values[0] = Some("shared-app".into());
        let a = ClientParams::new(values.clone());
        let mut b = ClientParams::new(values);
        assert!(Arc::ptr_eq(&a.values, &b.values));
        let mut server = ServerParams::default();
        server.learned_one(6, Some("s1".into()), &mut b);
        assert!(!Arc::ptr_eq(&a.values, &b.values));
        assert_eq!(a.values[6], None);
        assert_eq!(b.values[6].as_deref(), Some("s1"));
        assert_eq!(b.values[0].as_deref(), Some("shared-app"));
        // The same value again changes nothing; back to the first set, the first set is shared.
        let before = b.values.clone();
        server.learned_one(6, Some("s1".into()), &mut b);
        assert!(Arc::ptr_eq(&before, &b.values));
        server.learned_one(6, None, &mut b);
        assert!(Arc::ptr_eq(&a.values, &b.values));
        assert_eq!(a.id, b.id);
    }
}
