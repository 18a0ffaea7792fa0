//! Service life cycle: create (asynchronous provisioning), read, update, delete.

use std::collections::HashSet;

use chrono::Utc;
use tokio::sync::OwnedMutexGuard;
use uuid::Uuid;

use crate::commands::{NewService, ServiceUpdate};
use crate::control::Control;
use crate::error::ControlError;
use crate::input::{
    AdminUsername, InputError, IpFilter, Password, ServiceName, Subject, DEFAULT_DATABASE,
};
use crate::model::{
    OpState, OperationRecord, PoolRecord, ServiceRecord, ServiceState, UserKind, UserRecord,
};
use crate::operations::{operation_about, OperationKind};
use crate::store;

/// A user as the API shows it (password decrypted).
#[derive(Debug, Clone, PartialEq)]
pub struct UserView {
    /// Role name.
    pub name: String,
    /// Primary or normal.
    pub kind: UserKind,
    /// Plaintext password.
    pub password: String,
    /// The user chose the password (the document omits it from listings then).
    pub password_overridden: bool,
    /// Role has REPLICATION.
    pub allow_replication: bool,
}

/// Everything `GET /dbaas-postgres/{name}` shows.
#[derive(Debug, Clone)]
pub struct ServiceView {
    /// The service row.
    pub service: ServiceRecord,
    /// Database names.
    pub databases: Vec<String>,
    /// Users, primary first.
    pub users: Vec<UserView>,
    /// Pools.
    pub pools: Vec<PoolRecord>,
}

impl ServiceView {
    /// The admin user.
    pub fn admin(&self) -> Option<&UserView> {
        self.users.iter().find(|u| u.kind == UserKind::Primary)
    }
}

/// A 400 naming `admin-username` or `admin-password` when the request sets one where the admin
/// is not the request's to choose (`why`).
fn refuse_admin_fields(
    new: &NewService,
    why: impl Fn(Subject) -> InputError,
) -> Result<(), InputError> {
    let given = [
        (Subject::AdminUsername, new.admin_username.is_some()),
        (Subject::AdminPassword, new.admin_password.is_some()),
    ];
    match given.into_iter().find(|(_, set)| *set) {
        Some((subject, _)) => Err(why(subject)),
        None => Ok(()),
    }
}

/// The catalogue's plan of a well-formed plan name, or a 400 naming `plan`.
/// `synchronous-replication` and `pglookout-settings` mean something only with standbys.
fn refuse_ha_fields(
    synchronous: Option<bool>,
    lag: Option<i64>,
    plan: &str,
) -> Result<(), InputError> {
    let why = format!("needs a plan with standbys (business or premium), not {plan}");
    if synchronous == Some(true) {
        return Err(InputError::of(Subject::SynchronousReplication, why));
    }
    if lag.is_some() {
        return Err(InputError::of(Subject::MaxFailoverLag, why));
    }
    Ok(())
}

fn known_plan(p: crate::input::Plan) -> Result<&'static crate::plans::PlanSpec, InputError> {
    crate::plans::lookup(p.as_str()).ok_or_else(|| {
        let names: Vec<&str> = crate::plans::all().map(|p| p.name).collect();
        InputError::of(
            Subject::Plan,
            format!(
                "unknown plan {:?}, must be one of {}",
                p.as_str(),
                names.join(", ")
            ),
        )
    })
}

impl Control {
    fn check_version(asked: Option<&str>, available: &str) -> Result<(), InputError> {
        if let Some(v) = asked {
            if v != available {
                return Err(InputError::of(
                    Subject::Version,
                    format!("only PostgreSQL {available} is available here, got {v:?}"),
                ));
            }
        }
        Ok(())
    }

    /// Reads a service or answers 404.
    pub(crate) async fn existing(&self, name: &ServiceName) -> Result<ServiceRecord, ControlError> {
        self.inner
            .store
            .service(name.as_str())
            .await?
            .ok_or_else(|| ControlError::NotFound(format!("service {name} not found")))
    }

