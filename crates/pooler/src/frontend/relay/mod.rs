//! The hot path: moving bytes between an attached client and its server connection.
//!
//! `pump` is the socket loop: one task, one `poll_fn`, each direction read and written until it
//! would block. What it reads is scanned header by header (`from_client`, `from_server`).
//! Messages the pooler does not need to see are copied to the other side whole or, when large,
//! streamed through as they arrive (`RelayState::*_skip` counts the bytes of the current message
//! still to pass). Only ReadyForQuery, ParameterStatus, the tiny completion messages and
//! CommandComplete are looked into on the server side; on the client side only Terminate and,
//! with prepared-statement tracking, Parse/Bind/Describe/Close.
//!
//! In statement mode a Query or Parse that opens a transaction block (`scan`) is not
//! forwarded: the pooler answers it with the refusal, in its place among the other answers.
//!
//! Every client message that the server answers is recorded in `RelayState::expect`, in order,
//! with what to do with the answer: forward it, swallow it (the pooler sent the message
//! itself, e.g. a re-Parse before a Bind) or synthesize it (the pooler answered itself, e.g. a
//! Parse of a statement the server already has). That keeps pipelines, Describe and errors in
//! the middle of a pipeline exactly as the client would see them on a direct connection.
//!
//! The relay state (`RelayState`) is the frontend's: it describes where an attachment is in the
//! server connection's byte streams (mid-message, answers outstanding), is taken for that one
//! attachment (`session::attached`; recycled per worker thread, `RelayState::take`) and is
//! passed next to the server connection, which knows nothing of it. A connection goes back to
//! the pool only when the state is at rest (`at_boundary`: the session marks it clean then), so
//! a fresh state fits the next attachment. The connection keeps its byte buffers
//! (`backend::server::Buffers`), so that their capacity outlives the attachment without an idle
//! client holding any.

mod from_client;
mod from_server;
mod listen_wait;
mod names;
mod pump;
mod retry;
pub mod scan;
pub mod session_state;
mod waiting;

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Buf, BytesMut};

use crate::backend::listen::Subscriber;
use crate::backend::server::Server;
use crate::backend::Pool;
use crate::errors;
use crate::net::messages::error::Severity;
use crate::net::messages::extended::{CLOSE_COMPLETE, PARSE_COMPLETE};
use crate::net::messages::status;
use crate::net::messages::tag;
use crate::params::ClientParams;
use crate::prepared::{ClientStatements, Registry};
use crate::stats::{PoolCounters, Tally};

pub use from_client::client_input;
pub use from_server::server_input;
pub use pump::{pump, End};
pub use waiting::Limits as WaitLimits;

/// PostgreSQL refuses messages over 1 GiB; so do we, before buffering one whole.
const MAX_MESSAGE: usize = 1 << 30;

/// Client-side state the relay updates.
pub struct ClientCtx<'a> {
    pub statements: &'a mut ClientStatements,
    pub params: &'a mut ClientParams,
    pub registry: &'a Registry,
    /// Prepared statement rewriting is on (transaction/statement mode, max > 0).
    pub track: bool,
    pub max_prepared: usize,
    /// Statement mode: Query/Parse opening a transaction block are refused (see `block`).
    pub refuse_blocks: bool,
    /// The client's counts (bytes, queries, Parse/Bind) and where they are folded.
    pub tally: &'a mut Tally,
    pub counters: &'a PoolCounters,
    /// Transaction/statement mode: SETs are tracked and SQL-level prepared statements refused
    /// (see `session_state`).
    pub session_state: bool,
    /// The client's pool, for its LISTEN connection (`backend::listen`).
    pub pool: &'a Arc<Pool>,
    /// The client's notifications, once it LISTENed.
    pub notify: &'a mut Option<Box<Subscriber>>,
    /// How long the client may hold the server connection without sending (`waiting`).
    pub wait_limits: WaitLimits,
}

/// Why the relay stopped.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("invalid message length {0}")]
    BadLength(usize),
    #[error("malformed {0} message")]
    Malformed(&'static str),
}

