//! LISTEN/NOTIFY in transaction mode. A client's server connection changes with every
//! transaction, so a LISTEN sent to it would listen for whoever holds that connection next.
//! Instead each pool that sees a LISTEN gets one listening server connection of its own
//! (`Hub`, outside the pool's size accounting: it never serves a transaction) that LISTENs to
//! the union of its clients' channels. NotificationResponses it receives are handed, as
//! ready-to-send bytes, to every subscribed client through the client's own channel
//! (`Subscriber`), which the client's task polls while idle and while relaying. A client that
//! never LISTENs has no channel and pays nothing.
//!
//! The listener connects at the first LISTEN, and after a backend failure reconnects and
//! LISTENs again to every channel; notifications sent while it was away are lost (the only
//! ones). A channel nobody listens to any more (UNLISTEN, client gone) is UNLISTENed. A
//! client's UNLISTEN is applied after a round trip of the listener's connection, so that what
//! was committed before it still reaches the client (`release`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

use super::pool::{Pool, SlotToken};
use super::server::Server;
use crate::net::messages::{self, cstr, header, tag, HEADER};
use crate::net::stream::poll_read_buf;
use crate::notify::{self, Budget, Inbox, Offer, Over};

/// Where the listener hands a client its notifications (whole NotificationResponse
/// messages), counted against the client's and the pooler's byte budgets (`notify`): a client
/// that listens and stops reading must not make the pooler hold its notifications without
/// limit. Past a budget it gets nothing more and its task disconnects it.
pub type Sink = notify::Sink;

/// What clients ask of their pool's listener.
pub enum Cmd {
    Listen {
        channel: Box<str>,
        client: u64,
        sink: Sink,
        /// Fired once the server is known to listen to the channel (PostgreSQL's promise
        /// after LISTEN returns: later notifications are delivered).
        done: Option<oneshot::Sender<()>>,
    },
    /// Unsubscribes a client from some of its channels, in one round trip (`release`).
    Unlisten {
        channels: Vec<Box<str>>,
        client: u64,
        /// Fired once the client is unsubscribed (`release`).
        done: Option<oneshot::Sender<()>>,
    },
    UnlistenAll {
        client: u64,
        /// The client is gone (its subscriber dropped): nothing more is delivered to it.
        gone: bool,
        done: Option<oneshot::Sender<()>>,
    },
    /// A round trip of the listener's connection: `done` fires once every notification
    /// committed before it has been handed to its subscribers (a client's own NOTIFY, which
    /// PostgreSQL delivers to a listening session before the ReadyForQuery that ends the
    /// transaction).
    Sync { done: oneshot::Sender<()> },
}

/// A pool's listener: the sending end of its task's commands. Dropping it (with the pool)
/// ends the task and closes the connection.
pub struct Hub {
    tx: mpsc::UnboundedSender<Cmd>,
    budget: Arc<Budget>,
}

impl Hub {
    pub fn start(pool: Weak<Pool>, budget: Arc<Budget>) -> Hub {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, rx));
        Hub { tx, budget }
    }
}

static NEXT_SUBSCRIBER: AtomicU64 = AtomicU64::new(1);

/// A client's end: made at its first LISTEN; dropping it (client gone, or over its budget)
/// unsubscribes and frees what was queued for it.
pub struct Subscriber {
    pub id: u64,
    inbox: Inbox,
    pub sink: Sink,
    hub: mpsc::UnboundedSender<Cmd>,
    /// The channels the client listens to, as its LISTENs and UNLISTENs through this
    /// subscriber left them (the listener's own record, kept on the client's side).
    channels: HashSet<Box<str>>,
}

impl Subscriber {
    pub fn new(hub: &Hub) -> Subscriber {
        let (sink, inbox) = Inbox::new(hub.budget.clone());
        Subscriber {
            id: NEXT_SUBSCRIBER.fetch_add(1, Ordering::Relaxed),
            inbox,
            sink,
            hub: hub.tx.clone(),
            channels: HashSet::new(),
        }
    }

