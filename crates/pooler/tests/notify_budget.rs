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
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    // Before connecting, so that the window it advertises stays small.
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(addr).await.unwrap();
    let config: tokio_postgres::Config = conn_str(addr, pool).parse().unwrap();
    let (client, mut conn) = config.connect_raw(stream, NoTls).await.unwrap();
    let sql = format!("LISTEN {channel}");
    {
        let listen = client.batch_execute(&sql);
        tokio::pin!(listen);
        tokio::select! {
            r = &mut listen => r.unwrap(),
            r = &mut conn => panic!("connection ended during LISTEN: {r:?}"),
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
    for start in (0..SLOW * PER_CHANNEL).step_by(100) {
        sender
            .batch_execute(&format!(
                "SELECT count(pg_notify('c' || mod(i, {SLOW}), i || repeat('x', 7900))) \
                 FROM generate_series({start}, {}) i",
                start + 99
            ))
            .await
            .unwrap();
    }
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