/// Something the session must act on after server input was processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerEvent {
    None,
    /// A ReadyForQuery arrived.
    Ready,
    /// Statement mode: a ReadyForQuery said "in a transaction block". It was not forwarded;
    /// input after it is left unprocessed.
    TransactionBlock,
    /// A segment whose shared statement went stale is to be relayed again (`retry`): its
    /// messages are back in `c2s_in`.
    Replay,
}

/// Where a `DISCARD ALL` the client listens across stands (`RelayState::discard_wait`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum DiscardWait {
    #[default]
    No,
    /// Parsed (extended protocol): its Bind, Describe and first Execute go on.
    Parsed,
    /// Relayed to run (a Query, the Execute after its Parse, or an Execute of a portal bound
    /// to one parsed earlier, `tag_portals`): the rest waits.
    Ran,
}

/// Where an attachment is in its server connection's two byte streams, as far as the relay is
/// concerned (taken with `RelayState::take`).
#[derive(Default, Debug)]
pub struct RelayState {
    /// Answers the server owes, oldest first (see the module docs).
    pub expect: VecDeque<Expect>,
    /// Bytes of the current client→server message still to stream through unexamined.
    pub c2s_skip: usize,
    /// Bytes of the current server→client message still to stream through unexamined.
    pub s2c_skip: usize,
    /// The server is in COPY IN and the client has not yet ended it: the server ignores Sync
    /// until CopyDone/CopyFail, so those Syncs get no ReadyForQuery and expect no answer.
    pub copy_in: bool,
    /// Statement mode refused a Parse: the client's messages up to its Sync are dropped, as a
    /// server drops them after an error.
    pub c2s_discard: bool,
    /// The pooler answered a refused Query with its own ReadyForQuery (read and cleared by the
    /// socket loop, which counts it as a ReadyForQuery from the server).
    pub ready_synthesized: bool,
    /// SQL `DEALLOCATE`s the pooler answers (`Action::Deallocate`), oldest first: applied when
    /// their turn comes, so that they see the transaction state PostgreSQL would.
    pub deallocs: VecDeque<session_state::Deallocate>,
    /// Errors the pooler answers a refused Parse with in a failed block (`Action::Raise`),
    /// oldest first, whole ErrorResponses.
    pub raised: VecDeque<Vec<u8>>,
    /// Plain SETs whose value the pooler took from the statement (`scan::literal`), oldest
    /// first, one per Query marked `scan::literal::MARK`: kept when their answer confirms them.
    pub sets: VecDeque<scan::literal::PendingSet>,
    /// Transaction/statement mode: NotificationResponses of the server connection are not
    /// the attached client's (LISTEN is served by `backend::listen`) and are dropped.
    pub drop_notifications: bool,
    /// The server ran a `DISCARD ALL` while the pool's listener serves the client's LISTENs:
    /// the client's channels go too, as on a direct connection (read and cleared by the socket
    /// loop, which reaches the listener).
    pub discarded_channels: bool,
    /// A `DISCARD ALL` relayed while the client listens (`from_client::discard_holds`):
    /// what the client sends after it waits for its answer, and so for the listener to drop
    /// the client's channels, so that nothing it commits after the `DISCARD ALL` (its own
    /// NOTIFY pipelined behind it, say) reaches it, as on a direct connection.
    pub discard_wait: DiscardWait,
    /// A LISTEN the pool's listener has not confirmed yet: answers to the client wait for it
    /// (`listen_wait`).
    pub listen_wait: Option<listen_wait::ListenWait>,
    /// The LISTEN/UNLISTENs of the client's open transaction block, settled when it ends.
    pub txn_listens: Option<Box<session_state::TxnListens>>,
    /// The block of `txn_listens` ended: committed (true) or not (read and cleared by the
    /// socket loop, which reaches the listener).
    pub txn_listens_end: Option<bool>,
    /// The transaction the server is in ran (or parsed) a NOTIFY (`scan::NOTIFIES`).
    pub notified: bool,
    /// A transaction that NOTIFYed ended, and whether its ReadyForQuery was the last message
    /// the server had sent (read and cleared by the socket loop, which reaches the listener:
    /// `from_client::own_notifications`).
    pub notified_end: Option<bool>,
    /// The transaction block the server is in changed since its last ReadyForQuery, as far as
    /// the command tags tell: a `BEGIN` began one (true), a `COMMIT` ended it (false). A LISTEN
    /// pipelined behind them in one segment is in a block or not accordingly.
    pub block_in_segment: Option<bool>,
    /// Savepoints open in the server's transaction block, by their command tags (for
    /// `txn_listens`).
    pub savepoints: usize,
    /// Changes to the client's statement names by Parses and Closes not answered yet, oldest
    /// first (`names`).
    pub names: VecDeque<names::NameChange>,
    /// How many of the oldest `names` belong to messages the server skipped, to undo
    /// (`names::undo`).
    pub names_skipped: usize,
    /// The server connection holds the client's unnamed statement: the client parsed it
    /// during this attachment (`prepared::ClientStatements::unnamed`).
    pub unnamed_here: bool,
    /// Portals bound to the client's unnamed statement while that is a `DEALLOCATE`, `LISTEN`
    /// or `UNLISTEN` the pooler serves, with its command tag (`prepared::stand_in_tag`): the
    /// server runs a statement that does nothing in its place, and its Execute's
    /// CommandComplete says what PostgreSQL's would. And portals bound to a `DISCARD ALL`
    /// (`stand_in_tag::DROPS`), whose Execute a name behind it waits for. The latest
    /// `from_client::TAG_PORTALS` of them.
    pub tag_portals: Vec<(Box<[u8]>, u8)>,
    /// A simple Query was relayed since the last Bind of the unnamed portal (or that Bind
    /// failed and no later one was relayed, `from_server::unnamed_portal_kept`): an Execute of
    /// the unnamed portal gets a Close of it first (`from_client::close_query_portal`).
    pub query_portal: bool,
    /// The current segment, recorded for a replay should its shared statement turn out stale
    /// (`retry`).
    pub retry: retry::Retry,
    /// The server answered an extended-protocol message (or failed one) after its last
    /// ReadyForQuery: it is inside an implicit transaction, or skipping messages after an
    /// error, until the client's Sync (or Query) ends it. Not a boundary until then, even with
    /// every answer in: a connection released so would carry the client's uncommitted work
    /// into another client's transaction.
    pub segment_open: bool,
    /// The client's next message waits in `c2s_in` for the answer to an earlier segment that
    /// decides what a statement name it uses is (`names::waits`), or whether a LISTEN runs, or
    /// for the answer to a `DISCARD ALL` it sent (`discard_wait`); or for the pool's listener to
    /// confirm a LISTEN (`listen_wait`). Relayed once that is in.
    pub c2s_stalled: bool,
    /// The server answered an error in the current segment: it skips everything up to the
    /// client's Sync, and so does the pooler with what it would answer itself.
    pub segment_failed: bool,
}

