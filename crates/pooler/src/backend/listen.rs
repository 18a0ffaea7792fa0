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
//! ones). A channel nobody listens to any more (UNLISTEN, client gone) is UNLISTENed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Weak;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

use super::pool::{Pool, SlotToken};
use super::server::Server;
use crate::net::messages::{self, cstr, header, tag, HEADER};
use crate::net::stream::poll_read_buf;

/// Where a client receives its notifications (whole NotificationResponse messages). Bounded: a
/// client that listens and stops reading must not make the pooler hold its notifications without
/// limit (PostgreSQL's own queue is bounded too); past [`NOTIFY_QUEUE`] its new ones are dropped.
pub type Sink = mpsc::Sender<Bytes>;

/// Notifications queued for one client before new ones are dropped for it.
pub const NOTIFY_QUEUE: usize = 10_000;

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
    Unlisten {
        channel: Box<str>,
        client: u64,
    },
    UnlistenAll {
        client: u64,
    },
}

/// A pool's listener: the sending end of its task's commands. Dropping it (with the pool)
/// ends the task and closes the connection.
pub struct Hub {
    tx: mpsc::UnboundedSender<Cmd>,
}

impl Hub {
    pub fn start(pool: Weak<Pool>) -> Hub {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, rx));
        Hub { tx }
    }

    pub fn send(&self, cmd: Cmd) {
        let _ = self.tx.send(cmd);
    }
}

static NEXT_SUBSCRIBER: AtomicU64 = AtomicU64::new(1);

/// A client's end: made at its first LISTEN; dropping it (client gone) unsubscribes.
pub struct Subscriber {
    pub id: u64,
    pub rx: mpsc::Receiver<Bytes>,
    pub sink: Sink,
    hub: mpsc::UnboundedSender<Cmd>,
}

impl Subscriber {
    pub fn new(hub: &Hub) -> Subscriber {
        let (sink, rx) = mpsc::channel(NOTIFY_QUEUE);
        Subscriber {
            id: NEXT_SUBSCRIBER.fetch_add(1, Ordering::Relaxed),
            rx,
            sink,
            hub: hub.tx.clone(),
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.hub.send(Cmd::UnlistenAll { client: self.id });
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
    in_flight: VecDeque<Vec<oneshot::Sender<()>>>,
    /// Acknowledgements owed once a connection is (re-)established and has caught up.
    unsent: Vec<oneshot::Sender<()>>,
    connected: bool,
}

impl State {
    fn query(&mut self, verb: &str, channel: &str) {
        listen_sql(&mut self.out, verb, channel);
        self.in_flight.push_back(Vec::new());
    }

    fn ack_after_queued(&mut self, done: oneshot::Sender<()>) {
        match self.in_flight.back_mut() {
            Some(waiting) => waiting.push(done),
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
            self.unsent.extend(waiting);
        }
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
                Some(cmd) => apply(cmd, &mut st),
                None => return,
            }
        }
        let Some(mut server) = connect(&pool).await else {
            let sleep = tokio::time::sleep(RETRY);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    cmd = rx.recv() => match cmd {
                        Some(cmd) => apply(cmd, &mut st),
                        None => return,
                    },
                }
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
                    Some(cmd) => apply(cmd, &mut st),
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
        tracing::warn!("LISTEN connection lost; reconnecting");
        st.disconnected();
        server.close("listener lost");
        tokio::time::sleep(RETRY).await;
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
        Cmd::Unlisten { channel, client } => {
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
        Cmd::UnlistenAll { client } => {
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
        }
    }
}

/// Hands every whole NotificationResponse in `input` to the clients listening to its channel;
/// a ReadyForQuery acknowledges the oldest query in flight.
fn dispatch(input: &mut BytesMut, st: &mut State) {
    while let Some((kind, len)) = header(input) {
        if input.len() < len || len < HEADER {
            break;
        }
        let msg = input.split_to(len).freeze();
        match kind {
            tag::NOTIFICATION_RESPONSE => {
                let Some((channel, _)) = msg.get(HEADER + 4..).and_then(cstr) else {
                    continue;
                };
                let Ok(channel) = std::str::from_utf8(channel) else {
                    continue;
                };
                if let Some(entry) = st.subs.get_mut(channel) {
                    entry.retain(|client, sink| match sink.try_send(msg.clone()) {
                        Ok(()) => true,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            tracing::warn!(
                                client,
                                channel,
                                "client reads no notifications: one dropped"
                            );
                            true
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => false,
                    });
                    if entry.is_empty() {
                        st.subs.remove(channel);
                        st.query("UNLISTEN", channel);
                    }
                }
            }
            tag::READY_FOR_QUERY => {
                for done in st.in_flight.pop_front().unwrap_or_default() {
                    let _ = done.send(());
                }
            }
            tag::ERROR_RESPONSE => {
                let (code, message) = crate::net::messages::error::parse_error(&msg[HEADER..]);
                tracing::warn!(%code, %message, "LISTEN connection error");
            }
            _ => {}
        }
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
