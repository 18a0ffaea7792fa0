//! Real client programs through the pooler: psql, pgbench in each mode, Python psycopg 3 with
//! server-side prepared statements, TLS with sslmode=verify-full, and TLS required.

mod support;

use std::net::SocketAddr;
use std::process::Command;

use pgbay_pooler::{PoolMode, TlsConfig};
use support::*;

fn psql(
    addr: SocketAddr,
    pool: &str,
    extra_env: &[(&str, &str)],
    args: &[&str],
) -> std::process::Output {
    let mut cmd = Command::new("psql");
    cmd.args([
        "-X",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "127.0.0.1",
        "-p",
    ])
    .arg(addr.port().to_string())
    .args(["-U", APP_USER, "-d", pool])
    .args(args)
    .env("PGPASSWORD", APP_PASS)
    .env("PGCONNECT_TIMEOUT", "10");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.output().expect("run psql")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_gets_its_startup_parameters_and_clear_errors() {
    let pg = shared().await;
    let (pooler, addr) = start(service(
        "psql",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 1)],
    ))
    .await;
    let other = connect(addr, "p1").await.unwrap();
    let out = tokio::task::spawn_blocking(move || {
        psql(
            addr,
            "p1",
            &[("PGDATESTYLE", "SQL, DMY"), ("PGTZ", "Europe/Paris")],
            &["-c", "SHOW DateStyle", "-c", "SHOW TimeZone"],
        )
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "SQL, DMY\nEurope/Paris\n"
    );
    // The same server connection serves this client with the server defaults again.
    let ds: String = other.query_one("SHOW DateStyle", &[]).await.unwrap().get(0);
    assert_eq!(ds, "ISO, MDY");
    let out = tokio::task::spawn_blocking(move || psql(addr, "nope", &[], &["-c", "SELECT 1"]))
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pool \"nope\" does not exist"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pooler.shutdown().await;
}