    /// Takes the service's lock (serializing its mutations) and reads it, or 404.
    ///
    /// A request does not wait for a background operation that holds the lock until it ends (a
    /// restart, a change of standbys: up to minutes): it gets 409 naming that operation.
    pub(crate) async fn lock_existing(
        &self,
        name: &ServiceName,
    ) -> Result<(OwnedMutexGuard<()>, ServiceRecord), ControlError> {
        if let Some(op) = self.busy_with(name.as_str()) {
            return Err(ControlError::Conflict(format!(
                "service {name} is being changed by operation {op}; try again once \
                 GET /v2/operation/{op} is no longer pending"
            )));
        }
        self.lock_existing_waiting(name).await
    }

    /// [`Self::lock_existing`] that waits for any operation holding the lock (pgbay's own
    /// background work, never a request).
    pub(crate) async fn lock_existing_waiting(
        &self,
        name: &ServiceName,
    ) -> Result<(OwnedMutexGuard<()>, ServiceRecord), ControlError> {
        let guard = self.service_lock(name.as_str()).lock_owned().await;
        Ok((guard, self.existing(name).await?))
    }

    /// [`Self::lock_existing`] for a running service, or 409 while it is being provisioned.
    pub(crate) async fn lock_running(
        &self,
        name: &ServiceName,
    ) -> Result<(OwnedMutexGuard<()>, ServiceRecord), ControlError> {
        let (guard, s) = self.lock_existing(name).await?;
        if s.state != ServiceState::Running {
            return Err(ControlError::Conflict(format!(
                "service {name} is still being provisioned"
            )));
        }
        Ok((guard, s))
    }

