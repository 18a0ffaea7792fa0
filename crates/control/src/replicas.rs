//! Read replicas (issue 19): a service created with `integrations: [{type: read_replica,
//! source-service: X}]` is a physical streaming replica of X — pg_basebackup of X as a
//! replication role of its own on X, then a hot standby of X's own port (on an HA source,
//! pgbay's forwarder to its primary, so the replica follows X across a failover). It has X's
//! databases and users (a physical copy): the API refuses to change them on the replica. Deleting
//! the integration promotes the replica to a standalone service.

use std::sync::Mutex as StdMutex;

use pgbay_cluster::admin;
use pgbay_cluster::provision::replica::{self, ReplicaSource};
use pgbay_cluster::provision::ClusterSpec;
use uuid::Uuid;

use crate::control::Control;
use crate::error::ControlError;
use crate::input::{InputError, ServiceName};
use crate::model::{OperationRecord, ServiceRecord, ServiceState};
use crate::operations::OperationKind;
use crate::store::{self, ReplicaRecord};

/// What a create's read replica source is refused as.
pub(crate) const FIELD: crate::input::Subject = crate::input::Subject::ReplicaSource;

/// The read replicas, as the store has them (kept in step with it), and since when each local
/// one has been found not streaming from a source on a newer timeline (`supervise_replicas`).
#[derive(Default)]
pub(crate) struct Replicas(
    StdMutex<Vec<ReplicaRecord>>,
    StdMutex<std::collections::HashMap<String, std::time::Instant>>,
);

/// How long a replica may stay behind a source's new timeline without streaming before it is
/// made again from the source: long enough for a replica that can follow the switch to do so.
const DIVERGED_FOR: std::time::Duration = std::time::Duration::from_secs(10);

impl Replicas {
    fn all(&self) -> std::sync::MutexGuard<'_, Vec<ReplicaRecord>> {
        crate::control::locked(&self.0)
    }

    fn diverged(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, std::time::Instant>> {
        crate::control::locked(&self.1)
    }
}

impl Control {
    /// Loads the read replicas from the store (at start).
    pub(crate) async fn load_replicas(&self) -> Result<(), ControlError> {
        *self.inner.replicas.all() = self.inner.store.read_replicas().await?;
        Ok(())
    }

    /// The integration that makes `name` a read replica, if it is one.
    pub fn replica_of(&self, name: &str) -> Option<ReplicaRecord> {
        self.inner
            .replicas
            .all()
            .iter()
            .find(|r| r.service == name)
            .cloned()
    }

    /// The read_replica integrations `name` is the source or the destination of.
    pub fn integrations_of(&self, name: &str) -> Vec<ReplicaRecord> {
        self.inner
            .replicas
            .all()
            .iter()
            .filter(|r| r.service == name || r.source == name)
            .cloned()
            .collect()
    }

    /// The read replicas of `name` (their service names): the store keeps a copy of `name`'s
    /// users and databases for each, updated as they are made or changed on `name`.
    pub(crate) fn replicas_from(&self, name: &str) -> Vec<String> {
        self.inner
            .replicas
            .all()
            .iter()
            .filter(|r| r.source == name)
            .map(|r| r.service.clone())
            .collect()
    }

    /// The integration `id`.
    pub fn integration(&self, id: &str) -> Result<ReplicaRecord, ControlError> {
        let found = id.parse::<Uuid>().ok().and_then(|id| {
            self.inner
                .replicas
                .all()
                .iter()
                .find(|r| r.id == id)
                .cloned()
        });
        found.ok_or_else(|| ControlError::NotFound(format!("no integration {id}")))
    }

    /// A replica's databases and users are its source's: refused on it.
    pub(crate) fn refuse_on_replica(&self, s: &ServiceRecord) -> Result<(), ControlError> {
        match self.replica_of(&s.name) {
            Some(r) => Err(ControlError::Conflict(format!(
                "service {} is a read replica of {}: its databases and users are {}'s (change \
                 them there)",
                s.name, r.source, r.source
            ))),
            None => Ok(()),
        }
    }

    /// A service with read replicas cannot go before them.
    pub(crate) fn refuse_delete_with_replicas(
        &self,
        s: &ServiceRecord,
    ) -> Result<(), ControlError> {
        let names: Vec<String> = self
            .integrations_of(&s.name)
            .into_iter()
            .filter(|r| r.source == s.name)
            .map(|r| r.service)
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        Err(ControlError::Conflict(format!(
            "service {} has read replicas ({}): delete them, or their integrations, first",
            s.name,
            names.join(", ")
        )))
    }