fn pgbench(addr: SocketAddr, pool: &str, args: &[&str]) -> String {
    let out = Command::new("pgbench")
        .args(["-h", "127.0.0.1", "-p"])
        .arg(addr.port().to_string())
        .args(["-U", APP_USER, "-n"])
        .args(args)
        .arg(pool)
        .env("PGPASSWORD", APP_PASS)
        .output()
        .expect("run pgbench");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbench {args:?} failed: {text}");
    assert!(
        text.contains("number of failed transactions: 0"),
        "pgbench {args:?}: {text}"
    );
    eprintln!(
        "pgbench {pool} {args:?}: {}",
        text.lines()
            .filter(|l| l.starts_with("tps") || l.starts_with("latency"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_runs_in_every_mode() {
    let pg = shared().await;
    let init = Command::new("pgbench")
        .args(["-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p"])
        .arg(pg.port.to_string())
        .args(["-U", APP_USER, APP_DB])
        .env("PGPASSWORD", APP_PASS)
        .output()
        .expect("pgbench -i");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let (pooler, addr) = start(service(
        "pgbench",
        pg.port,
        vec![
            pool("tx", PoolMode::Transaction, 2),
            pool("sess", PoolMode::Session, 2),
            pool("stmt", PoolMode::Statement, 2),
        ],
    ))
    .await;
    tokio::task::spawn_blocking(move || {
        // pgbench -M prepared prepares synchronously (PQprepare) on first use: a thread whose
        // client waits for a server connection blocks its other clients too, which may hold the
        // connections. One thread per client avoids that pgbench-side deadlock.
        for proto in ["simple", "extended", "prepared"] {
            pgbench(addr, "tx", &["-c", "6", "-j", "6", "-t", "40", "-M", proto]);
        }
        // Four clients, two server connections: two wait for the others to leave. One thread per
        // client: pgbench prepares synchronously, so a waiting client would block its thread.
        pgbench(
            addr,
            "sess",
            &["-c", "4", "-j", "4", "-t", "40", "-M", "prepared"],
        );
        for proto in ["simple", "prepared"] {
            pgbench(
                addr,
                "stmt",
                &["-S", "-c", "6", "-j", "6", "-t", "40", "-M", proto],
            );
        }
    })
    .await
    .unwrap();
    pooler.shutdown().await;
}

const PSYCOPG_SCRIPT: &str = r#"
import os, sys, threading
import psycopg

port, pool = int(sys.argv[1]), sys.argv[2]
extra = {}
if len(sys.argv) > 3:
    extra = dict(sslmode="verify-full", sslrootcert=sys.argv[3], host="localhost")
errors = []

def connect():
    kw = dict(host="127.0.0.1", port=port, user="app", password=os.environ["PGPASSWORD"], dbname=pool,
              prepare_threshold=0, autocommit=True)
    kw.update(extra)
    return psycopg.connect(**kw)

def worker(i):
    try:
        with connect() as c:
            if extra:
                assert c.info.pgconn.ssl_in_use
            for j in range(25):
                r = c.execute("SELECT %s::int + %s::int", (i, j)).fetchone()
                assert r[0] == i + j, r
                with c.transaction():
                    r = c.execute("SELECT %s::text || 'x'", (str(j),)).fetchone()
                    assert r[0] == f"{j}x", r
                    r = c.execute("SELECT %s::int * 2", (j,)).fetchone()
                    assert r[0] == 2 * j, r
            try:
                c.execute("SELECT 1 / %s::int", (0,))
                raise AssertionError("division by zero must fail")
            except psycopg.errors.DivisionByZero:
                pass
            assert c.execute("SELECT %s::int + %s::int", (1, 1)).fetchone()[0] == 2
    except Exception as e:
        errors.append(f"worker {i}: {e!r}")

threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
for t in threads: t.start()
for t in threads: t.join()
if errors:
    print("\n".join(errors))
    sys.exit(1)
print("ok")
"#;

fn run_psycopg(addr: SocketAddr, pool: &str, ca: Option<&std::path::Path>) {
    let mut cmd = Command::new(python());
    cmd.arg("-c")
        .arg(PSYCOPG_SCRIPT)
        .arg(addr.port().to_string())
        .arg(pool);
    if let Some(ca) = ca {
        cmd.arg(ca);
    }
    let out = cmd
        .env("PGPASSWORD", APP_PASS)
        .output()
        .expect("run python");
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout)
                .trim_end()
                .ends_with("ok"),
        "psycopg script failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_server_side_prepared_statements_in_transaction_mode() {
    let pg = shared().await;
    let (pooler, addr) = start(service(
        "psycopg",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 1)],
    ))
    .await;
    tokio::task::spawn_blocking(move || run_psycopg(addr, "p1", None))
        .await
        .unwrap();
    pooler.shutdown().await;
}

/// A CA and a server certificate for "localhost" signed by it.
fn make_certs() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "pgbay test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let srv_params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let srv_key = KeyPair::generate().unwrap();
    let srv = srv_params.signed_by(&srv_key, &ca, &ca_key).unwrap();
    (ca.pem(), srv.pem(), srv_key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verify_full_with_psql_and_psycopg() {
    let pg = shared().await;
    let (ca_pem, cert, key) = make_certs();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca_pem).unwrap();
    let mut cfg = service("tls", pg.port, vec![pool("p1", PoolMode::Transaction, 2)]);
    cfg.tls = Some(TlsConfig {
        cert_chain_pem: cert,
        key_pem: key,
        required: true,
    });
    let (pooler, addr) = start(cfg).await;
    let ca = ca_path.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("psql")
            .arg(format!(
                "host=localhost port={} user={APP_USER} dbname=p1 sslmode=verify-full sslrootcert={}",
                addr.port(),
                ca.display()
            ))
            .args(["-X", "-A", "-t", "-c", "SELECT 40 + 2", "-c", "\\conninfo"])
            .env("PGPASSWORD", APP_PASS)
            .output()
            .expect("psql")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("42\n"), "{stdout}");
    assert!(stdout.contains("SSL connection"), "{stdout}");
    let ca = ca_path.clone();
    tokio::task::spawn_blocking(move || run_psycopg(addr, "p1", Some(&ca)))
        .await
        .unwrap();
    // A client that trusts another CA refuses the pooler's certificate.
    let (other_ca, _, _) = make_certs();
    let other_path = dir.path().join("other.pem");
    std::fs::write(&other_path, other_ca).unwrap();
    let out = Command::new("psql")
        .arg(format!(
            "host=localhost port={} user={APP_USER} dbname=p1 sslmode=verify-full sslrootcert={}",
            addr.port(),
            other_path.display()
        ))
        .args(["-X", "-c", "SELECT 1"])
        .env("PGPASSWORD", APP_PASS)
        .output()
        .expect("psql");
    assert!(!out.status.success());
    pooler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_required_refuses_plaintext_logins_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pg = shared().await;
    let (_, cert, key) = make_certs();
    let mut cfg = service(
        "tlsreq",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 2)],
    );
    cfg.tls = Some(TlsConfig {
        cert_chain_pem: cert,
        key_pem: key,
        required: true,
    });
    let (pooler, addr) = start(cfg).await;
    // A plaintext login: one FATAL 28000 that says SSL is required.
    let e = must_fail(connect(addr, "p1").await, "plaintext login");
    assert_eq!(sqlstate(&e), "28000", "{}", describe(&e));
    assert!(
        describe(&e)
            .contains("SSL required: connections to pool \"p1\" must use TLS (sslmode=require)"),
        "{}",
        describe(&e)
    );
    let out = tokio::task::spawn_blocking(move || {
        let refused = psql(addr, "p1", &[("PGSSLMODE", "disable")], &["-c", "SELECT 1"]);
        let accepted = psql(
            addr,
            "p1",
            &[("PGSSLMODE", "require")],
            &["-c", "SELECT 40 + 2", "-c", "\\conninfo"],
        );
        (refused, accepted)
    })
    .await
    .unwrap();
    let (refused, accepted) = out;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("SSL required"), "{stderr}");
    let stdout = String::from_utf8_lossy(&accepted.stdout);
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    assert!(stdout.starts_with("42\n"), "{stdout}");
    assert!(stdout.contains("SSL connection"), "{stdout}");
    // A CancelRequest over plaintext is still served: no error, the pooler just closes.
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut cancel = Vec::new();
    cancel.extend_from_slice(&16u32.to_be_bytes());
    cancel.extend_from_slice(&80877102u32.to_be_bytes());
    cancel.extend_from_slice(&1i32.to_be_bytes());
    cancel.extend_from_slice(&2i32.to_be_bytes());
    raw.write_all(&cancel).await.unwrap();
    let mut answer = Vec::new();
    raw.read_to_end(&mut answer).await.unwrap();
    assert!(answer.is_empty(), "cancel answered with {answer:?}");
    pooler.shutdown().await;
}