    /// `POST /dbaas-postgres/{name}`: records the service and provisions it in the background.
    pub async fn create_service(
        &self,
        name: &ServiceName,
        new: NewService,
    ) -> Result<OperationRecord, ControlError> {
        let external = self.inner.cfg.external.clone();
        if external.is_some() {
            refuse_admin_fields(&new, |s| {
                InputError::of(
                    s,
                    "cannot be set: services use the admin of the external server",
                )
            })?;
            if new.migration.is_some() {
                return Err(InputError::of(
                    Subject::Migration,
                    "cannot be set: services on an external server are not migrated into",
                )
                .into());
            }
            Self::refuse_config_on_external(
                new.pg_settings.is_some(),
                new.work_mem.is_some(),
                new.shared_buffers_percentage.is_some(),
            )?;
        }
        let version = match &external {
            Some(e) => e
                .major_version()
                .await
                .map_err(|e| ControlError::internal(format!("external server: {e}")))?,
            None => self.inner.version.clone(),
        };
        Self::check_version(new.version.as_deref(), &version)?;
        if new.recovery_time.is_some() && new.fork_from.is_none() {
            return Err(InputError::naming(
                Subject::RecoveryTime,
                Subject::ForkSource,
                "is only accepted with {other}",
            )
            .into());
        }
        let fork = match &new.fork_from {
            Some(source) => {
                refuse_admin_fields(&new, |s| {
                    InputError::naming(
                        s,
                        Subject::ForkSource,
                        "cannot be set with {other}: a fork has its source's users",
                    )
                })?;
                if new.migration.is_some() {
                    return Err(InputError::naming(
                        Subject::Migration,
                        Subject::ForkSource,
                        "cannot be set with {other}: a fork has its source's data",
                    )
                    .into());
                }
                Some(self.check_fork(source, new.recovery_time).await?)
            }
            None => None,
        };
        let replica_src = match &new.read_replica_of {
            Some(source) => {
                refuse_admin_fields(&new, |s| {
                    InputError::of(
                        s,
                        "cannot be set with a read replica: it has its source's users",
                    )
                })?;
                if new.migration.is_some() || fork.is_some() {
                    return Err(InputError::of(
                        Subject::ReplicaSource,
                        "a read replica cannot also be a fork or a migration target",
                    )
                    .into());
                }
                Some(self.check_replica_source(source).await?)
            }
            None => None,
        };
        let plan = new.plan;
        let admin = new
            .admin_username
            .unwrap_or_else(AdminUsername::default_admin);
        let password = new.admin_password;
        let pgbouncer = new.pgbouncer.unwrap_or_default();
        let ip_filter = new.ip_filter.unwrap_or_else(IpFilter::allow_all);
        let protection = new.termination_protection.unwrap_or(false);

        let _create = self.inner.create_lock.lock().await;
        let _ports = self.inner.store.port_lock().await?;
        let lock = self.service_lock(name.as_str());
        let _g = lock.lock().await;
        if self.inner.store.service(name.as_str()).await?.is_some() {
            return Err(ControlError::Conflict(format!(
                "service {name} already exists"
            )));
        }
        if let Some(other) = self
            .inner
            .store
            .services()
            .await?
            .into_iter()
            .find(|o| o.external_host.is_some())
        {
            if external.is_some() {
                return Err(ControlError::Conflict(format!(
                    "the external server already backs service {}",
                    other.name
                )));
            }
        }
        // Checked after the name: a duplicate name is a conflict whatever the body says.
        let plan = known_plan(plan)?;
        // Business and premium plans run a primary and standbys under Patroni (issue 17).
        let nodes = if external.is_some() {
            1
        } else {
            plan.nodes.max(1) as usize
        };
        let ha = nodes > 1;
        if ha && replica_src.is_some() {
            return Err(InputError::of(
                Subject::ReplicaSource,
                format!(
                    "a read replica runs one node, plan {} runs {nodes}",
                    plan.name
                ),
            )
            .into());
        }
        if ha {
            // A fork into a plan with standbys is restored as one cluster, then handed to
            // Patroni and given its standbys (as a plan change does); its HA settings come
            // with an update afterwards.
            let given = [
                (
                    Subject::SynchronousReplication,
                    new.synchronous_replication.is_some(),
                ),
                (Subject::MaxFailoverLag, new.max_failover_lag.is_some()),
            ];
            if let Some((subject, _)) = given.into_iter().find(|(_, set)| fork.is_some() && *set) {
                return Err(InputError::naming(
                    subject,
                    Subject::ForkSource,
                    "cannot be set with {other}: set it in an update once the fork runs",
                )
                .into());
            }
            if new.migration.is_some() {
                return Err(InputError::of(
                    Subject::Migration,
                    format!(
                        "cannot be used yet with plan {}, which runs {nodes} nodes",
                        plan.name
                    ),
                )
                .into());
            }
        } else {
            refuse_ha_fields(new.synchronous_replication, new.max_failover_lag, plan.name)?;
        }
        if ha {
            if let Err(missing) = Self::ha_programs() {
                // Nothing is recorded but the failed operation: the service is not made.
                return self.refuse_create_ha(name, plan.name, &missing).await;
            }
        }
        let used: HashSet<u16> = self.inner.store.used_ports().await?.into_iter().collect();
        let wanted = if external.is_some() { 1 } else { 2 } + if ha { 2 * nodes } else { 0 };
        let mut ports = crate::ports::allocate(
            &self.inner.cfg.port_range,
            &used,
            &self.inner.cfg.public_host,
            wanted,
        )
        .ok_or_else(|| ControlError::Conflict("no free port left in --port-range".into()))?;
        if let Some(e) = &external {
            ports.insert(0, e.port);
        }
        let now = Utc::now();
        let s = ServiceRecord {
            name: name.to_string(),
            id: Uuid::new_v4(),
            plan: plan.name.to_string(),
            state: ServiceState::Rebuilding,
            version,
            admin_username: match (&external, &fork, &replica_src) {
                (Some(e), _, _) => e.user.clone(),
                (None, Some(f), _) => f.source.admin_username.clone(),
                (None, None, Some(src)) => src.admin_username.clone(),
                (None, None, None) => admin.to_string(),
            },
            pg_port: ports[0],
            external_host: external.as_ref().map(|e| e.host.clone()),
            pooler_port: ports[1],
            pgbouncer,
            ip_filter,
            termination_protection: protection,
            pg_settings: new.pg_settings.unwrap_or_default(),
            work_mem: new.work_mem,
            shared_buffers_percentage: new.shared_buffers_percentage,
            created_at: now,
            updated_at: now,
            node: Some(self.node_name().to_string()),
        };
        if external.is_none() {
            self.check_fits_plan(None, &s).await?;
        }
        let (pw, overridden) = match (&external, password) {
            (Some(e), _) => (e.password.clone(), true),
            (None, Some(p)) => (p.into_string(), true),
            (None, None) => (Password::generate().into_string(), false),
        };
        let admin_user = UserRecord {
            name: s.admin_username.clone(),
            kind: UserKind::Primary,
            password_enc: self.inner.secrets.seal(&pw),
            pending_password_enc: None,
            password_overridden: overridden,
            allow_replication: true,
        };
        let op = operation_about(
            &s,
            OperationKind::CreateService,
            OpState::Pending,
            format!("creating service {name}"),
        );
        // A fork has its source's databases, users (with their passwords) and internal role, as
        // the store has them now; provisioning restores the cluster instead of making one.
        let copied_from = fork
            .as_ref()
            .map(|f| f.source.name.clone())
            .or(replica_src.as_ref().map(|r| r.name.clone()));
        let copied = match &copied_from {
            Some(src) => {
                let mut users = self.inner.store.users(src).await?;
                // A fork at a time has the users of that time with the passwords they had then
                // (its restored cluster has those roles); users without a recorded history keep
                // their current password.
                if let (Some(_), Some(at)) = (&fork, new.recovery_time) {
                    let (then, known) = self.inner.store.passwords_at(src, at).await?;
                    users.retain_mut(|u| match then.get(&u.name) {
                        Some(enc) => {
                            u.password_enc = enc.clone();
                            u.pending_password_enc = None;
                            true
                        }
                        None => !known.contains(&u.name),
                    });
                }
                Some((
                    self.inner.store.databases(src).await?,
                    users,
                    self.inner.store.internal_password(src).await?,
                ))
            }
            None => None,
        };
        let replica = replica_src
            .as_ref()
            .map(|src| self.new_replica(&s.name, &src.name));
        let ha_record = (ha && fork.is_none()).then(|| store::HaRecord {
            service: s.name.clone(),
            replication_password_enc: self.inner.secrets.seal(Password::generate().as_str()),
            rewind_password_enc: self.inner.secrets.seal(Password::generate().as_str()),
            synchronous: new.synchronous_replication.unwrap_or(false),
            max_lag_seconds: new.max_failover_lag,
            members: ports[2..].chunks(2).map(|p| (p[0], p[1])).collect(),
        });
        if new.backup_schedule.is_some() {
            self.check_backup_schedule(&s)?;
            if replica.is_some() {
                return Err(InputError::of(
                    Subject::BackupSchedule,
                    "a read replica is backed up once promoted",
                )
                .into());
            }
        }
        let mut tx = self.inner.store.begin().await?;
        store::insert_service(&mut tx, &s).await?;
        if let Some(h) = &ha_record {
            store::insert_ha(&mut tx, h).await?;
        }
        if let Some(at) = new.backup_schedule {
            store::set_backup_schedule(&mut tx, &s.name, at.hour, at.minute).await?;
        }
        // Every new service's repository is encrypted with a key of its own.
        if external.is_none() {
            let key = self.inner.secrets.seal(Password::generate().as_str());
            store::insert_backup_key(&mut tx, &s.name, &key).await?;
        }
        match (&copied_from, copied) {
            (Some(_), Some((databases, users, internal))) => {
                for u in &users {
                    store::upsert_user(&mut tx, &s.name, u).await?;
                }
                for d in &databases {
                    store::insert_database(&mut tx, &s.name, d).await?;
                }
                if let Some(sealed) = internal {
                    store::insert_internal_password(&mut tx, &s.name, &sealed).await?;
                }
                if let Some(f) = &fork {
                    store::insert_fork(&mut tx, &s.name, &f.fork).await?;
                }
                if let Some(r) = &replica {
                    store::insert_replica(&mut tx, r).await?;
                }
            }
            _ => {
                store::upsert_user(&mut tx, &s.name, &admin_user).await?;
                store::insert_database(&mut tx, &s.name, DEFAULT_DATABASE).await?;
            }
        }
        store::insert_operation(&mut tx, &op).await?;
        if let Some(spec) = &new.migration {
            store::upsert_migration(&mut tx, &self.new_migration(&s.name, spec)).await?;
        }
        tx.commit().await?;
        tracing::info!(service = %name, pg_port = s.pg_port, pooler_port = s.pooler_port, "service recorded");
        if let Some(h) = ha_record {
            self.remember_ha(h);
        }
        if let Some(r) = replica {
            self.remember_replica(r);
        }
        if let Some(at) = new.backup_schedule {
            self.remember_backup_schedule(&s.name, at);
        }
        self.spawn_provisioning(s.name.clone(), Some(op.id));
        Ok(op)
    }