    /// Checks a read replica's source at create: a running local single-cluster or HA service
    /// that is not itself a replica.
    pub(crate) async fn check_replica_source(
        &self,
        source: &ServiceName,
    ) -> Result<ServiceRecord, ControlError> {
        if self.inner.cfg.external.is_some() {
            return Err(InputError::of(FIELD, "not served with an external server").into());
        }
        let Some(src) = self.inner.store.service(source.as_str()).await? else {
            return Err(InputError::of(FIELD, format!("no service named {source}")).into());
        };
        if src.state != ServiceState::Running || !self.cluster_running(&src.name) {
            return Err(InputError::of(FIELD, format!("{source} is not running")).into());
        }
        if self.replica_of(&src.name).is_some() {
            return Err(InputError::of(FIELD, format!("{source} is itself a read replica")).into());
        }
        Ok(src)
    }

    /// The replica record a new service `name` of `source` is created with.
    pub(crate) fn new_replica(&self, name: &str, source: &str) -> ReplicaRecord {
        ReplicaRecord {
            id: Uuid::new_v4(),
            service: name.to_string(),
            source: source.to_string(),
            replication_password_enc: self
                .inner
                .secrets
                .seal(crate::input::Password::generate().as_str()),
            created_at: chrono::Utc::now(),
        }
    }

    /// Remembers a committed read replica.
    pub(crate) fn remember_replica(&self, r: ReplicaRecord) {
        self.inner.replicas.all().push(r);
    }

    fn forget_replica(&self, name: &str) {
        self.inner.replicas.all().retain(|r| r.service != name);
    }

    /// What a replica's cluster settings add: where it streams from.
    pub(crate) async fn replica_settings(&self, s: &ServiceRecord) -> Result<String, ControlError> {
        let Some(r) = self.replica_of(&s.name) else {
            return Ok(String::new());
        };
        let src = self.replica_source_addr(&r).await?;
        let password = String::new();
        let loopback = pgbay_cluster::provision::local::loopback_for(&self.inner.cfg.public_host);
        let conninfo = replica::primary_conninfo(
            &self.inner.prov,
            &s.name,
            &ReplicaSource {
                host: &loopback,
                port: src,
                role: &r.role(),
                password: &password,
            },
        );
        Ok(format!(
            "# a read replica of {}\nprimary_conninfo = '{}'\nhot_standby = on\n",
            r.source,
            conninfo.replace('\'', "''")
        ))
    }

    /// The port the replica reaches its source on (the source's own port).
    async fn replica_source_addr(&self, r: &ReplicaRecord) -> Result<u16, ControlError> {
        let src = self
            .inner
            .store
            .service(&r.source)
            .await?
            .ok_or_else(|| ControlError::internal(format!("source {} is gone", r.source)))?;
        Ok(src.pg_port)
    }

    /// Makes the cluster of replica `s`: its replication role on the source, then a base
    /// backup of the source.
    pub(crate) async fn make_replica(
        &self,
        s: &ServiceRecord,
        r: &ReplicaRecord,
    ) -> Result<(), ControlError> {
        let src = self
            .inner
            .store
            .service(&r.source)
            .await?
            .ok_or_else(|| ControlError::internal(format!("source {} is gone", r.source)))?;
        let password = self.inner.secrets.open(&r.replication_password_enc)?;
        let t = self.admin_target(&src).await?;
        admin::ensure_replication_role(&t, &r.role(), &password)
            .await
            .map_err(|e| ControlError::from_admin(e, "making the replica's role"))?;
        if !self.is_ha(&src.name) {
            // A source started before pg_hba.conf had its replication line.
            self.apply_hba(&src).await?;
        }
        let own = self.admin_target(s).await?;
        let prov = self.inner.prov.clone();
        let tls = self.inner.tls.clone();
        let (name, role, port) = (s.name.clone(), r.role(), src.pg_port);
        let os_user = pgbay_cluster::os_users::name_for(&s.id);
        let ip_filter = s.ip_filter.0.clone();
        let loopback = pgbay_cluster::provision::local::loopback_for(&self.inner.cfg.public_host);
        tokio::task::spawn_blocking(move || {
            let spec = ClusterSpec {
                name: &name,
                port,
                superuser: &own.user,
                superuser_password: &own.password,
                os_user: &os_user,
                ip_filter: &ip_filter,
                settings: "",
                backup_cipher: None,
            };
            prov.make_replica(
                &spec,
                &ReplicaSource {
                    host: &loopback,
                    port,
                    role: &role,
                    password: &password,
                },
                &tls,
            )
        })
        .await??;
        tracing::info!(service = %s.name, source = %r.source, "read replica made");
        Ok(())
    }