    /// Subscribes the client to `channel`; the receiver fires once the listener's server
    /// listens to it.
    pub fn listen(&mut self, channel: Box<str>) -> oneshot::Receiver<()> {
        let (done, confirmed) = oneshot::channel();
        self.channels.insert(channel.clone());
        let _ = self.hub.send(Cmd::Listen {
            channel,
            client: self.id,
            sink: self.sink.clone(),
            done: Some(done),
        });
        confirmed
    }

    /// Unsubscribes the client from `channel`; the receiver fires once the listener has
    /// delivered what was committed before (`release`) and unsubscribed it.
    pub fn unlisten(&mut self, channel: Box<str>) -> Option<oneshot::Receiver<()>> {
        if !self.channels.remove(&channel) {
            return None;
        }
        Some(self.send_unlisten(vec![channel]))
    }

    fn send_unlisten(&mut self, channels: Vec<Box<str>>) -> oneshot::Receiver<()> {
        let (done, unsubscribed) = oneshot::channel();
        let _ = self.hub.send(Cmd::Unlisten {
            channels,
            client: self.id,
            done: Some(done),
        });
        unsubscribed
    }

    /// Unsubscribes the client from every channel, as `unlisten`.
    pub fn unlisten_all(&mut self) -> Option<oneshot::Receiver<()>> {
        if self.channels.is_empty() {
            return None;
        }
        self.channels.clear();
        Some(self.send_unlisten_all())
    }

    fn send_unlisten_all(&mut self) -> oneshot::Receiver<()> {
        let (done, unsubscribed) = oneshot::channel();
        let _ = self.hub.send(Cmd::UnlistenAll {
            client: self.id,
            gone: false,
            done: Some(done),
        });
        unsubscribed
    }

    /// A round trip of the listener's connection (`Cmd::Sync`), if the client listens to
    /// anything: the receiver fires once what was committed before it has been queued for the
    /// client, or once the listener's connection is lost or away (what it had not read then is
    /// lost with it).
    pub fn sync(&mut self) -> Option<oneshot::Receiver<()>> {
        if self.channels.is_empty() {
            return None;
        }
        let (done, synced) = oneshot::channel();
        let _ = self.hub.send(Cmd::Sync { done });
        Some(synced)
    }

    /// The channels the client listens to.
    pub fn channels(&self) -> &HashSet<Box<str>> {
        &self.channels
    }

    /// Unsubscribes the client from every channel not in `keep`, all in one command of the
    /// listener (one round trip, `release`). Returns the receiver that fires once that is done,
    /// with the channels dropped; None when every channel is kept.
    pub fn keep_only(
        &mut self,
        keep: &HashSet<Box<str>>,
    ) -> Option<(oneshot::Receiver<()>, Vec<Box<str>>)> {
        let mut gone = Vec::new();
        self.channels.retain(|c| {
            let kept = keep.contains(c);
            if !kept {
                gone.push(c.clone());
            }
            kept
        });
        if gone.is_empty() {
            return None;
        }
        let unsubscribed = if self.channels.is_empty() {
            self.send_unlisten_all()
        } else {
            self.send_unlisten(gone.clone())
        };
        Some((unsubscribed, gone))
    }

    /// The next notification; Pending once the client is over budget.
    pub fn poll_recv(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Bytes>> {
        self.inbox.poll_recv(cx)
    }

    /// A notification already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Bytes> {
        self.inbox.try_recv()
    }

    /// Drops what is queued for the client of `channels` (see `Inbox::drop_channels`).
    pub fn drop_queued(&mut self, channels: &[Box<str>]) {
        self.inbox
            .drop_channels(|c| channels.iter().any(|g| g.as_bytes() == c));
    }

