//! The life cycle of clusters around the API: recovery at start (orphans removed, clusters started
//! or adopted, the server reconciled with the store, interrupted provisioning resumed), background
//! provisioning of new services, and the supervisor that restarts clusters that die.

use uuid::Uuid;

use crate::control::{Control, SUPERVISE_EVERY};
use crate::error::ControlError;
use crate::input::DEFAULT_DATABASE;
use crate::model::{OperationRecord, ServiceRecord, ServiceState, UserKind};
use crate::store;

impl Control {
    /// Start-up recovery: removes clusters of services that no longer exist (a delete that
    /// committed before a crash), starts every running service's cluster, and re-drives every
    /// service whose provisioning was interrupted.
    pub(crate) async fn recover(&self) -> Result<(), ControlError> {
        let all = self.inner.store.services().await?;
        let services: Vec<_> = all.iter().filter(|s| self.is_mine(s)).cloned().collect();
        self.load_ha(&services).await?;
        self.load_replicas().await?;
        self.load_backup_schedules().await?;
        for dir in self.inner.prov.present() {
            // A service rebuilt on another node while this one was lost: its old copy here
            // must not run (the store says where the service is).
            if all.iter().any(|s| s.name == dir && !self.is_mine(s)) {
                if self.inner.prov.running_pid(&dir).is_some() {
                    tracing::warn!(service = %dir, "stopping the old copy of a service now placed on another node");
                    let prov = self.inner.prov.clone();
                    tokio::task::spawn_blocking(move || prov.stop(&dir)).await??;
                }
                continue;
            }
            if !all.iter().any(|s| s.name == dir) {
                tracing::warn!(service = %dir, "removing cluster of a deleted service");
                let prov = self.inner.prov.clone();
                tokio::task::spawn_blocking(move || prov.remove(&dir)).await??;
            }
        }
        let pending = self.pending_at_start(&all).await?;
        for s in &services {
            match s.state {
                ServiceState::Running if self.data_lost(s) => {
                    if let Err(e) = self.begin_rebuild(s).await {
                        tracing::error!(service = %s.name, error = %e, "rebuilding");
                    }
                }
                ServiceState::Running => {
                    if let Err(e) = self.fail_interrupted_migration(&s.name).await {
                        tracing::error!(service = %s.name, error = %e, "reading migration");
                    }
                    if let Err(e) = self.start_cluster(s).await {
                        tracing::error!(service = %s.name, error = %e, "starting cluster");
                    } else if self.replica_of(&s.name).is_some() {
                        // A read replica's roles and databases are its source's.
                    } else if let Err(e) = self.reconcile(s).await {
                        tracing::error!(service = %s.name, error = %e, "reconciling cluster");
                    }
                }
                ServiceState::Rebuilding => {
                    tracing::info!(service = %s.name, "resuming interrupted provisioning");
                    self.spawn_provisioning(s.name.clone(), pending.provisioning_of(&s.name));
                }
            }
        }
        let generation = self.publish().await?;
        self.settle_after_restart(pending, generation);
        Ok(())
    }

    /// Makes the server match the store after a crash: every stored database exists and every
    /// stored user exists with its stored password. (Each mutation changes PostgreSQL before it
    /// commits, so a crash in between leaves the server one step ahead of the store; this undoes
    /// that step.) The admin of a cluster with pgbay's internal role is made a managed admin
    /// again with its committed password. On a server where pgbay logs in as the admin itself
    /// (external, or made by an older pgbay), if an admin password reset was cut short after
    /// PostgreSQL took the new password, pgbay gets back in with the pending one and restores
    /// the committed one.
    async fn reconcile(&self, s: &ServiceRecord) -> Result<(), ControlError> {
        use tokio_postgres::error::SqlState;
        let t = self.admin_target(s).await?;
        let users = self.inner.store.users(&s.name).await?;
        if self.internal_target(s).await?.is_some() {
            self.ensure_managed_admin(s, &t).await?;
        } else if let Err(e) = pgbay_cluster::admin::connect(&t, "postgres").await {
            if e.code() != Some(&SqlState::INVALID_PASSWORD) {
                return Err(ControlError::internal(e));
            }
            let pending = users
                .iter()
                .find(|u| u.kind == UserKind::Primary)
                .and_then(|u| u.pending_password_enc.as_deref())
                .ok_or_else(|| ControlError::internal("admin password rejected"))?;
            let via_pending = pgbay_cluster::admin::AdminTarget {
                password: self.inner.secrets.open(pending)?,
                ..t.clone()
            };
            tracing::warn!(service = %s.name, "admin password reset was interrupted; restoring the committed one");
            pgbay_cluster::admin::set_password(&via_pending, &t.user, &t.password)
                .await
                .map_err(ControlError::internal)?;
        }
        for db in self.inner.store.databases(&s.name).await? {
            pgbay_cluster::admin::create_database(&t, &db, &s.admin_username, None, None)
                .await
                .map_err(ControlError::internal)?;
        }
        for u in users {
            if u.kind == UserKind::Normal {
                let pw = self.inner.secrets.open(&u.password_enc)?;
                pgbay_cluster::admin::upsert_role(&t, &u.name, &pw, u.allow_replication)
                    .await
                    .map_err(ControlError::internal)?;
            }
        }
        Ok(())
    }

