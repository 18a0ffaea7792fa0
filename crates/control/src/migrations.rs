//! Migration of a PostgreSQL server that runs elsewhere into a new service (the document's
//! `migration` object of service create): the source is recorded with the service (its password
//! sealed), and once the service runs, its databases are copied by dump
//! (`pgbay_cluster::migrate::dump`). `GET /dbaas-migration-status/{name}` reads the record.
//!
//! Which databases: `dbname` alone if given, else every database of the source that accepts
//! connections except `template0`, `template1` and `postgres` (the service's own maintenance
//! database), minus `ignore-dbs`. Roles are not copied: objects belong to the service's admin.

use chrono::{DateTime, Utc};
use pgbay_cluster::migrate::{self, Source, Target};
use serde::{Deserialize, Serialize};

use crate::control::Control;
use crate::error::ControlError;
use crate::input::{InputError, ServiceName};
use crate::model::OperationRecord;
use crate::store;

mod input;

/// The document's `enum-migration-status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationStatus {
    /// Copying.
    Running,
    /// Initial copy done, changes flowing (replication).
    Syncing,
    /// Ended in an error.
    Failed,
    /// Finished.
    Done,
}

impl MigrationStatus {
    /// The document's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationStatus::Running => "running",
            MigrationStatus::Syncing => "syncing",
            MigrationStatus::Failed => "failed",
            MigrationStatus::Done => "done",
        }
    }
    /// Reads the stored spelling back.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => MigrationStatus::Running,
            "syncing" => MigrationStatus::Syncing,
            "failed" => MigrationStatus::Failed,
            "done" => MigrationStatus::Done,
            _ => return None,
        })
    }
}

/// The migration of one database (the document's `details` item).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationDetail {
    /// Database name.
    pub dbname: String,
    /// Method used.
    pub method: String,
    /// Its status.
    pub status: MigrationStatus,
    /// Why it failed.
    pub error: Option<String>,
}