    /// Ready once the client went past a notification budget (it must then be disconnected).
    pub fn poll_over(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Over> {
        self.inbox.poll_over(cx)
    }

    pub fn budget(&self) -> &Arc<Budget> {
        self.inbox.budget()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.hub.send(Cmd::UnlistenAll {
            client: self.id,
            gone: true,
            done: None,
        });
    }
}

type Subs = HashMap<Box<str>, HashMap<u64, Sink>>;

/// The listener's state besides its connection: who listens to what, the queries not yet
/// written, and for each query written and not yet answered (ReadyForQuery) the LISTENs that
/// wait for it.
#[derive(Default)]
struct State {
    subs: Subs,
    out: BytesMut,
    in_flight: VecDeque<Flight>,
    /// Acknowledgements owed once a connection is (re-)established and has caught up.
    unsent: Vec<oneshot::Sender<()>>,
    connected: bool,
    /// Clients' commands not applied yet: an unsubscribe waits for a round trip of the
    /// listener's connection (`release`), and every command after it waits behind it.
    held: VecDeque<Cmd>,
    /// The round trip `held` waits for is on its way.
    syncing: bool,
}

/// A query written to the listener's server and not answered yet.
#[derive(Default)]
struct Flight {
    /// LISTENs confirmed by its answer.
    acks: Vec<oneshot::Sender<()>>,
    /// Clients' Syncs (`Subscriber::sync`) answered by its answer: every notification committed
    /// before it was sent has been handed on by then. Also answered when the connection is lost
    /// first: what it had not read is lost with it, and nothing more can come meanwhile.
    syncs: Vec<oneshot::Sender<()>>,
    /// The round trip an unsubscribe waits for (`release`).
    unsubscribe: bool,
}

impl State {
    fn query(&mut self, verb: &str, channel: &str) {
        listen_sql(&mut self.out, verb, channel);
        self.in_flight.push_back(Flight::default());
    }

    fn ack_after_queued(&mut self, done: oneshot::Sender<()>) {
        match self.in_flight.back_mut() {
            Some(waiting) => waiting.acks.push(done),
            None if self.connected => {
                let _ = done.send(());
            }
            None => self.unsent.push(done),
        }
    }

    fn disconnected(&mut self) {
        self.connected = false;
        self.out.clear();
        for waiting in self.in_flight.drain(..) {
            self.unsent.extend(waiting.acks);
            for done in waiting.syncs {
                let _ = done.send(());
            }
        }
        // Nothing to wait for: what was held is applied now.
        self.syncing = false;
        release(self);
    }

    /// A new connection listens to everything anyone listens to.
    fn connected(&mut self) {
        self.connected = true;
        let channels: Vec<Box<str>> = self.subs.keys().cloned().collect();
        for channel in channels {
            self.query("LISTEN", &channel);
        }
        for done in std::mem::take(&mut self.unsent) {
            self.ack_after_queued(done);
        }
    }
}

/// Wait between reconnection attempts.
const RETRY: Duration = Duration::from_millis(500);

async fn run(pool: Weak<Pool>, mut rx: mpsc::UnboundedReceiver<Cmd>) {
    let mut st = State::default();
    loop {
        // Connect only while someone listens.
        while st.subs.is_empty() {
            match rx.recv().await {
                Some(cmd) => receive(cmd, &mut st),
                None => return,
            }
        }
        let Some(mut server) = connect(&pool).await else {
            if !pause(&mut rx, &mut st).await {
                return;
            }
            continue;
        };
        st.disconnected();
        st.connected();
        let mut input = BytesMut::with_capacity(8192);
        loop {
            if !st.out.is_empty() {
                if server.stream.write_all(&st.out).await.is_err()
                    || server.stream.flush().await.is_err()
                {
                    break;
                }
                st.out.clear();
            }
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => receive(cmd, &mut st),
                    None => return,
                },
                r = std::future::poll_fn(|cx| poll_read_buf(&mut server.stream, cx, &mut input, 8192)) => {
                    match r {
                        Ok(0) | Err(_) => break,
                        Ok(_) => dispatch(&mut input, &mut st),
                    }
                }
            }
        }
        if let Some(pool) = pool.upgrade() {
            tracing::warn!(pool = %pool.name, "LISTEN connection lost; reconnecting");
        }
        st.disconnected();
        server.close("listener lost");
        if !pause(&mut rx, &mut st).await {
            return;
        }
    }
}