/// psycopg in statement mode: `BEGIN` raises the server-style error, not psycopg's "received 2
/// results from command BEGIN", and the connection goes on.
const PSYCOPG_BEGIN_SCRIPT: &str = r#"
import os, sys, psycopg
port, pool = int(sys.argv[1]), sys.argv[2]
with psycopg.connect(host="127.0.0.1", port=port, user="app", password=os.environ["PGPASSWORD"],
                     dbname=pool, autocommit=True) as c:
    for sql in ["BEGIN", "START TRANSACTION ISOLATION LEVEL REPEATABLE READ"]:
        try:
            c.execute(sql)
            raise AssertionError(f"{sql} must fail")
        except psycopg.errors.ActiveSqlTransaction as e:
            assert e.sqlstate == "25001", e.sqlstate
            assert "statement pooling mode" in str(e), str(e)
        assert c.execute("SELECT %s::int + 1", (41,)).fetchone()[0] == 42
    # Without autocommit psycopg opens the block itself: refused the same way.
    c.autocommit = False
    try:
        c.execute("SELECT 1")
        raise AssertionError("implicit BEGIN must fail")
    except psycopg.errors.ActiveSqlTransaction:
        pass
print("ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_begin_in_statement_mode_is_one_clean_error() {
    let pg = shared().await;
    let (pooler, addr) = start(service(
        "psybegin",
        pg.port,
        vec![pool("p1", PoolMode::Statement, 1)],
    ))
    .await;
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg("-c")
            .arg(PSYCOPG_BEGIN_SCRIPT)
            .arg(addr.port().to_string())
            .arg("p1")
            .env("PGPASSWORD", APP_PASS)
            .output()
            .expect("run python")
    })
    .await
    .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim_end() == "ok",
        "psycopg script failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    pooler.shutdown().await;
}