/// Relay states kept for reuse by each worker thread, at most this many: an attachment takes
/// one and gives it back when it ends, so that neither an idle client nor a transaction pays for
/// one (it is too large to travel inside the per-request future without making that allocation
/// slower, and its queues keep their capacity across attachments).
const SPARE_STATES: usize = 64;

thread_local! {
    // Boxed: an attachment holds a pointer, so that taking and giving back moves 8 bytes.
    #[allow(clippy::vec_box)]
    static SPARE: std::cell::RefCell<Vec<Box<RelayState>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Queues longer than this are not kept for the next attachment (a deep pipeline's).
const KEEP_QUEUE: usize = 64;

impl RelayState {
    /// Whether the client's notifications wait in its queue: in a transaction block
    /// (PostgreSQL sends none there), while the server owes answers or an extended-protocol
    /// segment is open (PostgreSQL sends them only when it waits for a command outside a
    /// transaction, or right before the ReadyForQuery that ends one: never ahead of a
    /// statement's answers), in a transaction whose LISTEN/UNLISTENs hold only once it
    /// committed (`txn_listens`), until the end of one dropped what it unsubscribed the
    /// client from (`ListenWait::drop_after`): PostgreSQL reads what was committed meanwhile
    /// after the transaction, when its UNLISTENs hold; and until they can go in before the
    /// ReadyForQuery of a transaction that NOTIFYed (`ListenWait::before_ready`).
    #[inline]
    pub fn holds_notifications(&self, status: u8) -> bool {
        status != tag::txn::IDLE
            || !self.expect.is_empty()
            || self.segment_open
            || self.txn_listens.is_some()
            || self
                .listen_wait
                .as_ref()
                .is_some_and(|w| !w.drop_after.is_empty() || w.before_ready.is_some())
    }

    /// The server answered an error in the segment the client is sending, every earlier one
    /// answered: it skips the rest of it, Flushes too, up to the client's Sync. Nothing relayed
    /// in it now is answered before that Sync, so nothing in it may wait for such an answer.
    pub fn skipping_segment(&self) -> bool {
        self.segment_failed
            && !self
                .expect
                .iter()
                .any(|e| e.kind == tag::SYNC || e.kind == tag::QUERY)
    }

    /// A relay state at rest for a new attachment, given back on drop.
    pub fn take() -> Recycled {
        Recycled(Some(crate::spare::take(&SPARE).unwrap_or_default()))
    }

    /// Back to rest, keeping the queues' capacity unless a deep pipeline grew them.
    fn reset(&mut self) {
        let RelayState {
            expect,
            c2s_skip,
            s2c_skip,
            copy_in,
            c2s_discard,
            ready_synthesized,
            deallocs,
            raised,
            sets,
            drop_notifications,
            discarded_channels,
            discard_wait,
            listen_wait,
            txn_listens,
            txn_listens_end,
            notified,
            notified_end,
            block_in_segment,
            savepoints,
            names,
            names_skipped,
            unnamed_here,
            tag_portals,
            query_portal,
            retry,
            segment_open,
            c2s_stalled,
            segment_failed,
        } = self;
        if expect.capacity() > KEEP_QUEUE {
            *expect = VecDeque::new();
        }
        expect.clear();
        deallocs.clear();
        raised.clear();
        sets.clear();
        names.clear();
        *names_skipped = 0;
        *c2s_skip = 0;
        *s2c_skip = 0;
        *copy_in = false;
        *c2s_discard = false;
        *ready_synthesized = false;
        *drop_notifications = false;
        *discarded_channels = false;
        *discard_wait = DiscardWait::No;
        *listen_wait = None;
        *txn_listens = None;
        *txn_listens_end = None;
        *notified = false;
        *notified_end = None;
        *block_in_segment = None;
        *savepoints = 0;
        *unnamed_here = false;
        tag_portals.clear();
        *query_portal = false;
        *segment_open = false;
        *c2s_stalled = false;
        *segment_failed = false;
        retry.reset();
    }
}

/// A relay state lent to one attachment (`RelayState::take`); reset and kept for the next one
/// when dropped.
pub struct Recycled(Option<Box<RelayState>>);

impl std::ops::Deref for Recycled {
    type Target = RelayState;
    fn deref(&self) -> &RelayState {
        match &self.0 {
            Some(s) => s,
            None => unreachable!("relay state taken before drop"),
        }
    }
}

impl std::ops::DerefMut for Recycled {
    fn deref_mut(&mut self) -> &mut RelayState {
        match &mut self.0 {
            Some(s) => s,
            None => unreachable!("relay state taken before drop"),
        }
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        let Some(mut state) = self.0.take() else {
            return;
        };
        state.reset();
        crate::spare::keep(&SPARE, state, SPARE_STATES);
    }
}

/// What the relay expects the server to answer, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expect {
    /// The client message type that asked (`tag::PARSE`, `tag::SYNC`, ...; `tag::QUERY` also for
    /// FunctionCall), or `COPY_END`.
    pub kind: u8,
    pub action: Action,
    /// Pooler-wide statement id for Parse entries; for a Bind/Describe of a shared statement
    /// its id with `BOUND` (a Bind of the unnamed portal also has `UNNAMED_PORTAL`); for an
    /// Execute of a portal in `RelayState::tag_portals` its tag (`prepared::stand_in_tag`: the
    /// command tag of a statement the pooler serves, or `DROPS` for a `DISCARD ALL`);
    /// for a Query, `scan::literal::MARK`, `scan::literal::DROPS_MARK` or 0; 0 otherwise.
    pub stmt: u64,
    /// How many of `RelayState::names`, from the oldest, are this Parse's or Close's changes
    /// to the client's statement names (`names`).
    pub named: u8,
}

/// Marks `Expect::stmt` of a Bind/Describe of a shared statement (its id below the bit),
/// so that an error meaning the statement went stale can name it (`from_server`).
pub(crate) const BOUND: u64 = 1 << 63;

/// Marks `Expect::stmt` of a Bind of the unnamed portal: should the server skip it or refuse
/// it, the unnamed portal is still what it was (`RelayState::query_portal`).
pub(crate) const UNNAMED_PORTAL: u64 = 1 << 62;

/// What to do with the answer to an `Expect`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Forward,
    /// The pooler sent the message itself; the client must not see the answer.
    Swallow,
    /// The pooler answered the client itself without asking the server.
    Synthesize,
    /// Statement mode: the pooler answers a Query or Parse that opens a transaction block with
    /// the refusal (a Query also with ReadyForQuery).
    Refuse,
    /// Transaction/statement mode: an SQL `DEALLOCATE` served from the client's own
    /// statements, the next of `RelayState::deallocs` (`session_state::deallocate`).
    Deallocate,
    /// Transaction/statement mode: a LISTEN (true) or UNLISTEN served by the pool's listener.
    ListenDone(bool),
    /// A Parse refused in a failed block (where the server raises nothing but 25P02), once
    /// the server parsed its text: the pooler answers the next of `RelayState::raised`.
    Raise,
    /// The pooler's Parse of the statement that raises a refused Parse's error in an open or
    /// idle transaction (`from_client::raised_in_place`): swallowed when it succeeds. A block an
    /// earlier message failed meanwhile makes the server answer 25P02 there; the pooler then
    /// answers the next of `RelayState::raised` instead, as PostgreSQL answers a refused Parse
    /// whose text is a ROLLBACK or COMMIT in a failed block.
    RaiseUnlessFailed,
}