/// Waits `RETRY` before the next connection attempt, taking clients' commands meanwhile (an
/// unsubscribe applies and a Sync is answered at once; a LISTEN is confirmed once the next
/// connection listens). False when the hub is gone.
async fn pause(rx: &mut mpsc::UnboundedReceiver<Cmd>, st: &mut State) -> bool {
    let sleep = tokio::time::sleep(RETRY);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = &mut sleep => return true,
            cmd = rx.recv() => match cmd {
                Some(cmd) => receive(cmd, st),
                None => return false,
            },
        }
    }
}

async fn connect(pool: &Weak<Pool>) -> Option<Box<Server>> {
    let pool = pool.upgrade()?;
    let st = pool.state();
    let result = Server::connect(
        st.connect_params(&pool.name, Duration::from_secs(10)),
        SlotToken::unaccounted(),
    )
    .await;
    match result {
        Ok(mut s) => {
            // Named, so that it can be told apart in pg_stat_activity.
            s.run_internal("SET application_name = 'pgbay listener'")
                .await
                .ok()?;
            Some(s)
        }
        Err(e) => {
            tracing::warn!(pool = %pool.name, error = %e, "LISTEN connection failed");
            None
        }
    }
}

/// A client's command: applied in its turn (`release`).
fn receive(cmd: Cmd, st: &mut State) {
    st.held.push_back(cmd);
    release(st);
}

/// Applies the held commands in order until one unsubscribes a client that still listens
/// while the listener is connected: that one waits for a round trip of the connection (an
/// empty query) before it is applied, and so do the commands behind it. PostgreSQL delivers to
/// the listener every notification committed before that query started (the client's own
/// NOTIFY just before its UNLISTEN or `DISCARD ALL`, say) before the query's ReadyForQuery, so
/// the client is still subscribed when they come, as it would be on its own connection; and
/// the client's answer waits for the unsubscribe (`Subscriber::unlisten`), so that nothing
/// committed after it saw its UNLISTEN complete reaches it.
fn release(st: &mut State) {
    while !st.syncing {
        let Some(cmd) = st.held.pop_front() else {
            return;
        };
        if st.connected && unsubscribes(&cmd, st) {
            messages::query(&mut st.out, "");
            st.in_flight.push_back(Flight {
                unsubscribe: true,
                ..Flight::default()
            });
            st.syncing = true;
            st.held.push_front(cmd);
            return;
        }
        apply(cmd, st);
    }
}

/// Whether `cmd` unsubscribes a client, still there, from a channel it listens to.
fn unsubscribes(cmd: &Cmd, st: &State) -> bool {
    match cmd {
        Cmd::Listen { .. } | Cmd::UnlistenAll { gone: true, .. } | Cmd::Sync { .. } => false,
        Cmd::Unlisten {
            channels, client, ..
        } => channels.iter().any(|channel| {
            st.subs
                .get(channel)
                .is_some_and(|entry| entry.contains_key(client))
        }),
        Cmd::UnlistenAll { client, .. } => st.subs.values().any(|e| e.contains_key(client)),
    }
}

fn apply(cmd: Cmd, st: &mut State) {
    match cmd {
        Cmd::Listen {
            channel,
            client,
            sink,
            done,
        } => {
            let entry = st.subs.entry(channel.clone()).or_default();
            let first = entry.is_empty();
            entry.insert(client, sink);
            if first && st.connected {
                st.query("LISTEN", &channel);
            }
            if let Some(done) = done {
                st.ack_after_queued(done);
            }
        }
        Cmd::Unlisten {
            channels,
            client,
            done,
        } => {
            for channel in channels {
                if let Some(entry) = st.subs.get_mut(&channel) {
                    entry.remove(&client);
                    if entry.is_empty() {
                        st.subs.remove(&channel);
                        if st.connected {
                            st.query("UNLISTEN", &channel);
                        }
                    }
                }
            }
            if let Some(done) = done {
                let _ = done.send(());
            }
        }
        Cmd::Sync { done } => {
            if st.connected {
                messages::query(&mut st.out, "");
                st.in_flight.push_back(Flight {
                    syncs: vec![done],
                    ..Flight::default()
                });
            } else {
                // Nothing committed meanwhile can come (the listener is away): no wait.
                let _ = done.send(());
            }
        }
        Cmd::UnlistenAll { client, done, .. } => {
            let mut gone = Vec::new();
            st.subs.retain(|channel, entry| {
                entry.remove(&client);
                if entry.is_empty() {
                    gone.push(channel.clone());
                }
                !entry.is_empty()
            });
            if st.connected {
                for channel in gone {
                    st.query("UNLISTEN", &channel);
                }
            }
            if let Some(done) = done {
                let _ = done.send(());
            }
        }
    }
}

