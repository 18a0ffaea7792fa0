//! Login, errors and the three pool modes through the pooler, against a real PostgreSQL.

mod support;

use std::time::Duration;

use pgbay_pooler::PoolMode;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_extended_and_prepared_queries_work() {
    let pg = shared().await;
    let (pooler, addr) = start(service(
        "basic",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 2)],
    ))
    .await;
    let client = connect(addr, "p1").await.expect("connect");
    let rows = client
        .simple_query("SELECT 1 AS one; SELECT 'x'")
        .await
        .unwrap();
    assert_eq!(
        rows.len(),
        6,
        "per statement: row description, row, command complete: {rows:?}"
    );
    let row = client
        .query_one("SELECT $1::int + 1", &[&41i32])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    let stmt = client.prepare("SELECT $1::text || 'b'").await.unwrap();
    for _ in 0..3 {
        let row = client.query_one(&stmt, &[&"a"]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "ab");
    }
    // Pipelined: several queries in flight on one connection.
    let (a, b, c) = tokio::join!(
        client.query_one(&stmt, &[&"1"]),
        client.query_one("SELECT 2::int", &[]),
        client.query_one(&stmt, &[&"3"]),
    );
    assert_eq!(a.unwrap().get::<_, String>(0), "1b");
    assert_eq!(b.unwrap().get::<_, i32>(0), 2);
    assert_eq!(c.unwrap().get::<_, String>(0), "3b");
    drop(client);
    pooler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_errors_have_sqlstates() {
    let pg = shared().await;
    let (pooler, addr) = start(service(
        "errors",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 1)],
    ))
    .await;
    let e = must_fail(connect(addr, "nope").await, "unknown pool refused");
    assert_eq!(sqlstate(&e), "3D000");
    assert!(describe(&e).contains("nope"), "{}", describe(&e));
    let bad = format!(
        "host=127.0.0.1 port={} user={APP_USER} password=wrong dbname=p1",
        addr.port()
    );
    let e = must_fail(connect_str(&bad).await, "bad password refused");
    assert_eq!(sqlstate(&e), "28P01", "{}", describe(&e));
    let other = format!(
        "host=127.0.0.1 port={} user=postgres password=x dbname=p1",
        addr.port()
    );
    // Not a user of the service: the same answer as a wrong password (nothing about the pool).
    let e = must_fail(connect_str(&other).await, "wrong user refused");
    assert_eq!(sqlstate(&e), "28P01", "{}", describe(&e));
    pooler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_size_one_serialises_transactions() {
    let pg = shared().await;
    pg.admin(
        APP_DB,
        "CREATE TABLE IF NOT EXISTS tx_serial (v int); ALTER TABLE tx_serial OWNER TO app",
    )
    .await;
    let (pooler, addr) = start(service(
        "txmode",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 1)],
    ))
    .await;
    let a = connect(addr, "p1").await.unwrap();
    let b = connect(addr, "p1").await.unwrap();
    a.batch_execute("BEGIN; INSERT INTO tx_serial VALUES (1)")
        .await
        .unwrap();
    // b can only run once a's transaction released the single server connection, so it must
    // see a's committed row.
    let b_count = tokio::spawn(async move {
        let n: i64 = b
            .query_one("SELECT count(*) FROM tx_serial", &[])
            .await
            .unwrap()
            .get(0);
        n
    });
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(b_count.await.unwrap(), 1);
    pooler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_keeps_state_and_resets_between_clients() {
    let pg = shared().await;
    let mut cfg = service("session", pg.port, vec![pool("p1", PoolMode::Session, 1)]);
    cfg.limits.query_wait_timeout = Duration::from_millis(500);
    let (pooler, addr) = start(cfg).await;
    let a = connect(addr, "p1").await.unwrap();
    a.batch_execute("SET work_mem = '7MB'").await.unwrap();
    let v: String = a.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
    assert_eq!(v, "7MB");
    // The only server connection is a's for its whole session: b times out waiting.
    let b = connect(addr, "p1").await.unwrap();
    let e = must_fail(b.simple_query("SELECT 1").await, "b must time out");
    assert_eq!(sqlstate(&e), "08006", "{}", describe(&e));
    assert!(describe(&e).contains("p1"), "{}", describe(&e));
    drop(a);
    // After a leaves, DISCARD ALL resets its state for the next client.
    let c = connect(addr, "p1").await.unwrap();
    let v: String = c.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
    assert_eq!(v, "4MB");
    pooler.shutdown().await;
}

