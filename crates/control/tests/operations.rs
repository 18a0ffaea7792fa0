//! How the data plane's reports decide operations: pending until reported, failure for the failed
//! service only, failure after a silent bound, never rewritten after success, and the rule for
//! operations a restart left pending. The services are stored as running on an external server
//! that is not there: pool operations touch only the store and the data plane, so no cluster is
//! needed, and the test plays the data plane through `AppliedReporter`.

use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use pgbay_control::crypto::SecretBox;
use pgbay_control::input::{DatabaseName, IpFilter, PoolName, ServiceName};
use pgbay_control::local::default_bin_dir;
use pgbay_control::store::{self, Store};
use pgbay_control::{
    AppliedReporter, Control, ControlConfig, NewPool, OpState, OperationKind, OperationRecord,
    PgbouncerSettings, PortRange, ServiceRecord, ServiceState, UserKind, UserRecord,
};
use uuid::Uuid;

/// Stores running services `names` (ports nobody listens on) and any `pending` operations, then
/// starts control over that data dir.
async fn start(
    dir: &Path,
    names: &[&str],
    pending: &[OperationRecord],
    apply_timeout: Duration,
) -> Control {
    let st = Store::open(&dir.join("pgbay.sqlite")).await.unwrap();
    let secrets = SecretBox::load_or_create(&dir.join("secret.key")).unwrap();
    let mut tx = st.begin().await.unwrap();
    for (i, name) in names.iter().enumerate() {
        if store::get_service(&mut tx, name).await.unwrap().is_some() {
            continue;
        }
        let s = service(name, i as u16);
        store::insert_service(&mut tx, &s).await.unwrap();
        let admin = UserRecord {
            name: "avnadmin".into(),
            kind: UserKind::Primary,
            password_enc: secrets.seal("admin-password"),
            pending_password_enc: None,
            password_overridden: false,
            allow_replication: true,
        };
        store::upsert_user(&mut tx, name, &admin).await.unwrap();
        store::insert_database(&mut tx, name, "defaultdb")
            .await
            .unwrap();
    }
    for op in pending {
        store::insert_operation(&mut tx, op).await.unwrap();
    }
    tx.commit().await.unwrap();
    drop(st);
    Control::start(ControlConfig {
        data_dir: dir.to_path_buf(),
        public_host: "127.0.0.1".into(),
        port_range: PortRange(40000..=40100),
        pg_bin_dir: default_bin_dir().unwrap(),
        zone: "test".into(),
        apply_timeout,
        external: None,
        service_uid_range: Default::default(),
        store: None,
        backup_repo: None,
        backup_s3: None,
        etcd: None,
        node: pgbay_control::NodeConfig::single(dir, "http://127.0.0.1:0"),
        service_host: None,
        cluster_key: None,
    })
    .await
    .unwrap()
}