/// Hands every whole NotificationResponse in `input` to the clients listening to its channel;
/// a ReadyForQuery acknowledges the oldest query in flight. A client over its notification
/// budget is unsubscribed from every channel (its task disconnects it).
fn dispatch(input: &mut BytesMut, st: &mut State) {
    let mut over = Vec::new();
    while let Some((kind, len)) = header(input) {
        if input.len() < len || len < HEADER {
            break;
        }
        match kind {
            tag::NOTIFICATION_RESPONSE => {
                // A copy of its own: a slice of `input` would keep the whole read buffer alive
                // for as long as a slow client holds the notification.
                let msg = Bytes::copy_from_slice(&input[..len]);
                input.advance(len);
                let Some((channel, _)) = msg.get(HEADER + 4..).and_then(cstr) else {
                    continue;
                };
                let Ok(channel) = std::str::from_utf8(channel) else {
                    continue;
                };
                if let Some(entry) = st.subs.get_mut(channel) {
                    entry.retain(|client, sink| match sink.offer(&msg) {
                        Offer::Queued => true,
                        Offer::OverBudget => {
                            over.push(*client);
                            false
                        }
                        Offer::Gone => false,
                    });
                    if entry.is_empty() {
                        st.subs.remove(channel);
                        st.query("UNLISTEN", channel);
                    }
                }
            }
            tag::READY_FOR_QUERY => {
                input.advance(len);
                let flight = st.in_flight.pop_front().unwrap_or_default();
                for done in flight.acks.into_iter().chain(flight.syncs) {
                    let _ = done.send(());
                }
                if flight.unsubscribe {
                    // The unsubscribe that waited for it, then what waited behind it.
                    st.syncing = false;
                    if let Some(cmd) = st.held.pop_front() {
                        apply(cmd, st);
                    }
                    release(st);
                }
            }
            tag::ERROR_RESPONSE => {
                let (code, message) = crate::net::messages::error::parse_error(&input[HEADER..len]);
                input.advance(len);
                tracing::warn!(%code, %message, "LISTEN connection error");
            }
            _ => input.advance(len),
        }
    }
    for client in over {
        apply(
            Cmd::UnlistenAll {
                client,
                gone: true,
                done: None,
            },
            st,
        );
    }
}

