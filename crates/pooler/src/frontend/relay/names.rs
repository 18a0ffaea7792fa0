//! A client's statement names follow what the server did with its Parses and Closes.
//!
//! The pooler changes a client's names (`prepared::ClientStatements`) as it relays a named Parse
//! or Close (or an extended-protocol `DEALLOCATE`), before the server answers, and keeps each
//! change (`NameChange`) until then. When the server skips the message (an error earlier in its
//! segment) or refuses it (a Parse that fails, one in a failed transaction block), the change is
//! undone, as PostgreSQL leaves the names as they were: a name whose Parse failed does not exist
//! (Bind and `DEALLOCATE` get 26000), a statement whose Close was skipped still does. The
//! client's unnamed statement is changed so too, by its Parse and Close: one the server skips
//! leaves the previous unnamed statement in place; one that fails leaves none, as PostgreSQL
//! drops the previous one before it parses (`failed_unnamed`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{Expect, RelayState};
use crate::net::messages::tag;
use crate::prepared::{ClientStatements, Statement, UnnamedMarks};

/// How far the checks below look through the answers owed (`RelayState::expect`, `names`)
/// for each message, so that a client's deep pipeline costs the pooler no more per message.
const SCAN: usize = 64;

/// A change to the client's names, with what it replaced.
#[derive(Debug)]
pub enum NameChange {
    /// A name and what it named before (None: nothing).
    One {
        name: Box<[u8]>,
        before: Option<Arc<Statement>>,
    },
    /// Every name went (`DEALLOCATE ALL`); these were the names.
    All(HashMap<Box<[u8]>, Arc<Statement>>),
    /// The unnamed statement changed: what it was (its Parse, empty for none, and what the
    /// pooler knew of it), and whether the server connection held it
    /// (`RelayState::unnamed_here`).
    Unnamed {
        parse: Vec<u8>,
        tag: UnnamedMarks,
        here: bool,
    },
}

/// Changes the client's names for a Parse (`now`: Some) or Close (None) of `name` about to be
/// relayed, keeping what the name was until the answer (its `Expect` is marked
/// `Expect::named`).
pub fn change(
    relay: &mut RelayState,
    statements: &mut ClientStatements,
    name: &[u8],
    now: Option<Arc<Statement>>,
) {
    let before = statements.set(name, now);
    relay.names.push_back(NameChange::One {
        name: crate::prepared::key(name).into(),
        before,
    });
}

/// Drops every name of the client for a `DEALLOCATE ALL` about to be relayed, keeping them
/// until the answer, as `change` does.
#[cold]
pub fn drop_all(relay: &mut RelayState, statements: &mut ClientStatements) {
    let names = statements.take_names();
    relay.names.push_back(NameChange::All(names));
}

/// Changes the client's unnamed statement for its Parse (`now`: the whole message) or Close
/// (None) about to be relayed, keeping what it was until the answer, as `change` does. The
/// server connection holds it after a Parse, not after a Close.
pub fn change_unnamed(
    relay: &mut RelayState,
    statements: &mut ClientStatements,
    now: Option<&[u8]>,
) {
    let (parse, tag) = statements.replace_unnamed(now);
    relay.names.push_back(NameChange::Unnamed {
        parse,
        tag,
        here: relay.unnamed_here,
    });
    relay.unnamed_here = now.is_some();
}

/// The server ran a statement that dropped every name of the client (`DEALLOCATE ALL`, or
/// `DISCARD ALL`), before the messages whose changes still wait: the names these made stay,
/// and undoing one of them brings back none of the names that went. Only the first waiting
/// change of a name (or a `DEALLOCATE ALL` before any change of it) holds what the name was
/// before the drop; a later one holds what an earlier waiting change made, which stays.
#[cold]
pub fn server_dropped_all(relay: &mut RelayState, statements: &mut ClientStatements) {
    let mut made: HashSet<&[u8]> = HashSet::new();
    let mut all_taken = false;
    for c in relay.names.iter_mut() {
        match c {
            NameChange::One { name, before } => {
                if !all_taken && !made.contains(&**name) {
                    *before = None;
                }
                made.insert(&**name);
            }
            NameChange::All(names) => {
                if !all_taken {
                    names.retain(|name, _| made.contains(&**name));
                }
                all_taken = true;
            }
            NameChange::Unnamed { .. } => {}
        }
    }
    statements.retain(|name| made.contains(name));
}