impl Action {
    /// The pooler, not the server, answers.
    #[inline]
    fn pooler_answers(self) -> bool {
        matches!(
            self,
            Action::Synthesize
                | Action::Refuse
                | Action::Deallocate
                | Action::ListenDone(_)
                | Action::Raise
        )
    }
}

/// Expect-queue marker for a client's CopyDone/CopyFail (no answer of its own).
const COPY_END: u8 = tag::COPY_DONE;

// The small helpers below are shared by both scanners, which live in other files (so possibly
// other codegen units): `#[inline]` keeps them inlined in the scanning loops as when all of it
// was one file.
#[inline]
fn push(expect: &mut VecDeque<Expect>, kind: u8, action: Action, stmt: u64) {
    expect.push_back(Expect {
        kind,
        action,
        stmt,
        named: 0,
    });
}

/// Appends `input[*run..pos]` (messages passed through unchanged) to `out` as one copy.
#[inline]
fn flush_run(out: &mut BytesMut, input: &[u8], run: &mut usize, pos: usize) {
    if pos > *run {
        out.extend_from_slice(&input[*run..pos]);
    }
    *run = pos;
}

/// Drops the first `pos` bytes of `input`; an emptied buffer keeps its start, so the next
/// read reuses it without moving anything.
#[inline]
fn consume(input: &mut BytesMut, pos: usize) {
    if pos >= input.len() {
        input.clear();
    } else {
        input.advance(pos);
    }
}

