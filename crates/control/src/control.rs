//! `Control`: the control plane's handle, shared by the API and the binary. It owns the store, the
//! secret box, the CA material and the local provisioner (from `pgbay_cluster`); it publishes the
//! desired state after every committed change, resumes interrupted work at start, and supervises
//! the clusters.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use pgbay_cluster::admin::{self, AdminTarget};
use pgbay_cluster::{
    ClusterSpec, ExternalProvisioner, LocalProvisioner, ProvisionError, Provisioner, TlsMaterial,
};
use tokio::sync::{watch, Mutex};

use crate::ca;
use crate::crypto::SecretBox;
use crate::desired::{DesiredPool, DesiredService, DesiredState, DesiredUser};
use crate::error::ControlError;
use crate::model::{ServiceRecord, ServiceState, UserKind};
use crate::operations::DataPlaneSlot;
use crate::ports::PortRange;
use crate::store::Store;

/// How long an operation waits for an attached data plane to apply it.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the supervisor checks that every running service's cluster is alive.
pub(crate) const SUPERVISE_EVERY: Duration = Duration::from_secs(2);

/// Start-up configuration of the control plane.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Root of all state (store, keys, CA, clusters).
    pub data_dir: PathBuf,
    /// Host written into URIs and listened on.
    pub public_host: String,
    /// Ports for clusters and pooler listeners.
    pub port_range: PortRange,
    /// PostgreSQL binaries.
    pub pg_bin_dir: PathBuf,
    /// Zone reported for services.
    pub zone: String,
    /// How long a mutation waits for an attached data plane (normally `APPLY_TIMEOUT`).
    pub apply_timeout: Duration,
    /// Adopt this server for new services instead of running local clusters.
    pub external: Option<pgbay_cluster::ExternalServer>,
    /// uids of the OS users made for services when pgbay runs as root (`--service-uid-range`).
    pub service_uid_range: pgbay_cluster::os_users::UidRange,
    /// The control store (`--store`): None for the SQLite file in the data dir.
    pub store: Option<String>,
    /// Root of the services' pgBackRest repositories (`--backup-repo`): None for
    /// `<data-dir>/backups`.
    pub backup_repo: Option<PathBuf>,
    /// An S3-compatible store for the repositories instead (`--backup-s3-*`).
    pub backup_s3: Option<pgbay_cluster::pgbackrest::S3Repo>,
    /// etcd client URLs of an existing etcd cluster for HA services' Patroni (`--etcd`); None:
    /// pgbay runs one etcd member of its own in the data dir when an HA service needs it.
    pub etcd: Option<Vec<String>>,
    /// This node (`--node-name`, where its API answers, `--node-timeout`).
    pub node: crate::nodes::NodeConfig,
    /// `--service-host`: a name that reaches every node, written in every URI instead of the
    /// node's public host.
    pub service_host: Option<String>,
    /// The key that wraps the secrets the nodes of a PostgreSQL store share
    /// (`PGBAY_CLUSTER_KEY`); required with a PostgreSQL store.
    pub cluster_key: Option<String>,
}

/// The backup repositories' root: pgbay's (0711), so that each service's user can reach its own
/// repository below it and list nothing.
fn prepare_backup_root(root: &std::path::Path) -> Result<(), ControlError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(root)
        .map_err(|e| ControlError::internal(format!("creating {}: {e}", root.display())))?;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| ControlError::internal(format!("chmod {}: {e}", root.display())))
}

/// The data dir may be traversed by the services' users (the clusters live below it) but not listed, and
/// the store holds the only copy of the state: make it readable by pgbay alone.
fn restrict_files(data_dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let set = |p: std::path::PathBuf, mode: u32| {
        if p.exists() {
            if let Err(e) = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)) {
                tracing::warn!(path = %p.display(), error = %e, "restricting permissions");
            }
        }
    };
    set(data_dir.to_path_buf(), 0o711);
    for f in ["pgbay.sqlite", "pgbay.sqlite-wal", "pgbay.sqlite-shm"] {
        set(data_dir.join(f), 0o600);
    }
}

pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) secrets: SecretBox,
    pub(crate) prov: LocalProvisioner,
    pub(crate) tls: TlsMaterial,
    pub(crate) cfg: ControlConfig,
    pub(crate) version: String,
    locks: StdMutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Services whose lock a background operation holds until it ends, and that operation
    /// (`busy_with`).
    busy: StdMutex<HashMap<String, uuid::Uuid>>,
    pub(crate) create_lock: Mutex<()>,
    desired_tx: watch::Sender<Arc<DesiredState>>,
    /// Held while publishing; holds the last `DesiredService::changed_at` given out.
    publish_lock: Mutex<u64>,
    pub(crate) data_plane: DataPlaneSlot,
    pub(crate) shutdown_tx: watch::Sender<bool>,
    pub(crate) metrics: crate::metrics::Metrics,
    pub(crate) logs: crate::logs::Logs,
    pub(crate) sizing: pgbay_cluster::sizing::Sizer,
    pub(crate) backups: crate::backups::BackupState,
    pub(crate) ha: crate::ha::HaState,
    pub(crate) replicas: crate::replicas::Replicas,
    pub(crate) nodes: crate::nodes::NodesState,
    /// Passwords opened for the desired state, by their sealed form.
    opened: StdMutex<HashMap<String, String>>,
    /// Services stored `running` whose pools the poolers do not serve yet: shown `rebuilding`
    /// until they do (see `Control::shown_state`).
    pub(crate) unserved: StdMutex<std::collections::HashSet<String>>,
}

pub(crate) fn locked<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The control plane. Cheap to clone.
#[derive(Clone)]
pub struct Control {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("data_dir", &self.inner.cfg.data_dir)
            .finish()
    }
}

impl Control {
    /// Opens the data dir (creating keys, CA and store on first start), brings every committed
    /// service's cluster up (adopting clusters that survived a crash), resumes interrupted
    /// operations and starts the supervisor.
    pub async fn start(cfg: ControlConfig) -> Result<Control, ControlError> {
        std::fs::create_dir_all(cfg.data_dir.join("services"))
            .map_err(|e| ControlError::internal(format!("creating data dir: {e}")))?;
        let prov = LocalProvisioner::new(
            cfg.pg_bin_dir.clone(),
            cfg.data_dir.join("services"),
            cfg.public_host.clone(),
        )
        .with_uid_range(cfg.service_uid_range);
        let prov = match pgbay_cluster::pgbackrest::program() {
            Some(_) => {
                let root = cfg
                    .backup_repo
                    .clone()
                    .unwrap_or_else(|| cfg.data_dir.join("backups"));
                prepare_backup_root(&root)?;
                let prov = prov.with_backup_root(root);
                match cfg.backup_s3.clone() {
                    Some(s3) => {
                        tracing::info!(endpoint = %s3.endpoint, bucket = %s3.bucket,
                            "backup repositories in an S3-compatible store");
                        prov.with_s3(s3)
                    }
                    None => prov,
                }
            }
            None => prov,
        };
        prov.ensure_traversable(&cfg.data_dir.join("services"))?;
        let version = prov.major_version()?;
        let store = match &cfg.store {
            Some(url) => Store::connect(url).await?,
            None => Store::open(&cfg.data_dir.join("pgbay.sqlite")).await?,
        };
        // A PostgreSQL store is shared by nodes: they share its secret key and CA too.
        if store.backend() == crate::store::Backend::Postgres {
            crate::shared::adopt_shared_keys(&store, &cfg).await?;
        }
        let secrets = SecretBox::load_or_create(&cfg.data_dir.join("secret.key"))?;
        // The certificate names the public host and, with --service-host, that name too (the
        // URIs name it: verify-full works through it).
        let tls = match &cfg.service_host {
            Some(h) => ca::issue_for_hosts(&cfg.data_dir, &[cfg.public_host.as_str(), h])?,
            None => ca::load_or_create(&cfg.data_dir, &cfg.public_host)?,
        };
        // etcd and Patroni's REST API serve pgbay's certificate; pgbay verifies it.
        pgbay_cluster::etcd::use_tls(&tls.ca_pem, &tls.server_cert_pem, &tls.server_key_pem)
            .map_err(ControlError::internal)?;
        restrict_files(&cfg.data_dir);
        let sizing = pgbay_cluster::sizing::Sizer::new(&cfg.data_dir);
        let (desired_tx, _) = watch::channel(Arc::new(DesiredState::default()));
        let (shutdown_tx, _) = watch::channel(false);
        let control = Control {
            inner: Arc::new(Inner {
                store,
                secrets,
                prov,
                tls,
                cfg,
                version,
                locks: StdMutex::new(HashMap::new()),
                busy: StdMutex::new(HashMap::new()),
                create_lock: Mutex::new(()),
                desired_tx,
                publish_lock: Mutex::new(0),
                data_plane: watch::channel(None).0,
                shutdown_tx,
                metrics: crate::metrics::Metrics::default(),
                logs: crate::logs::Logs::default(),
                sizing,
                backups: Default::default(),
                ha: Default::default(),
                replicas: Default::default(),
                nodes: Default::default(),
                opened: Default::default(),
                unserved: Default::default(),
            }),
        };
        control.register_node().await?;
        control.recover().await?;
        control.warm_sizing();
        let sup = control.clone();
        tokio::spawn(async move { sup.supervise().await });
        let sampler = control.clone();
        tokio::spawn(async move { sampler.sample_metrics().await });
        let scheduler = control.clone();
        tokio::spawn(async move { scheduler.run_backup_schedule().await });
        let follower = control.clone();
        tokio::spawn(async move { follower.follow_primaries().await });
        let nodes = control.clone();
        tokio::spawn(async move { nodes.follow_nodes().await });
        let recorder = control.clone();
        tokio::spawn(async move { recorder.record_applied().await });
        Ok(control)
    }

