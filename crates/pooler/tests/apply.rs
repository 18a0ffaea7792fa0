//! Live reconfiguration and the per-service limits: resize and removal of pools while clients
//! run, password rotation, service removal, bind failures, CIDR filter, max_client_conn, md5.

mod support;

use std::time::Duration;

use pgbay_pooler::{ClientAuthMethod, PoolMode, PoolerConfig, UserConfig};
use support::*;

fn db_code(r: Result<Result<(), tokio_postgres::Error>, tokio::task::JoinError>) -> String {
    match r {
        Ok(Err(e)) => e
            .code()
            .map(|c| c.code().to_string())
            .unwrap_or_else(|| format!("{e:?}")),
        other => panic!("expected the connection to end with a server error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resize_and_remove_pools_while_clients_run() {
    let pg = shared().await;
    pg.admin(
        APP_DB,
        "CREATE TABLE IF NOT EXISTS live (v int); ALTER TABLE live OWNER TO app",
    )
    .await;
    let mut cfg = service(
        "live",
        pg.port,
        vec![
            pool("p1", PoolMode::Transaction, 1),
            pool("p2", PoolMode::Transaction, 1),
        ],
    );
    cfg.limits.query_wait_timeout = Duration::from_secs(2);
    let (pooler, addr) = start(cfg.clone()).await;
    let a = connect_watched(addr, "p1").await;
    let keeper = connect(addr, "p2").await.unwrap();
    keeper
        .batch_execute("BEGIN; INSERT INTO live VALUES (100)")
        .await
        .unwrap();
    a.client
        .batch_execute("BEGIN; INSERT INTO live VALUES (1)")
        .await
        .unwrap();

    // Grow p1 while a holds its only connection: b is served at once instead of timing out.
    cfg.pools[0].size = 2;
    pooler
        .apply(PoolerConfig {
            services: vec![cfg.clone()],
        })
        .await
        .unwrap();
    let b = connect(addr, "p1").await.unwrap();
    let one: i32 = b.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    drop(b);

    // Remove p1 while a is inside a transaction: a finishes it, then is disconnected.
    cfg.pools.remove(0);
    pooler
        .apply(PoolerConfig {
            services: vec![cfg.clone()],
        })
        .await
        .unwrap();
    let e = must_fail(
        connect(addr, "p1").await,
        "removed pool refuses new clients",
    );
    assert_eq!(sqlstate(&e), "3D000", "{}", describe(&e));
    a.client
        .batch_execute("INSERT INTO live VALUES (2); COMMIT")
        .await
        .unwrap();
    assert_eq!(db_code(a.conn.await), "57P01");

    // The untouched pool's client kept its transaction through both applies.
    keeper.batch_execute("COMMIT").await.unwrap();
    let n: i64 = keeper
        .query_one("SELECT count(*) FROM live", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    pooler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waiting_for_a_removed_pool_is_told_at_once() {
    let pg = shared().await;
    let mut cfg = service("gone", pg.port, vec![pool("p1", PoolMode::Transaction, 1)]);
    // Far longer than the test may take: the waiter must hear of the removal, not time out.
    cfg.limits.query_wait_timeout = Duration::from_secs(120);
    let (pooler, addr) = start(cfg.clone()).await;
    let stats = || pooler.pool_stats("gone", "p1").expect("pool exists");
    let holder = connect(addr, "p1").await.unwrap();
    holder.batch_execute("BEGIN").await.unwrap();
    let Watched { client, conn, .. } = connect_watched(addr, "p1").await;
    let query = tokio::spawn(async move { client.query_one("SELECT 1", &[]).await.map(|_| ()) });
    eventually("the second client waits", || stats().cl_waiting == 1).await;
    cfg.pools.clear();
    pooler
        .apply(PoolerConfig {
            services: vec![cfg.clone()],
        })
        .await
        .unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(20), query)
        .await
        .expect("the waiting client is answered when its pool goes")
        .unwrap();
    let e = must_fail(answered, "a wait on a removed pool fails");
    assert_eq!(sqlstate(&e), "57P01", "{}", describe(&e));
    // And its connection ends.
    tokio::time::timeout(Duration::from_secs(20), conn)
        .await
        .expect("the connection ends")
        .unwrap()
        .ok();
    drop(holder);
    pooler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_rotation_applies_to_new_logins_only() {
    let pg = shared().await;
    pg.admin(
        "postgres",
        "CREATE ROLE rot LOGIN PASSWORD 'old-pw'; GRANT CONNECT ON DATABASE appdb TO rot",
    )
    .await;
    let mut cfg = service("rotate", pg.port, vec![]);
    cfg.users = vec![UserConfig {
        name: "rot".into(),
        password: "old-pw".into(),
        admin: false,
    }];
    let mut p = pool("r1", PoolMode::Transaction, 2);
    p.username = "rot".into();
    cfg.pools = vec![p];
    let (pooler, addr) = start(cfg.clone()).await;
    let url = |pw: &str| {
        format!(
            "host=127.0.0.1 port={} user=rot password={pw} dbname=r1",
            addr.port()
        )
    };
    let old = connect_str(&url("old-pw")).await.unwrap();
    old.simple_query("SELECT 1").await.unwrap();
    pg.admin("postgres", "ALTER ROLE rot PASSWORD 'new-pw'")
        .await;
    cfg.users[0].password = "new-pw".into();
    pooler
        .apply(PoolerConfig {
            services: vec![cfg],
        })
        .await
        .unwrap();
    let e = must_fail(connect_str(&url("old-pw")).await, "old password refused");
    assert_eq!(sqlstate(&e), "28P01", "{}", describe(&e));
    let new = connect_str(&url("new-pw")).await.unwrap();
    new.simple_query("SELECT 1").await.unwrap();
    // The established session goes on.
    old.simple_query("SELECT 2").await.unwrap();
    pooler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_service_disconnects_its_clients_and_closes_its_port() {
    let pg = shared().await;
    let (pooler, addr) = start(service(
        "gone-svc",
        pg.port,
        vec![pool("p1", PoolMode::Session, 1)],
    ))
    .await;
    let a = connect_watched(addr, "p1").await;
    a.client.batch_execute("BEGIN").await.unwrap();
    pooler.apply(PoolerConfig::default()).await.unwrap();
    assert_eq!(db_code(a.conn.await), "57P01");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener must be closed"
    );
    pooler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_failure_is_reported_per_service_spares_the_others_and_is_retried() {
    let pg = shared().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let mut bad = service(
        "bad-port",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 1)],
    );
    bad.listen = taken_addr;
    let good = service(
        "good-port",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 1)],
    );
    let config = PoolerConfig {
        services: vec![bad, good],
    };
    let pooler = pgbay_pooler::Pooler::new();
    let report = pooler.apply(config.clone()).await.expect("apply");
    assert_eq!(report.failures.len(), 1, "{report:?}");
    let reason = report.failure("bad-port").expect("bad-port is reported");
    assert!(reason.contains(&taken_addr.to_string()), "{reason}");
    assert!(report.failure("good-port").is_none(), "{report:?}");
    assert!(pooler.local_addr("bad-port").is_none());
    let addr = pooler.local_addr("good-port").expect("good service runs");
    let c = connect(addr, "p1").await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();

    // Still taken: the next apply tries again and reports it again; the other service is not
    // disturbed (its client keeps its connection).
    let report = pooler.apply(config.clone()).await.expect("apply");
    assert!(report.failure("bad-port").is_some(), "{report:?}");
    c.simple_query("SELECT 2").await.unwrap();

    // Freed: the next apply binds it and it serves.
    drop(taken);
    let report = pooler.apply(config).await.expect("apply");
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(pooler.local_addr("bad-port"), Some(taken_addr));
    let b = connect(taken_addr, "p1").await.unwrap();
    b.simple_query("SELECT 1").await.unwrap();
    c.simple_query("SELECT 3").await.unwrap();
    pooler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_moved_to_a_taken_port_keeps_the_old_one_until_the_port_frees() {
    let pg = shared().await;
    let mut cfg = service(
        "moving",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 1)],
    );
    let (pooler, old_addr) = start(cfg.clone()).await;
    let c = connect(old_addr, "p1").await.unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let new_addr = taken.local_addr().unwrap();
    cfg.listen = new_addr;
    let config = PoolerConfig {
        services: vec![cfg],
    };
    let report = pooler.apply(config.clone()).await.expect("apply");
    let reason = report.failure("moving").expect("the move is reported");
    assert!(reason.contains(&new_addr.to_string()), "{reason}");
    // Nothing of the failed config applied: the old listener serves, the client goes on.
    assert_eq!(pooler.local_addr("moving"), Some(old_addr));
    connect(old_addr, "p1").await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();

    drop(taken);
    let report = pooler.apply(config).await.expect("apply");
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(pooler.local_addr("moving"), Some(new_addr));
    connect(new_addr, "p1").await.unwrap();
    c.simple_query("SELECT 2").await.unwrap();
    pooler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_address_filter_and_client_limit() {
    let pg = shared().await;
    let mut cfg = service(
        "limits",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 1)],
    );
    cfg.allowed_cidrs = vec!["192.0.2.0/24".parse().unwrap()];
    let (pooler, addr) = start(cfg.clone()).await;
    let e = must_fail(connect(addr, "p1").await, "address not allowed");
    assert_eq!(sqlstate(&e), "28000", "{}", describe(&e));
    assert!(describe(&e).contains("127.0.0.1"), "{}", describe(&e));
    cfg.allowed_cidrs = vec!["127.0.0.0/8".parse().unwrap()];
    cfg.limits.max_client_conn = 1;
    pooler
        .apply(PoolerConfig {
            services: vec![cfg],
        })
        .await
        .unwrap();
    let first = connect(addr, "p1").await.unwrap();
    let e = must_fail(connect(addr, "p1").await, "second client over the limit");
    assert_eq!(sqlstate(&e), "53300", "{}", describe(&e));
    first.simple_query("SELECT 1").await.unwrap();
    pooler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_client_authentication() {
    let pg = shared().await;
    let (pooler, addr) = start(service(
        "md5",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 1)],
    ))
    .await;
    pooler.set_client_auth_method(ClientAuthMethod::Md5);
    let c = connect(addr, "p1").await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    let bad = format!(
        "host=127.0.0.1 port={} user={APP_USER} password=nope dbname=p1",
        addr.port()
    );
    let e = must_fail(connect_str(&bad).await, "wrong md5 password");
    assert_eq!(sqlstate(&e), "28P01", "{}", describe(&e));
    pooler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_pool_size_idle_timeout_and_lifetime() {
    let pg = shared().await;
    let mut cfg = service(
        "upkeep",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 3)],
    );
    cfg.settings.min_pool_size = 2;
    let (pooler, addr) = start(cfg.clone()).await;
    let stats = || pooler.pool_stats("upkeep", "p1").expect("pool exists");
    eventually("min_pool_size connections are opened", || {
        stats().sv_idle == 2
    })
    .await;

    // Without a minimum, idle connections beyond it close after server_idle_timeout.
    cfg.settings.min_pool_size = 0;
    cfg.settings.server_idle_timeout = Some(Duration::from_millis(300));
    pooler
        .apply(PoolerConfig {
            services: vec![cfg.clone()],
        })
        .await
        .unwrap();
    eventually("idle connections time out", || stats().sv_idle == 0).await;

    // server_lifetime: a connection older than it is replaced, not reused.
    cfg.settings.server_idle_timeout = None;
    cfg.settings.server_lifetime = Duration::from_millis(200);
    pooler
        .apply(PoolerConfig {
            services: vec![cfg],
        })
        .await
        .unwrap();
    let c = connect(addr, "p1").await.unwrap();
    let first: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // Not `sv_idle == 1`: on a busy machine the connection may be retired before a poll sees it
    // idle. Released (not active) holds from check-in on, whether or not it was retired yet.
    eventually("the connection is released", || stats().sv_active == 0).await;
    eventually("old connection retired", || {
        let s = stats();
        s.sv_idle == 0 && s.sv_active == 0
    })
    .await;
    let second: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(first, second);
    pooler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_one_service_leaves_the_others_untouched() {
    let pg = shared().await;
    let one = service("one", pg.port, vec![pool("p1", PoolMode::Session, 1)]);
    let two = service("two", pg.port, vec![pool("p1", PoolMode::Session, 1)]);
    let pooler = pgbay_pooler::Pooler::new();
    let report = pooler
        .apply(PoolerConfig {
            services: vec![one, two.clone()],
        })
        .await
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
    let one_addr = pooler.local_addr("one").unwrap();
    let a = connect(one_addr, "p1").await.unwrap();
    a.batch_execute("BEGIN").await.unwrap();

    // Only "two" is named: it gets a second pool, "one" (absent from the change) keeps running
    // with its client inside a transaction.
    let mut two_b = two.clone();
    two_b.pools.push(pool("p2", PoolMode::Transaction, 1));
    let report = pooler.apply_changes(vec![two_b], Vec::new()).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    let two_addr = pooler.local_addr("two").unwrap();
    connect(two_addr, "p2")
        .await
        .unwrap()
        .simple_query("SELECT 1")
        .await
        .unwrap();
    a.simple_query("SELECT 1").await.unwrap();

    // A service given twice in one change is refused naming it; the first copy applies.
    let report = pooler
        .apply_changes(vec![two.clone(), two.clone()], Vec::new())
        .await
        .unwrap();
    assert_eq!(report.failures.len(), 1, "{report:?}");

    // Removing "two" by name closes its port; "one" still serves its client.
    let report = pooler
        .apply_changes(Vec::new(), vec!["two".into()])
        .await
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert!(pooler.local_addr("two").is_none());
    assert!(tokio::net::TcpStream::connect(two_addr).await.is_err());
    a.batch_execute("COMMIT").await.unwrap();
    pooler.shutdown().await;
}
