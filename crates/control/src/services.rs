//! Service life cycle: create (asynchronous provisioning), read, update, delete.

use std::collections::HashSet;

use chrono::Utc;
use tokio::sync::OwnedMutexGuard;
use uuid::Uuid;

use crate::commands::{NewService, ServiceUpdate};
use crate::control::Control;
use crate::error::ControlError;
use crate::input::{AdminUsername, InputError, IpFilter, Password, ServiceName, DEFAULT_DATABASE};
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

impl Control {
    fn check_version(asked: Option<&str>, available: &str) -> Result<(), InputError> {
        if let Some(v) = asked {
            if v != available {
                return Err(InputError::new(
                    "version",
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
    pub(crate) async fn lock_existing(
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
            let given = [
                ("admin-username", new.admin_username.is_some()),
                ("admin-password", new.admin_password.is_some()),
            ];
            if let Some((field, _)) = given.iter().find(|(_, set)| *set) {
                return Err(InputError::new(
                    field,
                    "cannot be set: services use the admin of the external server",
                )
                .into());
            }
        }
        let version = match &external {
            Some(e) => e
                .major_version()
                .await
                .map_err(|e| ControlError::internal(format!("external server: {e}")))?,
            None => self.inner.version.clone(),
        };
        Self::check_version(new.version.as_deref(), &version)?;
        let plan = new.plan;
        let admin = new
            .admin_username
            .unwrap_or_else(AdminUsername::default_admin);
        let password = new.admin_password;
        let pgbouncer = new.pgbouncer.unwrap_or_default();
        let ip_filter = new.ip_filter.unwrap_or_else(IpFilter::allow_all);
        let protection = new.termination_protection.unwrap_or(false);

        let _create = self.inner.create_lock.lock().await;
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
        let used: HashSet<u16> = self.inner.store.used_ports().await?.into_iter().collect();
        let wanted = if external.is_some() { 1 } else { 2 };
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
            plan: plan.into_string(),
            state: ServiceState::Rebuilding,
            version,
            admin_username: match &external {
                Some(e) => e.user.clone(),
                None => admin.to_string(),
            },
            pg_port: ports[0],
            external_host: external.as_ref().map(|e| e.host.clone()),
            pooler_port: ports[1],
            pgbouncer,
            ip_filter,
            termination_protection: protection,
            created_at: now,
            updated_at: now,
        };
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
        let mut tx = self.inner.store.begin().await?;
        store::insert_service(&mut tx, &s).await?;
        store::upsert_user(&mut tx, &s.name, &admin_user).await?;
        store::insert_database(&mut tx, &s.name, DEFAULT_DATABASE).await?;
        store::insert_operation(&mut tx, &op).await?;
        tx.commit().await?;
        tracing::info!(service = %name, pg_port = s.pg_port, pooler_port = s.pooler_port, "service recorded");
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

    /// `PUT /dbaas-postgres/{name}`: plan, pgbouncer-settings (merged), ip-filter, protection.
    pub async fn update_service(
        &self,
        name: &ServiceName,
        update: ServiceUpdate,
    ) -> Result<OperationRecord, ControlError> {
        let (_g, mut s) = self.lock_existing(name).await?;
        Self::check_version(update.version.as_deref(), &s.version)?;
        if let Some(patch) = &update.pgbouncer {
            s.pgbouncer.apply(patch);
        }
        if let Some(p) = update.plan {
            s.plan = p.into_string();
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
        let mut tx = self.inner.store.begin().await?;
        store::update_service(&mut tx, &s).await?;
        let op = self
            .record_operation(
                tx,
                &s,
                OperationKind::UpdateService,
                format!("service {name} updated"),
            )
            .await?;
        if filter_changed && s.state == ServiceState::Running && s.external_host.is_none() {
            // The store is the truth: if this fails, the next start of the cluster rewrites it.
            if let Err(e) = self.apply_hba(&s).await {
                tracing::error!(service = %name, error = %e, "applying ip-filter to pg_hba.conf");
            }
        }
        self.settle(op).await
    }

    async fn apply_hba(&self, s: &ServiceRecord) -> Result<(), ControlError> {
        let prov = self.inner.prov.clone();
        let (n, f) = (s.name.clone(), s.ip_filter.0.clone());
        tokio::task::spawn_blocking(move || prov.write_hba(&n, &f)).await??;
        let t = self.admin_target(s).await?;
        crate::admin::reload(&t)
            .await
            .map_err(|e| ControlError::internal(format!("reloading configuration: {e}")))
    }

    /// `DELETE /dbaas-postgres/{name}` and `DELETE /dbaas-service/{name}`.
    pub async fn delete_service(
        &self,
        name: &ServiceName,
    ) -> Result<OperationRecord, ControlError> {
        let (_g, s) = self.lock_existing(name).await?;
        if s.termination_protection {
            return Err(ControlError::Conflict(format!(
                "service {name} has termination protection enabled"
            )));
        }
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
        let prov = self.inner.prov.clone();
        let n = s.name.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || prov.remove(&n)).await? {
            tracing::error!(service = %name, error = %e, "removing cluster of deleted service");
        }
        Ok(op)
    }
}