    /// The store (read access for tests and tools).
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The PostgreSQL major version served.
    pub fn pg_version(&self) -> &str {
        &self.inner.version
    }

    /// Host written into URIs.
    pub fn public_host(&self) -> &str {
        &self.inner.cfg.public_host
    }

    /// Whether other nodes may share this node's store (a PostgreSQL store): the pooler then
    /// reaches clusters of other nodes over TCP and must verify them with the CA.
    pub fn shared_store(&self) -> bool {
        self.inner.store.backend() == crate::store::Backend::Postgres
    }

    /// Zone reported for services.
    pub fn zone(&self) -> &str {
        &self.inner.cfg.zone
    }

    /// Whether the local cluster of service `name` is running right now.
    pub fn cluster_running(&self, name: &str) -> bool {
        if self.is_ha(name) {
            return self.ha_primary_port(name).is_some();
        }
        self.inner.prov.running_pid(name).is_some()
    }

    /// Whether the PostgreSQL server of `s` is up: its local cluster runs, or the external server
    /// accepts the admin login.
    pub async fn server_up(&self, s: &ServiceRecord) -> bool {
        if let Some(running) = self.provisioner(s).running(&s.name) {
            return running;
        }
        match self.admin_target(s).await {
            Ok(t) => admin::connect(&t, "postgres").await.is_ok(),
            Err(_) => false,
        }
    }

    /// The CA and server certificate.
    pub fn tls_material(&self) -> TlsMaterial {
        self.inner.tls.clone()
    }

    /// Follows the desired state of the data plane.
    pub fn desired_state(&self) -> watch::Receiver<Arc<DesiredState>> {
        self.inner.desired_tx.subscribe()
    }

    /// Records that operation `op` holds the lock of `service` in the background (a restart, a
    /// change of standbys) until the returned mark is dropped.
    pub(crate) fn mark_busy(&self, service: &str, op: uuid::Uuid) -> BusyMark {
        lock_std(&self.inner.busy).insert(service.to_string(), op);
        BusyMark {
            control: self.clone(),
            service: service.to_string(),
            op,
        }
    }

    /// The background operation holding the lock of `service`, if one does.
    pub(crate) fn busy_with(&self, service: &str) -> Option<uuid::Uuid> {
        lock_std(&self.inner.busy).get(service).copied()
    }

