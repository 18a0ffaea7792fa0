//! One invisible replay of an extended-protocol segment whose shared statement went stale.
//!
//! A server statement shared by clients (`prepared`) can go stale under them: another
//! session dropped and created again a type it uses (`cache lookup failed for type`), or a
//! table it reads changed shape (`cached plan must not change result type`). The next Bind or
//! Describe of it fails. When that failure can have had no effect the client could tell — its
//! segment (the messages up to Sync) started outside a transaction block, no Bind or Execute
//! came before it in the segment, and the client sent nothing after the segment's Sync yet —
//! the pooler holds the error back, marks the statement stale, and once the server's
//! ReadyForQuery says the implicit transaction is over, swallows it and replays the client's
//! messages from that Bind/Describe through the Sync, as the client sent them: they prepare a
//! fresh statement and run as if nothing had happened. Once per segment: a replay that fails
//! again shows its error. A result that changed shape (`prepared::Stale::ResultShape`) is
//! replayed only when the segment asks for a row description (a Describe), so that no client
//! reads rows of the new shape with the description it kept of the old; otherwise the client
//! sees the error, as on a direct connection.
//!
//! The cost on the hot path is a copy of the segment's few messages (a Bind, an Execute, a
//! Sync) into a buffer that the relay state keeps across attachments.

use std::collections::VecDeque;

use bytes::BytesMut;

use super::Expect;
use crate::net::messages::tag::{self, txn};
use crate::prepared::Stale;

/// Segments larger than this are not recorded (and not replayed).
const MAX_RECORDED: usize = 16 * 1024;

#[derive(Default, Debug)]
pub struct Retry {
    /// The shared statement whose Bind/Describe starts the recording (0: not recording).
    stmt: u64,
    /// The client's messages from that Bind/Describe on, as the client sent them.
    bytes: Vec<u8>,
    /// The recording reached the segment's Sync.
    complete: bool,
    /// The recording holds a Describe: the client is told the rows' shape again.
    described: bool,
    /// The server's stale error, held back until its ReadyForQuery (Some: holding).
    held: Option<Vec<u8>>,
    /// The segment now relayed is a replay: it gets no second one.
    replaying: bool,
}

impl Retry {
    /// A Bind/Describe of shared statement `id` (whole message `msg`) is about to be relayed:
    /// it starts a recording when nothing before it in its segment could be undone by its
    /// failure (`expect` holds only Parse/Describe/Close answers, the server is outside a
    /// transaction block).
    #[inline]
    pub fn arm(&mut self, expect: &VecDeque<Expect>, status: u8, id: u64, msg: &[u8]) {
        if self.stmt != 0
            || self.replaying
            || status != txn::IDLE
            || msg.len() > MAX_RECORDED
            || !expect
                .iter()
                .all(|e| matches!(e.kind, tag::PARSE | tag::DESCRIBE | tag::CLOSE))
        {
            return;
        }
        self.stmt = id;
        self.complete = false;
        self.described = msg.first() == Some(&tag::DESCRIBE);
        self.bytes.clear();
        self.bytes.extend_from_slice(msg);
    }

    #[inline]
    pub fn holding(&self) -> bool {
        self.held.is_some()
    }

    #[inline]
    pub fn recording(&self) -> bool {
        self.stmt != 0
    }

    /// The next client message while recording: `whole` is None when not all of it is there
    /// yet (it would be streamed, so it cannot be replayed).
    #[inline]
    pub fn record(&mut self, tag: u8, whole: Option<&[u8]>) {
        let kept = !self.complete
            && matches!(
                tag,
                tag::BIND | tag::DESCRIBE | tag::EXECUTE | tag::CLOSE | tag::FLUSH | tag::SYNC
            );
        match whole {
            Some(msg) if kept && self.bytes.len() + msg.len() <= MAX_RECORDED => {
                self.bytes.extend_from_slice(msg);
                self.complete = tag == tag::SYNC;
                self.described |= tag == tag::DESCRIBE;
            }
            // Anything else, or anything after the Sync (the client's next segment is on its
            // way to the server before a replay could be).
            _ => self.stmt = 0,
        }
    }

