//! Failover hold (issue 17): two clusters play the old and the new primary. When the old one
//! dies, clients needing a server connection are held (bounded by query_wait_timeout) instead
//! of failing; applying a config that points the pool at the new primary serves them at once on
//! their own client connections, with their prepared statements and SET state replayed.

mod support;

use std::time::Duration;

use pgbay_pooler::{PoolMode, PoolerConfig};
use support::*;

async fn port_of(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT current_setting('port')::int", &[])
        .await
        .unwrap()
        .get(0)
}

/// tokio-postgres reports a FATAL either on the query or on the connection.
async fn fatal_text(
    conn: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    query_err: &tokio_postgres::Error,
) -> String {
    match tokio::time::timeout(Duration::from_secs(30), conn).await {
        Ok(Ok(Err(c))) if c.code().is_some() => describe(&c),
        other => format!("{} (connection: {other:?})", describe(query_err)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_clients_move_to_the_new_primary() {
    let (old, new) = tokio::join!(
        tokio::task::spawn_blocking(Cluster::start),
        tokio::task::spawn_blocking(Cluster::start)
    );
    let (old, new) = (old.unwrap(), new.unwrap());
    tokio::join!(old.setup_app(), new.setup_app());
    let mut cfg = service(
        "failover",
        old.port,
        vec![
            pool("tx", PoolMode::Transaction, 2),
            pool("sess", PoolMode::Session, 2),
        ],
    );
    cfg.limits.query_wait_timeout = Duration::from_secs(60);
    cfg.backend.unavailable_hold = Duration::from_secs(60);
    let (pooler, addr) = start(cfg.clone()).await;

    // A transaction-mode client with a prepared statement and session state.
    let a = connect(addr, "tx").await.unwrap();
    a.batch_execute("SET application_name = 'held-client'")
        .await
        .unwrap();
    let stmt = a
        .prepare("SELECT current_setting('port')::int + $1::int")
        .await
        .unwrap();
    let v: i32 = a.query_one(&stmt, &[&0i32]).await.unwrap().get(0);
    assert_eq!(v, old.port as i32);
    // Five clients idle between transactions.
    let mut idle = Vec::new();
    for _ in 0..5 {
        let c = connect(addr, "tx").await.unwrap();
        assert_eq!(port_of(&c).await, old.port as i32);
        idle.push(c);
    }
    // A session-mode client linked to a server of the old primary.
    let s = connect_watched(addr, "sess").await;
    assert_eq!(port_of(&s.client).await, old.port as i32);

    // The old primary dies (immediate stop: its backends are killed).
    let old = tokio::task::spawn_blocking(move || {
        old.stop();
        old
    })
    .await
    .unwrap();

    // a's next query is held, not failed.
    let held = tokio::spawn(async move {
        let r = a
            .query_one(&stmt, &[&1i32])
            .await
            .map(|r| r.get::<_, i32>(0));
        (a, r)
    });
    let stats = || pooler.pool_stats("failover", "tx").unwrap();
    eventually("the client is held waiting for a server", || {
        stats().cl_waiting >= 1
    })
    .await;
    assert!(!held.is_finished());

    // The new primary is applied: the held query runs there, on the same client connection.
    cfg.backend.port = new.port;
    let report = pooler
        .apply(PoolerConfig {
            services: vec![cfg.clone()],
        })
        .await
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
    let (a, r) = tokio::time::timeout(Duration::from_secs(30), held)
        .await
        .expect("held client served after the new address")
        .unwrap();
    assert_eq!(r.expect("held query succeeds"), new.port as i32 + 1);
    // Its SET state was replayed on the new server.
    let name: String = a
        .query_one("SHOW application_name", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "held-client");
    // The idle clients' next queries succeed on their connections, on the new primary.
    for c in &idle {
        assert_eq!(port_of(c).await, new.port as i32);
    }

    // The session client lost its server: a clear error naming the pool, never a hang.
    let e = must_fail(
        tokio::time::timeout(Duration::from_secs(30), s.client.simple_query("SELECT 1"))
            .await
            .expect("session client answered"),
        "session client of the lost primary",
    );
    let text = fatal_text(s.conn, &e).await;
    assert!(
        (text.contains("08006") || text.contains("57P01")) && text.contains("sess"),
        "{text}"
    );
    // A new session client is served by the new primary.
    let s2 = connect(addr, "sess").await.unwrap();
    assert_eq!(port_of(&s2).await, new.port as i32);

    pooler.shutdown().await;
    drop((old, new));
}