/// Answers are owed, all of them to segments the client ended (the last message relayed is a
/// Sync or a Query): waiting for them cannot wait for a Sync not relayed yet.
#[inline]
pub fn earlier_segments_only(relay: &RelayState) -> bool {
    relay
        .expect
        .back()
        .is_some_and(|e| e.kind == tag::SYNC || e.kind == tag::QUERY)
}

/// An unanswered message that may drop the client's statement names: a Query holding a
/// `DEALLOCATE ALL` or `DISCARD` (`scan::DROPS`), an Execute of a portal bound to a `DISCARD
/// ALL` (`prepared::stand_in_tag::DROPS`).
fn drops_names(e: &Expect) -> bool {
    (e.kind == tag::QUERY && e.stmt == super::scan::literal::DROPS_MARK)
        || (e.kind == tag::EXECUTE && e.stmt == crate::prepared::stand_in_tag::DROPS as u64)
}

/// Whether the client's message `msg` (of type `tag`) names a statement whose change waits
/// for its answer in an earlier segment (a Parse or Close before a Sync already relayed). Its
/// name is resolved when that answer is in, as PostgreSQL resolves it after running the earlier
/// segment: should the server skip that Parse or Close, or refuse the Parse, the name is not
/// what the pooler made of it when it relayed the change. So does a name behind an SQL
/// `DEALLOCATE` the pooler answers, a Parse of a name the client has behind a Query or
/// Execute of an earlier segment (it may be a `DISCARD ALL`), and a name the client has behind
/// a Query the server runs a `DEALLOCATE ALL` or `DISCARD` in; and a simple Query (it drops the
/// unnamed statement) behind a change to the unnamed statement.
#[cold]
pub fn waits(relay: &RelayState, statements: &ClientStatements, tag: u8, msg: &[u8]) -> bool {
    if relay.skipping_segment() {
        // The server skips the message (every earlier segment is answered).
        return false;
    }
    use crate::net::messages::extended::{parse_bind, parse_parse, parse_target};
    use crate::net::messages::tag::target;
    let name = match tag {
        tag::PARSE => parse_parse(msg).map(|p| p.name),
        tag::BIND => parse_bind(msg).map(|b| b.statement),
        tag::DESCRIBE | tag::CLOSE => match parse_target(msg) {
            Some((target::STATEMENT, name)) => Some(name),
            _ => None,
        },
        // A simple Query drops the unnamed statement after what an earlier segment does to it.
        tag::QUERY => {
            return (relay.names.len() > SCAN
                || relay
                    .names
                    .iter()
                    .any(|c| matches!(c, NameChange::Unnamed { .. })))
                && earlier_segments_only(relay)
        }
        _ => None,
    };
    let Some(name) = name else {
        return false;
    };
    if tag != tag::PARSE && server_parse_waits(relay, statements, name) {
        return true;
    }
    if !name.is_empty()
        && tag != tag::CLOSE
        && relay.expect.iter().take(SCAN).any(drops_names)
        && statements.get(name).is_some()
    {
        // Behind a Query whose `DEALLOCATE ALL` or `DISCARD` may drop the name (`scan::DROPS`),
        // or an Execute of a `DISCARD ALL` (earlier in its own segment too: the wait asks for
        // the answers with a Flush): PostgreSQL resolves it after that ran.
        return true;
    }
    if tag == tag::PARSE && !name.is_empty() && statements.get(name).is_some() {
        // A Parse of a name the client has (42P05) behind a Query or Execute of an earlier
        // segment, which may drop names (a `DISCARD ALL`): its answer decides.
        if earlier_entries(relay).is_some_and(|earlier| {
            earlier > SCAN
                || relay
                    .expect
                    .iter()
                    .take(earlier)
                    .any(|e| e.kind == tag::QUERY || e.kind == tag::EXECUTE)
        }) {
            return true;
        }
    }
    if relay.names.is_empty() && relay.deallocs.is_empty() {
        return false;
    }
    if !name.is_empty() && !relay.deallocs.is_empty() {
        // An SQL `DEALLOCATE` the pooler answers in its turn (a Query: an earlier segment).
        return true;
    }
    // The changes of the segment being relayed (after the last Sync or Query relayed) fail
    // or hold with it. A segment too long to look through is resolved as it is relayed: its
    // Sync is not relayed yet, so waiting could wait for an answer the server never sends.
    let Some(earlier) = earlier_changes(relay) else {
        return false;
    };
    // Changes waiting in earlier segments: a long queue of them is waited for without looking
    // (those segments' Syncs are relayed: their answers come).
    if earlier > SCAN {
        return true;
    }
    relay.names.iter().take(earlier).any(|c| match c {
        NameChange::One { name: n, .. } => !name.is_empty() && **n == *crate::prepared::key(name),
        NameChange::All(_) => !name.is_empty(),
        NameChange::Unnamed { .. } => name.is_empty(),
    })
}