    /// The server answered the Bind/Describe of statement `id` with an error meaning it went
    /// stale (`how`; `error`: the whole ErrorResponse). True when the error is held back for
    /// a replay instead of being forwarded.
    #[cold]
    pub fn hold(&mut self, id: u64, how: Stale, error: &[u8]) -> bool {
        if self.stmt != id
            || !self.complete
            || self.replaying
            || (how == Stale::ResultShape && !self.described)
        {
            return false;
        }
        self.held = Some(error.to_vec());
        true
    }

    /// The ReadyForQuery that ends a segment (`status`: its transaction status). While an
    /// error is held: when the server is outside a transaction block, the recorded segment is
    /// put before the client's unprocessed bytes in `c2s_in` and true returned (the
    /// ReadyForQuery is swallowed; the caller relays `c2s_in` again); otherwise the held
    /// error goes to `out` and the ReadyForQuery is forwarded as usual.
    #[inline]
    pub fn ready(&mut self, status: u8, c2s_in: &mut BytesMut, out: &mut BytesMut) -> bool {
        self.stmt = 0;
        let Some(error) = self.held.take() else {
            self.replaying = false;
            return false;
        };
        if status != txn::IDLE {
            out.extend_from_slice(&error);
            self.replaying = false;
            return false;
        }
        let mut again = BytesMut::with_capacity(self.bytes.len() + c2s_in.len());
        again.extend_from_slice(&self.bytes);
        again.extend_from_slice(c2s_in);
        *c2s_in = again;
        self.replaying = true;
        true
    }

    /// How many of the client's Binds the replay just started relays a second time (the
    /// client's counts take them once): the Binds of the recording, counted only when one is
    /// replayed.
    #[cold]
    pub fn replayed_binds(&self) -> u64 {
        if !self.replaying {
            return 0;
        }
        let mut binds = 0;
        let mut rest = &self.bytes[..];
        while let Some((tag, len)) = crate::net::messages::header(rest) {
            binds += (tag == tag::BIND) as u64;
            rest = rest.get(len..).unwrap_or_default();
        }
        binds
    }