    /// `GET /dbaas-postgres/{name}`.
    pub async fn get_service(&self, name: &ServiceName) -> Result<ServiceView, ControlError> {
        let service = self.existing(name).await?;
        let store = &self.inner.store;
        let mut users = Vec::new();
        for u in store.users(&service.name).await? {
            users.push(UserView {
                password: self.inner.secrets.open(&u.password_enc)?,
                name: u.name,
                kind: u.kind,
                password_overridden: u.password_overridden,
                allow_replication: u.allow_replication,
            });
        }
        Ok(ServiceView {
            databases: store.databases(&service.name).await?,
            pools: store.pools(&service.name).await?,
            users,
            service,
        })
    }

    /// `GET /dbaas-service`.
    pub async fn list_services(&self) -> Result<Vec<ServiceRecord>, ControlError> {
        Ok(self.inner.store.services().await?)
    }

    /// `PUT /dbaas-postgres/{name}`: plan, pgbouncer-settings (merged), ip-filter, protection,
    /// pg-settings (merged), work-mem, shared-buffers-percentage.
    ///
    /// A configuration that does not fit the plan's memory is refused before anything changes.
    /// A change PostgreSQL takes with a reload is applied before the store commits it (a value
    /// PostgreSQL refuses is put back and answered as a 400). A change that needs a restart is
    /// committed and answered at once with its operation `pending`; the restart runs in the
    /// background, holding the service's lock, and decides the operation (see
    /// [`Self::spawn_restart`]).
    pub async fn update_service(
        &self,
        name: &ServiceName,
        update: ServiceUpdate,
    ) -> Result<OperationRecord, ControlError> {
        let (guard, mut s) = self.lock_existing(name).await?;
        let before = s.clone();
        Self::check_version(update.version.as_deref(), &s.version)?;
        if update.migration.is_some() {
            self.check_can_migrate(&s).await?;
        }
        let prov = self.provisioner(&s);
        let ha_settings = self.ha_update(&s, &update)?;
        if update.backup_schedule.is_some() {
            self.check_backup_schedule(&s)?;
        }
        if !prov.runs_server() {
            Self::refuse_config_on_external(
                update.pg_settings.is_some(),
                update.work_mem.is_some(),
                update.shared_buffers_percentage.is_some(),
            )?;
        }
        if let Some(patch) = &update.pgbouncer {
            s.pgbouncer.apply(patch);
        }
        if let Some(p) = update.plan {
            s.plan = known_plan(p)?.name.to_string();
        }
        if let Some(patch) = &update.pg_settings {
            s.pg_settings.apply(patch);
        }
        if let Some(w) = update.work_mem {
            s.work_mem = Some(w);
        }
        if let Some(p) = update.shared_buffers_percentage {
            s.shared_buffers_percentage = Some(p);
        }
        let ip_filter = update.ip_filter;
        let protection = update.termination_protection;
        let filter_changed = ip_filter.as_ref().is_some_and(|f| *f != s.ip_filter);
        if let Some(f) = ip_filter {
            s.ip_filter = f;
        }
        if let Some(p) = protection {
            s.termination_protection = p;
        }
        s.updated_at = Utc::now();
        if prov.runs_server() {
            self.check_fits_plan(Some(&before), &s).await?;
        }
        let local_running =
            s.state == ServiceState::Running && prov.runs_server() && !self.is_ha(&s.name);
        let (changed, restart) = if local_running {
            use crate::cluster_config::ClusterConfig;
            ClusterConfig::of(&s).changes_from(&ClusterConfig::of(&before))
        } else {
            (Vec::new(), false)
        };
        if s.state == ServiceState::Running {
            if let Some(nodes) = self.node_change(&before, &s) {
                let message = format!("service {name} updated; moving to {nodes} node(s)");
                let op = self
                    .commit_update(&s, None, update.backup_schedule, message)
                    .await?;
                self.spawn_ha_resize(guard, before, s, op.clone(), nodes, ha_settings);
                return Ok(op);
            }
        }
        if s.state == ServiceState::Running && self.is_ha(&s.name) {
            use crate::cluster_config::ClusterConfig;
            let (changed, restart) =
                ClusterConfig::of(&s).changes_from(&ClusterConfig::of(&before));
            if !changed.is_empty() {
                if let Some((sync, lag)) = ha_settings {
                    self.apply_ha_settings(&s, sync, lag).await?;
                }
                let how = if restart {
                    "Patroni restarting the standbys, then switching over, to apply"
                } else {
                    "Patroni reloading every member to apply"
                };
                let message = format!("service {name} updated; {how} {}", changed.join(", "));
                let op = self
                    .commit_update(&s, ha_settings, update.backup_schedule, message)
                    .await?;
                self.spawn_ha_reconfigure(guard, before, s, op.clone(), changed, restart);
                return Ok(op);
            }
        }
        if restart {
            let message = format!(
                "service {name} updated; PostgreSQL restarting to apply {}",
                changed.join(", ")
            );
            let op = self
                .commit_update(&s, None, update.backup_schedule, message)
                .await?;
            // The restart writes pg_hba.conf from the new ip-filter as it starts the cluster.
            if let Some(spec) = &update.migration {
                self.start_migration(&s, spec).await?;
            }
            self.spawn_restart(guard, before, s, op.clone(), changed);
            return Ok(op);
        }
        // PostgreSQL takes the new configuration before the store does: a configuration it
        // refuses is put back and answered as a 400, with nothing changed.
        let applied = if local_running && !changed.is_empty() {
            self.reload_config(&before, &s, &changed).await?;
            Some(format!(
                "PostgreSQL configuration reloaded to apply {}",
                changed.join(", ")
            ))
        } else {
            None
        };
        let mut message = format!("service {name} updated");
        if let Some(how) = applied {
            message.push_str("; ");
            message.push_str(&how);
        }
        if let Some((sync, lag)) = ha_settings {
            self.apply_ha_settings(&s, sync, lag).await?;
        }
        let op = self
            .commit_update(&s, ha_settings, update.backup_schedule, message)
            .await?;
        if filter_changed && local_running {
            // The store is the truth: if this fails, the next start of the cluster rewrites it.
            if let Err(e) = self.apply_hba(&s).await {
                tracing::error!(service = %name, error = %e, "applying ip-filter to pg_hba.conf");
            }
        }
        if let Some(spec) = &update.migration {
            self.start_migration(&s, spec).await?;
        }
        let op = self.settle(op).await;
        drop(guard);
        op
    }