/// Whether the server's statement behind the client's `name` is made by a Parse (the
/// client's, or the pooler's in front of a Bind on a connection without it; for the unnamed
/// statement, any unnamed Parse) in an earlier segment still unanswered, and by none in the
/// segment being relayed: should the server skip that Parse (an error earlier in its segment),
/// the statement would not exist for this message, or be another client's unnamed statement,
/// where PostgreSQL has the client's own. Its answer decides whether the pooler parses it
/// again first.
fn server_parse_waits(relay: &RelayState, statements: &ClientStatements, name: &[u8]) -> bool {
    let id = if name.is_empty() {
        0
    } else {
        match statements.get(name) {
            Some(stmt) => stmt.id,
            None => return false,
        }
    };
    let makes = |e: &Expect| e.kind == tag::PARSE && e.stmt == id;
    earlier_entries(relay).is_some_and(|earlier| {
        !relay.expect.iter().skip(earlier).any(makes)
            && relay.expect.iter().take(earlier.min(SCAN)).any(makes)
    })
}

/// Whether answers of segments before the one being relayed are still owed (or the current
/// segment is too long to tell).
pub fn earlier_unanswered(relay: &RelayState) -> bool {
    earlier_entries(relay).is_none_or(|n| n > 0)
}

/// How many of the answers owed belong to segments before the one being relayed (up to the
/// last Sync or Query relayed); None when the current segment is too long to look through.
fn earlier_entries(relay: &RelayState) -> Option<usize> {
    let segment = relay
        .expect
        .iter()
        .rev()
        .take(SCAN)
        .take_while(|e| e.kind != tag::SYNC && e.kind != tag::QUERY)
        .count();
    (segment < SCAN).then(|| relay.expect.len() - segment)
}

/// How many of `relay.names`, from the oldest, are changes of segments before the one being
/// relayed (up to the last Sync or Query relayed); None when no such boundary is among the
/// last `SCAN` answers owed (there is no earlier segment, or this one is too long to look
/// through).
fn earlier_changes(relay: &RelayState) -> Option<usize> {
    let mut current = 0;
    for e in relay.expect.iter().rev().take(SCAN) {
        if e.kind == tag::SYNC || e.kind == tag::QUERY {
            return Some(relay.names.len().saturating_sub(current));
        }
        current += e.named as usize;
    }
    None
}

/// Whether `name` exists may change with answers the server still owes before a Parse about
/// to be relayed: a statement not answered yet may drop names (a Query holding anything, an
/// Execute of a `DISCARD ALL`: `drops_names`; a `DEALLOCATE` in an Execute is the pooler's, which
/// changed the names as it relayed it), or a change to the name waits for its answer in an
/// earlier segment. One in this segment either holds (the name is taken, 42P05 now as later),
/// or failed and has the server skip the rest of the segment, this Parse too.
#[cold]
pub fn pending(relay: &RelayState, name: &[u8]) -> bool {
    if relay.expect.len() > SCAN || relay.names.len() > SCAN {
        // Too many answers owed to look through each time: let it through.
        return true;
    }
    if relay
        .expect
        .iter()
        .any(|e| e.kind == tag::QUERY || drops_names(e))
    {
        return true;
    }
    let earlier = earlier_changes(relay).unwrap_or(0);
    relay.names.iter().take(earlier).any(|c| match c {
        NameChange::One { name: n, .. } => **n == *crate::prepared::key(name),
        NameChange::All(_) => true,
        NameChange::Unnamed { .. } => false,
    })
}

