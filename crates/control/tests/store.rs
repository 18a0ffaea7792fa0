//! Store tests, each run on both backends: a real SQLite file in a temp dir, and a throwaway
//! PostgreSQL started for the test (initdb + pg_ctl in a temp dir, Unix socket only, as nobody
//! when run as root). Round trips, cascades, constraints, a store of a newer schema refused, and
//! that committed state is there after reopening (what a restart after `kill -9` sees).

#[path = "support/throwaway_pg.rs"]
mod throwaway_pg;

use chrono::Utc;
use pgbay_control::input::{IpFilter, PoolMode, PoolSize};
use pgbay_control::model::{
    OpState, OperationRecord, PoolRecord, ServiceRecord, ServiceState, UserKind, UserRecord,
};
use pgbay_control::store::{self, Store};
use pgbay_control::{OperationKind, PgbouncerSettings};
use uuid::Uuid;

fn service(name: &str, pg_port: u16, pooler_port: u16) -> ServiceRecord {
    let now = Utc::now();
    ServiceRecord {
        name: name.into(),
        id: Uuid::new_v4(),
        plan: "hobbyist-2".into(),
        state: ServiceState::Rebuilding,
        version: "15".into(),
        admin_username: "avnadmin".into(),
        pg_port,
        pooler_port,
        external_host: None,
        pgbouncer: PgbouncerSettings {
            min_pool_size: Some(2),
            ..Default::default()
        },
        ip_filter: IpFilter::allow_all(),
        termination_protection: false,
        pg_settings: Default::default(),
        work_mem: None,
        shared_buffers_percentage: None,
        created_at: now,
        updated_at: now,
        node: None,
    }
}

fn user(name: &str, kind: UserKind) -> UserRecord {
    UserRecord {
        name: name.into(),
        kind,
        password_enc: "sealed".into(),
        pending_password_enc: None,
        password_overridden: false,
        allow_replication: false,
    }
}

fn op(service: &ServiceRecord, state: OpState) -> OperationRecord {
    OperationRecord {
        id: Uuid::new_v4(),
        state,
        reason: None,
        message: "m".into(),
        ref_id: service.id,
        ref_link: format!("/v2/dbaas-postgres/{}", service.name),
        ref_command: "get-dbaas-service-pg".into(),
        kind: OperationKind::CreateService,
        service: service.name.clone(),
    }
}

/// Where a test's store lives; dropped, it is removed (the PostgreSQL server stopped).
enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(throwaway_pg::Server),
}

impl Backend {
    fn sqlite() -> Backend {
        Backend::Sqlite(tempfile::tempdir().unwrap())
    }

    fn postgres() -> Backend {
        Backend::Postgres(throwaway_pg::Server::start())
    }

    fn url(&self) -> String {
        match self {
            Backend::Sqlite(dir) => {
                format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("pgbay.sqlite").display()
                )
            }
            Backend::Postgres(pg) => pg.url(),
        }
    }

    async fn open(&self) -> Store {
        Store::connect(&self.url()).await.unwrap()
    }
}

/// One test body, run once per backend.
macro_rules! on_both_backends {
    ($body:ident) => {
        mod $body {
            #[tokio::test]
            async fn sqlite() {
                super::$body(super::Backend::sqlite()).await
            }
            #[tokio::test]
            async fn postgres() {
                super::$body(super::Backend::postgres()).await
            }
        }
    };
}

on_both_backends!(committed_state_survives_reopen_and_uncommitted_does_not);
on_both_backends!(constraints_and_cascading_delete);
on_both_backends!(a_store_of_a_newer_schema_is_refused_unchanged);

