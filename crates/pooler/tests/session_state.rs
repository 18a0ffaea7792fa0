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
    // (An SQL DEALLOCATE alone in a Query is served: tests/statements.rs.)
    for sql in ["PREPARE p AS SELECT 1", "EXECUTE p"] {
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
    let e = must_fail(
        a.execute("DEALLOCATE p", &[]).await,
        "DEALLOCATE (extended)",
    );
    assert_eq!(sqlstate(&e), "0A000", "{}", describe(&e));
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

/// A client that speaks the protocol byte by byte (md5 login), to send what drivers never do:
/// half a message, a Flush with a payload.
mod raw {
    use std::net::SocketAddr;

    use md5::{Digest, Md5};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::support::{APP_PASS, APP_USER};

    pub struct Raw(pub TcpStream);

    fn hex_md5(parts: &[&[u8]]) -> String {
        let mut h = Md5::new();
        for p in parts {
            h.update(p);
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    impl Raw {
        /// Logs in to `pool` (the pooler must use md5) and reads up to ReadyForQuery.
        pub async fn login(addr: SocketAddr, pool: &str) -> Raw {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut body = 196608u32.to_be_bytes().to_vec();
            for (k, v) in [("user", APP_USER), ("database", pool)] {
                body.extend_from_slice(k.as_bytes());
                body.push(0);
                body.extend_from_slice(v.as_bytes());
                body.push(0);
            }
            body.push(0);
            let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
            msg.extend_from_slice(&body);
            s.write_all(&msg).await.unwrap();
            let mut raw = Raw(s);
            let (tag, body) = raw.read().await;
            assert_eq!(
                (tag, &body[..4]),
                (b'R', &5u32.to_be_bytes()[..]),
                "md5 asked"
            );
            let inner = hex_md5(&[APP_PASS.as_bytes(), APP_USER.as_bytes()]);
            let pass = format!("md5{}", hex_md5(&[inner.as_bytes(), &body[4..8]]));
            raw.send(b'p', &[pass.as_bytes(), b"\0"].concat()).await;
            loop {
                let (tag, body) = raw.read().await;
                assert_ne!(
                    tag,
                    b'E',
                    "login failed: {}",
                    String::from_utf8_lossy(&body)
                );
                if tag == b'Z' {
                    return raw;
                }
            }
        }

        pub async fn send(&mut self, tag: u8, body: &[u8]) {
            let mut msg = vec![tag];
            msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
            msg.extend_from_slice(body);
            self.0.write_all(&msg).await.unwrap();
        }

        pub async fn read(&mut self) -> (u8, Vec<u8>) {
            let mut head = [0u8; 5];
            self.0.read_exact(&mut head).await.unwrap();
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let mut body = vec![0u8; len - 4];
            self.0.read_exact(&mut body).await.unwrap();
            (head[0], body)
        }

        /// Reads up to the next ErrorResponse: (severity, SQLSTATE, message).
        pub async fn error(&mut self) -> (String, String, String) {
            loop {
                let (tag, body) = self.read().await;
                if tag != b'E' {
                    continue;
                }
                let mut fields = std::collections::HashMap::new();
                for f in body.split(|&b| b == 0).filter(|f| !f.is_empty()) {
                    fields.insert(f[0], String::from_utf8_lossy(&f[1..]).into_owned());
                }
                let get = |k: u8| fields.get(&k).cloned().unwrap_or_default();
                return (get(b'V'), get(b'C'), get(b'M'));
            }
        }

        /// Whether the pooler closed the connection.
        pub async fn closed(&mut self) -> bool {
            let mut rest = Vec::new();
            matches!(
                tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    self.0.read_to_end(&mut rest)
                )
                .await,
                Ok(Ok(_))
            )
        }
    }
}

use std::time::Duration;

use pgbay_pooler::ClientAuthMethod;
use raw::Raw;

/// A query that must be served promptly (well before the pool's query_wait_timeout).
async fn served(c: &tokio_postgres::Client, what: &str) {
    let r = tokio::time::timeout(Duration::from_secs(5), c.simple_query("SELECT 1")).await;
    assert!(matches!(r, Ok(Ok(_))), "{what}: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_message_holds_no_server_connection() {
    let pg = shared().await;
    let (pooler, addr) = start(service(
        "slowcl",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 1)],
    ))
    .await;
    pooler.set_client_auth_method(ClientAuthMethod::Md5);
    // As many slow clients as the pool's size, and more: one byte of a message, or a header
    // and part of the text, then nothing.
    let mut one_byte = Raw::login(addr, "p1").await;
    tokio::io::AsyncWriteExt::write_all(&mut one_byte.0, b"Q")
        .await
        .unwrap();
    let mut half = Raw::login(addr, "p1").await;
    let query = b"SELECT 42\0";
    let mut msg = vec![b'Q'];
    msg.extend_from_slice(&((query.len() + 4) as u32).to_be_bytes());
    msg.extend_from_slice(&query[..4]);
    tokio::io::AsyncWriteExt::write_all(&mut half.0, &msg)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = connect(addr, "p1").await.unwrap();
    for _ in 0..5 {
        served(&c, "another client while two stall mid-message").await;
    }
    // The stalled client is served once its message is whole.
    tokio::io::AsyncWriteExt::write_all(&mut half.0, &query[4..])
        .await
        .unwrap();
    loop {
        let (tag, body) = half.read().await;
        if tag == b'D' {
            assert!(body.ends_with(b"42"), "{body:?}");
        }
        if tag == b'Z' {
            break;
        }
    }
    pooler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalled_in_a_long_message_is_timed_out() {
    let pg = shared().await;
    let mut cfg = service("stall", pg.port, vec![pool("p1", PoolMode::Transaction, 1)]);
    cfg.limits.client_message_timeout = Duration::from_secs(1);
    let (pooler, addr) = start(cfg).await;
    pooler.set_client_auth_method(ClientAuthMethod::Md5);
    let mut stalled = Raw::login(addr, "p1").await;
    // Long enough to be lent a connection at its header.
    let mut msg = vec![b'Q'];
    msg.extend_from_slice(&(100_000u32).to_be_bytes());
    msg.extend_from_slice(&[b' '; 20_000]);
    tokio::io::AsyncWriteExt::write_all(&mut stalled.0, &msg)
        .await
        .unwrap();
    let c = connect(addr, "p1").await.unwrap();
    served(&c, "another client once the stalled one is timed out").await;
    let (severity, code, message) = stalled.error().await;
    assert_eq!((severity.as_str(), code.as_str()), ("FATAL", "08P01"));
    assert!(message.contains("client_message_timeout"), "{message}");
    assert!(stalled.closed().await);
    pooler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transaction_timeout_frees_the_server_connection() {
    let pg = shared().await;
    let mut cfg = service(
        "idletx",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 1)],
    );
    cfg.limits.idle_transaction_timeout = Some(Duration::from_secs(1));
    let (pooler, addr) = start(cfg).await;
    pooler.set_client_auth_method(ClientAuthMethod::Md5);
    let mut idle = Raw::login(addr, "p1").await;
    idle.send(b'Q', b"BEGIN\0").await;
    loop {
        let (tag, body) = idle.read().await;
        if tag == b'Z' {
            assert_eq!(body, b"T");
            break;
        }
    }
    let c = connect(addr, "p1").await.unwrap();
    served(&c, "another client once the idle transaction is timed out").await;
    let (severity, code, message) = idle.error().await;
    assert_eq!((severity.as_str(), code.as_str()), ("FATAL", "08P01"));
    assert!(message.contains("idle transaction timeout"), "{message}");
    assert!(idle.closed().await);
    pooler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_with_a_payload_is_a_protocol_violation() {
    let pg = shared().await;
    let (pooler, addr) = start(service(
        "flushpay",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 1)],
    ))
    .await;
    pooler.set_client_auth_method(ClientAuthMethod::Md5);
    for tag in [b'H', b'S'] {
        let mut r = Raw::login(addr, "p1").await;
        r.send(tag, b"junk").await;
        r.send(b'Q', b"SELECT 1\0").await;
        let (severity, code, message) = tokio::time::timeout(Duration::from_secs(5), r.error())
            .await
            .expect("an answer, not a hang");
        assert_eq!(
            (severity.as_str(), code.as_str()),
            ("FATAL", "08P01"),
            "{message}"
        );
        assert!(message.contains("malformed"), "{message}");
        assert!(r.closed().await);
    }
    // The pool's connection was not harmed.
    let c = connect(addr, "p1").await.unwrap();
    served(&c, "a client after the violations").await;
    pooler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_is_reset_between_clients() {
    let pg = shared().await;
    let (pooler, addr) = start(service(
        "reset",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 1)],
    ))
    .await;
    let a = connect(addr, "p1").await.unwrap();
    let b = connect(addr, "p1").await.unwrap();
    let default_path = show(&b, "search_path").await;
    a.batch_execute(
        "select 1; set search_path to pg_catalog; set enable_seqscan = off; \
         create temp table t (a int); select pg_advisory_lock(7)",
    )
    .await
    .unwrap();
    // What `a` can come back to (its table, its lock) keeps its connection: in its next
    // transactions all it left is there, its other setting too, as on a direct connection.
    for _ in 0..2 {
        assert_eq!(show(&a, "enable_seqscan").await, "off");
        let rows: i64 = a
            .query_one("SELECT count(*) FROM pg_temp.t", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 0);
    }
    // Once it let go of both, the session is reset before anyone else has the connection.
    a.batch_execute("drop table t; select pg_advisory_unlock(7)")
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(show(&b, "search_path").await, default_path);
        assert_eq!(show(&b, "enable_seqscan").await, "on");
        let temp: Option<String> = b
            .query_one("SELECT to_regclass('pg_temp.t')::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(temp, None);
        let locks: i64 = b
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
                 AND pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(locks, 0);
        // The tracked setting stays with its client; the rest was reset.
        assert_eq!(show(&a, "search_path").await, "pg_catalog");
        assert_eq!(show(&a, "enable_seqscan").await, "on");
    }
    pooler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untracked_statement_names_do_not_reach_the_next_client() {
    let pg = shared().await;
    let mut cfg = service(
        "noprep",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 1)],
    );
    // Statement tracking off: a client's named Parse goes to the server as it is.
    cfg.settings.max_prepared_statements = 0;
    let (pooler, addr) = start(cfg).await;
    let a = connect(addr, "p1").await.unwrap();
    let b = connect(addr, "p1").await.unwrap();
    // tokio-postgres prepares under a name of its own, in a transaction of its own.
    a.prepare("SELECT 'secret'").await.unwrap();
    let left = b
        .simple_query("SELECT count(*) FROM pg_prepared_statements")
        .await
        .unwrap();
    let count = left.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(count.as_deref(), Some("0"));
    pooler.shutdown().await;
}