    /// Whether replica `r` (running, local) has been left behind by its source: it does not
    /// stream while the source's primary writes a newer timeline. That happens when a failover
    /// promoted a standby the replica was ahead of (asynchronous replication: the old primary's
    /// last WAL reached the replica, not the standby); PostgreSQL then cannot follow the new
    /// timeline, and waits for good.
    async fn left_behind(&self, s: &ServiceRecord, r: &ReplicaRecord) -> bool {
        // Only a source with standbys changes timeline; a streaming replica is not behind,
        // and the source is asked only about one that is not streaming.
        if !self.is_ha(&r.source) {
            return false;
        }
        let Ok(own) = self.admin_target(s).await else {
            return false;
        };
        let Ok(mine) = admin::wal_timeline(&own).await else {
            return false;
        };
        if !mine.in_recovery || mine.streaming {
            return false;
        }
        let Ok(Some(src)) = self.inner.store.service(&r.source).await else {
            return false;
        };
        let Ok(source) = self.admin_target(&src).await else {
            return false;
        };
        let Ok(theirs) = admin::wal_timeline(&source).await else {
            return false;
        };
        !theirs.in_recovery && theirs.timeline > mine.timeline
    }

    /// Remakes the local read replicas their source left behind (see `left_behind`) for
    /// `DIVERGED_FOR`: a replica holds no data of its own, so it is made again from the
    /// source's new primary (pg_basebackup), on the same port. Called by the supervisor.
    pub(crate) async fn supervise_replicas(&self) {
        let mine: Vec<ReplicaRecord> = self.inner.replicas.all().clone();
        // Replicas deleted or moved away meanwhile are forgotten.
        self.inner
            .replicas
            .diverged()
            .retain(|name, _| mine.iter().any(|r| &r.service == name));
        for r in mine {
            let Ok(Some(s)) = self.inner.store.service(&r.service).await else {
                continue;
            };
            if s.state != ServiceState::Running
                || !self.is_mine(&s)
                || self.inner.prov.running_pid(&s.name).is_none()
            {
                continue;
            }
            if !self.left_behind(&s, &r).await {
                self.inner.replicas.diverged().remove(&s.name);
                continue;
            }
            let since = *self
                .inner
                .replicas
                .diverged()
                .entry(s.name.clone())
                .or_insert_with(std::time::Instant::now);
            if since.elapsed() < DIVERGED_FOR {
                continue;
            }
            let lock = self.service_lock(&s.name);
            let Ok(_g) = lock.try_lock() else { continue };
            tracing::warn!(service = %s.name, source = %r.source,
                "read replica left behind by its source's new timeline; making it again");
            let prov = self.inner.prov.clone();
            let name = s.name.clone();
            let remade = async {
                tokio::task::spawn_blocking(move || prov.stop(&name)).await??;
                self.make_replica(&s, &r).await?;
                self.start_cluster(&s).await
            }
            .await;
            self.inner.replicas.diverged().remove(&s.name);
            if let Err(e) = remade {
                tracing::error!(service = %s.name, error = %e, "making the read replica again");
            }
        }
    }

    /// Drops a replica's role on its source (best effort: the source may be gone).
    async fn drop_replica_role(&self, r: &ReplicaRecord) {
        let Ok(Some(src)) = self.inner.store.service(&r.source).await else {
            return;
        };
        match self.admin_target(&src).await {
            Ok(t) => {
                if let Err(e) = admin::drop_role_if_exists(&t, &r.role()).await {
                    tracing::warn!(source = %r.source, error = %e, "dropping a replica's role");
                }
            }
            Err(e) => tracing::warn!(source = %r.source, error = %e, "dropping a replica's role"),
        }
    }

