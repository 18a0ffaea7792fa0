//! Test harness: a real PostgreSQL 15 cluster in a temp dir (SCRAM auth, random port, run as
//! `nobody` when we are root), plus helpers to build pooler configs and connect clients.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use pgbay_pooler::{
    BackendConfig, ClientLimits, PoolConfig, PoolMode, PoolSettings, Pooler, PoolerConfig,
    ServiceConfig, UserConfig,
};

pub const SUPERUSER: &str = "postgres";
pub const SUPERPASS: &str = "super-secret";
pub const APP_USER: &str = "app";
pub const APP_PASS: &str = "app-pass'word";
pub const APP_DB: &str = "appdb";

fn pg_bin(name: &str) -> PathBuf {
    Path::new("/usr/lib/postgresql/15/bin").join(name)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a PostgreSQL binary, as nobody when root.
fn pg_command(bin: &str, args: &[&str]) -> Output {
    let mut cmd = if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(pg_bin(bin));
        c
    } else {
        Command::new(pg_bin(bin))
    };
    cmd.args(args);
    cmd.output()
        .unwrap_or_else(|e| panic!("running {bin}: {e}"))
}

#[path = "../../../../tests/held_ports.rs"]
mod held_ports;
pub use held_ports::held_port;

/// A PostgreSQL cluster owned by the test; stopped on drop.
pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    /// TLS on, and TCP clients must use it (`hostssl` only); local clients use the socket.
    pub ssl: bool,
    tmp: tempfile::TempDir,
}

impl Cluster {
    pub fn start() -> Cluster {
        Cluster::start_with(false)
    }

    /// A cluster with `ssl=on` (a self-signed certificate) that refuses plaintext TCP logins.
    pub fn start_ssl() -> Cluster {
        Cluster::start_with(true)
    }

