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

use std::collections::HashMap;
use std::sync::Arc;

use super::{Expect, RelayState};
use crate::net::messages::tag;
use crate::prepared::{ClientStatements, Statement};

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
    /// The unnamed statement changed: what it was (its Parse, empty for none, and command
    /// tag), and whether the server connection held it (`RelayState::unnamed_here`).
    Unnamed { parse: Vec<u8>, tag: u8, here: bool },
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
/// and undoing one of them brings back none of the names that went.
#[cold]
pub fn server_dropped_all(relay: &mut RelayState, statements: &mut ClientStatements) {
    statements.retain(|name| {
        relay
            .names
            .iter()
            .any(|c| matches!(c, NameChange::One { name: n, .. } if **n == *name))
    });
    for c in relay.names.iter_mut() {
        match c {
            NameChange::One { before, .. } => *before = None,
            NameChange::All(names) => names.clear(),
            NameChange::Unnamed { .. } => {}
        }
    }
}

/// Whether the client's message `msg` (of type `tag`) names a statement whose change waits
/// for its answer in an earlier segment (a Parse or Close before a Sync already relayed). Its
/// name is resolved when that answer is in, as PostgreSQL resolves it after running the earlier
/// segment: should the server skip that Parse or Close, or refuse the Parse, the name is not
/// what the pooler made of it when it relayed the change. So does a name behind an SQL
/// `DEALLOCATE` the pooler answers. Called only while changes or such `DEALLOCATE`s wait.
#[cold]
pub fn waits(relay: &RelayState, tag: u8, msg: &[u8]) -> bool {
    use crate::net::messages::extended::{parse_bind, parse_parse, parse_target};
    use crate::net::messages::tag::target;
    let name = match tag {
        tag::PARSE => parse_parse(msg).map(|p| p.name),
        tag::BIND => parse_bind(msg).map(|b| b.statement),
        tag::DESCRIBE | tag::CLOSE => match parse_target(msg) {
            Some((target::STATEMENT, name)) => Some(name),
            _ => None,
        },
        _ => None,
    };
    let Some(name) = name else {
        return false;
    };
    if !name.is_empty() && !relay.deallocs.is_empty() {
        // An SQL `DEALLOCATE` the pooler answers in its turn (a Query: an earlier segment).
        return true;
    }
    // The changes of messages before the last Sync or Query relayed (those of the segment
    // being relayed fail or hold with it).
    let (mut changes, mut earlier) = (0, 0);
    for e in &relay.expect {
        changes += e.named as usize;
        if e.kind == tag::SYNC || e.kind == tag::QUERY {
            earlier = changes;
        }
    }
    relay.names.iter().take(earlier).any(|c| match c {
        NameChange::One { name: n, .. } => !name.is_empty() && **n == *crate::prepared::key(name),
        NameChange::All(_) => !name.is_empty(),
        NameChange::Unnamed { .. } => name.is_empty(),
    })
}

/// Whether `name` exists may change with answers the server still owes before a Parse about
/// to be relayed: a statement not answered yet may drop names (a `DISCARD ALL` or `DEALLOCATE`,
/// in a Query or an Execute), or a change to the name waits for its answer in an earlier
/// segment (one in this segment either holds, or failed and has the server skip the rest of
/// the segment, this Parse too).
#[cold]
pub fn pending(relay: &RelayState, name: &[u8]) -> bool {
    let mut earlier_segment = false;
    for e in &relay.expect {
        match e.kind {
            tag::QUERY | tag::EXECUTE => return true,
            tag::SYNC => earlier_segment = true,
            _ => {}
        }
    }
    earlier_segment
        && relay.names.iter().any(|c| match c {
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
#[cold]
pub fn undo(relay: &mut RelayState, statements: &mut ClientStatements) {
    let n = std::mem::take(&mut relay.names_skipped).min(relay.names.len());
    let undone: Vec<NameChange> = relay.names.drain(..n).collect();
    for c in undone.into_iter().rev() {
        match c {
            NameChange::One { name, before } => {
                statements.set(&name, before);
            }
            // Names made since (by messages not skipped) stay as they are.
            NameChange::All(names) => statements.restore_names(names),
            NameChange::Unnamed { parse, tag, here } => {
                statements.restore_unnamed(parse, tag);
                relay.unnamed_here = here;
            }
        }
    }
}