    /// The per-service lock that serializes mutations and cluster life-cycle of one service.
    pub(crate) fn service_lock(&self, name: &str) -> Arc<Mutex<()>> {
        let mut map = match self.inner.locks.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(name.to_string()).or_default().clone()
    }

    /// After a committed change that may concern every service (a start, a node's change):
    /// bumps the store's generation, tells the other nodes, and publishes the whole desired
    /// state as the store has it; returns its generation.
    pub(crate) async fn publish(&self) -> Result<u64, ControlError> {
        let mut stamp = self.inner.publish_lock.lock().await;
        let generation = self.inner.store.next_generation().await?;
        crate::nodes::notify_change(&self.inner.store, generation, None).await;
        self.publish_at(&mut stamp, generation as u64).await
    }

    /// After a committed change of one service (its pools, users, settings, state): bumps the
    /// generation, tells the other nodes which service changed, and publishes that change only:
    /// the service's rows are read again and its entry replaced, the others are kept as they
    /// are. When another node's change came in between (the new generation is not the next one
    /// after the published), everything is read again instead.
    pub(crate) async fn publish_of(&self, service: &str) -> Result<u64, ControlError> {
        let mut stamp = self.inner.publish_lock.lock().await;
        let generation = self.inner.store.next_generation().await?;
        crate::nodes::notify_change(&self.inner.store, generation, Some(service)).await;
        self.publish_change_at(&mut stamp, generation as u64, service)
            .await
    }

    /// Publishes the desired state as the store has it now, at the store's generation (a change
    /// made by another node, or a node that came or went).
    pub(crate) async fn republish(&self) -> Result<u64, ControlError> {
        let mut stamp = self.inner.publish_lock.lock().await;
        let generation = self.inner.store.generation().await? as u64;
        self.publish_at(&mut stamp, generation.max(self.published_generation()))
            .await
    }

    /// Another node's change of `service` at `generation`: published as that change when it is
    /// the next generation after the published one, ignored when already covered, else
    /// everything is read again.
    pub(crate) async fn republish_change(
        &self,
        generation: u64,
        service: &str,
    ) -> Result<u64, ControlError> {
        let mut stamp = self.inner.publish_lock.lock().await;
        let published = self.published_generation();
        if generation <= published {
            return Ok(published);
        }
        self.publish_change_at(&mut stamp, generation, service)
            .await
    }

    /// The generation last published on this node.
    pub(crate) fn published_generation(&self) -> u64 {
        self.inner.desired_tx.borrow().generation
    }

    /// Publishes the change of one service at `generation` (see `publish_of`); the caller holds
    /// the publish lock.
    async fn publish_change_at(
        &self,
        stamp: &mut u64,
        generation: u64,
        name: &str,
    ) -> Result<u64, ControlError> {
        let before = self.inner.desired_tx.borrow().clone();
        if generation != before.generation + 1 {
            return self.publish_at(stamp, generation).await;
        }
        let store = &self.inner.store;
        let entry = match store.service(name).await? {
            Some(s) => {
                let users = store.users(name).await?;
                let pools = store.pools(name).await?;
                let mut opened = locked(&self.inner.opened);
                let mut keep = HashMap::new();
                let built = self.desired_service(&s, users, pools, &mut opened, &mut keep)?;
                // The passwords of this service stay cached; stale ones go at the next full
                // publish.
                opened.extend(keep);
                built
            }
            None => None,
        };
        let mut services: Vec<Arc<DesiredService>> = before
            .services
            .iter()
            .filter(|d| d.name != name)
            .cloned()
            .collect();
        if let Some(mut d) = entry {
            match before.services.iter().find(|o| o.name == name) {
                Some(old) if old.same_as(&d) => services.push(old.clone()),
                _ => {
                    d.changed_at = next_stamp(stamp, generation);
                    services.push(Arc::new(d));
                }
            }
            services.sort_by(|a, b| a.name.cmp(&b.name));
        }
        self.inner.desired_tx.send_replace(Arc::new(DesiredState {
            generation,
            services,
        }));
        Ok(generation)
    }