fn service(name: &str, i: u16) -> ServiceRecord {
    let now = Utc::now();
    ServiceRecord {
        name: name.into(),
        id: Uuid::new_v4(),
        plan: "hobbyist-2".into(),
        state: ServiceState::Running,
        version: "16".into(),
        admin_username: "avnadmin".into(),
        // Low ports on loopback refuse at once, so start-up gives up on the "external" server fast.
        pg_port: 2 * i + 1,
        external_host: Some("127.0.0.1".into()),
        pooler_port: 2 * i + 2,
        pgbouncer: PgbouncerSettings::default(),
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

fn name(s: &str) -> ServiceName {
    ServiceName::parse("name", s).unwrap()
}

fn new_pool(pool: &str) -> NewPool {
    NewPool {
        name: PoolName::parse("name", pool).unwrap(),
        database: DatabaseName::parse("database-name", "defaultdb").unwrap(),
        mode: Default::default(),
        size: Default::default(),
        username: None,
    }
}

async fn create_pool(c: &Control, service: &str, pool: &str) -> OperationRecord {
    c.pools()
        .create(&name(service), new_pool(pool))
        .await
        .unwrap()
}

/// A data plane that reports every generation it sees, with `failures` each time.
fn follower(
    c: &Control,
    reporter: AppliedReporter,
    failures: Vec<(String, String)>,
) -> tokio::task::JoinHandle<()> {
    let mut rx = c.desired_state();
    tokio::spawn(async move {
        loop {
            let g = rx.borrow_and_update().generation;
            reporter.applied(g, failures.clone());
            if rx.changed().await.is_err() {
                return;
            }
        }
    })
}

#[tokio::test]
async fn an_operation_stays_pending_until_the_data_plane_reports() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path(), &["a"], &[], Duration::from_secs(30)).await;
    let reporter = c.attach_data_plane();
    let call = {
        let c = c.clone();
        tokio::spawn(async move { create_pool(&c, "a", "p1").await })
    };
    let mut seen = None;
    for _ in 0..100 {
        if let Some(op) = c.store().pending_operations().await.unwrap().pop() {
            seen = Some(op);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = seen.expect("the operation is recorded as pending");
    assert_eq!(seen.kind, OperationKind::CreatePool);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.operation(seen.id).await.unwrap().state, OpState::Pending);
    assert!(!call.is_finished());
    // The store change is committed while the operation waits.
    assert_eq!(c.desired_state().borrow().services[0].pools[0].name, "p1");

    let generation = c.desired_state().borrow().generation;
    reporter.applied(generation, Vec::new());
    let op = call.await.unwrap();
    assert_eq!(
        (op.id, op.state, op.reason),
        (seen.id, OpState::Success, None)
    );
    assert_eq!(c.operation(op.id).await.unwrap().state, OpState::Success);
    c.shutdown().await;
}

#[tokio::test]
async fn a_failed_service_fails_its_own_operations_only() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path(), &["a", "b"], &[], Duration::from_secs(30)).await;
    let failures = vec![("a".to_string(), "address 2 already in use".to_string())];
    let f = follower(&c, c.attach_data_plane(), failures);
    let failed = create_pool(&c, "a", "p1").await;
    assert_eq!(
        (failed.state, failed.reason.as_deref()),
        (OpState::Failure, Some("unavailable"))
    );
    assert!(
        failed.message.contains("address 2 already in use"),
        "{}",
        failed.message
    );
    assert_eq!(c.operation(failed.id).await.unwrap(), failed);
    let served = create_pool(&c, "b", "p1").await;
    assert_eq!((served.state, served.reason), (OpState::Success, None));
    f.abort();
    c.shutdown().await;
}

#[tokio::test]
async fn a_silent_data_plane_fails_the_operation_after_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path(), &["a"], &[], Duration::from_millis(500)).await;
    let _silent = c.attach_data_plane();
    let op = create_pool(&c, "a", "p1").await;
    assert_eq!(
        (op.state, op.reason.as_deref()),
        (OpState::Failure, Some("unavailable"))
    );
    assert!(op.message.contains("did not apply"), "{}", op.message);
    assert_eq!(c.operation(op.id).await.unwrap(), op);
    c.shutdown().await;
}

#[tokio::test]
async fn a_successful_operation_is_never_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path(), &["a"], &[], Duration::from_millis(500)).await;
    // Without a data plane there is nobody to wait for.
    let alone = create_pool(&c, "a", "p0").await;
    assert_eq!(alone.state, OpState::Success);
    let reporter = c.attach_data_plane();
    let f = follower(&c, reporter.clone(), Vec::new());
    let done = create_pool(&c, "a", "p1").await;
    assert_eq!(done.state, OpState::Success);
    f.abort();
    // Later bad news about the service, and a later operation that fails, leave both alone.
    let generation = c.desired_state().borrow().generation;
    reporter.applied(generation + 1, vec![("a".into(), "gone".into())]);
    let later = create_pool(&c, "a", "p2").await;
    assert_eq!(later.state, OpState::Failure);
    assert_eq!(c.operation(alone.id).await.unwrap(), alone);
    assert_eq!(c.operation(done.id).await.unwrap(), done);
    c.shutdown().await;
}

