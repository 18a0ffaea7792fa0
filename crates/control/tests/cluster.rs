//! Tests against real PostgreSQL clusters made by the local provisioner (initdb + pg_ctl in a temp
//! dir, as `nobody` when run as root). Each test stops what it started, also when it fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pgbay_cluster::admin::{self, AdminTarget};
use pgbay_cluster::provision::local::{default_bin_dir, LocalProvisioner};
use pgbay_cluster::ClusterSpec;
use pgbay_control::input::{
    AdminUsername, DatabaseName, Plan, PoolMode, PoolName, PoolSize, ServiceName, Username,
};
use pgbay_control::{
    ca, Control, ControlConfig, NewDatabase, NewPool, NewService, NewUser, OpState,
    OperationRecord, PoolUpdate, PortRange,
};
use tokio_postgres::error::SqlState;

#[path = "../../../tests/held_ports.rs"]
mod held_ports;
use held_ports::{held_port, held_ports};

/// A fresh service OS user name (made when the test runs as root, removed with the cluster).
fn test_os_user() -> String {
    pgbay_cluster::os_users::name_for(&uuid::Uuid::new_v4())
}

/// Stops and removes the cluster of `name` (and its OS user) when dropped.
struct ClusterGuard(LocalProvisioner, String);
impl Drop for ClusterGuard {
    fn drop(&mut self) {
        let _ = self.0.remove(&self.1);
    }
}

/// Stops and removes every cluster of a data dir (and its OS user) when dropped (for tests
/// driving `Control`).
struct DataDirGuard(PathBuf);
impl Drop for DataDirGuard {
    fn drop(&mut self) {
        let bin = default_bin_dir().unwrap();
        let prov = LocalProvisioner::new(bin, self.0.join("services"), "127.0.0.1".into());
        for name in prov.present() {
            let _ = prov.remove(&name);
        }
    }
}