/// `LISTEN "channel"` as a Query; the channel is always quoted, so nothing in it is SQL.
fn listen_sql(out: &mut BytesMut, verb: &str, channel: &str) {
    let mut sql = String::with_capacity(channel.len() + 12);
    sql.push_str(verb);
    sql.push_str(" \"");
    sql.push_str(&channel.replace('"', "\"\""));
    sql.push('"');
    messages::query(out, &sql);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NotifyBudget;

    /// The queries in `out` (their SQL), which is then emptied.
    fn sent(st: &mut State) -> Vec<String> {
        let mut queries = Vec::new();
        while let Some((kind, len)) = header(&st.out) {
            assert_eq!(kind, tag::QUERY);
            let sql = &st.out[HEADER..len - 1];
            queries.push(String::from_utf8(sql.to_vec()).unwrap());
            st.out.advance(len);
        }
        queries
    }

    fn ready(st: &mut State) {
        let mut input = BytesMut::from(&[tag::READY_FOR_QUERY, 0, 0, 0, 5, b'I'][..]);
        dispatch(&mut input, st);
    }

    #[test]
    fn unsubscribing_from_several_channels_takes_one_round_trip() {
        let budget = Arc::new(Budget::new(NotifyBudget::default()));
        let (sink, _inbox) = Inbox::new(budget.clone());
        let (other, _other_inbox) = Inbox::new(budget);
        let mut st = State {
            connected: true,
            ..State::default()
        };
        for (channel, client, sink) in [
            ("a", 1, &sink),
            ("b", 1, &sink),
            ("c", 1, &sink),
            ("c", 2, &other),
        ] {
            receive(
                Cmd::Listen {
                    channel: channel.into(),
                    client,
                    sink: sink.clone(),
                    done: None,
                },
                &mut st,
            );
        }
        assert_eq!(
            sent(&mut st),
            ["LISTEN \"a\"", "LISTEN \"b\"", "LISTEN \"c\""]
        );
        for _ in 0..3 {
            ready(&mut st);
        }
        let (done, mut unsubscribed) = oneshot::channel();
        receive(
            Cmd::Unlisten {
                channels: vec!["a".into(), "b".into(), "c".into()],
                client: 1,
                done: Some(done),
            },
            &mut st,
        );
        // One round trip, then every channel at once; "c" still has client 2.
        assert_eq!(sent(&mut st), [""]);
        assert!(unsubscribed.try_recv().is_err());
        ready(&mut st);
        assert_eq!(sent(&mut st), ["UNLISTEN \"a\"", "UNLISTEN \"b\""]);
        assert!(unsubscribed.try_recv().is_ok());
        assert_eq!(st.subs.keys().map(|c| &**c).collect::<Vec<_>>(), ["c"]);
    }

    #[test]
    fn a_loss_answers_the_syncs_in_flight_and_keeps_the_listens_for_the_next_connection() {
        let budget = Arc::new(Budget::new(NotifyBudget::default()));
        let (sink, _inbox) = Inbox::new(budget);
        let mut st = State {
            connected: true,
            ..State::default()
        };
        let (done, mut confirmed) = oneshot::channel();
        receive(
            Cmd::Listen {
                channel: "a".into(),
                client: 1,
                sink,
                done: Some(done),
            },
            &mut st,
        );
        let (done, mut synced) = oneshot::channel();
        receive(Cmd::Sync { done }, &mut st);
        assert_eq!(sent(&mut st), ["LISTEN \"a\"", ""]);
        st.disconnected();
        // What the lost connection had not read is lost with it: nothing to wait for.
        assert!(synced.try_recv().is_ok());
        assert!(confirmed.try_recv().is_err());
        // Away, a Sync is answered at once.
        let (done, mut synced) = oneshot::channel();
        receive(Cmd::Sync { done }, &mut st);
        assert!(synced.try_recv().is_ok());
        // The next connection listens again; the LISTEN is confirmed by its answer.
        st.connected();
        assert_eq!(sent(&mut st), ["LISTEN \"a\""]);
        assert!(confirmed.try_recv().is_err());
        ready(&mut st);
        assert!(confirmed.try_recv().is_ok());
    }

    #[test]
    fn keep_only_sends_the_channels_it_drops_in_one_command() {
        let budget = Arc::new(Budget::new(NotifyBudget::default()));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let hub = Hub { tx, budget };
        let mut sub = Subscriber::new(&hub);
        for channel in ["a", "b", "c"] {
            drop(sub.listen(channel.into()));
        }
        while rx.try_recv().is_ok() {}
        let keep: HashSet<Box<str>> = ["b".into()].into_iter().collect();
        let (_, mut gone) = sub.keep_only(&keep).expect("channels dropped");
        gone.sort();
        assert_eq!(gone, [Box::from("a"), Box::from("c")]);
        let Ok(Cmd::Unlisten { mut channels, .. }) = rx.try_recv() else {
            panic!("no Unlisten");
        };
        channels.sort();
        assert_eq!(channels, [Box::from("a"), Box::from("c")]);
        assert!(rx.try_recv().is_err());
        assert_eq!(sub.channels().len(), 1);
        // Nothing to drop: no command.
        assert!(sub.keep_only(&keep).is_none());
        assert!(rx.try_recv().is_err());
        // Nothing kept: one UNLISTEN * for the client.
        let (_, gone) = sub.keep_only(&HashSet::new()).expect("channels dropped");
        assert_eq!(gone, [Box::from("b")]);
        assert!(matches!(rx.try_recv(), Ok(Cmd::UnlistenAll { .. })));
        assert!(sub.channels().is_empty());
    }
}