/// A Query that is one plain SET carries its value: the pooler keeps it without reading it
/// back (no `current_setting` reaches the server), it follows its client and no one else;
/// a SET inside a block, or one that fails, is still read back (issue 20).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_set_is_carried_without_a_read_back() {
    let pg = shared().await;
    // The server logs every statement of this database's sessions: the pooler's too.
    pg.admin(
        "postgres",
        &format!("CREATE DATABASE setlit OWNER {APP_USER}"),
    )
    .await;
    pg.admin(
        "postgres",
        "ALTER DATABASE setlit SET log_statement = 'all'",
    )
    .await;
    let mut p = pool("p1", PoolMode::Transaction, 1);
    p.database = "setlit".into();
    let (pooler, addr) = start(service("setlit", pg.port, vec![p])).await;
    let a = connect(addr, "p1").await.unwrap();
    let b = connect(addr, "p1").await.unwrap();
    let default_path = show(&b, "search_path").await;
    let default_mem = show(&b, "work_mem").await;
    a.batch_execute("SET search_path = \"My Schema\", public;")
        .await
        .unwrap();
    a.batch_execute("set SESSION work_mem TO '7MB'")
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(show(&a, "search_path").await, "\"My Schema\", public");
        assert_eq!(show(&a, "work_mem").await, "7MB");
        assert_eq!(show(&b, "search_path").await, default_path);
        assert_eq!(show(&b, "work_mem").await, default_mem);
    }
    a.batch_execute("SET work_mem TO DEFAULT").await.unwrap();
    assert_eq!(show(&b, "search_path").await, default_path);
    assert_eq!(show(&a, "work_mem").await, default_mem);
    // A failed SET changes nothing.
    let e = must_fail(
        a.batch_execute("SET statement_timeout = 'soon'").await,
        "a bad value",
    );
    assert_eq!(sqlstate(&e), "22023", "{}", describe(&e));
    assert_eq!(show(&b, "statement_timeout").await, "0");
    assert_eq!(show(&a, "statement_timeout").await, "0");
    // Inside a block, the value lasts only if the block commits: read back at its end.
    a.batch_execute("BEGIN").await.unwrap();
    a.batch_execute("SET lock_timeout = 4321").await.unwrap();
    a.batch_execute("ROLLBACK").await.unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    a.batch_execute("SET statement_timeout = 1234")
        .await
        .unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(show(&b, "statement_timeout").await, "0");
    assert_eq!(show(&a, "lock_timeout").await, "0");
    assert_eq!(show(&a, "statement_timeout").await, "1234ms");
    assert_eq!(show(&a, "search_path").await, "\"My Schema\", public");
    // `b` ran after each of `a`'s transactions were settled (one server connection): every
    // read-back the pooler made is in the log by now.
    assert_eq!(show(&b, "work_mem").await, default_mem);
    let log = std::fs::read_to_string(pg.dir.join("log")).unwrap();
    let read_back = |name: &str| log.contains(&format!("current_setting('{name}')"));
    assert!(log.contains("SET search_path = \"My Schema\", public;"));
    assert!(!read_back("search_path"), "search_path was read back");
    assert!(!read_back("work_mem"), "work_mem was read back");
    assert!(read_back("lock_timeout"), "a SET in a block is read back");
    assert!(read_back("statement_timeout"));
    pooler.shutdown().await;
}