    /// Reads every service, user and pool (three queries whatever the number of services) and
    /// publishes them at `generation`; an entry equal to the published one keeps its
    /// `changed_at`, so the data plane applies only what differs.
    async fn publish_at(&self, stamp: &mut u64, generation: u64) -> Result<u64, ControlError> {
        let before = self.inner.desired_tx.borrow().clone();
        let store = &self.inner.store;
        let mut users_of: HashMap<String, Vec<crate::model::UserRecord>> = HashMap::new();
        for (svc, u) in store.all_users().await? {
            users_of.entry(svc).or_default().push(u);
        }
        let mut pools_of: HashMap<String, Vec<crate::model::PoolRecord>> = HashMap::new();
        for (svc, p) in store.all_pools().await? {
            pools_of.entry(svc).or_default().push(p);
        }
        let all = store.services().await?;
        let mut services = Vec::new();
        // One stamp for the entries this publication changes.
        let mut changed = None;
        let mut opened = locked(&self.inner.opened);
        let mut still_used = HashMap::new();
        for s in all {
            let users = users_of.remove(&s.name).unwrap_or_default();
            let pools = pools_of.remove(&s.name).unwrap_or_default();
            let Some(mut d) =
                self.desired_service(&s, users, pools, &mut opened, &mut still_used)?
            else {
                continue;
            };
            match before.services.iter().find(|o| o.name == d.name) {
                Some(old) if old.same_as(&d) => services.push(old.clone()),
                _ => {
                    d.changed_at = *changed.get_or_insert_with(|| next_stamp(stamp, generation));
                    services.push(Arc::new(d));
                }
            }
        }
        // Each sealed password is opened once per process; the cache keeps only those in use.
        *opened = still_used;
        drop(opened);
        self.inner.desired_tx.send_replace(Arc::new(DesiredState {
            generation,
            services,
        }));
        Ok(generation)
    }

    /// What the data plane serves of `s` (None when it serves nothing of it: its cluster is not
    /// running, or lives on a dead node). Passwords come from `opened` (sealed form → plaintext)
    /// or are opened; each one used is put in `used`.
    fn desired_service(
        &self,
        s: &ServiceRecord,
        users: Vec<crate::model::UserRecord>,
        pools: Vec<crate::model::PoolRecord>,
        opened: &mut HashMap<String, String>,
        used: &mut HashMap<String, String>,
    ) -> Result<Option<DesiredService>, ControlError> {
        if s.state != ServiceState::Running {
            return Ok(None);
        }
        // A service of a dead node has no server to reach; another node's is reached over TCP
        // on that node's public host.
        let remote = match self.owner(s) {
            crate::nodes::Owner::Local => None,
            crate::nodes::Owner::Dead { .. } => return Ok(None),
            crate::nodes::Owner::Remote { node, .. } => match self.node(&node) {
                Some(n) => Some(n.public_host),
                None => return Ok(None),
            },
        };
        let mut desired_users = Vec::with_capacity(users.len());
        for u in users {
            let password = match opened.remove(&u.password_enc) {
                Some(p) => p,
                None => self.inner.secrets.open(&u.password_enc)?,
            };
            used.insert(u.password_enc.clone(), password.clone());
            desired_users.push(DesiredUser {
                admin: u.kind == UserKind::Primary,
                name: u.name,
                password,
            });
        }
        let pools = pools
            .into_iter()
            .map(|p| DesiredPool {
                name: p.name,
                database: p.database,
                username: p.username,
                mode: p.mode,
                size: p.size.get(),
            })
            .collect();
        let (backend_host, backend_port) = match &remote {
            // An HA service's own port forwards to its primary on its node.
            Some(host) => (host.clone(), s.pg_port),
            None => self.backend_addr(s),
        };
        Ok(Some(DesiredService {
            name: s.name.clone(),
            changed_at: 0,
            pooler_port: s.pooler_port,
            listen_host: self.inner.cfg.public_host.clone(),
            backend_host,
            backend_port,
            require_primary: self.is_ha(&s.name),
            unavailable_hold: if self.is_ha(&s.name) {
                crate::ha::FAILOVER_HOLD
            } else {
                Duration::ZERO
            },
            // The service's own port answers on every node: forwarded to its primary member (HA,
            // here) or to its node.
            forward: match &remote {
                Some(host) => Some(crate::desired::Forward {
                    listen_port: s.pg_port,
                    target_host: host.clone(),
                    target_port: s.pg_port,
                }),
                None => self
                    .ha_forward_port(&s.name)
                    .map(|to| crate::desired::Forward {
                        listen_port: s.pg_port,
                        target_host: "127.0.0.1".into(),
                        target_port: to,
                    }),
            },
            users: desired_users,
            pools,
            pgbouncer: s.pgbouncer.clone(),
            ip_filter: s.ip_filter.0.clone(),
        }))
    }