async fn committed_state_survives_reopen_and_uncommitted_does_not(b: Backend) {
    let s = service("svc", 21000, 21001);
    let pending = op(&s, OpState::Pending);
    {
        let st = b.open().await;
        let mut tx = st.begin().await.unwrap();
        store::insert_service(&mut tx, &s).await.unwrap();
        store::upsert_user(&mut tx, &s.name, &user("avnadmin", UserKind::Primary))
            .await
            .unwrap();
        store::insert_database(&mut tx, &s.name, "defaultdb")
            .await
            .unwrap();
        store::insert_operation(&mut tx, &pending).await.unwrap();
        tx.commit().await.unwrap();

        // A transaction that is dropped without commit leaves nothing behind.
        let mut tx = st.begin().await.unwrap();
        store::insert_database(&mut tx, &s.name, "lost")
            .await
            .unwrap();
        drop(tx);
        st.close().await;
    }
    let st = b.open().await;
    assert_eq!(st.service("svc").await.unwrap().as_ref(), Some(&s));
    assert_eq!(st.databases("svc").await.unwrap(), ["defaultdb"]);
    assert_eq!(
        st.pending_operations().await.unwrap(),
        std::slice::from_ref(&pending)
    );
    let mut used = st.used_ports().await.unwrap();
    used.sort();
    assert_eq!(used, [21000, 21001]);

    let mut tx = st.begin().await.unwrap();
    store::finish_operation(
        &mut tx,
        pending.id,
        OpState::Failure,
        Some("interrupted"),
        "x",
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let done = st.operation(pending.id).await.unwrap().unwrap();
    assert_eq!(
        (done.state, done.reason.as_deref()),
        (OpState::Failure, Some("interrupted"))
    );
    assert!(st.pending_operations().await.unwrap().is_empty());
}

async fn constraints_and_cascading_delete(b: Backend) {
    let st = b.open().await;
    let a = service("a", 21000, 21001);
    let mut tx = st.begin().await.unwrap();
    store::insert_service(&mut tx, &a).await.unwrap();
    store::insert_database(&mut tx, "a", "app").await.unwrap();
    store::upsert_user(&mut tx, "a", &user("bob", UserKind::Normal))
        .await
        .unwrap();
    let pool = PoolRecord {
        name: "p".into(),
        database: "app".into(),
        username: "bob".into(),
        mode: PoolMode::Session,
        size: PoolSize::from_stored(7),
    };
    store::upsert_pool(&mut tx, "a", &pool).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(st.pools("a").await.unwrap(), [pool]);

    // A second service may not take a port of the first, in either role.
    let mut tx = st.begin().await.unwrap();
    assert!(store::insert_service(&mut tx, &service("b", 21001, 21002))
        .await
        .is_err());
    drop(tx);
    let mut tx = st.begin().await.unwrap();
    assert!(store::insert_service(&mut tx, &service("b", 21001, 21000))
        .await
        .is_err());
    drop(tx);
    // A pool may not name a database that does not exist.
    let mut tx = st.begin().await.unwrap();
    let ghost = PoolRecord {
        name: "g".into(),
        database: "nope".into(),
        username: "bob".into(),
        mode: PoolMode::Transaction,
        size: PoolSize::default(),
    };
    assert!(store::upsert_pool(&mut tx, "a", &ghost).await.is_err());
    drop(tx);

    let mut tx = st.begin().await.unwrap();
    store::delete_service(&mut tx, "a").await.unwrap();
    tx.commit().await.unwrap();
    assert!(st.service("a").await.unwrap().is_none());
    assert!(st.pools("a").await.unwrap().is_empty());
    assert!(st.users("a").await.unwrap().is_empty());
    assert!(st.databases("a").await.unwrap().is_empty());
    assert!(st.used_ports().await.unwrap().is_empty());
}

async fn a_store_of_a_newer_schema_is_refused_unchanged(b: Backend) {
    let st = b.open().await;
    let mut tx = st.begin().await.unwrap();
    store::insert_service(&mut tx, &service("kept", 21000, 21001))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    st.close().await;
    // What a newer pgbay would have left: a migration this one does not know.
    sqlx::any::install_default_drivers();
    let mut c = <sqlx::AnyConnection as sqlx::Connection>::connect(&b.url())
        .await
        .unwrap();
    let newer = "INSERT INTO _sqlx_migrations (version, description, success, checksum, \
                 execution_time) VALUES (9999, 'from the future', TRUE, $1, 0)";
    sqlx::query(newer)
        .bind(vec![0u8; 48])
        .execute(&mut c)
        .await
        .unwrap();
    let e = Store::connect(&b.url()).await.unwrap_err().to_string();
    assert!(e.contains("newer than this pgbay"), "{e}");
    // Refused without a change: the row is still there, and without the future migration the
    // store opens as before.
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 9999")
        .execute(&mut c)
        .await
        .unwrap();
    let st = b.open().await;
    assert!(st.service("kept").await.unwrap().is_some());
}

on_both_backends!(nodes_register_heartbeat_and_share_what_the_first_stored);

fn node(name: &str, instance: &str, heartbeat_ms: i64) -> pgbay_control::store::NodeRecord {
    pgbay_control::store::NodeRecord {
        name: name.into(),
        public_host: "127.0.0.1".into(),
        api_url: "http://127.0.0.1:8080".into(),
        instance: instance.into(),
        started_at: Utc::now().to_rfc3339(),
        heartbeat_ms,
        applied_generation: 0,
    }
}

async fn nodes_register_heartbeat_and_share_what_the_first_stored(b: Backend) {
    let st = b.open().await;
    let now = st.now_ms().await.unwrap();
    assert!((now - Utc::now().timestamp_millis()).abs() < 60_000);
    // A live node's name is refused to another instance, and nothing changes.
    st.register_node(&node("a", "m1:/d", now), now - 10_000)
        .await
        .unwrap()
        .unwrap();
    let refused = st
        .register_node(&node("a", "m2:/d", now), now - 10_000)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.instance, "m1:/d");
    assert_eq!(st.nodes().await.unwrap()[0].instance, "m1:/d");
    // The same instance (a restart, a takeover) re-registers; a dead name can be taken.
    st.register_node(&node("a", "m1:/d", now), now - 10_000)
        .await
        .unwrap()
        .unwrap();
    st.register_node(&node("a", "m2:/d", now + 20_000), now + 5_000)
        .await
        .unwrap()
        .unwrap();
    // Only the instance that holds the name heartbeats.
    assert!(!st.heartbeat("a", "m1:/d", now + 1).await.unwrap());
    assert!(st.heartbeat("a", "m2:/d", now + 1).await.unwrap());
    // The generation counter and the applied generation only grow.
    let g0 = st.generation().await.unwrap();
    let g1 = st.next_generation().await.unwrap();
    assert_eq!(g1, g0 + 1);
    st.set_applied_generation("a", g1).await.unwrap();
    st.set_applied_generation("a", g0).await.unwrap();
    assert_eq!(st.nodes().await.unwrap()[0].applied_generation, g1);
    // The first stored secret wins.
    assert_eq!(st.share_secret("k", "first").await.unwrap(), "first");
    assert_eq!(st.share_secret("k", "second").await.unwrap(), "first");
    assert_eq!(
        st.shared_secret("k").await.unwrap().as_deref(),
        Some("first")
    );
    // Services of a store without nodes are claimed once; a lost node's pending operations
    // fail.
    let s = service("svc", 21000, 21001);
    let pending = op(&s, OpState::Pending);
    let mut tx = st.begin().await.unwrap();
    store::insert_service(&mut tx, &s).await.unwrap();
    store::insert_operation(&mut tx, &pending).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(st.claim_unplaced_services("a").await.unwrap(), 1);
    assert_eq!(st.claim_unplaced_services("b").await.unwrap(), 0);
    assert_eq!(
        st.service("svc").await.unwrap().unwrap().node.as_deref(),
        Some("a")
    );
    assert_eq!(
        st.fail_operations_of("a", "node a was lost").await.unwrap(),
        1
    );
    let failed = st.operation(pending.id).await.unwrap().unwrap();
    assert_eq!(failed.state, OpState::Failure);
    assert_eq!(failed.message, "node a was lost");
    // The port lock is taken and released (the session ends with the guard).
    drop(st.port_lock().await.unwrap());
    drop(st.port_lock().await.unwrap());
}