/// The backend reached over a Unix socket (host = the cluster's socket directory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_backend_serves_every_mode() {
    let pg = shared().await;
    let mut cfg = service(
        "unix",
        pg.port,
        vec![
            pool("tx", PoolMode::Transaction, 2),
            pool("stmt", PoolMode::Statement, 2),
        ],
    );
    cfg.backend.host = pg.dir.join("sock").to_str().unwrap().to_string();
    let (pooler, addr) = start(cfg).await;
    let c = connect(addr, "tx").await.unwrap();
    // A Unix-socket client has no address on the server side.
    let unix: bool = c
        .query_one(
            "SELECT client_addr IS NULL FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(unix, "the server connection is not a Unix socket");
    let dir = tempfile::tempdir().unwrap();
    let tx_script = dir.path().join("tx.sql");
    std::fs::write(
        &tx_script,
        "\\set x random(1, 1000)\nBEGIN;\nSELECT :x;\nSELECT :x + 1;\nEND;\n",
    )
    .unwrap();
    let stmt_script = dir.path().join("stmt.sql");
    std::fs::write(&stmt_script, "\\set x random(1, 1000)\nSELECT :x;\n").unwrap();
    tokio::task::spawn_blocking(move || {
        for proto in ["simple", "extended", "prepared"] {
            let f = tx_script.to_str().unwrap();
            pgbench(
                addr,
                "tx",
                &["-f", f, "-c", "6", "-j", "6", "-t", "50", "-M", proto],
            );
            let f = stmt_script.to_str().unwrap();
            pgbench(
                addr,
                "stmt",
                &["-f", f, "-c", "6", "-j", "6", "-t", "50", "-M", proto],
            );
        }
    })
    .await
    .unwrap();
    let sum: i64 = c
        .query_one("SELECT sum(g)::int8 FROM generate_series(1, 100000) g", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum, 5_000_050_000);
    // Cancel is forwarded over the Unix socket too.
    let token = c.cancel_token();
    let sleeper = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e = must_fail(sleeper.await.unwrap(), "cancelled sleep");
    assert_eq!(sqlstate(&e), "57014", "{}", describe(&e));
    pooler.shutdown().await;

    // A socket directory with no server: 08001 naming the socket.
    let mut cfg = service(
        "nounix",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 1)],
    );
    cfg.backend.host = dir.path().to_str().unwrap().to_string();
    let (pooler, addr) = start(cfg).await;
    let e = must_fail(connect(addr, "p1").await, "no server");
    assert_eq!(sqlstate(&e), "08001", "{}", describe(&e));
    let socket = format!("{}/.s.PGSQL.{}", dir.path().display(), pg.port);
    assert!(describe(&e).contains(&socket), "{}", describe(&e));
    pooler.shutdown().await;
}

/// A TCP backend that offers TLS (and refuses plaintext TCP logins) is reached over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_a_backend_that_offers_it() {
    let pg = tokio::task::spawn_blocking(Cluster::start_ssl)
        .await
        .unwrap();
    pg.setup_app().await;
    // The cluster itself refuses a plaintext TCP login: TLS is what lets the pooler in.
    let direct = format!(
        "host=127.0.0.1 port={} user={APP_USER} password='{}' dbname={APP_DB}",
        pg.port,
        APP_PASS.replace('\'', "\\'")
    );
    let e = must_fail(
        connect_str(&direct).await,
        "plaintext TCP to the ssl cluster",
    );
    assert_eq!(sqlstate(&e), "28000", "{}", describe(&e));
    let (pooler, addr) = start(service(
        "sslbackend",
        pg.port,
        vec![
            pool("tx", PoolMode::Transaction, 2),
            pool("sess", PoolMode::Session, 1),
        ],
    ))
    .await;
    let c = connect(addr, "tx").await.unwrap();
    let ssl: bool = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the server connection is not encrypted");
    // Large messages both ways cross TLS records and partial writes.
    let big = "x".repeat(3_000_000);
    let n: i32 = c
        .query_one("SELECT length($1::text)", &[&big])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3_000_000);
    let back: String = c
        .query_one("SELECT repeat('y', 4000000)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(back.len(), 4_000_000);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("tx.sql");
    std::fs::write(
        &script,
        "\\set x random(1, 1000)\nBEGIN;\nSELECT :x;\nSELECT :x + 1;\nEND;\n",
    )
    .unwrap();
    tokio::task::spawn_blocking(move || {
        let f = script.to_str().unwrap();
        for proto in ["simple", "prepared"] {
            pgbench(
                addr,
                "tx",
                &["-f", f, "-c", "6", "-j", "6", "-t", "50", "-M", proto],
            );
        }
        pgbench(addr, "sess", &["-f", f, "-c", "2", "-j", "2", "-t", "50"]);
    })
    .await
    .unwrap();
    // A cancel reaches the server (sent without TLS: PostgreSQL takes it before pg_hba).
    let token = c.cancel_token();
    let sleeper = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e = must_fail(sleeper.await.unwrap(), "cancelled sleep");
    assert_eq!(sqlstate(&e), "57014", "{}", describe(&e));
    pooler.shutdown().await;
}