    /// The provisioner of the server of `s`: the external server it was created on, or this
    /// node's local clusters.
    pub(crate) fn provisioner(&self, s: &ServiceRecord) -> Arc<dyn Provisioner> {
        match &s.external_host {
            Some(h) => Arc::new(ExternalProvisioner::new(h.clone())),
            None => Arc::new(self.inner.prov.clone()),
        }
    }

    /// Where the pooler and admin sessions reach the server of `s`: the Unix-socket directory and
    /// port of a local cluster (its TCP port takes TLS only), of an HA service's current primary
    /// member, or the external server's host.
    pub(crate) fn backend_addr(&self, s: &ServiceRecord) -> (String, u16) {
        if let Some(addr) = self.ha_backend(s) {
            return addr;
        }
        (self.provisioner(s).backend_host(s.pg_port), s.pg_port)
    }

    /// The connection pgbay administers the server of `s` with: its internal superuser over the
    /// Unix socket on a local cluster; the operator's admin on an external server; the service's
    /// admin on a cluster made by an older pgbay (whose admin is its bootstrap superuser).
    pub(crate) async fn admin_target(
        &self,
        s: &ServiceRecord,
    ) -> Result<AdminTarget, ControlError> {
        if let Some(t) = self.internal_target(s).await? {
            return Ok(t);
        }
        self.primary_target(s).await
    }

    /// pgbay's internal superuser of the local cluster of `s`, if it has one (see migration 0006).
    pub(crate) async fn internal_target(
        &self,
        s: &ServiceRecord,
    ) -> Result<Option<AdminTarget>, ControlError> {
        if !self.provisioner(s).runs_server() {
            return Ok(None);
        }
        let Some(sealed) = self.inner.store.internal_password(&s.name).await? else {
            return Ok(None);
        };
        let (host, port) = self.backend_addr(s);
        Ok(Some(AdminTarget {
            host,
            port,
            user: admin::INTERNAL_ROLE.to_string(),
            password: self.inner.secrets.open(&sealed)?,
        }))
    }

    /// The service's primary (admin) user as a connection to its server.
    pub(crate) async fn primary_target(
        &self,
        s: &ServiceRecord,
    ) -> Result<AdminTarget, ControlError> {
        let users = self.inner.store.users(&s.name).await?;
        let admin = users
            .into_iter()
            .find(|u| u.kind == UserKind::Primary)
            .ok_or_else(|| {
                ControlError::internal(format!("service {} has no admin user", s.name))
            })?;
        let (host, port) = self.backend_addr(s);
        Ok(AdminTarget {
            host,
            port,
            user: admin.name,
            password: self.inner.secrets.open(&admin.password_enc)?,
        })
    }

    /// Starts (or adopts) the cluster of `s`, or checks that its external server lets pgbay in,
    /// off the async runtime.
    pub(crate) async fn start_cluster(&self, s: &ServiceRecord) -> Result<(), ControlError> {
        let t = self.admin_target(s).await?;
        if self.is_ha(&s.name) {
            return self.start_ha(s, &t.user, &t.password).await;
        }
        self.on_cluster(s, t, |prov, spec, tls| prov.bring_up(spec, tls))
            .await
    }