    /// Keeps the cluster of every running service alive.
    pub(crate) async fn supervise(&self) {
        let mut shutdown = self.inner.shutdown_tx.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SUPERVISE_EVERY) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let services = match self.own_services().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "supervisor: listing services");
                    continue;
                }
            };
            self.supervise_ha().await;
            self.supervise_replicas().await;
            for s in services.into_iter().filter(|s| {
                s.state == ServiceState::Running
                    && self.provisioner(s).runs_server()
                    && !self.is_ha(&s.name)
            }) {
                if *shutdown.borrow() {
                    return;
                }
                let lock = self.service_lock(&s.name);
                let Ok(_g) = lock.try_lock() else { continue };
                if self.inner.prov.running_pid(&s.name).is_some() {
                    continue;
                }
                // Re-read under the lock: the service may have been deleted meanwhile.
                match self.inner.store.service(&s.name).await {
                    Ok(Some(cur)) if cur.state == ServiceState::Running => {}
                    _ => continue,
                }
                if self.data_lost(&s) {
                    if let Err(e) = self.begin_rebuild(&s).await {
                        tracing::error!(service = %s.name, error = %e, "rebuilding");
                    }
                    continue;
                }
                tracing::warn!(service = %s.name, "cluster is not running; restarting it");
                if let Err(e) = self.start_cluster(&s).await {
                    tracing::error!(service = %s.name, error = %e, "restarting cluster");
                }
            }
        }
    }

    /// Whether the cluster of `s` lost its data directory and must be rebuilt from its backups.
    fn data_lost(&self, s: &ServiceRecord) -> bool {
        s.external_host.is_none() && !self.is_ha(&s.name) && !self.inner.prov.has_data(&s.name)
    }

    /// A running service whose data directory is gone: shown `rebuilding` while it is restored
    /// from its own backups and WAL (never `running` while its cluster cannot run), then
    /// provisioned again on the same ports.
    async fn begin_rebuild(&self, s: &ServiceRecord) -> Result<(), ControlError> {
        // A read replica holds no data of its own and has no backups: it is made again from its
        // source (`provision`), as when it was created.
        let replica = self.replica_of(&s.name).is_some();
        let rebuildable = replica || (self.backups_enabled() && self.has_backups(&s.name).await);
        // Never shown `running` while its cluster cannot run, backups or not.
        let mut cur = s.clone();
        cur.state = ServiceState::Rebuilding;
        cur.updated_at = chrono::Utc::now();
        let mut tx = self.inner.store.begin().await?;
        store::update_service(&mut tx, &cur).await?;
        tx.commit().await?;
        if !rebuildable {
            tracing::error!(service = %s.name,
                "the cluster's data directory is gone and there is no backup to rebuild it from");
            return Ok(());
        }
        if replica {
            tracing::warn!(service = %s.name,
                "the read replica's data directory is gone: making it again from its source");
        } else {
            tracing::warn!(service = %s.name,
                "the cluster's data directory is gone: rebuilding it from its backups");
        }
        let prov = self.inner.prov.clone();
        let name = s.name.clone();
        tokio::task::spawn_blocking(move || prov.forget_initialized(&name)).await??;
        self.spawn_provisioning(s.name.clone(), None);
        Ok(())
    }

    /// Background provisioning of a service (idempotent: safe to re-run after any interruption).
    pub(crate) fn spawn_provisioning(&self, name: String, op: Option<Uuid>) {
        let c = self.clone();
        let span = tracing::info_span!("provision", service = %name);
        let task = async move {
            if let Err(e) = c.provision(&name, op).await {
                tracing::error!(service = %name, error = %e, "provisioning failed");
                if let Some(id) = op {
                    let msg = format!("provisioning of service {name} failed");
                    if let Err(e) = c.fail_operation(id, "fault", &msg).await {
                        tracing::error!(error = %e, "recording provisioning failure");
                    }
                }
            }
        };
        tokio::spawn(tracing::Instrument::instrument(task, span));
    }

    /// Makes (or resets) the service's admin on its cluster as a managed admin, not a superuser,
    /// with its committed password, through pgbay's internal superuser `t`.
    async fn ensure_managed_admin(
        &self,
        s: &ServiceRecord,
        t: &pgbay_cluster::admin::AdminTarget,
    ) -> Result<(), ControlError> {
        let admin = self.primary_target(s).await?;
        pgbay_cluster::admin::ensure_managed_admin(t, &admin.user, &admin.password)
            .await
            .map_err(|e| ControlError::from_admin(e, "making the admin user"))
    }

    /// Gives a service whose cluster is still to be made a password for pgbay's internal
    /// superuser (initdb's bootstrap user). A cluster that exists without one was made by an
    /// older pgbay with the admin as its bootstrap superuser, and stays so.
    async fn ensure_internal_password(&self, s: &ServiceRecord) -> Result<(), ControlError> {
        if !self.provisioner(s).runs_server()
            || self.inner.prov.is_initialized(&s.name)
            || self.inner.store.internal_password(&s.name).await?.is_some()
        {
            return Ok(());
        }
        let sealed = self
            .inner
            .secrets
            .seal(crate::input::Password::generate().as_str());
        let mut tx = self.inner.store.begin().await?;
        store::insert_internal_password(&mut tx, &s.name, &sealed).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn provision(&self, name: &str, op: Option<Uuid>) -> Result<(), ControlError> {
        let lock = self.service_lock(name);
        let _g = lock.lock().await;
        let Some(mut s) = self.inner.store.service(name).await? else {
            return Ok(()); // deleted meanwhile
        };
        self.ensure_internal_password(&s).await?;
        let replica = self.replica_of(name);
        if !self.inner.prov.is_initialized(name) && replica.is_some() {
            if let Some(r) = &replica {
                self.make_replica(&s, r).await?;
            }
        } else if !self.inner.prov.is_initialized(name) {
            match self.inner.store.fork_of(name).await? {
                Some(fork) => self.restore_fork(&s, fork).await?,
                // A service rebuilt from its own backups (its data directory was lost).
                None if self.has_backups(name).await => {
                    let own = crate::store::Fork {
                        source: name.to_string(),
                        target_time: None,
                        backup_set: None,
                    };
                    self.restore_fork(&s, own).await?;
                }
                None => {}
            }
        }
        self.start_cluster(&s).await?;
        // A read replica has its source's roles and databases (and cannot write).
        if replica.is_none() {
            let t = self.admin_target(&s).await?;
            if self.internal_target(&s).await?.is_some() {
                self.ensure_managed_admin(&s, &t).await?;
            }
            if self.is_ha(name) {
                self.ensure_ha_roles(&s, &t).await?;
            }
            pgbay_cluster::admin::create_database(
                &t,
                DEFAULT_DATABASE,
                &s.admin_username,
                None,
                None,
            )
            .await
            .map_err(|e| ControlError::from_admin(e, "creating defaultdb"))?;
        }
        // A fork into a plan with standbys was restored as one cluster: it is handed to Patroni
        // now and gets its standbys before it counts as created.
        if let Some(nodes) = self.fork_to_ha(&s).await? {
            self.resize_ha(&s, &s, nodes, None).await?;
            tracing::info!(service = %name, nodes, "fork handed to Patroni with its standbys");
        }
        // Stored `running` (so that it is published), shown `rebuilding` until served.
        let _unserved = Unserved::mark(self, name);
        s.state = ServiceState::Running;
        s.updated_at = chrono::Utc::now();
        let mut tx = self.inner.store.begin().await?;
        store::update_service(&mut tx, &s).await?;
        tx.commit().await?;
        tracing::info!(service = %name, port = s.pg_port, "service running");
        self.spawn_first_backup(name);
        self.spawn_migration(name.to_string());
        let rec = match op {
            Some(id) => self.inner.store.operation(id).await?,
            None => None,
        };
        let Some(rec) = rec else {
            let generation = self.publish_of(name).await?;
            self.wait_served(generation, name).await;
            return Ok(());
        };
        // The operation succeeds only once the pooler serves the new service (if one is attached).
        let created = OperationRecord {
            message: format!("service {name} created"),
            ..rec
        };
        self.publish_and_settle(created).await?;
        Ok(())
    }
}

/// A service shown `rebuilding` while this lives (see `Control::shown_state`): from before it is
/// stored `running` until its publication has been answered, or provisioning failed.
struct Unserved {
    control: Control,
    name: String,
}

impl Unserved {
    fn mark(control: &Control, name: &str) -> Unserved {
        crate::control::locked(&control.inner.unserved).insert(name.to_string());
        Unserved {
            control: control.clone(),
            name: name.to_string(),
        }
    }
}

impl Drop for Unserved {
    fn drop(&mut self) {
        crate::control::locked(&self.control.inner.unserved).remove(&self.name);
    }
}