    /// Commits the update of `s` (and new HA settings, already applied to Patroni) with an
    /// update operation saying `message`.
    async fn commit_update(
        &self,
        s: &ServiceRecord,
        ha_settings: Option<(bool, Option<i64>)>,
        schedule: Option<crate::BackupSchedule>,
        message: String,
    ) -> Result<OperationRecord, ControlError> {
        let mut tx = self.inner.store.begin().await?;
        store::update_service(&mut tx, s).await?;
        if let Some(at) = schedule {
            store::set_backup_schedule(&mut tx, &s.name, at.hour, at.minute).await?;
        }
        if let Some((sync, lag)) = ha_settings {
            store::update_ha_settings(&mut tx, &s.name, sync, lag).await?;
        }
        let op = self
            .record_operation(tx, s, OperationKind::UpdateService, message)
            .await?;
        if let Some((sync, lag)) = ha_settings {
            self.remember_ha_settings(&s.name, sync, lag);
        }
        if let Some(at) = schedule {
            self.remember_backup_schedule(&s.name, at);
        }
        Ok(op)
    }

    /// Restarts the cluster of `new` (committed, with its operation `op` pending) in the
    /// background, keeping the service's lock until done. Success publishes and settles `op` as
    /// any change does. If PostgreSQL does not start with the new configuration, the previous
    /// one is written back and started, the store gets back the previous plan and settings, and
    /// `op` ends `failure` naming the settings (the configuration fitted the plan and PostgreSQL
    /// parsed every value beforehand, so this is the machine refusing, not the request).
    fn spawn_restart(
        &self,
        guard: OwnedMutexGuard<()>,
        old: ServiceRecord,
        new: ServiceRecord,
        op: OperationRecord,
        changed: Vec<String>,
    ) {
        let c = self.clone();
        let span = tracing::info_span!("restart", service = %new.name);
        let work = async move {
            let changed = changed.join(", ");
            let name = new.name.clone();
            match c.restart_cluster(&new).await {
                Ok(()) => Ok(format!(
                    "service {name} updated; PostgreSQL restarted to apply {changed}"
                )),
                Err(e) => {
                    tracing::error!(error = %e, "restart with new settings failed");
                    if let Err(e) = c.put_back(&old, &new).await {
                        tracing::error!(error = %e, "putting the previous configuration back");
                    }
                    Err((
                        "incorrect",
                        format!(
                            "PostgreSQL did not start with the new value of {changed}; the \
                             previous configuration is back"
                        ),
                    ))
                }
            }
        };
        self.spawn_operation_work(guard, op, span, work);
    }