    fn start_with(ssl: bool) -> Cluster {
        let tmp = tempfile::Builder::new()
            .prefix("pgbay-pooler-test")
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(dir.join("sock")).expect("sock dir");
        std::fs::write(dir.join("pw"), SUPERPASS).expect("pwfile");
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "65534:65534"])
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(status.success());
        }
        let data = dir.join("data");
        let out = pg_command(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                SUPERUSER,
                "--auth=scram-sha-256",
                &format!("--pwfile={}", dir.join("pw").display()),
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if ssl {
            let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
                .expect("self-signed certificate");
            std::fs::write(data.join("server.crt"), cert.cert.pem()).expect("server.crt");
            std::fs::write(data.join("server.key"), cert.key_pair.serialize_pem())
                .expect("server.key");
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
            )
            .expect("pg_hba.conf");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .expect("chmod server.key");
            if is_root() {
                for f in ["server.crt", "server.key", "pg_hba.conf"] {
                    std::os::unix::fs::chown(data.join(f), Some(65534), Some(65534))
                        .expect("chown");
                }
            }
        }
        // A port of a held window (`held_ports`); should another process bind it anyway (one
        // that takes no reservation), another one is tried.
        let mut cluster = Cluster {
            dir,
            port: held_port(),
            ssl,
            tmp,
        };
        for _ in 0..4 {
            match cluster.try_pg_ctl_start() {
                Ok(()) => return cluster,
                Err(log) if log.contains("could not bind") => cluster.port = held_port(),
                Err(log) => panic!("pg_ctl start failed: {log}"),
            }
        }
        cluster.pg_ctl_start();
        cluster
    }

    fn pg_ctl_start(&self) {
        if let Err(log) = self.try_pg_ctl_start() {
            panic!("pg_ctl start failed: {log}");
        }
    }

    /// Starts the cluster on `self.port`; Err with pg_ctl's output and the server log.
    fn try_pg_ctl_start(&self) -> Result<(), String> {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off -c max_connections=300 \
             -c synchronous_commit=off -c full_page_writes=off{}",
            self.port,
            self.dir.join("sock").display(),
            if self.ssl { " -c ssl=on" } else { "" }
        );
        let out = pg_command(
            "pg_ctl",
            &[
                "-D",
                self.dir.join("data").to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                self.dir.join("log").to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "{} {}",
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
        ))
    }

    pub fn stop(&self) {
        let _ = pg_command(
            "pg_ctl",
            &[
                "-D",
                self.dir.join("data").to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// Runs `pg_ctl -D <data> ARGS` and asserts that it succeeded.
    fn pg_ctl(&self, args: &[&str]) {
        let data = self.dir.join("data");
        let mut all = vec!["-D", data.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = pg_command("pg_ctl", &all);
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Fast shutdown then start again on the same port.
    pub fn restart(&self) {
        self.pg_ctl(&["-m", "fast", "-w", "stop"]);
        self.pg_ctl_start();
    }

    /// Starts a cluster that `stop` stopped.
    pub fn restart_stopped(&self) {
        self.pg_ctl_start();
    }

    /// Stops the cluster and starts it again as a hot standby (`standby.signal`, no primary to
    /// follow): it answers read-only, and reports `in_hot_standby = on`, until `promote`.
    pub fn restart_as_standby(&self) {
        self.stop();
        let signal = self.dir.join("data").join("standby.signal");
        std::fs::write(&signal, "").expect("standby.signal");
        if is_root() {
            std::os::unix::fs::chown(&signal, Some(65534), Some(65534)).expect("chown");
        }
        self.pg_ctl_start();
    }

    /// Promotes a standby and waits until it is a primary.
    pub fn promote(&self) {
        self.pg_ctl(&["-w", "promote"]);
    }

    /// Over TCP, or over the Unix socket for an `ssl` cluster (the tests' tokio-postgres has
    /// no TLS).
    pub fn superuser_conn_str(&self, db: &str) -> String {
        let host = if self.ssl {
            self.dir.join("sock").display().to_string()
        } else {
            "127.0.0.1".to_string()
        };
        format!(
            "host={host} port={} user={SUPERUSER} password={SUPERPASS} dbname={db}",
            self.port
        )
    }

    /// Runs SQL as superuser directly on the cluster.
    pub async fn admin(&self, db: &str, sql: &str) {
        let (client, conn) =
            tokio_postgres::connect(&self.superuser_conn_str(db), tokio_postgres::NoTls)
                .await
                .expect("admin connect");
        let handle = tokio::spawn(conn);
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("admin sql {sql}: {e}"));
        drop(client);
        let _ = handle.await;
    }

    /// Creates the app role and database used by most tests.
    pub async fn setup_app(&self) {
        self.admin(
            "postgres",
            &format!(
                "CREATE ROLE {APP_USER} LOGIN PASSWORD '{}'",
                APP_PASS.replace('\'', "''")
            ),
        )
        .await;
        self.admin(
            "postgres",
            &format!("CREATE DATABASE {APP_DB} OWNER {APP_USER}"),
        )
        .await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

static SHARED: OnceLock<Cluster> = OnceLock::new();

extern "C" fn stop_shared() {
    if let Some(c) = SHARED.get() {
        c.stop();
        // The static's TempDir is never dropped either: remove its directory here.
        let _ = std::fs::remove_dir_all(c.tmp.path());
    }
}

/// One cluster per test binary, stopped at process exit (statics are never dropped).
pub async fn shared() -> &'static Cluster {
    static INIT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    INIT.get_or_init(|| async {
        let cluster = tokio::task::spawn_blocking(Cluster::start)
            .await
            .expect("start cluster");
        // SAFETY: registering a plain extern "C" fn with no arguments.
        unsafe { libc::atexit(stop_shared) };
        cluster.setup_app().await;
        let _ = SHARED.set(cluster);
    })
    .await;
    SHARED.get().expect("shared cluster")
}

pub fn pool(name: &str, mode: PoolMode, size: u32) -> PoolConfig {
    PoolConfig {
        name: name.into(),
        database: APP_DB.into(),
        username: APP_USER.into(),
        mode,
        size,
    }
}

pub fn service(name: &str, backend_port: u16, pools: Vec<PoolConfig>) -> ServiceConfig {
    ServiceConfig {
        name: name.into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        backend: BackendConfig {
            host: "127.0.0.1".into(),
            port: backend_port,
            unavailable_hold: Default::default(),
            require_primary: false,
        },
        users: vec![UserConfig {
            name: APP_USER.into(),
            password: APP_PASS.into(),
            admin: true,
        }],
        pools,
        settings: PoolSettings::default(),
        limits: ClientLimits {
            query_wait_timeout: Duration::from_secs(10),
            ..ClientLimits::default()
        },
        allowed_cidrs: vec![],
    }
}

/// A service with one transaction pool `p1` of 2 whose clients are held while its server is
/// unreachable (`unavailable_hold`), each for at most `query_wait`.
pub fn holding_service(name: &str, backend_port: u16, query_wait: Duration) -> ServiceConfig {
    let mut cfg = service(
        name,
        backend_port,
        vec![pool("p1", PoolMode::Transaction, 2)],
    );
    cfg.backend.unavailable_hold = Duration::from_secs(60);
    cfg.limits.query_wait_timeout = query_wait;
    cfg
}

/// Starts a pooler with one service and returns it with the service's address.
pub async fn start(cfg: ServiceConfig) -> (Pooler, SocketAddr) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let name = cfg.name.clone();
    let pooler = Pooler::new();
    let report = pooler
        .apply(PoolerConfig {
            services: vec![cfg],
        })
        .await
        .expect("apply");
    assert!(report.is_ok(), "{report:?}");
    let addr = pooler.local_addr(&name).expect("listening");
    (pooler, addr)
}

pub fn conn_str(addr: SocketAddr, pool: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={APP_USER} password='{}' dbname={pool} connect_timeout=10",
        addr.port(),
        APP_PASS.replace('\'', "\\'")
    )
}

/// A tokio-postgres client through the pooler.
pub async fn connect(
    addr: SocketAddr,
    pool: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    connect_str(&conn_str(addr, pool)).await
}

pub async fn connect_str(s: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(s, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// SQLSTATE and message of a tokio-postgres error, for assertions and failure output.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => format!("{e:?}"),
    }
}

/// The SQLSTATE of a tokio-postgres error (empty when it has none).
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

/// The Python with psycopg: $PGBAY_PYTHON or <repo>/.venv/bin/python. Missing is a failure.
pub fn python() -> PathBuf {
    let p = std::env::var_os("PGBAY_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python"));
    assert!(
        p.exists(),
        "Python with psycopg not found at {} (set PGBAY_PYTHON or create the repo's .venv)",
        p.display()
    );
    p
}

/// The error of a result that must have failed.
pub fn must_fail<T>(r: Result<T, tokio_postgres::Error>, what: &str) -> tokio_postgres::Error {
    match r {
        Ok(_) => panic!("{what}: expected an error, got success"),
        Err(e) => e,
    }
}

/// A client whose connection task is kept: its result carries FATAL errors the server sends
/// outside a query (pool removed, shutdown), and notifications are forwarded to `notes`.
pub struct Watched {
    pub client: tokio_postgres::Client,
    pub conn: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    pub notes: tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
}

pub async fn connect_watched(addr: SocketAddr, pool: &str) -> Watched {
    use futures_util::StreamExt;
    let (client, mut conn) = tokio_postgres::connect(&conn_str(addr, pool), tokio_postgres::NoTls)
        .await
        .expect("connect");
    let (tx, notes) = tokio::sync::mpsc::unbounded_channel();
    let conn = tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(msg) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = msg? {
                let _ = tx.send(n);
            }
        }
        Ok(())
    });
    Watched {
        client,
        conn,
        notes,
    }
}

/// Polls `cond` until it holds (or fails after a generous deadline): pool upkeep and counters
/// change on their own schedule, so tests wait for the state rather than for a duration.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