/// The server answered (or the pooler, in its turn) the Parse/Close `e`: its changes hold.
#[inline]
pub fn answered(relay: &mut RelayState, e: Expect) {
    for _ in 0..e.named {
        relay.names.pop_front();
    }
}

/// The server skipped or refused the Parse/Close `e`: its changes are to be undone (`undo`,
/// once the run of skipped messages is known).
#[inline]
pub fn skipped(relay: &mut RelayState, e: Expect) {
    relay.names_skipped += e.named as usize;
}

/// The server skipped a Parse of the pooler's own that would have given it the client's
/// unnamed statement (`from_client::ensure_unnamed`), or another of its own unnamed Parses: the
/// changes to the client's unnamed statement relayed after it took the server to hold the
/// client's then (`NameChange::Unnamed::here`), which it does not, so that undoing one of them
/// leaves the pooler to parse the client's statement again before its next use.
#[cold]
pub fn unnamed_parse_skipped(relay: &mut RelayState) {
    // The changes of messages before this one are the first `names_skipped` (the answered
    // ones are gone).
    for c in relay.names.iter_mut().skip(relay.names_skipped) {
        if let NameChange::Unnamed { here, .. } = c {
            *here = false;
        }
    }
}

/// The server refused the Parse `e` (the oldest not answered): true when it parsed the
/// unnamed statement, which PostgreSQL dropped before parsing, so that the client has none
/// once the changes are undone.
#[inline]
pub fn failed_unnamed(relay: &RelayState, e: Expect) -> bool {
    e.kind == tag::PARSE
        && e.named > 0
        && matches!(relay.names.front(), Some(NameChange::Unnamed { .. }))
}

/// Undoes the changes of the messages just skipped (`skipped`), the latest first, so that a
/// name changed twice among them (a Close, then a Parse again) ends as it was before both.
/// Changes still waiting behind them are not undone: where one of those changes the same
/// name, it takes over what the name was before the undone change (what undoing it then
/// restores), and the name stays as that later change made it. A run can end before the rest
/// of its segment's changes (a pooler-answered message skipped before the Parse behind it is
/// answered), so an earlier change may be undone before a later one of the same name.
#[cold]
pub fn undo(relay: &mut RelayState, statements: &mut ClientStatements) {
    let n = std::mem::take(&mut relay.names_skipped).min(relay.names.len());
    let undone: Vec<NameChange> = relay.names.drain(..n).collect();
    for c in undone.into_iter().rev() {
        match c {
            NameChange::One { name, before } => {
                if let Some(before) = hand_over(&mut relay.names, &name, before) {
                    statements.set(&name, before);
                }
            }
            // Names made since (by messages not skipped) stay as they are.
            NameChange::All(names) => {
                let rest: HashMap<_, _> = names
                    .into_iter()
                    .filter_map(|(name, stmt)| {
                        hand_over(&mut relay.names, &name, Some(stmt.clone())).map(|_| (name, stmt))
                    })
                    .collect();
                statements.restore_names(rest);
            }
            NameChange::Unnamed { parse, tag, here } => {
                let later = relay.names.iter_mut().find_map(|c| match c {
                    NameChange::Unnamed { parse, tag, here } => Some((parse, tag, here)),
                    _ => None,
                });
                match later {
                    Some((p, t, h)) => (*p, *t, *h) = (parse, tag, here),
                    None => {
                        statements.restore_unnamed(parse, tag);
                        relay.unnamed_here = here;
                    }
                }
            }
        }
    }
}

