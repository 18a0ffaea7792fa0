//! Before authentication: what a client that has not logged in may hold (pending logins per
//! port, a login timeout, a process-wide budget of client sockets, max_client_conn over every
//! pool of a service), and what it may learn (nothing about pools: every failed password exchange
//! gets the same 28P01), against a real PostgreSQL.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pgbay_pooler::{
    ClientAuthMethod, PoolConfig, PoolMode, Pooler, PoolerConfig, RefusalReason, UserConfig,
};
use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

fn refused(pooler: &Pooler, service: &str, reason: RefusalReason) -> u64 {
    pooler
        .refused_connections()
        .into_iter()
        .find(|r| r.service == service && r.reason == reason)
        .map(|r| r.total)
        .unwrap_or_else(|| panic!("no {reason} series for {service}"))
}

/// Reads until the pooler closes the socket (bounded); returns what it sent and how long it took.
async fn until_closed(sock: &mut TcpStream, bound: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut got = Vec::new();
    let read = tokio::time::timeout(bound, async {
        let mut buf = [0u8; 1024];
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "socket still open after {bound:?}");
    (got, start.elapsed())
}

fn login_as(addr: SocketAddr, user: &str, password: &str, pool: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} password='{}' dbname={pool} connect_timeout=10",
        addr.port(),
        password.replace('\'', "\\'")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_password_exchange_reveals_neither_pool_nor_owner() {
    let pg = shared().await;
    let mut cfg = service(
        "uniform",
        pg.port,
        vec![
            pool("mine", PoolMode::Transaction, 1),
            PoolConfig {
                username: "other".into(),
                ..pool("theirs", PoolMode::Transaction, 1)
            },
        ],
    );
    cfg.users.push(UserConfig {
        name: "other".into(),
        password: "other-pass".into(),
        admin: false,
    });
    let (pooler, addr) = start(cfg).await;
    for method in [ClientAuthMethod::ScramSha256, ClientAuthMethod::Md5] {
        pooler.set_client_auth_method(method);
        // The attack: try a wrong password against pool names, and read who owns what from the
        // answers. Existing or not, own or another user's, known user or not: one answer.
        for (user, pool) in [
            (APP_USER, "mine"),
            (APP_USER, "nope"),
            (APP_USER, "theirs"),
            ("ghost", "mine"),
            ("ghost", "nope"),
            ("other", "mine"),
        ] {
            let e = must_fail(
                connect_str(&login_as(addr, user, "wrong", pool)).await,
                "wrong password",
            );
            assert_eq!(
                describe(&e),
                format!("FATAL 28P01: password authentication failed for user \"{user}\""),
                "{method:?} {user} {pool}"
            );
        }
        // After the right password the pooler may say what is wrong.
        let e = must_fail(
            connect_str(&login_as(addr, APP_USER, APP_PASS, "nope")).await,
            "unknown pool",
        );
        assert_eq!(describe(&e), "FATAL 3D000: pool \"nope\" does not exist");
        let e = must_fail(
            connect_str(&login_as(addr, APP_USER, APP_PASS, "theirs")).await,
            "another user's pool",
        );
        assert_eq!(
            describe(&e),
            format!("FATAL 28000: user \"{APP_USER}\" may not use pool \"theirs\"")
        );
        let c = connect(addr, "mine").await.expect("own pool");
        let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
    }
    pooler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_are_capped_per_port_and_closed_after_the_login_timeout() {
    let pg = shared().await;
    let mut cfg = service(
        "pending",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 1)],
    );
    cfg.limits.max_pending_logins = 5;
    cfg.limits.login_timeout = Duration::from_secs(2);
    let (pooler, addr) = start(cfg).await;
    // The attack: connect and send nothing.
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    eventually("5 pending logins", || {
        pooler.pending_logins("pending") == Some(5)
    })
    .await;
    // One more is accepted and closed at once, without an answer.
    let mut over = TcpStream::connect(addr).await.expect("connect");
    let (got, took) = until_closed(&mut over, Duration::from_secs(1)).await;
    assert!(got.is_empty(), "{got:?}");
    assert!(took < Duration::from_secs(1));
    assert_eq!(refused(&pooler, "pending", RefusalReason::PendingLogins), 1);
    // The idle ones end at the login timeout, told why (PgBouncer's words).
    for sock in &mut idle {
        let (got, took) = until_closed(sock, Duration::from_secs(5)).await;
        assert!(took < Duration::from_secs(4), "closed after {took:?}");
        let text = String::from_utf8_lossy(&got);
        assert!(
            got.first() == Some(&b'E')
                && text.contains("08P01")
                && text.contains("client_login_timeout"),
            "{text:?}"
        );
    }
    assert_eq!(refused(&pooler, "pending", RefusalReason::LoginTimeout), 5);
    assert_eq!(pooler.pending_logins("pending"), Some(0));
    // Real clients get in again, and a logged-in client does not count as pending.
    let c = connect(addr, "p1").await.expect("login after the flood");
    assert_eq!(pooler.pending_logins("pending"), Some(0));
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    pooler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sockets_of_all_services_share_one_budget() {
    let pg = shared().await;
    let a = service(
        "budget-a",
        pg.port,
        vec![pool("pa", PoolMode::Transaction, 2)],
    );
    let b = service(
        "budget-b",
        pg.port,
        vec![pool("pb", PoolMode::Transaction, 2)],
    );
    let (pooler, addr_a) = start(a.clone()).await;
    let report = pooler
        .apply(PoolerConfig {
            services: vec![a, b],
        })
        .await
        .expect("apply");
    assert!(report.is_ok(), "{report:?}");
    let addr_b = pooler.local_addr("budget-b").expect("b listening");
    pooler.set_client_socket_limit(2);
    let c1 = connect(addr_a, "pa").await.expect("first");
    let _c2 = connect(addr_a, "pa").await.expect("second");
    assert_eq!(pooler.client_sockets(), 2);
    // Past the budget a socket of any service is closed at once.
    let mut over = TcpStream::connect(addr_b).await.expect("connect");
    let (got, _) = until_closed(&mut over, Duration::from_secs(1)).await;
    assert!(got.is_empty(), "{got:?}");
    assert!(connect(addr_b, "pb").await.is_err());
    assert_eq!(refused(&pooler, "budget-b", RefusalReason::FdReserve), 2);
    assert_eq!(refused(&pooler, "budget-a", RefusalReason::FdReserve), 0);
    drop(c1);
    eventually("a socket given back", || pooler.client_sockets() == 1).await;
    let c = connect(addr_b, "pb")
        .await
        .expect("b once a socket is free");
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    pooler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_conn_counts_every_pool_of_the_service() {
    let pg = shared().await;
    let mut cfg = service(
        "maxconn",
        pg.port,
        vec![
            pool("p1", PoolMode::Transaction, 1),
            pool("p2", PoolMode::Transaction, 1),
        ],
    );
    cfg.limits.max_client_conn = 2;
    let (pooler, addr) = start(cfg).await;
    let _one = connect(addr, "p1").await.expect("p1");
    let two = connect(addr, "p2").await.expect("p2");
    for p in ["p1", "p2"] {
        let e = must_fail(connect(addr, p).await, "third client of the service");
        assert_eq!(
            describe(&e),
            "FATAL 53300: too many client connections (max_client_conn 2)"
        );
    }
    assert_eq!(refused(&pooler, "maxconn", RefusalReason::MaxClientConn), 2);
    drop(two);
    eventually("a client left", || {
        pooler.client_count("maxconn") == Some(1)
    })
    .await;
    connect(addr, "p1").await.expect("room again");
    pooler.shutdown().await;
}
