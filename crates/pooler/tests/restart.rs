//! A backend that restarts: idle clients carry on, clients get a clear error while it is down,
//! and the pool reconnects as soon as it is back. Uses its own cluster (it restarts it).

mod support;

use pgbay_pooler::PoolMode;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_restart_is_recovered() {
    let pg = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    pg.setup_app().await;
    let (pooler, addr) = start(service(
        "restart",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 2)],
    ))
    .await;
    let a = connect(addr, "p1").await.unwrap();
    let before: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);

    let pg = tokio::task::spawn_blocking(move || {
        pg.restart();
        pg
    })
    .await
    .unwrap();
    // The idle client's next transaction gets a fresh server connection.
    let after: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(before, after);

    // While the backend is down, a client gets an error naming the pool and the cause.
    let pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();
    let w = connect_watched(addr, "p1").await;
    let query_err = must_fail(w.client.simple_query("SELECT 1").await, "backend is down");
    // tokio-postgres reports a FATAL either on the query or on the connection.
    let text = match w.conn.await {
        Ok(Err(e)) if e.code().is_some() => describe(&e),
        _ => describe(&query_err),
    };
    assert!(
        text.contains("08001") && text.contains("p1") && text.contains("onnect"),
        "{text}"
    );

    let pg = tokio::task::spawn_blocking(move || {
        pg.restart_stopped();
        pg
    })
    .await
    .unwrap();
    let b = connect(addr, "p1").await.unwrap();
    let one: i32 = b.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    pooler.shutdown().await;
    drop(pg);
}
