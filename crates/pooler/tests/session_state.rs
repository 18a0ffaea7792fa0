//! Transaction mode: a client's SETs follow it across server connections, and SQL-level
//! prepared statements are refused (issue 11). One pool of size 1 serves two clients in turn.

mod support;

use pgbay_pooler::PoolMode;
use support::*;

async fn show(c: &tokio_postgres::Client, name: &str) -> String {
    c.query_one(&format!("SHOW {name}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_follow_their_client() {
    let pg = shared().await;
    let (pooler, addr) = start(service(
        "sets",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 1)],
    ))
    .await;
    let a = connect(addr, "p1").await.unwrap();
    let b = connect(addr, "p1").await.unwrap();
    let default_mem = show(&b, "work_mem").await;
    // Extended protocol (tokio-postgres prepares every statement) and simple queries.
    a.execute("SET statement_timeout = 1234", &[])
        .await
        .unwrap();
    a.batch_execute("SET work_mem = '9MB'").await.unwrap();
    for _ in 0..5 {
        assert_eq!(show(&a, "statement_timeout").await, "1234ms");
        assert_eq!(show(&b, "statement_timeout").await, "0");
        assert_eq!(show(&a, "work_mem").await, "9MB");
        assert_eq!(show(&b, "work_mem").await, default_mem);
    }
    // A prepared SET executed again (Bind without Parse) is seen too.
    let set = a.prepare("SET work_mem = '3MB'").await.unwrap();
    a.batch_execute("RESET work_mem").await.unwrap();
    assert_eq!(show(&a, "work_mem").await, default_mem);
    a.execute(&set, &[]).await.unwrap();
    assert_eq!(show(&b, "work_mem").await, default_mem);
    assert_eq!(show(&a, "work_mem").await, "3MB");
    // Rolled back: not kept; SET LOCAL: local.
    a.batch_execute("BEGIN; SET statement_timeout = 5; ROLLBACK")
        .await
        .unwrap();
    a.batch_execute("BEGIN; SET LOCAL work_mem = '1MB'; COMMIT")
        .await
        .unwrap();
    assert_eq!(show(&b, "statement_timeout").await, "0");
    assert_eq!(show(&a, "statement_timeout").await, "1234ms");
    assert_eq!(show(&a, "work_mem").await, "3MB");
    // A client that leaves with its SETs leaves nothing behind.
    a.batch_execute("SET lock_timeout = 777").await.unwrap();
    drop(a);
    for _ in 0..20 {
        if show(&b, "lock_timeout").await == "0" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(show(&b, "lock_timeout").await, "0");
    pooler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepared_statements_are_refused() {
    let pg = shared().await;
    let (pooler, addr) = start(service(
        "sqlprep",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 1)],
    ))
    .await;
    let a = connect(addr, "p1").await.unwrap();
    for sql in ["PREPARE p AS SELECT 1", "EXECUTE p", "DEALLOCATE p"] {
        let e = must_fail(a.batch_execute(sql).await, sql);
        assert_eq!(sqlstate(&e), "0A000", "{sql}");
        assert!(
            describe(&e).contains("transaction pooling mode"),
            "{}",
            describe(&e)
        );
        let e = must_fail(a.execute(sql, &[]).await, sql);
        assert_eq!(sqlstate(&e), "0A000", "{sql} (extended)");
    }
    // Only the start of a Query is looked at: a later EXECUTE reaches the server, which knows
    // no `p` (as a direct connection would say). The client goes on either way.
    let rows = a.simple_query("SELECT 1; EXECUTE p").await;
    assert!(rows.is_err());
    let v: i32 = a.query_one("SELECT 2", &[]).await.unwrap().get(0);
    assert_eq!(v, 2);
    pooler.shutdown().await;
}

/// The payload of the next notification within a second.
async fn note(w: &mut Watched) -> Option<String> {
    tokio::time::timeout(std::time::Duration::from_secs(1), w.notes.recv())
        .await
        .ok()
        .flatten()
        .map(|n| n.payload().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_in_transaction_mode() {
    use std::time::Duration;
    let pg = shared().await;
    let (pooler, addr) = start(service(
        "txnotify",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 1)],
    ))
    .await;
    let mut listener = connect_watched(addr, "p1").await;
    let mut bystander = connect_watched(addr, "p1").await;
    let sender = connect(addr, "p1").await.unwrap();
    listener
        .client
        .batch_execute("LISTEN txn_chan")
        .await
        .unwrap();
    sender
        .batch_execute("NOTIFY txn_chan, 'one'")
        .await
        .unwrap();
    assert_eq!(note(&mut listener).await.as_deref(), Some("one"));
    // The one server connection serves everyone meanwhile; the listener still hears.
    for i in 0..50 {
        let v: i32 = sender
            .query_one("SELECT $1::int", &[&i])
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, i);
        bystander.client.batch_execute("SELECT 1").await.unwrap();
    }
    sender
        .batch_execute("SELECT pg_notify('txn_chan', 'two')")
        .await
        .unwrap();
    assert_eq!(note(&mut listener).await.as_deref(), Some("two"));
    // Delivered while the listener is attached, too.
    listener.client.batch_execute("SELECT 1").await.unwrap();
    // Nobody else hears it.
    assert!(bystander.notes.try_recv().is_err());
    // The listening server connection is restarted after a failure and listens again.
    pg.admin(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'pgbay listener'",
    )
    .await;
    let mut heard = None;
    for _ in 0..30 {
        sender
            .batch_execute("NOTIFY txn_chan, 'three'")
            .await
            .unwrap();
        if let Ok(Some(n)) =
            tokio::time::timeout(Duration::from_millis(300), listener.notes.recv()).await
        {
            heard = Some(n.payload().to_string());
            break;
        }
    }
    assert_eq!(heard.as_deref(), Some("three"));
    listener.client.batch_execute("UNLISTEN *").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    while listener.notes.try_recv().is_ok() {}
    sender
        .batch_execute("NOTIFY txn_chan, 'four'")
        .await
        .unwrap();
    assert_eq!(note(&mut listener).await, None);
    pooler.shutdown().await;
}

/// A LISTEN while the backend is down: an error saying so (08006), and the subscription stands,
/// served once the backend is back. Uses its own cluster (it stops it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_while_the_backend_is_down() {
    let pg = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    pg.setup_app().await;
    let (pooler, addr) = start(service(
        "listendown",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 1)],
    ))
    .await;
    let mut listener = connect_watched(addr, "p1").await;
    listener.client.batch_execute("SELECT 1").await.unwrap();
    let pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();
    let e = must_fail(
        listener.client.batch_execute("LISTEN down_chan").await,
        "LISTEN with the backend down",
    );
    assert_eq!(sqlstate(&e), "08006", "{}", describe(&e));
    assert!(
        describe(&e).contains("listening server connection is not available")
            && describe(&e).contains("p1"),
        "{}",
        describe(&e)
    );
    let pg = tokio::task::spawn_blocking(move || {
        pg.restart_stopped();
        pg
    })
    .await
    .unwrap();
    let sender = connect(addr, "p1").await.unwrap();
    let mut heard = None;
    for _ in 0..40 {
        sender
            .batch_execute("NOTIFY down_chan, 'back'")
            .await
            .unwrap();
        if let Some(p) = note(&mut listener).await {
            heard = Some(p);
            break;
        }
    }
    assert_eq!(heard.as_deref(), Some("back"));
    pooler.shutdown().await;
    drop(pg);
}