    /// Runs `work` on the provisioner of `s`, off the async runtime, with the cluster spec of `s`
    /// as stored (bootstrap superuser `t`).
    async fn on_cluster(
        &self,
        s: &ServiceRecord,
        t: AdminTarget,
        work: impl FnOnce(&dyn Provisioner, &ClusterSpec<'_>, &TlsMaterial) -> Result<(), ProvisionError>
            + Send
            + 'static,
    ) -> Result<(), ControlError> {
        let prov = self.provisioner(s);
        let tls = self.inner.tls.clone();
        let name = s.name.clone();
        let port = s.pg_port;
        let ip_filter = s.ip_filter.0.clone();
        let mut settings = crate::cluster_config::ClusterConfig::of(s).text();
        settings.push_str(&self.replica_settings(s).await?);
        let cipher = self.backup_cipher(&s.name).await?;
        let os_user = pgbay_cluster::os_users::name_for(&s.id);
        tokio::task::spawn_blocking(move || {
            let spec = ClusterSpec {
                name: &name,
                port,
                superuser: &t.user,
                superuser_password: &t.password,
                os_user: &os_user,
                ip_filter: &ip_filter,
                settings: &settings,
                backup_cipher: cipher.as_deref(),
            };
            work(prov.as_ref(), &spec, &tls)
        })
        .await??;
        Ok(())
    }

    /// Restarts the cluster of `s` with its configuration as stored in `s`.
    pub(crate) async fn restart_cluster(&self, s: &ServiceRecord) -> Result<(), ControlError> {
        if self.is_ha(&s.name) {
            return Err(ControlError::internal(format!(
                "restarting HA service {} is Patroni's (not built yet)",
                s.name
            )));
        }
        let t = self.admin_target(s).await?;
        self.on_cluster(s, t, |prov, spec, tls| prov.restart(spec, tls))
            .await
    }

    /// Stops the supervisor and every background task, leaving the clusters running: a
    /// successor process took over this node and adopts them.
    pub fn stop_background(&self) {
        self.inner.shutdown_tx.send_replace(true);
    }

    /// Stops every cluster (graceful shutdown of pgbay) and the supervisor.
    pub async fn shutdown(&self) {
        self.inner.shutdown_tx.send_replace(true);
        let names: Vec<String> = match self.own_services().await {
            Ok(s) => s.into_iter().map(|s| s.name).collect(),
            Err(e) => {
                tracing::error!(error = %e, "listing services at shutdown");
                self.inner.prov.present()
            }
        };
        for name in names {
            let lock = self.service_lock(&name);
            let _g = lock.lock().await;
            let prov = self.inner.prov.clone();
            let n = name.clone();
            match tokio::task::spawn_blocking(move || prov.stop(&n)).await {
                Ok(Ok(())) => tracing::info!(service = %name, "cluster stopped"),
                Ok(Err(e)) => tracing::error!(service = %name, error = %e, "stopping cluster"),
                Err(e) => tracing::error!(service = %name, error = %e, "stopping cluster"),
            }
        }
        self.stop_all_ha().await;
    }
}

/// The `changed_at` of an entry published now, at `generation`, after `last` was given out: the
/// generation itself when it is new, else the next number. A state published again at the same
/// generation (everything read again, an HA primary that moved) must not reuse a stamp the data
/// plane has already applied for the same service with other contents.
fn next_stamp(last: &mut u64, generation: u64) -> u64 {
    *last = generation.max(*last + 1);
    *last
}

/// A background operation's hold on its service (`Control::mark_busy`), released on drop (also
/// when the operation's task panics).
pub(crate) struct BusyMark {
    control: Control,
    service: String,
    op: uuid::Uuid,
}

impl Drop for BusyMark {
    fn drop(&mut self) {
        let mut busy = lock_std(&self.control.inner.busy);
        if busy.get(&self.service) == Some(&self.op) {
            busy.remove(&self.service);
        }
    }
}

fn lock_std<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

#[cfg(test)]
mod stamp_tests {
    use super::next_stamp;

    #[test]
    fn a_stamp_is_the_new_generation_or_else_never_one_given_before() {
        let mut last = 0;
        assert_eq!(next_stamp(&mut last, 5), 5);
        // Published again at generation 5 (an HA primary moved): not 5 again.
        assert_eq!(next_stamp(&mut last, 5), 6);
        // The next committed change, generation 6, cannot reuse 6 either.
        assert_eq!(next_stamp(&mut last, 6), 7);
        assert_eq!(next_stamp(&mut last, 9), 9);
    }
}
