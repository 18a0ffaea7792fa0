//! A server that is unreachable for a while (a failover, a restart): with `unavailable_hold`, a
//! transaction that needs a server waits for it and then runs, and past the pool's
//! `query_wait_timeout` it gets the connection error naming the pool. A pool that requires a
//! primary treats a server in recovery (a crashed primary that Patroni starts again read-only
//! before promoting it) as unreachable: held, never served read-only.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_client_runs_once_the_server_is_back_or_gets_the_error_past_the_bound() {
    let pg = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    pg.setup_app().await;
    let cfg = holding_service("hold", pg.port, Duration::from_secs(3));
    let (pooler, addr) = start(cfg).await;
    let a = connect(addr, "p1").await.unwrap();
    let one: i32 = a.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);

    // Down for longer than query_wait_timeout: the held client gets the error (FATAL) after the
    // bound, naming the pool.
    let pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();
    let t = Instant::now();
    let e = must_fail(
        a.simple_query("SELECT 1").await,
        "server down past the bound",
    );
    let waited = t.elapsed();
    let text = describe(&e);
    assert!(
        waited >= Duration::from_secs(2),
        "not held: {waited:?}: {text}"
    );
    assert!(text.contains("08001") && text.contains("p1"), "{text}");

    // Down for a moment: a client waits and its query runs once the server is back.
    let a = connect(addr, "p1").await.unwrap();
    let query = tokio::spawn(async move {
        let r = a
            .query_one("SELECT 2", &[])
            .await
            .map(|r| r.get::<_, i32>(0));
        (a, r)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pg = tokio::task::spawn_blocking(move || {
        pg.restart_stopped();
        pg
    })
    .await
    .unwrap();
    let (_a, r) = query.await.unwrap();
    assert_eq!(r.unwrap(), 2);
    pooler.shutdown().await;
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_that_requires_a_primary_holds_clients_while_the_server_is_in_recovery() {
    let pg = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    pg.setup_app().await;
    let pg = tokio::task::spawn_blocking(move || {
        pg.restart_as_standby();
        pg
    })
    .await
    .unwrap();
    let mut cfg = holding_service("primary", pg.port, Duration::from_secs(3));

    // Without the requirement the standby serves, read-only: what a writer met after a failover.
    let (pooler, addr) = start(cfg.clone()).await;
    let a = connect(addr, "p1").await.unwrap();
    let r: bool = a
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(r, "the cluster is not a standby");
    drop(a);
    pooler.shutdown().await;

    // With it a client is held (its login needs the server's parameters), and past the bound
    // gets the connection error saying why.
    cfg.backend.require_primary = true;
    let (pooler, addr) = start(cfg).await;
    let e = must_fail(connect(addr, "p1").await, "a standby as the primary");
    let text = describe(&e);
    assert!(
        sqlstate(&e).starts_with("08") && text.contains("in recovery"),
        "{text}"
    );

    // Promoted while a client is held: it logs in and its query runs on the primary.
    let query = tokio::spawn(async move {
        let a = connect(addr, "p1").await?;
        let r = a.query_one("SELECT pg_is_in_recovery()", &[]).await?;
        Ok::<_, tokio_postgres::Error>(r.get::<_, bool>(0))
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pg = tokio::task::spawn_blocking(move || {
        pg.promote();
        pg
    })
    .await
    .unwrap();
    let r = query.await.unwrap();
    assert!(!r.unwrap(), "served by a server in recovery");
    pooler.shutdown().await;
    drop(pg);
}