/// Hands what `name` was before an undone change (`before`) to the first change still waiting
/// that changes `name` too (a Parse or Close of it, or a `DEALLOCATE ALL`); returns it back
/// when there is none, for the caller to restore.
fn hand_over(
    waiting: &mut std::collections::VecDeque<NameChange>,
    name: &[u8],
    before: Option<Arc<Statement>>,
) -> Option<Option<Arc<Statement>>> {
    for c in waiting.iter_mut() {
        match c {
            NameChange::One { name: n, before: b } if **n == *name => {
                *b = before;
                return None;
            }
            NameChange::All(names) => {
                match before {
                    Some(stmt) => names.insert(name.into(), stmt),
                    None => names.remove(name),
                };
                return None;
            }
            _ => {}
        }
    }
    Some(before)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::relay::Action;

    fn bind(statement: &[u8]) -> Vec<u8> {
        let mut body = vec![0];
        body.extend_from_slice(statement);
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
        let mut m = vec![tag::BIND];
        m.extend_from_slice(&(4 + body.len() as u32).to_be_bytes());
        m.extend_from_slice(&body);
        m
    }

    fn entry(kind: u8, named: u8) -> Expect {
        Expect {
            kind,
            action: Action::Forward,
            stmt: 0,
            named,
        }
    }

    fn one(name: &[u8]) -> NameChange {
        NameChange::One {
            name: name.into(),
            before: None,
        }
    }

    #[test]
    fn a_name_waits_for_a_change_in_an_earlier_segment_only() {
        let statements = ClientStatements::default();
        let mut relay = RelayState::default();
        // A named Parse (its server statement's id; 0 is an unnamed Parse's).
        relay.expect.push_back(Expect {
            stmt: 7,
            ..entry(tag::PARSE, 1)
        });
        relay.names.push_back(one(b"s1"));
        // The same segment: the Bind fails or holds with the Parse.
        assert!(!waits(&relay, &statements, tag::BIND, &bind(b"s1")));
        relay.expect.push_back(entry(tag::SYNC, 0));
        assert!(waits(&relay, &statements, tag::BIND, &bind(b"s1")));
        assert!(!waits(&relay, &statements, tag::BIND, &bind(b"s2")));
        assert!(!waits(&relay, &statements, tag::BIND, &bind(b"")));
        // The unnamed statement's own change.
        relay.expect.push_back(entry(tag::CLOSE, 1));
        relay.names.push_back(NameChange::Unnamed {
            parse: Vec::new(),
            tag: UnnamedMarks::default(),
            here: false,
        });
        assert!(!waits(&relay, &statements, tag::BIND, &bind(b"")));
        relay.expect.push_back(entry(tag::SYNC, 0));
        assert!(waits(&relay, &statements, tag::BIND, &bind(b"")));
    }

    #[test]
    fn a_taken_name_waits_for_a_query_or_execute_of_an_earlier_segment() {
        let mut statements = ClientStatements::default();
        let stmt = crate::prepared::Registry::default().intern(b"select 1\0\0\0", b"");
        statements.insert(b"s1", stmt);
        let parse = |name: &[u8]| {
            let mut body = name.to_vec();
            body.extend_from_slice(b"\0select 2\0\0\0");
            let mut m = vec![tag::PARSE];
            m.extend_from_slice(&(4 + body.len() as u32).to_be_bytes());
            m.extend_from_slice(&body);
            m
        };
        let mut relay = RelayState::default();
        relay.expect.push_back(entry(tag::EXECUTE, 0));
        // The same segment: no Sync relayed, so no answer would come to wait for.
        assert!(!waits(&relay, &statements, tag::PARSE, &parse(b"s1")));
        relay.expect.push_back(entry(tag::SYNC, 0));
        assert!(waits(&relay, &statements, tag::PARSE, &parse(b"s1")));
        // A name the client does not have is made whatever that answer is.
        assert!(!waits(&relay, &statements, tag::PARSE, &parse(b"s2")));
    }

    #[test]
    fn a_bind_waits_for_its_statements_parse_in_an_earlier_segment() {
        let mut statements = ClientStatements::default();
        let stmt = crate::prepared::Registry::default().intern(b"select 1\0\0\0", b"");
        let id = stmt.id;
        statements.insert(b"s1", stmt);
        let mut relay = RelayState::default();
        // The pooler's Parse of s1's server statement, in front of a Bind of this segment.
        relay.expect.push_back(Expect {
            stmt: id,
            ..entry(tag::PARSE, 0)
        });
        relay.expect.push_back(entry(tag::BIND, 0));
        assert!(!waits(&relay, &statements, tag::BIND, &bind(b"s1")));
        // Its segment ended: should the server skip it, the next segment's Bind would fail.
        relay.expect.push_back(entry(tag::SYNC, 0));
        assert!(waits(&relay, &statements, tag::BIND, &bind(b"s1")));
        assert!(!waits(&relay, &statements, tag::BIND, &bind(b"s2")));
        assert!(!waits(&relay, &statements, tag::BIND, &bind(b"")));
        // The unnamed statement: the pooler's Parse of the client's in an earlier segment.
        relay.expect.push_front(entry(tag::PARSE, 0));
        assert!(waits(&relay, &statements, tag::BIND, &bind(b"")));
        // One in the segment being relayed is the one its Bind uses.
        relay.expect.push_back(entry(tag::PARSE, 0));
        assert!(!waits(&relay, &statements, tag::BIND, &bind(b"")));
    }

    #[test]
    fn a_deep_pipeline_is_not_looked_through_message_by_message() {
        let statements = ClientStatements::default();
        let mut relay = RelayState::default();
        // A current segment longer than SCAN, no Sync in sight: resolved as relayed.
        relay.expect.push_back(entry(tag::PARSE, 1));
        relay.names.push_back(one(b"s1"));
        relay.expect.push_back(entry(tag::SYNC, 0));
        for _ in 0..=SCAN {
            relay.expect.push_back(entry(tag::BIND, 0));
        }
        assert!(!waits(&relay, &statements, tag::BIND, &bind(b"s1")));
        // More earlier changes than SCAN: waited for without looking.
        let mut relay = RelayState::default();
        for i in 0..=SCAN {
            relay.expect.push_back(entry(tag::PARSE, 1));
            relay.names.push_back(one(format!("n{i}").as_bytes()));
        }
        relay.expect.push_back(entry(tag::SYNC, 0));
        assert!(waits(&relay, &statements, tag::BIND, &bind(b"other")));
    }

    fn id(statements: &ClientStatements, name: &[u8]) -> Option<u64> {
        statements.get(name).map(|s| s.id)
    }

    #[test]
    fn an_earlier_change_undone_first_hands_its_name_to_the_later_one() {
        let registry = crate::prepared::Registry::default();
        let (a, b) = (
            registry.intern(b"select 1\0\0\0", b""),
            registry.intern(b"select 2\0\0\0", b""),
        );
        let mut statements = ClientStatements::default();
        statements.insert(b"s1", a.clone());
        let mut relay = RelayState::default();
        // A Close of s1, then a Parse of it again, both waiting.
        change(&mut relay, &mut statements, b"s1", None);
        change(&mut relay, &mut statements, b"s1", Some(b.clone()));
        // The Close is skipped on its own: s1 is what the Parse made while that waits.
        relay.names_skipped = 1;
        undo(&mut relay, &mut statements);
        assert_eq!(id(&statements, b"s1"), Some(b.id));
        // The Parse is skipped too: s1 is what it was before both.
        relay.names_skipped = 1;
        undo(&mut relay, &mut statements);
        assert_eq!(id(&statements, b"s1"), Some(a.id));
        assert!(relay.names.is_empty());
    }

    #[test]
    fn a_drop_by_the_server_keeps_what_a_waiting_change_made() {
        let registry = crate::prepared::Registry::default();
        let a = registry.intern(b"select 1\0\0\0", b"");
        let mut statements = ClientStatements::default();
        let mut relay = RelayState::default();
        // Behind a DISCARD ALL: a Parse of s1, then a Close of it.
        change(&mut relay, &mut statements, b"s1", Some(a.clone()));
        change(&mut relay, &mut statements, b"s1", None);
        server_dropped_all(&mut relay, &mut statements);
        // The Parse holds, the Close is skipped: s1 is the Parse's statement.
        relay.names.pop_front();
        relay.names_skipped = 1;
        undo(&mut relay, &mut statements);
        assert_eq!(id(&statements, b"s1"), Some(a.id));
    }
}