/// Passes `input[..pos]` to `out` (already holding `run` bytes' worth of earlier output),
/// swapping the buffers instead of copying when everything read goes out unchanged.
#[inline]
fn finish(input: &mut BytesMut, out: &mut BytesMut, mut run: usize, pos: usize) {
    if run == 0 && pos == input.len() && pos > 0 && out.is_empty() {
        std::mem::swap(input, out);
        input.clear();
        return;
    }
    flush_run(out, input, &mut run, pos);
    consume(input, pos);
}

/// Emits answers the pooler owes the client, once everything before them has been answered.
#[inline]
fn drain_synthesized(
    server: &mut Server,
    relay: &mut RelayState,
    statements: &mut ClientStatements,
) {
    if relay.s2c_skip > 0 {
        return;
    }
    while let Some(front) = relay.expect.front().copied() {
        if relay.segment_failed && front.kind != tag::QUERY && front.action.pooler_answers() {
            // Relayed after the server answered an error in its segment (the client read the
            // error after a Flush, or its message waited, `c2s_stalled`): skipped, as the
            // server skips everything up to the Sync.
            names::skipped(relay, front);
            if front.action == Action::Raise {
                relay.raised.pop_front();
            }
            relay.expect.pop_front();
            continue;
        }
        match front.action {
            Action::Synthesize => {
                let reply: &[u8] = if front.kind == tag::PARSE {
                    &PARSE_COMPLETE
                } else {
                    &CLOSE_COMPLETE
                };
                server.bufs.s2c_out.extend_from_slice(reply);
                names::answered(relay, front);
            }
            Action::Refuse => refuse(server, relay, front.kind),
            Action::Raise => {
                if let Some(error) = relay.raised.pop_front() {
                    server.bufs.s2c_out.extend_from_slice(&error);
                }
            }
            Action::Deallocate => session_state::deallocate(server, relay, statements),
            Action::ListenDone(listen) => session_state::listen_done(server, relay, listen),
            _ => break,
        }
        relay.expect.pop_front();
    }
    if relay.names_skipped > 0 {
        names::undo(relay, statements);
    }
}