    /// After a failed restart: the configuration of `old` back in the store and on the cluster.
    async fn put_back(&self, old: &ServiceRecord, new: &ServiceRecord) -> Result<(), ControlError> {
        let back = ServiceRecord {
            plan: old.plan.clone(),
            pg_settings: old.pg_settings.clone(),
            work_mem: old.work_mem,
            shared_buffers_percentage: old.shared_buffers_percentage,
            updated_at: Utc::now(),
            ..new.clone()
        };
        let mut tx = self.inner.store.begin().await?;
        store::update_service(&mut tx, &back).await?;
        tx.commit().await?;
        self.restart_cluster(&back).await
    }

    fn refuse_config_on_external(
        pg_settings: bool,
        work_mem: bool,
        shared_buffers_percentage: bool,
    ) -> Result<(), InputError> {
        let given = [
            (Subject::PgSettings, pg_settings),
            (Subject::WorkMem, work_mem),
            (Subject::SharedBuffersPercentage, shared_buffers_percentage),
        ];
        match given.into_iter().find(|(_, set)| *set) {
            Some((subject, _)) => Err(InputError::of(
                subject,
                "cannot be set on a service backed by an external server: pgbay does not \
                 manage that server's configuration",
            )),
            None => Ok(()),
        }
    }

    /// Brings the running local cluster of `old` to the configuration of `new` when a reload is
    /// enough (`changed` names what differs): writes `pgbay-settings.conf` and reloads. A value
    /// the server refuses is undone (the old file written back and reloaded) and answered with a
    /// 400 naming the setting.
    async fn reload_config(
        &self,
        old: &ServiceRecord,
        new: &ServiceRecord,
        changed: &[String],
    ) -> Result<(), ControlError> {
        use crate::cluster_config::ClusterConfig;
        let (before, after) = (ClusterConfig::of(old), ClusterConfig::of(new));
        let prov = self.inner.prov.clone();
        let write = |text: String| {
            let prov = prov.clone();
            let name = new.name.clone();
            async move {
                tokio::task::spawn_blocking(move || prov.write_settings(&name, &text)).await??;
                Ok::<(), ControlError>(())
            }
        };
        write(after.text()).await?;
        let t = self.admin_target(new).await?;
        pgbay_cluster::admin::reload(&t)
            .await
            .map_err(|e| ControlError::internal(format!("reloading configuration: {e}")))?;
        let errors = pgbay_cluster::admin::settings_file_errors(&t)
            .await
            .map_err(ControlError::internal)?;
        if let Some((setting, why)) = errors.first() {
            tracing::warn!(service = %new.name, changed = ?changed, "PostgreSQL refused a reloaded setting");
            write(before.text()).await?;
            pgbay_cluster::admin::reload(&t)
                .await
                .map_err(|e| ControlError::internal(format!("reloading configuration: {e}")))?;
            return Err(InputError::of(
                Subject::PgSettings,
                format!("PostgreSQL refused setting `{setting}`: {why}"),
            )
            .into());
        }
        Ok(())
    }

