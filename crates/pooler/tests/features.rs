//! Prepared statements across server connections, cancel, disconnects mid-transaction,
//! client parameters, COPY, large messages and LISTEN/NOTIFY, through the pooler.

mod support;

use std::time::Duration;

use pgbay_pooler::PoolMode;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_follow_the_client_across_server_connections() {
    let pg = shared().await;
    let mut cfg = service("prep", pg.port, vec![pool("p1", PoolMode::Transaction, 2)]);
    cfg.settings.max_prepared_statements = 2;
    let (pooler, addr) = start(cfg).await;
    let a = connect(addr, "p1").await.unwrap();
    let b = connect(addr, "p1").await.unwrap();
    let s1 = a
        .prepare("SELECT $1::int AS v, pg_backend_pid() AS pid")
        .await
        .unwrap();
    let first: i32 = a.query_one(&s1, &[&1i32]).await.unwrap().get("pid");
    // b holds the only connection that exists in a transaction; a's next statement lands on a
    // fresh server connection, which never saw the Parse.
    b.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let row = a.query_one(&s1, &[&2i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>("v"), 2);
    let second: i32 = row.get("pid");
    assert_ne!(
        first, second,
        "the statement must have run on another server connection"
    );
    b.batch_execute("COMMIT").await.unwrap();

    // More statements than max_prepared_statements: eviction and re-preparation.
    let mut stmts = Vec::new();
    for i in 0..5 {
        stmts.push(a.prepare(&format!("SELECT $1::int + {i}")).await.unwrap());
    }
    for round in 0..3 {
        for (i, s) in stmts.iter().enumerate() {
            let v: i32 = a.query_one(s, &[&round]).await.unwrap().get(0);
            assert_eq!(v, round + i as i32);
        }
    }
    let counts = a
        .simple_query("SELECT count(*) FROM pg_prepared_statements")
        .await
        .unwrap();
    let n: i64 = match &counts[1] {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).unwrap().parse().unwrap(),
        other => panic!("unexpected {other:?}"),
    };
    assert!(n <= 2, "a server connection holds {n} statements, max is 2");

    // Pipelined, with an error in the middle: only the failing query fails.
    let ok = a.prepare("SELECT 10 / $1::int").await.unwrap();
    let (x, y, z) = tokio::join!(
        a.query_one(&ok, &[&2i32]),
        a.query_one(&ok, &[&0i32]),
        a.query_one(&ok, &[&5i32])
    );
    assert_eq!(x.unwrap().get::<_, i32>(0), 5);
    assert_eq!(sqlstate(&y.unwrap_err()), "22012");
    assert_eq!(z.unwrap().get::<_, i32>(0), 2);
    // A closed statement (dropped) and the same text prepared again work.
    drop(ok);
    let again = a.prepare("SELECT 10 / $1::int").await.unwrap();
    assert_eq!(
        a.query_one(&again, &[&10i32])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    pooler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_only_the_clients_query() {
    let pg = shared().await;
    let (pooler, addr) = start(service(
        "cancel",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 2)],
    ))
    .await;
    let a = connect(addr, "p1").await.unwrap();
    let b = connect(addr, "p1").await.unwrap();
    let token = a.cancel_token();
    let sleeper = tokio::spawn(async move {
        a.simple_query("SELECT pg_sleep(60) /* cancel-me */")
            .await
            .map(|_| ())
    });
    let other = tokio::spawn(async move {
        b.simple_query("SELECT pg_sleep(1) /* keep-me */")
            .await
            .map(|_| ())
    });
    // Wait until the backend really runs a's query.
    let (admin, conn) =
        tokio_postgres::connect(&pg.superuser_conn_str("postgres"), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    loop {
        let n: i64 = admin
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%cancel-me%' AND state = 'active' AND pid <> pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        if n == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e = sleeper.await.unwrap().expect_err("a's query was cancelled");
    assert_eq!(sqlstate(&e), "57014", "{}", describe(&e));
    other.await.unwrap().expect("b's query is not cancelled");
    pooler.shutdown().await;
}

/// A cancel request for a client still waiting for a server connection ends that wait as
/// PostgreSQL ends a cancelled statement (57014, the session usable), simple and extended
/// protocol alike, in transaction and session mode. (That a cancel of an idle client does not
/// linger to end its next wait is `tests/test_txn_isolation.py`'s: libpq's cancel returns once
/// the pooler handled it, tokio-postgres' when it is sent.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_a_clients_wait_for_a_server() {
    let pg = shared().await;
    for (name, mode) in [
        ("waitcancel", PoolMode::Transaction),
        ("waitcancelsess", PoolMode::Session),
    ] {
        let (pooler, addr) = start(service(name, pg.port, vec![pool("p1", mode, 1)])).await;
        let stats = || pooler.pool_stats(name, "p1").expect("pool exists");
        let holder = connect(addr, "p1").await.unwrap();
        holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
        let b = std::sync::Arc::new(connect(addr, "p1").await.unwrap());
        let token = b.cancel_token();
        for extended in [false, true] {
            let waiter = b.clone();
            let query = tokio::spawn(async move {
                if extended {
                    waiter
                        .query_one("SELECT $1::int", &[&7i32])
                        .await
                        .map(|_| ())
                } else {
                    waiter.simple_query("SELECT 1").await.map(|_| ())
                }
            });
            eventually("the client waits", || stats().cl_waiting == 1).await;
            token.cancel_query(tokio_postgres::NoTls).await.unwrap();
            let e = query
                .await
                .unwrap()
                .expect_err("the waiting query is cancelled");
            assert_eq!(sqlstate(&e), "57014", "{mode:?} {}", describe(&e));
            eventually("nobody waits", || stats().cl_waiting == 0).await;
        }
        // The cancelled requests are gone; the next one is served once a connection is free.
        let waiter = b.clone();
        let query = tokio::spawn(async move {
            let v: i32 = waiter.query_one("SELECT 8", &[]).await?.get(0);
            Ok::<_, tokio_postgres::Error>(v)
        });
        eventually("the client waits again", || stats().cl_waiting == 1).await;
        holder.batch_execute("COMMIT").await.unwrap();
        if mode == PoolMode::Session {
            drop(holder);
        }
        assert_eq!(query.await.unwrap().expect("served once free"), 8);
        pooler.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_mid_transaction_leaks_nothing() {
    let pg = shared().await;
    pg.admin(
        APP_DB,
        "CREATE TABLE IF NOT EXISTS gone (v int); ALTER TABLE gone OWNER TO app",
    )
    .await;
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let (pooler, addr) = start(service("gone", pg.port, vec![pool("p1", mode, 1)])).await;
        let a = connect_watched(addr, "p1").await;
        a.client
            .batch_execute("BEGIN; INSERT INTO gone VALUES (1); SET LOCAL work_mem = '9MB'")
            .await
            .unwrap();
        drop(a.client);
        let _ = a.conn.await;
        let b = connect(addr, "p1").await.unwrap();
        // Same (only) server connection or a new one: either way a's transaction is gone.
        let n: i64 = b
            .query_one("SELECT count(*) FROM gone", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{mode:?}");
        let wm: String = b.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
        assert_eq!(wm, "4MB", "{mode:?}");
        pooler.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_parameters_follow_the_client() {
    let pg = shared().await;
    let (pooler, addr) = start(service(
        "params",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 1)],
    ))
    .await;
    let alpha = connect_str(&format!("{} application_name=alpha", conn_str(addr, "p1")))
        .await
        .unwrap();
    let beta = connect_str(&format!("{} application_name=beta", conn_str(addr, "p1")))
        .await
        .unwrap();
    for _ in 0..2 {
        let a: String = alpha
            .query_one("SHOW application_name", &[])
            .await
            .unwrap()
            .get(0);
        let b: String = beta
            .query_one("SHOW application_name", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!((a.as_str(), b.as_str()), ("alpha", "beta"));
    }
    // A reported parameter changed with SET sticks to its client too.
    alpha
        .batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    let b: String = beta.query_one("SHOW TimeZone", &[]).await.unwrap().get(0);
    let a: String = alpha.query_one("SHOW TimeZone", &[]).await.unwrap().get(0);
    assert_eq!(a, "Asia/Tokyo");
    assert_ne!(b, "Asia/Tokyo");
    pooler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_and_large_messages_pass_through() {
    use futures_util::{SinkExt, StreamExt};
    let pg = shared().await;
    pg.admin(
        APP_DB,
        "CREATE TABLE IF NOT EXISTS copied (line text); ALTER TABLE copied OWNER TO app",
    )
    .await;
    let (pooler, addr) = start(service(
        "copy",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 1)],
    ))
    .await;
    let c = connect(addr, "p1").await.unwrap();
    let mut data = Vec::new();
    for i in 0..40_000 {
        data.extend_from_slice(
            format!("line number {i} with some padding to make it longer\n").as_bytes(),
        );
    }
    assert!(data.len() > 2 << 20);
    let sink = c.copy_in("COPY copied FROM STDIN").await.unwrap();
    let mut sink = std::pin::pin!(sink);
    for chunk in data.chunks(100_000) {
        sink.send(bytes::Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
    }
    let n = sink.as_mut().finish().await.unwrap();
    assert_eq!(n, 40_000);
    let out = c.copy_out("COPY copied TO STDOUT").await.unwrap();
    let mut out = std::pin::pin!(out);
    let mut back = Vec::new();
    while let Some(chunk) = out.next().await {
        back.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(back, data);
    // Large query text (simple protocol), large parameter (Bind) and large row.
    let big = "x".repeat(3 << 20);
    let rows = c
        .simple_query(&format!("SELECT length('{big}')"))
        .await
        .unwrap();
    match &rows[1] {
        tokio_postgres::SimpleQueryMessage::Row(r) => assert_eq!(r.get(0), Some("3145728")),
        other => panic!("unexpected {other:?}"),
    }
    let len: i32 = c
        .query_one("SELECT length($1::text)", &[&big])
        .await
        .unwrap()
        .get(0);
    assert_eq!(len, 3 << 20);
    let row: String = c
        .query_one("SELECT repeat('y', 3000000)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(row.len(), 3_000_000);
    pooler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_in_session_mode() {
    let pg = shared().await;
    let (pooler, addr) = start(service(
        "notify",
        pg.port,
        vec![pool("p1", PoolMode::Session, 2)],
    ))
    .await;
    let mut listener = connect_watched(addr, "p1").await;
    listener
        .client
        .batch_execute("LISTEN pgbay_chan")
        .await
        .unwrap();
    let sender = connect(addr, "p1").await.unwrap();
    sender
        .batch_execute("NOTIFY pgbay_chan, 'hello'")
        .await
        .unwrap();
    let note = tokio::time::timeout(Duration::from_secs(10), listener.notes.recv())
        .await
        .expect("notification arrives")
        .expect("channel open");
    assert_eq!((note.channel(), note.payload()), ("pgbay_chan", "hello"));
    pooler.shutdown().await;
}