/// Writes statement mode's refusal of a transaction block in answer to a Query (then the
/// connection is idle: statement mode never leaves a block open) or a Parse (whose Sync the
/// server answers).
#[cold]
fn refuse(server: &mut Server, relay: &mut RelayState, kind: u8) {
    let out = &mut server.bufs.s2c_out;
    errors::statement_mode_transaction(&server.pool).write(out, Severity::Error);
    if kind == tag::QUERY {
        status::ready_for_query(out, tag::txn::IDLE);
        relay.ready_synthesized = true;
    }
}

/// True when the server has answered everything and the connection could serve someone else.
pub fn at_boundary(server: &Server, relay: &RelayState) -> bool {
    server.status == tag::txn::IDLE
        && !relay.segment_open
        && !relay.copy_in
        && !relay.c2s_discard
        && relay.expect.is_empty()
        && relay.c2s_skip == 0
        && relay.s2c_skip == 0
        && server.bufs.s2c_in.is_empty()
}

/// Moves not-yet-forwarded client bytes out of the server's buffer (on release).
pub fn take_pending(server: &mut Server, pending: &mut BytesMut) {
    if !server.bufs.c2s_in.is_empty() {
        pending.extend_from_slice(&server.bufs.c2s_in);
        server.bufs.c2s_in.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state given back is at rest when taken again, and it is the same allocation with its
    /// queue's capacity kept.
    #[test]
    fn a_recycled_state_comes_back_at_rest() {
        let mut first = RelayState::take();
        for _ in 0..10 {
            push(&mut first.expect, tag::QUERY, Action::Forward, 0);
        }
        first.c2s_skip = 5;
        first.copy_in = true;
        first.drop_notifications = true;
        let addr = &*first as *const RelayState as usize;
        drop(first);
        let again = RelayState::take();
        assert_eq!(&*again as *const RelayState as usize, addr);
        assert!(again.expect.is_empty() && again.expect.capacity() >= 10);
        assert_eq!(
            (again.c2s_skip, again.copy_in, again.drop_notifications),
            (0, false, false)
        );
    }
}