    pub(crate) async fn apply_hba(&self, s: &ServiceRecord) -> Result<(), ControlError> {
        let prov = self.inner.prov.clone();
        let (n, f) = (s.name.clone(), s.ip_filter.0.clone());
        tokio::task::spawn_blocking(move || prov.write_hba(&n, &f)).await??;
        let t = self.admin_target(s).await?;
        pgbay_cluster::admin::reload(&t)
            .await
            .map_err(|e| ControlError::internal(format!("reloading configuration: {e}")))
    }

    /// `DELETE /dbaas-postgres/{name}` and `DELETE /dbaas-service/{name}`.
    pub async fn delete_service(
        &self,
        name: &ServiceName,
    ) -> Result<OperationRecord, ControlError> {
        let (_g, s) = self.lock_existing(name).await?;
        self.refuse_delete_with_replicas(&s)?;
        if s.termination_protection {
            return Err(ControlError::Conflict(format!(
                "service {name} has termination protection enabled"
            )));
        }
        self.end_replication_before_delete(&s).await;
        let mut tx = self.inner.store.begin().await?;
        store::delete_service(&mut tx, &s.name).await?;
        let op = self
            .record_operation(
                tx,
                &s,
                OperationKind::DeleteService,
                format!("service {name} deleted"),
            )
            .await?;
        // The pooler drops the service first, then the cluster goes. A crash in between leaves a
        // directory without a service, which the next start removes.
        let op = self.settle(op).await?;
        self.forget_pooler_logs(&s.name);
        self.forget_backups(&s.name);
        self.forget_backup_schedule(&s.name);
        if self.is_ha(&s.name) {
            self.stop_ha(&s.name, true).await;
        }
        self.forget_deleted_replica(&s.name).await;
        let prov = self.inner.prov.clone();
        let n = s.name.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || prov.remove(&n)).await? {
            tracing::error!(service = %name, error = %e, "removing cluster of deleted service");
        }
        Ok(op)
    }
}