async fn login(
    port: u16,
    user: &str,
    password: &str,
    db: &str,
) -> Result<String, admin::AdminError> {
    let t = AdminTarget {
        host: "127.0.0.1".into(),
        port,
        user: user.into(),
        password: password.into(),
    };
    let c = admin::connect(&t, db).await?;
    let row = c
        .query_one(
            "SELECT current_user::text || '/' || current_database()::text",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

#[tokio::test]
async fn local_cluster_with_database_and_user() {
    let dir = tempfile::tempdir().unwrap();
    let bin = default_bin_dir().expect("PostgreSQL binaries");
    let prov = LocalProvisioner::new(bin, dir.path().join("services"), "127.0.0.1".into());
    std::fs::create_dir_all(dir.path().join("services")).unwrap();
    prov.ensure_traversable(&dir.path().join("services"))
        .unwrap();
    let tls = ca::load_or_create(dir.path(), "127.0.0.1").unwrap();
    let port = held_port();
    let spec = ClusterSpec {
        name: "svc",
        port,
        superuser: "avnadmin",
        superuser_password: "adminpw-123",
        os_user: &test_os_user(),
        ip_filter: &[],
        settings: "",
        backup_cipher: None,
    };
    prov.ensure_initialized(&spec).unwrap();
    prov.start(&spec, &tls).unwrap();
    let _guard = ClusterGuard(prov.clone(), "svc".into());
    assert!(prov.running_pid("svc").is_some());
    // Starting again adopts the running postmaster instead of failing.
    prov.start(&spec, &tls).unwrap();

    let t = AdminTarget {
        host: "127.0.0.1".into(),
        port,
        user: "avnadmin".into(),
        password: "adminpw-123".into(),
    };
    // Names that would break naive SQL quoting.
    let db = "we\"ird'; DROP DATABASE postgres; --";
    let user = "o'neil\"x";
    admin::create_database(&t, db, "avnadmin", None, None)
        .await
        .unwrap();
    admin::create_database(&t, db, "avnadmin", None, None)
        .await
        .unwrap(); // idempotent
    admin::upsert_role(&t, user, "pw'with\"quotes", false)
        .await
        .unwrap();
    assert!(admin::list_databases(&t)
        .await
        .unwrap()
        .contains(&db.to_string()));
    assert!(admin::list_roles(&t)
        .await
        .unwrap()
        .contains(&user.to_string()));
    assert_eq!(
        login(port, user, "pw'with\"quotes", db).await.unwrap(),
        format!("{user}/{db}")
    );
    assert!(login(port, user, "wrong-password", db).await.is_err());
    admin::set_password(&t, user, "second-pw").await.unwrap();
    assert!(login(port, user, "second-pw", "postgres").await.is_ok());

    // TLS with a certificate that verifies against pgbay's CA for 127.0.0.1.
    let ca_file = dir.path().join("ca.crt");
    let out = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={port} user=avnadmin dbname=postgres sslmode=verify-full sslrootcert={}",
            ca_file.display()
        ))
        .args(["-Atc", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"])
        .env("PGPASSWORD", "adminpw-123")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "t",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    admin::drop_role(&t, user, "avnadmin", &[db.to_string()])
        .await
        .unwrap();
    admin::drop_database(&t, db).await.unwrap();
    assert!(!admin::list_roles(&t)
        .await
        .unwrap()
        .contains(&user.to_string()));
    assert!(!admin::list_databases(&t)
        .await
        .unwrap()
        .contains(&db.to_string()));
    prov.remove("svc").unwrap();
    assert!(prov.running_pid("svc").is_none());
    assert!(!Path::new(&prov.service_dir("svc")).exists());
}

fn config(data_dir: &Path, apply_timeout: Duration) -> ControlConfig {
    ControlConfig {
        data_dir: data_dir.to_path_buf(),
        public_host: "127.0.0.1".into(),
        port_range: PortRange(held_ports(51)),
        pg_bin_dir: default_bin_dir().unwrap(),
        zone: "test".into(),
        apply_timeout,
        external: None,
        service_uid_range: Default::default(),
        store: None,
        backup_repo: None,
        backup_s3: None,
        etcd: None,
        node: pgbay_control::NodeConfig::single(data_dir, "http://127.0.0.1:0"),
        service_host: None,
        cluster_key: None,
    }
}

async fn wait_op(c: &Control, op: &OperationRecord) -> OperationRecord {
    for _ in 0..1200 {
        let cur = c.operation(op.id).await.unwrap();
        if cur.state != OpState::Pending {
            return cur;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("operation {} still pending", op.id);
}

fn new_service() -> NewService {
    NewService {
        plan: Plan::parse("plan", "hobbyist-2").unwrap(),
        version: None,
        admin_username: None,
        admin_password: None,
        pgbouncer: None,
        ip_filter: None,
        termination_protection: None,
        pg_settings: None,
        work_mem: None,
        shared_buffers_percentage: None,
        fork_from: None,
        recovery_time: None,
        migration: None,
        synchronous_replication: None,
        max_failover_lag: None,
        read_replica_of: None,
        backup_schedule: None,
    }
}

fn new_pool(name: &str, database: &str) -> NewPool {
    NewPool {
        name: PoolName::parse("name", name).unwrap(),
        database: DatabaseName::parse_lookup("database-name", database).unwrap(),
        mode: PoolMode::default(),
        size: PoolSize::default(),
        username: None,
    }
}

fn new_user(name: &str) -> NewUser {
    NewUser {
        username: Username::parse("username", name).unwrap(),
        allow_replication: false,
    }
}

fn new_database(name: &str) -> NewDatabase {
    NewDatabase {
        name: DatabaseName::parse("database-name", name).unwrap(),
        lc_collate: None,
        lc_ctype: None,
    }
}

fn size(n: i64) -> Option<PoolSize> {
    Some(PoolSize::new("size", n).unwrap())
}

#[tokio::test]
async fn control_provisions_publishes_waits_for_data_plane_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let _guard = DataDirGuard(dir.path().to_path_buf());
    let cfg = config(dir.path(), Duration::from_secs(2));
    let c = Control::start(cfg.clone()).await.unwrap();
    let name = ServiceName::parse("name", "svc").unwrap();
    let mut desired = c.desired_state();
    let op = c.create_service(&name, new_service()).await.unwrap();
    assert_eq!(op.state, OpState::Pending);
    assert_eq!(wait_op(&c, &op).await.state, OpState::Success);
    let view = c.get_service(&name).await.unwrap();
    let admin = view.admin().unwrap().clone();
    assert_eq!(view.databases, ["defaultdb"]);
    let port = view.service.pg_port;
    assert_eq!(
        login(port, &admin.name, &admin.password, "defaultdb")
            .await
            .unwrap(),
        "avnadmin/defaultdb"
    );
    // The admin is a managed admin, not a superuser, and owns the default database.
    let ac = admin::connect(
        &AdminTarget {
            host: "127.0.0.1".into(),
            port,
            user: admin.name.clone(),
            password: admin.password.clone(),
        },
        "defaultdb",
    )
    .await
    .unwrap();
    let row = ac
        .query_one(
            "SELECT r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication,
                    pg_has_role(current_user, 'pg_monitor', 'MEMBER'),
                    pg_has_role(current_user, 'pg_execute_server_program', 'MEMBER'),
                    pg_get_userbyid(d.datdba)::text
               FROM pg_roles r, pg_database d
              WHERE r.rolname = current_user AND d.datname = current_database()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, bool>(0),
            row.get::<_, bool>(1),
            row.get::<_, bool>(2),
            row.get::<_, bool>(3),
            row.get::<_, bool>(4),
            row.get::<_, bool>(5),
            row.get::<_, String>(6),
        ),
        (false, true, true, true, true, false, "avnadmin".to_string())
    );
    drop(ac);
    let state = desired.borrow_and_update().clone();
    assert_eq!(state.services.len(), 1);
    assert_eq!(state.services[0].backend_port, port);
    assert_eq!(state.services[0].users[0].password, admin.password);

    // Without a data plane attached, a pool change succeeds at once and is published.
    let before = c.desired_state().borrow().generation;
    let op = c
        .pools()
        .create(&name, new_pool("p1", "defaultdb"))
        .await
        .unwrap();
    assert_eq!(op.state, OpState::Success);
    let now = c.desired_state().borrow().clone();
    assert!(now.generation > before);
    assert_eq!(now.services[0].pools[0].size, 10);
    assert_eq!(now.services[0].pools[0].username, "avnadmin");

    // With a data plane that applies what it sees, changes succeed once applied.
    let reporter = c.attach_data_plane();
    let mut rx = c.desired_state();
    let follower = tokio::spawn(async move {
        loop {
            let g = rx.borrow_and_update().generation;
            reporter.applied(g, Vec::new());
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
    let pool = PoolName::parse("connection-pool-name", "p1").unwrap();
    let op = c
        .pools()
        .update(
            &name,
            &pool,
            PoolUpdate {
                size: size(3),
                mode: Some(PoolMode::Session),
                ..PoolUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(op.state, OpState::Success);
    follower.abort();
    // A data plane that stops reporting makes the operation fail (after the bounded wait).
    let _silent = c.attach_data_plane();
    let op = c
        .pools()
        .update(
            &name,
            &pool,
            PoolUpdate {
                size: size(4),
                ..PoolUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (op.state, op.reason.as_deref()),
        (OpState::Failure, Some("unavailable"))
    );
    assert_eq!(c.operation(op.id).await.unwrap().state, OpState::Failure);

    // A refused request changes nothing.
    let user = Username::parse("username", "avnadmin").unwrap();
    assert!(c.users().delete(&name, &user).await.is_err());
    assert!(c
        .pools()
        .create(&name, new_pool("p2", "nope"))
        .await
        .is_err());
    assert_eq!(c.get_service(&name).await.unwrap().pools.len(), 1);

    // A data plane that follows again.
    let reporter = c.attach_data_plane();
    let mut rx = c.desired_state();
    let follower = tokio::spawn(async move {
        loop {
            let g = rx.borrow_and_update().generation;
            reporter.applied(g, Vec::new());
            if rx.changed().await.is_err() {
                return;
            }
        }
    });

    // Simulate crashes between PostgreSQL and the store: a user created and a database dropped
    // in PostgreSQL only, and an admin password reset that PostgreSQL took but the store did not.
    let op = c.users().create(&name, new_user("carol")).await.unwrap();
    assert_eq!(op.state, OpState::Success);
    let carol = c
        .users()
        .reveal_password(&name, &Username::parse("username", "carol").unwrap())
        .await
        .unwrap()
        .1;
    let op = c
        .databases()
        .create(&name, new_database("appdb"))
        .await
        .unwrap();
    assert_eq!(op.state, OpState::Success);
    let t = AdminTarget {
        host: "127.0.0.1".into(),
        port,
        user: admin.name.clone(),
        password: admin.password.clone(),
    };
    // The admin is a managed admin (CREATEROLE), which may drop a role that owns nothing.
    admin::connect(&t, "postgres")
        .await
        .unwrap()
        .batch_execute("DROP ROLE carol")
        .await
        .unwrap();
    admin::drop_database(&t, "appdb").await.unwrap();
    let mut tx = c.store().begin().await.unwrap();
    let mut rec = pgbay_control::store::user(&mut tx, "svc", "avnadmin")
        .await
        .unwrap()
        .unwrap();
    let secrets =
        pgbay_control::crypto::SecretBox::load_or_create(&dir.path().join("secret.key")).unwrap();
    rec.pending_password_enc = Some(secrets.seal("interrupted-pw"));
    pgbay_control::store::upsert_user(&mut tx, "svc", &rec)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // pgbay's internal superuser logs in over the Unix socket only, never over TCP.
    let internal = AdminTarget {
        host: dir
            .path()
            .join("run")
            .join(port.to_string())
            .display()
            .to_string(),
        port,
        user: admin::INTERNAL_ROLE.into(),
        password: secrets
            .open(&c.store().internal_password("svc").await.unwrap().unwrap())
            .unwrap(),
    };
    let err = login(port, admin::INTERNAL_ROLE, &internal.password, "postgres")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
    );
    admin::set_password(&internal, "avnadmin", "interrupted-pw")
        .await
        .unwrap();

    follower.abort();
    // Restart: the cluster is stopped by shutdown and started again by the next start, and the
    // server is brought back to what the store committed.
    c.shutdown().await;
    assert!(!c.cluster_running("svc"));
    let c2 = Control::start(cfg).await.unwrap();
    assert!(c2.cluster_running("svc"));
    let view = c2.get_service(&name).await.unwrap();
    assert_eq!(view.service.pg_port, port);
    assert_eq!(view.pools[0].size.get(), 4);
    assert_eq!(
        login(port, &admin.name, &admin.password, "defaultdb")
            .await
            .unwrap(),
        "avnadmin/defaultdb"
    );
    assert_eq!(
        login(port, "carol", &carol, "appdb").await.unwrap(),
        "carol/appdb"
    );
    let op = c2.delete_service(&name).await.unwrap();
    assert_eq!(op.state, OpState::Success);
    assert!(!c2.cluster_running("svc"));
    c2.shutdown().await;
}

#[tokio::test]
async fn external_server_is_adopted_for_one_service_and_left_running() {
    // The "external" server: a cluster of its own, made here the way an operator would have one.
    let ext_dir = tempfile::tempdir().unwrap();
    let bin = default_bin_dir().unwrap();
    let prov = LocalProvisioner::new(bin, ext_dir.path().join("services"), "127.0.0.1".into());
    std::fs::create_dir_all(ext_dir.path().join("services")).unwrap();
    prov.ensure_traversable(&ext_dir.path().join("services"))
        .unwrap();
    let tls = ca::load_or_create(ext_dir.path(), "127.0.0.1").unwrap();
    let ext_port = held_port();
    let spec = ClusterSpec {
        name: "ext",
        port: ext_port,
        superuser: "extadmin",
        superuser_password: "ext-pw-123",
        os_user: &test_os_user(),
        ip_filter: &[],
        settings: "",
        backup_cipher: None,
    };
    prov.ensure_initialized(&spec).unwrap();
    prov.start(&spec, &tls).unwrap();
    let _ext_guard = ClusterGuard(prov.clone(), "ext".into());

    let dir = tempfile::tempdir().unwrap();
    let _guard = DataDirGuard(dir.path().to_path_buf());
    let mut cfg = config(dir.path(), Duration::from_secs(2));
    cfg.external = Some(
        format!("postgres://extadmin:ext-pw-123@127.0.0.1:{ext_port}/postgres")
            .parse()
            .unwrap(),
    );
    let c = Control::start(cfg).await.unwrap();
    let name = ServiceName::parse("name", "adopted").unwrap();
    let refused = c
        .create_service(
            &name,
            NewService {
                admin_username: Some(AdminUsername::parse("admin-username", "x").unwrap()),
                ..new_service()
            },
        )
        .await;
    assert!(refused.is_err());
    let op = c.create_service(&name, new_service()).await.unwrap();
    assert_eq!(wait_op(&c, &op).await.state, OpState::Success);
    let view = c.get_service(&name).await.unwrap();
    assert_eq!(view.service.pg_port, ext_port);
    assert_eq!(view.admin().unwrap().name, "extadmin");
    let state = c.desired_state().borrow().clone();
    assert_eq!(
        (
            state.services[0].backend_host.as_str(),
            state.services[0].backend_port
        ),
        ("127.0.0.1", ext_port)
    );

    let op = c
        .databases()
        .create(&name, new_database("extdb"))
        .await
        .unwrap();
    assert_eq!(op.state, OpState::Success);
    let op = c.users().create(&name, new_user("extuser")).await.unwrap();
    assert_eq!(op.state, OpState::Success);
    let pw = c
        .users()
        .reveal_password(&name, &Username::parse("username", "extuser").unwrap())
        .await
        .unwrap()
        .1;
    assert_eq!(
        login(ext_port, "extuser", &pw, "extdb").await.unwrap(),
        "extuser/extdb"
    );

    // One service per external server.
    let second = ServiceName::parse("name", "second").unwrap();
    assert!(c.create_service(&second, new_service()).await.is_err());

    // Deleting the service leaves the server running.
    c.delete_service(&name).await.unwrap();
    assert!(prov.running_pid("ext").is_some());
    assert!(login(ext_port, "extadmin", "ext-pw-123", "postgres")
        .await
        .is_ok());
    c.shutdown().await;
    assert!(prov.running_pid("ext").is_some());
}