/// A stored migration.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationRecord {
    /// The service migrated into.
    pub service: String,
    /// `dump`.
    pub method: String,
    /// Source host.
    pub host: String,
    /// Source port.
    pub port: u16,
    /// Source login role.
    pub username: Option<String>,
    /// Its password, sealed.
    pub password_enc: Option<String>,
    /// The only database to copy.
    pub dbname: Option<String>,
    /// Require TLS to the source.
    pub ssl: bool,
    /// Databases not copied.
    pub ignore_dbs: Vec<String>,
    /// Overall status.
    pub status: MigrationStatus,
    /// Why it failed.
    pub error: Option<String>,
    /// Per database.
    pub details: Vec<MigrationDetail>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A finished migration check (the document's `dbaas-task`).
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationTask {
    /// Task id.
    pub id: uuid::Uuid,
    /// The service it was asked for.
    pub service: String,
    /// No problem found.
    pub success: bool,
    /// Each problem found, or what was seen when none was.
    pub result: String,
    /// When it ran.
    pub created_at: DateTime<Utc>,
}

pub use input::{MigrationCheck, MigrationSpec};

impl Control {
    /// The record of a new migration of `service` from `spec`, password sealed, `running`.
    pub(crate) fn new_migration(&self, service: &str, spec: &MigrationSpec) -> MigrationRecord {
        MigrationRecord {
            service: service.to_string(),
            method: spec.method.clone(),
            host: spec.host.clone(),
            port: spec.port,
            username: spec.username.clone(),
            password_enc: spec.password.as_deref().map(|p| self.inner.secrets.seal(p)),
            dbname: spec.dbname.clone(),
            ssl: spec.ssl,
            ignore_dbs: spec.ignore_dbs.clone(),
            status: MigrationStatus::Running,
            error: None,
            details: Vec::new(),
            updated_at: Utc::now(),
        }
    }

    /// Refuses a migration into `s` (`PUT` with `migration`) on an external server, before the
    /// service runs, or while a migration of it is running or replicating.
    pub(crate) async fn check_can_migrate(
        &self,
        s: &crate::model::ServiceRecord,
    ) -> Result<(), ControlError> {
        if !self.provisioner(s).runs_server() {
            return Err(InputError::of(
                crate::input::Subject::Migration,
                "cannot be set: services on an external server are not migrated into",
            )
            .into());
        }
        if s.state != crate::model::ServiceState::Running {
            return Err(ControlError::Conflict(format!(
                "service {} is still being provisioned",
                s.name
            )));
        }
        if let Some(m) = self.inner.store.migration(&s.name).await? {
            let replicating = m.details.iter().any(|d| {
                d.method == "replication"
                    && matches!(
                        d.status,
                        MigrationStatus::Running | MigrationStatus::Syncing
                    )
            });
            if m.status == MigrationStatus::Running || replicating {
                return Err(ControlError::Conflict(format!(
                    "a migration of service {} is {}; stop it first",
                    s.name,
                    m.status.as_str()
                )));
            }
        }
        Ok(())
    }

    /// Before a service is deleted, its replication migration (if any) is ended so that no slot
    /// is left holding WAL on the source; best effort, failures are logged.
    pub(crate) async fn end_replication_before_delete(&self, s: &crate::model::ServiceRecord) {
        let Ok(Some(m)) = self.inner.store.migration(&s.name).await else {
            return;
        };
        let Ok(Some(su)) = self.internal_target(s).await else {
            return;
        };
        let Ok(src) = self.source_of(&m) else { return };
        for d in m.details.iter().filter(|d| {
            d.method == "replication"
                && matches!(
                    d.status,
                    MigrationStatus::Running | MigrationStatus::Syncing
                )
        }) {
            let slot = migrate::logical::slot_name(&s.id, &d.dbname);
            if let Err(e) =
                migrate::logical::stop(&self.inner.prov, &s.name, &su, &src, &d.dbname, &slot).await
            {
                tracing::warn!(service = %s.name, error = ?e.to_string(), "ending replication of a deleted service");
            }
        }
    }

    /// Records a new migration of the running service `s` and starts it.
    pub(crate) async fn start_migration(
        &self,
        s: &crate::model::ServiceRecord,
        spec: &MigrationSpec,
    ) -> Result<(), ControlError> {
        let mut m = self.new_migration(&s.name, spec);
        self.save_migration(&mut m).await?;
        self.spawn_migration(s.name.clone());
        Ok(())
    }

    /// `POST /dbaas-task-migration-check/{service}`: runs the checks at once (each connection
    /// bounded by a 10 s connect timeout) and records the task; its operation references it.
    pub async fn migration_check(
        &self,
        name: &ServiceName,
        check: MigrationCheck,
    ) -> Result<OperationRecord, ControlError> {
        let s = self.existing(name).await?;
        if !self.provisioner(&s).runs_server() {
            return Err(ControlError::Conflict(format!(
                "service {name} is on an external server, which pgbay does not migrate into"
            )));
        }
        if s.state != crate::model::ServiceState::Running {
            return Err(ControlError::Conflict(format!(
                "service {name} is still being provisioned"
            )));
        }
        let major: u32 = s.version.parse().unwrap_or(0);
        let (p, n) = (self.inner.prov.clone(), s.name.clone());
        let report = tokio::task::spawn_blocking(move || {
            migrate::check::check(&p, &n, &check.source, major, check.replication)
        })
        .await?
        .map_err(ControlError::internal)?;
        let success = report.problems.is_empty();
        let task = MigrationTask {
            id: uuid::Uuid::new_v4(),
            service: s.name.clone(),
            success,
            result: if success {
                format!("all checks passed: {}", report.seen.join("; "))
            } else {
                report.problems.join("; ")
            },
            created_at: Utc::now(),
        };
        let op = OperationRecord {
            id: uuid::Uuid::new_v4(),
            state: crate::model::OpState::Success,
            reason: None,
            message: format!("migration check of service {name} done"),
            ref_id: task.id,
            ref_link: format!("/v2/dbaas-task/{}/{}", s.name, task.id),
            ref_command: "get-dbaas-task".into(),
            kind: crate::operations::OperationKind::Maintenance,
            service: s.name.clone(),
        };
        let mut tx = self.inner.store.begin().await?;
        store::insert_migration_task(&mut tx, &task).await?;
        store::insert_operation(&mut tx, &op).await?;
        tx.commit().await?;
        Ok(op)
    }

    /// `GET /dbaas-task/{service}/{id}`.
    pub async fn migration_task(
        &self,
        name: &ServiceName,
        id: &str,
    ) -> Result<MigrationTask, ControlError> {
        self.existing(name).await?;
        let missing = || ControlError::NotFound(format!("task {id} of service {name} not found"));
        let id = uuid::Uuid::parse_str(id).map_err(|_| missing())?;
        self.inner
            .store
            .migration_task(name.as_str(), id)
            .await?
            .ok_or_else(missing)
    }

    /// `GET /dbaas-migration-status/{name}`.
    pub async fn migration_status(
        &self,
        name: &ServiceName,
    ) -> Result<MigrationRecord, ControlError> {
        self.existing(name).await?;
        self.inner
            .store
            .migration(name.as_str())
            .await?
            .ok_or_else(|| ControlError::NotFound(format!("service {name} has no migration")))
    }

    async fn save_migration(&self, m: &mut MigrationRecord) -> Result<(), ControlError> {
        m.updated_at = Utc::now();
        let mut tx = self.inner.store.begin().await?;
        store::upsert_migration(&mut tx, m).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Runs the migration of service `name` in the background if one is `running` (called once
    /// the service runs). Its outcome is only in the migration's status: the service stays usable
    /// whatever happens to the copy.
    pub(crate) fn spawn_migration(&self, name: String) {
        let c = self.clone();
        let span = tracing::info_span!("migration", service = %name);
        let task = async move {
            let m = match c.inner.store.migration(&name).await {
                Ok(Some(m)) if m.status == MigrationStatus::Running => m,
                Ok(_) => return,
                Err(e) => {
                    tracing::error!(error = %e, "reading migration");
                    return;
                }
            };
            let mut m = m;
            if let Err(e) = c.run_migration(&mut m).await {
                tracing::error!(error = ?e.to_string(), "migration failed");
                m.status = MigrationStatus::Failed;
                if m.error.is_none() {
                    m.error = Some(format!("internal error of pgbay: {e}"));
                }
                if let Err(e) = c.save_migration(&mut m).await {
                    tracing::error!(error = %e, "recording migration failure");
                }
            }
        };
        tokio::spawn(tracing::Instrument::instrument(task, span));
    }

    /// A migration left `running` by a pgbay that stopped is failed (a half-restored database
    /// cannot be resumed).
    pub(crate) async fn fail_interrupted_migration(&self, name: &str) -> Result<(), ControlError> {
        if let Some(mut m) = self.inner.store.migration(name).await? {
            if m.status == MigrationStatus::Running {
                m.status = MigrationStatus::Failed;
                m.error = Some("interrupted by a restart of pgbay".into());
                for d in m
                    .details
                    .iter_mut()
                    .filter(|d| d.status == MigrationStatus::Running)
                {
                    d.status = MigrationStatus::Failed;
                    d.error = m.error.clone();
                }
                self.save_migration(&mut m).await?;
            }
        }
        Ok(())
    }

    /// The source of `m`, password opened.
    fn source_of(&self, m: &MigrationRecord) -> Result<Source, ControlError> {
        Ok(Source {
            host: m.host.clone(),
            port: m.port,
            user: m.username.clone().unwrap_or_else(|| "postgres".into()),
            password: match &m.password_enc {
                Some(p) => self.inner.secrets.open(p)?,
                None => String::new(),
            },
            dbname: m.dbname.clone(),
            ssl: m.ssl,
        })
    }

    async fn run_migration(&self, m: &mut MigrationRecord) -> Result<(), ControlError> {
        let name = ServiceName::parse("name", &m.service)?;
        let s = self.existing(&name).await?;
        if !self.provisioner(&s).runs_server() {
            m.error = Some("migration needs a cluster run by pgbay, not an external server".into());
            return Err(ControlError::Conflict(m.error.clone().unwrap_or_default()));
        }
        let src = self.source_of(m)?;
        let admin = self.primary_target(&s).await?;
        let target = Target {
            host: admin.host.clone(),
            port: admin.port,
            user: admin.user.clone(),
            password: admin.password.clone(),
        };
        tracing::info!(source = ?src.address(), method = %m.method, "migration started");
        let prov = self.inner.prov.clone();
        let (p, n, sr, ig) = (
            prov.clone(),
            s.name.clone(),
            src.clone(),
            m.ignore_dbs.clone(),
        );
        let check = m.method == "replication";
        let listed = tokio::task::spawn_blocking(move || {
            let dbs = migrate::dump::databases(&p, &n, &sr, &ig)?;
            let first = sr.dbname.clone().unwrap_or_else(|| "postgres".into());
            let why_not = match check {
                true => migrate::logical::cannot_replicate(&p, &n, &sr, &first)?,
                false => None,
            };
            Ok::<_, migrate::MigrateError>((dbs, why_not))
        })
        .await?;
        let (dbs, why_not) = match listed {
            Ok(l) => l,
            Err(e) => {
                m.status = MigrationStatus::Failed;
                m.error = Some(e.to_string());
                self.save_migration(m).await?;
                return Ok(());
            }
        };
        let su = self.internal_target(&s).await?;
        if m.method == "replication" {
            let why_not = match (&su, why_not) {
                (None, _) => {
                    Some("this service's cluster has no pgbay superuser to subscribe with".into())
                }
                (Some(_), w) => w,
            };
            if let Some(why) = why_not {
                tracing::info!(reason = ?why, "replication not possible; migrating by dump");
                m.method = "dump".into();
                m.error = Some(format!(
                    "replication is not possible: {why}; copied by dump instead"
                ));
            }
        }
        m.details = dbs
            .iter()
            .map(|d| MigrationDetail {
                dbname: d.clone(),
                method: m.method.clone(),
                status: MigrationStatus::Running,
                error: None,
            })
            .collect();
        self.save_migration(m).await?;
        let jobs = std::thread::available_parallelism()
            .map(|n| n.get().min(4) as u32)
            .unwrap_or(2);
        let replicate = m.method == "replication";
        let mut failed = None;
        for (i, db) in dbs.iter().enumerate() {
            let db = db.clone();
            let outcome = match self.ensure_migrated_database(&s, &db).await {
                Ok(()) => {
                    let (p, n, sr, t, d) = (
                        prov.clone(),
                        s.name.clone(),
                        src.clone(),
                        target.clone(),
                        db.clone(),
                    );
                    let slot = migrate::logical::slot_name(&s.id, &db);
                    let copied = tokio::task::spawn_blocking(move || {
                        migrate::dump::copy_database(&p, &n, &sr, &t, &d, jobs, replicate)?;
                        if replicate {
                            migrate::logical::publish(&p, &n, &sr, &d, &slot)?;
                            return migrate::logical::write_passfile(&p, &n, &sr).map(Some);
                        }
                        Ok(None)
                    })
                    .await?;
                    match (copied, &su) {
                        (Ok(Some(passfile)), Some(su)) => {
                            let slot = migrate::logical::slot_name(&s.id, &db);
                            migrate::logical::subscribe(su, &src, &db, &slot, &passfile).await
                        }
                        (Ok(_), _) => Ok(()),
                        (Err(e), _) => Err(e),
                    }
                    .map_err(|e| e.to_string())
                }
                Err(e) => Err(format!("creating database {db:?} on the service: {e}")),
            };
            let detail = &mut m.details[i];
            match outcome {
                Ok(()) if !replicate => detail.status = MigrationStatus::Done,
                Ok(()) => {}
                Err(e) => {
                    detail.status = MigrationStatus::Failed;
                    detail.error = Some(e.clone());
                    failed.get_or_insert(e);
                }
            }
            self.save_migration(m).await?;
        }
        if let Some(e) = failed {
            m.status = MigrationStatus::Failed;
            m.error = Some(e);
        } else if !replicate {
            m.status = MigrationStatus::Done;
        }
        self.save_migration(m).await?;
        if replicate && m.status == MigrationStatus::Running {
            if let Some(su) = &su {
                self.follow_initial_copy(&s, su).await?;
            }
        }
        tracing::info!("migration copy ended");
        Ok(())
    }

    /// Waits until every subscription of the migration of `s` has copied its tables, marking each
    /// database `syncing` as it gets there and the migration `syncing` when all have; ends early
    /// if the migration is stopped meanwhile.
    async fn follow_initial_copy(
        &self,
        s: &crate::model::ServiceRecord,
        su: &pgbay_cluster::admin::AdminTarget,
    ) -> Result<(), ControlError> {
        let name = ServiceName::parse("name", &s.name)?;
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let (_g, _) = self.lock_existing_waiting(&name).await?;
            let Some(mut m) = self.inner.store.migration(&s.name).await? else {
                return Ok(());
            };
            if m.status != MigrationStatus::Running {
                return Ok(());
            }
            let mut changed = false;
            for d in m
                .details
                .iter_mut()
                .filter(|d| d.status == MigrationStatus::Running)
            {
                let slot = migrate::logical::slot_name(&s.id, &d.dbname);
                if migrate::logical::initial_copy_done(su, &d.dbname, &slot)
                    .await
                    .unwrap_or(false)
                {
                    d.status = MigrationStatus::Syncing;
                    changed = true;
                }
            }
            if m.details
                .iter()
                .all(|d| d.status != MigrationStatus::Running)
            {
                m.status = MigrationStatus::Syncing;
                self.save_migration(&mut m).await?;
                return Ok(());
            }
            if changed {
                self.save_migration(&mut m).await?;
            }
        }
    }

    /// `POST /dbaas-postgres/{name}/migration/stop`: ends a replication migration (sequences
    /// synchronised once, subscriptions and their slots on the source dropped, publications
    /// dropped); 409 if the service has no replication to stop.
    pub async fn stop_migration(
        &self,
        name: &ServiceName,
    ) -> Result<OperationRecord, ControlError> {
        let (guard, s) = self.lock_existing(name).await?;
        let mut m = self
            .inner
            .store
            .migration(name.as_str())
            .await?
            .ok_or_else(|| ControlError::NotFound(format!("service {name} has no migration")))?;
        let active: Vec<usize> = (0..m.details.len())
            .filter(|&i| {
                let d = &m.details[i];
                d.method == "replication"
                    && matches!(
                        d.status,
                        MigrationStatus::Running | MigrationStatus::Syncing
                    )
            })
            .collect();
        if active.is_empty() {
            return Err(ControlError::Conflict(format!(
                "service {name} has no replication to stop (migration {})",
                m.status.as_str()
            )));
        }
        let su = self.internal_target(&s).await?.ok_or_else(|| {
            ControlError::internal("replication migration on a cluster without pgbay's superuser")
        })?;
        let src = self.source_of(&m)?;
        let prov = self.inner.prov.clone();
        let mut failed = None;
        for i in active {
            let db = m.details[i].dbname.clone();
            let slot = migrate::logical::slot_name(&s.id, &db);
            match migrate::logical::stop(&prov, &s.name, &su, &src, &db, &slot).await {
                Ok(()) => m.details[i].status = MigrationStatus::Done,
                Err(e) => {
                    m.details[i].status = MigrationStatus::Failed;
                    m.details[i].error = Some(e.to_string());
                    failed.get_or_insert(e.to_string());
                }
            }
        }
        migrate::logical::remove_passfile(&prov, &s.name);
        let message = match &failed {
            None => {
                m.status = MigrationStatus::Done;
                format!("migration of service {name} stopped: replication ended, sequences synchronised")
            }
            Some(e) => {
                m.status = MigrationStatus::Failed;
                m.error = Some(e.clone());
                format!("migration of service {name} stopped with an error: {e}")
            }
        };
        self.save_migration(&mut m).await?;
        let tx = self.inner.store.begin().await?;
        let op = self
            .record_operation(
                tx,
                &s,
                crate::operations::OperationKind::UpdateService,
                message,
            )
            .await?;
        drop(guard);
        self.settle(op).await
    }

    /// Creates database `db` on the service (owned by its admin) and records it, unless it
    /// exists; under the service's lock, as `POST .../database` does.
    async fn ensure_migrated_database(
        &self,
        s: &crate::model::ServiceRecord,
        db: &str,
    ) -> Result<(), ControlError> {
        let name = ServiceName::parse("name", &s.name)?;
        let (_g, s) = self.lock_existing_waiting(&name).await?;
        let t = self.admin_target(&s).await?;
        pgbay_cluster::admin::create_database(&t, db, &s.admin_username, None, None)
            .await
            .map_err(|e| ControlError::from_admin(e, "creating database"))?;
        let mut tx = self.inner.store.begin().await?;
        if !store::database_exists(&mut tx, &s.name, db).await? {
            store::insert_database(&mut tx, &s.name, db).await?;
        }
        tx.commit().await?;
        drop(_g);
        self.publish_of(&s.name).await?;
        Ok(())
    }
}