fn pending_op(service: &str, kind: OperationKind, message: &str) -> OperationRecord {
    OperationRecord {
        id: Uuid::new_v4(),
        state: OpState::Pending,
        reason: None,
        message: message.into(),
        ref_id: Uuid::new_v4(),
        ref_link: format!("/v2/dbaas-postgres/{service}"),
        ref_command: "get-dbaas-service-pg".into(),
        kind,
        service: service.into(),
    }
}

async fn wait_finished(c: &Control, id: Uuid) -> OperationRecord {
    for _ in 0..200 {
        let op = c.operation(id).await.unwrap();
        if op.state != OpState::Pending {
            return op;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("operation {id} still pending");
}

#[tokio::test]
async fn an_operation_left_pending_by_a_restart_is_decided_by_the_first_report() {
    let dir = tempfile::tempdir().unwrap();
    let ok = pending_op("a", OperationKind::CreatePool, "connection pool p1 created");
    let bad = pending_op("b", OperationKind::UpdateService, "service b updated");
    let c = start(
        dir.path(),
        &["a", "b"],
        &[ok.clone(), bad.clone()],
        Duration::from_secs(30),
    )
    .await;
    let reporter = c.attach_data_plane();
    let generation = c.desired_state().borrow().generation;
    reporter.applied(generation, vec![("b".into(), "bind failed".into())]);
    let ok = wait_finished(&c, ok.id).await;
    assert_eq!(
        (ok.state, ok.message.as_str()),
        (OpState::Success, "connection pool p1 created")
    );
    let bad = wait_finished(&c, bad.id).await;
    assert_eq!(
        (bad.state, bad.reason.as_deref()),
        (OpState::Failure, Some("unavailable"))
    );
    assert!(bad.message.contains("bind failed"), "{}", bad.message);
    c.shutdown().await;
}

#[tokio::test]
async fn an_operation_left_pending_without_a_data_plane_ends_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let op = pending_op("a", OperationKind::DeletePool, "connection pool p1 deleted");
    let c = start(
        dir.path(),
        &["a"],
        std::slice::from_ref(&op),
        Duration::from_millis(500),
    )
    .await;
    let op = wait_finished(&c, op.id).await;
    assert_eq!(
        (op.state, op.reason.as_deref()),
        (OpState::Failure, Some("interrupted"))
    );
    c.shutdown().await;
}

#[tokio::test]
async fn a_pool_change_is_published_as_that_change() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path(), &["a", "b", "c"], &[], Duration::from_secs(5)).await;
    let before = c.desired_state().borrow().clone();
    assert_eq!(before.services.len(), 3);
    let op = create_pool(&c, "b", "p1").await;
    assert_eq!(op.state, OpState::Success);
    let after = c.desired_state().borrow().clone();
    assert_eq!(after.generation, before.generation + 1);
    // Only b's entry is new, at the new generation; a's and c's are the very same entries.
    for (old, new) in before.services.iter().zip(after.services.iter()) {
        assert_eq!(old.name, new.name);
        if new.name == "b" {
            assert_eq!(new.changed_at, after.generation);
            assert_eq!(new.pools.len(), 1);
        } else {
            assert!(std::sync::Arc::ptr_eq(old, new), "{} was rebuilt", new.name);
        }
    }
    // So is a deletion: b changes again, a is still the entry published first.
    c.pools()
        .delete(&name("b"), &PoolName::parse_lookup("p", "p1").unwrap())
        .await
        .unwrap();
    let g = c.desired_state().borrow().clone();
    let b = g.services.iter().find(|s| s.name == "b").unwrap();
    assert_eq!((b.changed_at, b.pools.len()), (g.generation, 0));
    let a = g.services.iter().find(|s| s.name == "a").unwrap();
    assert!(std::sync::Arc::ptr_eq(a, &before.services[0]));
    c.shutdown().await;
}