    /// After the replica `name` was deleted: its role on the source goes.
    pub(crate) async fn forget_deleted_replica(&self, name: &str) {
        if let Some(r) = self.replica_of(name) {
            self.forget_replica(name);
            self.drop_replica_role(&r).await;
        }
    }

    /// `POST /dbaas-integration` of type read_replica: makes `dest`, a service that holds no data
    /// yet (only its admin and `defaultdb`, no table, no pool), a read replica of `source`.
    pub async fn create_read_replica_integration(
        &self,
        source: &ServiceName,
        dest: &ServiceName,
    ) -> Result<OperationRecord, ControlError> {
        const DEST: crate::input::Subject = crate::input::Subject::IntegrationDest;
        if source == dest {
            return Err(InputError::of(DEST, "must differ from the source service").into());
        }
        let src = self
            .check_replica_source(source)
            .await
            .map_err(|e| match e {
                ControlError::Invalid(i) => ControlError::Invalid(InputError::of(
                    crate::input::Subject::IntegrationSource,
                    i.detail,
                )),
                other => other,
            })?;
        let (g, s) = self.lock_running(dest).await?;
        let refuse = |why: String| -> ControlError { InputError::of(DEST, why).into() };
        if s.external_host.is_some() || self.is_ha(&s.name) {
            return Err(refuse(format!(
                "{dest} must run one node (a read replica runs one)"
            )));
        }
        if self.replica_of(&s.name).is_some() {
            return Err(refuse(format!("{dest} is already a read replica")));
        }
        if !self.integrations_of(&s.name).is_empty() {
            return Err(refuse(format!("{dest} has read replicas of its own")));
        }
        let dbs = self.inner.store.databases(&s.name).await?;
        let users = self.inner.store.users(&s.name).await?;
        let pools = self.inner.store.pools(&s.name).await?;
        if dbs != [crate::input::DEFAULT_DATABASE] || users.len() != 1 || !pools.is_empty() {
            return Err(refuse(format!(
                "{dest} holds databases, users or pools of its own: a read replica replaces \
                 them; create a new service with `integrations` instead"
            )));
        }
        let t = self.admin_target(&s).await?;
        let tables = admin::user_table_count(&t, crate::input::DEFAULT_DATABASE)
            .await
            .map_err(ControlError::internal)?;
        if tables > 0 {
            return Err(refuse(format!(
                "{dest} holds {tables} table(s) in defaultdb: a read replica replaces them"
            )));
        }
        let r = self.new_replica(&s.name, &src.name);
        let prov = self.inner.prov.clone();
        let n = s.name.clone();
        tokio::task::spawn_blocking(move || prov.discard_for_replica(&n)).await??;
        let mut tx = self.inner.store.begin().await?;
        store::replace_with_copy_of(&mut tx, &s.name, &src.name, &src.admin_username).await?;
        store::insert_replica(&mut tx, &r).await?;
        let op = self
            .record_operation(
                tx,
                &s,
                OperationKind::CreateService,
                format!("service {} becoming a read replica of {}", s.name, src.name),
            )
            .await?;
        self.remember_replica(r);
        self.forget_backups(&s.name);
        drop(g);
        self.publish_of(&s.name).await?;
        self.spawn_provisioning(s.name.clone(), Some(op.id));
        Ok(op)
    }

    /// `DELETE /dbaas-integration/{id}`: promotes the replica to a standalone service.
    pub async fn delete_integration(&self, id: &str) -> Result<OperationRecord, ControlError> {
        let r = self.integration(id)?;
        let name = ServiceName::parse("service", &r.service)?;
        let (_g, s) = self.lock_running(&name).await?;
        let prov = self.inner.prov.clone();
        let n = s.name.clone();
        tokio::task::spawn_blocking(move || prov.promote(&n)).await??;
        let mut tx = self.inner.store.begin().await?;
        store::delete_replica(&mut tx, &s.name).await?;
        let op = self
            .record_operation(
                tx,
                &s,
                OperationKind::UpdateService,
                format!(
                    "service {} promoted: it no longer replicates {}",
                    s.name, r.source
                ),
            )
            .await?;
        self.forget_replica(&s.name);
        self.drop_replica_role(&r).await;
        self.spawn_first_backup(&s.name);
        tracing::info!(service = %s.name, source = %r.source, "read replica promoted");
        self.settle(op).await
    }
}