/// A refusal of a transaction block in statement mode: 25001 naming statement pooling.
fn assert_block_refused(e: &tokio_postgres::Error, what: &str) {
    assert_eq!(sqlstate(e), "25001", "{what}: {}", describe(e));
    assert_eq!(
        e.as_db_error().map(|d| d.message().to_string()),
        Some("transaction blocks are not allowed in statement pooling mode (pool \"p1\")".into()),
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_mode_refuses_transaction_blocks() {
    let pg = shared().await;
    let (pooler, addr) = start(service(
        "stmt",
        pg.port,
        vec![pool("p1", PoolMode::Statement, 1)],
    ))
    .await;
    let a = connect(addr, "p1").await.unwrap();
    let one: i32 = a.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    // Simple protocol: one error (tokio-postgres would fail on a CommandComplete before it as
    // on any unexpected message), and the client goes on.
    for sql in [
        "BEGIN",
        "  begin isolation level serializable",
        "/* c */ START TRANSACTION",
        "-- c\nBEGIN; SELECT 1",
    ] {
        let e = must_fail(a.simple_query(sql).await, sql);
        assert_block_refused(&e, sql);
        let two: i32 = a.query_one("SELECT 2", &[]).await.unwrap().get(0);
        assert_eq!(two, 2, "{sql}: the client goes on");
    }
    // Extended protocol: Parse refused, the rest up to Sync dropped, ReadyForQuery.
    let e = must_fail(a.prepare("BEGIN").await, "prepare BEGIN");
    assert_block_refused(&e, "prepare BEGIN");
    let e = must_fail(a.query("start transaction", &[]).await, "query START");
    assert_block_refused(&e, "query START");
    let two: i32 = a.query_one("SELECT $1::int", &[&2]).await.unwrap().get(0);
    assert_eq!(two, 2);
    // Pipelined behind a query that the server answers: both answers, in order.
    let (r1, r2) = tokio::join!(a.query_one("SELECT 3", &[]), a.query("BEGIN", &[]));
    assert_eq!(r1.unwrap().get::<_, i32>(0), 3);
    assert_block_refused(&r2.unwrap_err(), "pipelined BEGIN");
    // A block opened where the keyword check does not look is still rolled back and refused.
    let e = must_fail(a.batch_execute("SELECT 1; BEGIN").await, "SELECT; BEGIN");
    assert_eq!(sqlstate(&e), "25001", "{}", describe(&e));
    // The refused transactions did not leak to the next client of the only server connection.
    let b = connect(addr, "p1").await.unwrap();
    // SAVEPOINT outside a transaction block is PostgreSQL's own error.
    let e = must_fail(b.batch_execute("SAVEPOINT s").await, "SAVEPOINT");
    assert_eq!(
        sqlstate(&e),
        "25P01",
        "not inside a block: {}",
        describe(&e)
    );
    let one: i32 = a.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    pooler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_pool_counts_its_connections_by_state() {
    let pg = shared().await;
    let (pooler, addr) = start(service(
        "states",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 2)],
    ))
    .await;
    let stats = || pooler.pool_stats("states", "p1").expect("pool exists");
    let a = connect(addr, "p1").await.unwrap();
    let b = connect(addr, "p1").await.unwrap();
    let c = connect(addr, "p1").await.unwrap();
    let idle = connect(addr, "p1").await.unwrap();
    eventually("four idle clients", || stats().cl_idle == 4).await;
    a.batch_execute("BEGIN").await.unwrap();
    b.batch_execute("BEGIN").await.unwrap();
    let waiting = tokio::spawn(async move {
        let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
        one
    });
    eventually("the third client waits", || stats().cl_waiting >= 1).await;
    let s = stats();
    assert_eq!(s.sv_active, 2, "{s:?}");
    assert_eq!(s.sv_idle, 0, "{s:?}");
    assert_eq!(s.sv_login, 0, "{s:?}");
    assert_eq!(s.cl_active, 2, "{s:?}");
    assert_eq!(s.cl_waiting, 1, "{s:?}");
    assert_eq!(s.cl_idle, 1, "{s:?}");

    // One transaction ends: the waiting client is served with the freed connection.
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(waiting.await.unwrap(), 1);
    b.batch_execute("COMMIT").await.unwrap();
    eventually("everyone idle again", || {
        let s = stats();
        s.cl_idle == 3 && s.cl_active == 0 && s.cl_waiting == 0 && s.sv_idle == 2
    })
    .await;
    drop(idle);
    eventually("a client that leaves is uncounted", || stats().cl_idle == 2).await;
    pooler.shutdown().await;
}

/// Sockets inherited from a predecessor (`Pooler::inherit`, the takeover): the service whose
/// address one has accepts on it — a connection already waiting in its queue is served — and
/// one no service listens on is closed by the apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inherited_sockets_serve_their_service_and_the_rest_are_closed() {
    let pg = shared().await;
    let kept = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stale = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (kept_addr, stale_addr) = (kept.local_addr().unwrap(), stale.local_addr().unwrap());
    let queued = tokio::spawn(async move { connect(kept_addr, "p1").await });
    let pooler = pgbay_pooler::Pooler::new();
    pooler.inherit(vec![kept, stale]);
    let mut cfg = service(
        "inherit",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 1)],
    );
    cfg.listen = kept_addr;
    let report = pooler
        .apply(pgbay_pooler::PoolerConfig {
            services: vec![cfg],
        })
        .await
        .unwrap();
    assert!(report.failures.is_empty(), "{report:?}");
    assert_eq!(pooler.local_addr("inherit"), Some(kept_addr));
    let c = queued
        .await
        .unwrap()
        .expect("the queued connection is served");
    let v: i32 = c.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(v, 7);
    assert!(
        std::net::TcpStream::connect(stale_addr).is_err(),
        "the unclaimed inherited socket still accepts"
    );
    pooler.shutdown().await;
}
