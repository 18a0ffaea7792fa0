//! A client's statement names follow what the server did with its Parses and Closes.
//!
//! The pooler changes a client's names (`prepared::ClientStatements`) as it relays a named Parse
//! or Close, before the server answers, and keeps each change (`NameChange`) until then. When
//! the server skips the message (an error earlier in its segment) or refuses it (a Parse that
//! fails), the change is undone, as PostgreSQL leaves the name as it was: a name whose Parse
//! failed does not exist (Bind and `DEALLOCATE` get 26000), a statement whose Close was skipped
//! still does.

use std::sync::Arc;

use super::{Expect, RelayState};
use crate::prepared::{ClientStatements, Statement};

/// A name and what it named before the change (None: nothing).
#[derive(Debug)]
pub struct NameChange {
    name: Box<[u8]>,
    before: Option<Arc<Statement>>,
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
    relay.names.push_back(NameChange {
        name: name.into(),
        before,
    });
}

/// The server answered (or the pooler, in its turn) the named Parse/Close `e`: its change holds.
#[inline]
pub fn answered(relay: &mut RelayState, e: Expect) {
    if e.named {
        relay.names.pop_front();
    }
}

/// The server skipped or refused the named Parse/Close `e`: its change is to be undone (`undo`,
/// once the run of skipped messages is known).
#[inline]
pub fn skipped(relay: &mut RelayState, e: Expect) {
    relay.names_skipped += e.named as usize;
}

/// Undoes the changes of the messages just skipped (`skipped`), the latest first, so that a
/// name changed twice among them (a Close, then a Parse again) ends as it was before both.
#[cold]
pub fn undo(relay: &mut RelayState, statements: &mut ClientStatements) {
    let n = std::mem::take(&mut relay.names_skipped).min(relay.names.len());
    let undone: Vec<NameChange> = relay.names.drain(..n).collect();
    for c in undone.into_iter().rev() {
        statements.set(&c.name, c.before);
    }
}
