//! Notification budgets (issue 15): LISTENing clients that stop reading are disconnected
//! once the pooler holds too much for them, and what was queued for them is given back.
//! (The per-client budget, with pgbay's RSS, is tested end to end in
//! tests/test_notify_budget.py; here the pooler-wide one.)

mod support;

use std::time::Duration;

use pgbay_pooler::{NotifyBudget, PoolMode};
use support::*;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls};

/// A client that LISTENed and then stopped reading: its connection is not polled (so its
/// socket is not read) until `drain`.
struct Slow {
    _client: Client,
    conn: Connection<tokio::net::TcpStream, NoTlsStream>,
}

async fn slow_listener(addr: std::net::SocketAddr, pool: &str, channel: &str) -> Slow {
    slow_client(addr, pool, &[&format!("LISTEN {channel}")]).await
}

/// A client that ran `statements` and then stopped reading.
async fn slow_client(addr: std::net::SocketAddr, pool: &str, statements: &[&str]) -> Slow {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    // Before connecting, so that the window it advertises stays small.
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(addr).await.unwrap();
    let config: tokio_postgres::Config = conn_str(addr, pool).parse().unwrap();
    let (client, mut conn) = config.connect_raw(stream, NoTls).await.unwrap();
    for sql in statements {
        let run = client.batch_execute(sql);
        tokio::pin!(run);
        tokio::select! {
            r = &mut run => r.unwrap(),
            r = &mut conn => panic!("connection ended during {sql}: {r:?}"),
        }
    }
    Slow {
        _client: client,
        conn,
    }
}

/// Reads what the pooler sent, until it ends the connection or `all` notifications came:
/// (notifications, the error that ended the connection).
async fn drain(slow: &mut Slow, all: usize) -> (usize, Option<tokio_postgres::Error>) {
    let mut notes = 0;
    while notes < all {
        let msg = tokio::time::timeout(
            Duration::from_secs(10),
            std::future::poll_fn(|cx| slow.conn.poll_message(cx)),
        )
        .await
        .expect("the pooler either ends the connection or delivers everything");
        match msg {
            Some(Ok(AsyncMessage::Notification(_))) => notes += 1,
            Some(Ok(_)) => {}
            Some(Err(e)) => return (notes, Some(e)),
            None => return (notes, None),
        }
    }
    (notes, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_total_budget_clients_that_do_not_read_are_disconnected() {
    const SLOW: usize = 8;
    const PER_CHANNEL: usize = 600;
    const TOTAL: usize = 4 << 20;
    let pg = shared().await;
    let (pooler, addr) = start(service(
        "notifytotal",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 2)],
    ))
    .await;
    // Each client alone is far under its own budget; together they pass the total.
    pooler.set_notify_budget(NotifyBudget {
        client_bytes: 64 << 20,
        total_bytes: TOTAL,
    });
    let mut slow = Vec::new();
    for i in 0..SLOW {
        slow.push(slow_listener(addr, "p1", &format!("c{i}")).await);
    }
    let mut reader = connect_watched(addr, "p1").await;
    reader.client.batch_execute("LISTEN c0").await.unwrap();
    let sender = connect(addr, "p1").await.unwrap();
    flood(&sender, SLOW, PER_CHANNEL).await;
    sender.batch_execute("NOTIFY c0, 'end'").await.unwrap();
    // The client that reads got everything on the slow clients' channel 0, to the end.
    let mut got = 0;
    loop {
        let n = tokio::time::timeout(Duration::from_secs(20), reader.notes.recv())
            .await
            .expect("the reader keeps receiving");
        let Some(n) = n else {
            let end = (&mut reader.conn).await.unwrap();
            panic!("the reader was disconnected after {got}: {end:?}");
        };
        got += 1;
        if n.payload() == "end" {
            break;
        }
    }
    assert_eq!(got, PER_CHANNEL + 1);
    // Clients were disconnected, the fullest first, until the rest fit: those left lost
    // nothing.
    let mut disconnected = 0;
    for (i, s) in slow.iter_mut().enumerate() {
        let (notes, error) = drain(s, PER_CHANNEL).await;
        let Some(error) = error else {
            assert_eq!(notes, PER_CHANNEL, "slow client {i} lost notifications");
            continue;
        };
        disconnected += 1;
        let db = error.as_db_error().unwrap_or_else(|| panic!("{error:?}"));
        assert_eq!(db.severity(), "FATAL");
        assert_eq!(db.code().code(), "53200");
        assert!(
            db.message()
                .contains(&format!("total notification budget of {TOTAL} bytes")),
            "{}",
            db.message()
        );
        assert!(notes < PER_CHANNEL, "slow client {i} got all {notes}");
    }
    assert!(disconnected >= 1, "nobody was disconnected");
    // Nothing is held for them any more.
    eventually("queues freed", || pooler.notify_bytes_queued() == 0).await;
    pooler.shutdown().await;
}

/// Sends `per_channel` ~8 KB notifications to each of c0..c{channels-1}.
async fn flood(sender: &Client, channels: usize, per_channel: usize) {
    for start in (0..channels * per_channel).step_by(100) {
        sender
            .batch_execute(&format!(
                "SELECT count(pg_notify('c' || mod(i, {channels}), i || repeat('x', 7900))) \
                 FROM generate_series({start}, {}) i",
                (start + 99).min(channels * per_channel - 1)
            ))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_in_a_transaction_that_does_not_read_is_disconnected_and_frees_its_connection() {
    const BUDGET: usize = 256 << 10;
    const PER_CHANNEL: usize = 600;
    let pg = shared().await;
    let (pooler, addr) = start(service(
        "notifyattached",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 1)],
    ))
    .await;
    pooler.set_notify_budget(NotifyBudget {
        client_bytes: BUDGET,
        total_bytes: 64 << 20,
    });
    // Holds the pool's only server connection (in a transaction) and reads nothing.
    let mut slow = slow_client(addr, "p1", &["LISTEN c0", "BEGIN", "SELECT 1"]).await;
    // Reads the same channel, directly from the server.
    let (reader, mut conn) = tokio_postgres::connect(&pg.superuser_conn_str(APP_DB), NoTls)
        .await
        .unwrap();
    let (tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = msg {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    reader.batch_execute("LISTEN c0").await.unwrap();
    flood(&reader, 1, PER_CHANNEL).await;
    reader.batch_execute("NOTIFY c0, 'end'").await.unwrap();
    // Once the pooler's listener had it all, the slow client was over its budget and nothing
    // is held for it any more.
    while notes.recv().await.expect("reader connected") != "end" {}
    eventually("its queue freed", || pooler.notify_bytes_queued() == 0).await;
    // Reading at last, it finds what was on its way, then the error.
    let (notes, error) = drain(&mut slow, usize::MAX).await;
    let error = error.unwrap_or_else(|| panic!("no error after {notes} notifications"));
    let db = error.as_db_error().unwrap_or_else(|| panic!("{error:?}"));
    assert_eq!((db.severity(), db.code().code()), ("FATAL", "53200"));
    assert!(
        db.message()
            .contains(&format!("client's notification budget of {BUDGET} bytes")),
        "{}",
        db.message()
    );
    assert!(notes < PER_CHANNEL, "got all {notes}");
    // The pool's connection serves others again.
    let other = connect(addr, "p1").await.unwrap();
    let one: i32 = other.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    pooler.shutdown().await;
}