    /// Back to rest for the next attachment, keeping the buffer unless a large segment grew it.
    pub fn reset(&mut self) {
        self.stmt = 0;
        self.complete = false;
        self.described = false;
        self.held = None;
        self.replaying = false;
        self.bytes.clear();
        if self.bytes.capacity() > 1024 {
            self.bytes = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::relay::Action;

    fn entry(kind: u8) -> Expect {
        Expect {
            kind,
            action: Action::Forward,
            stmt: 0,
            named: 0,
        }
    }

    #[test]
    fn replays_a_whole_segment_once() {
        let mut r = Retry::default();
        let expect: VecDeque<_> = [entry(tag::PARSE)].into();
        r.arm(&expect, txn::IDLE, 7, b"B1");
        r.record(tag::EXECUTE, Some(b"E1"));
        r.record(tag::SYNC, Some(b"S1"));
        assert!(r.hold(7, Stale::Type, b"err"));
        let mut c2s_in = BytesMut::from(&b"Q"[..]);
        let mut out = BytesMut::new();
        assert!(r.ready(txn::IDLE, &mut c2s_in, &mut out));
        assert_eq!(&c2s_in[..], b"B1E1S1Q");
        assert!(out.is_empty());
        assert_eq!(r.replayed_binds(), 1);
        // The replay is not recorded again, so its own failure shows.
        r.arm(&VecDeque::new(), txn::IDLE, 8, b"B2");
        assert!(!r.recording() && !r.hold(8, Stale::Type, b"err"));
        assert!(!r.ready(txn::IDLE, &mut c2s_in, &mut out));
        // The next segment may be replayed again.
        r.arm(&VecDeque::new(), txn::IDLE, 8, b"B2");
        assert!(r.recording());
    }

    #[test]
    fn a_replay_counts_the_binds_it_relays_again() {
        let msg = |t: u8, body: &[u8]| {
            let mut m = vec![t];
            m.extend_from_slice(&(4 + body.len() as u32).to_be_bytes());
            m.extend_from_slice(body);
            m
        };
        let (bind, execute) = (
            msg(tag::BIND, b"\0s\0\0\0\0\0\0\0"),
            msg(tag::EXECUTE, b"\0\0\0\0\0"),
        );
        let mut r = Retry::default();
        r.arm(&VecDeque::new(), txn::IDLE, 7, &bind);
        for (t, m) in [
            (tag::EXECUTE, &execute),
            (tag::BIND, &bind),
            (tag::EXECUTE, &execute),
        ] {
            r.record(t, Some(m));
        }
        r.record(tag::SYNC, Some(&msg(tag::SYNC, b"")));
        assert_eq!(r.replayed_binds(), 0, "not replaying yet");
        assert!(r.hold(7, Stale::Type, b"err"));
        let (mut c2s_in, mut out) = (BytesMut::new(), BytesMut::new());
        assert!(r.ready(txn::IDLE, &mut c2s_in, &mut out));
        assert_eq!(r.replayed_binds(), 2);
    }

    #[test]
    fn no_replay_when_something_ran_before_or_after() {
        let mut r = Retry::default();
        // An Execute earlier in the segment.
        r.arm(&[entry(tag::EXECUTE)].into(), txn::IDLE, 7, b"B");
        assert!(!r.recording());
        // Inside a transaction block.
        r.arm(&VecDeque::new(), b'T', 7, b"B");
        assert!(!r.recording());
        // The next segment followed the Sync.
        r.arm(&VecDeque::new(), txn::IDLE, 7, b"B");
        r.record(tag::SYNC, Some(b"S"));
        r.record(tag::BIND, Some(b"B"));
        assert!(!r.hold(7, Stale::Type, b"err"));
        // No Sync yet.
        r.arm(&VecDeque::new(), txn::IDLE, 7, b"B");
        r.record(tag::EXECUTE, Some(b"E"));
        assert!(!r.hold(7, Stale::Type, b"err"));
        // A message not whole yet.
        r.arm(&VecDeque::new(), txn::IDLE, 7, b"B");
        r.record(tag::EXECUTE, None);
        assert!(!r.recording());
    }

    #[test]
    fn a_new_result_shape_is_replayed_only_with_a_describe() {
        let mut r = Retry::default();
        r.arm(&VecDeque::new(), txn::IDLE, 7, b"B");
        r.record(tag::EXECUTE, Some(b"E"));
        r.record(tag::SYNC, Some(b"S"));
        assert!(!r.hold(7, Stale::ResultShape, b"err"));
        let (mut c2s_in, mut out) = (BytesMut::new(), BytesMut::new());
        assert!(!r.ready(txn::IDLE, &mut c2s_in, &mut out));
        r.arm(&VecDeque::new(), txn::IDLE, 7, b"B");
        r.record(tag::DESCRIBE, Some(b"D"));
        r.record(tag::EXECUTE, Some(b"E"));
        r.record(tag::SYNC, Some(b"S"));
        assert!(r.hold(7, Stale::ResultShape, b"err"));
        // A failing Describe of the statement itself.
        let mut r = Retry::default();
        r.arm(&VecDeque::new(), txn::IDLE, 7, b"D");
        r.record(tag::SYNC, Some(b"S"));
        assert!(r.hold(7, Stale::ResultShape, b"err"));
    }

    #[test]
    fn a_held_error_in_a_block_is_forwarded() {
        let mut r = Retry::default();
        r.arm(&VecDeque::new(), txn::IDLE, 7, b"B");
        r.record(tag::SYNC, Some(b"S"));
        assert!(r.hold(7, Stale::Type, b"err"));
        let (mut c2s_in, mut out) = (BytesMut::new(), BytesMut::new());
        assert!(!r.ready(txn::FAILED, &mut c2s_in, &mut out));
        assert_eq!(&out[..], b"err");
        assert!(c2s_in.is_empty());
    }
}
