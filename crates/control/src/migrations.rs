//! Migrating an existing PostgreSQL into a new service (the document's `migration`, method
//! `dump`): control records it with the service (the source's password sealed like user
//! passwords) and runs it once the service's cluster runs; `pgbay_cluster::migrate` runs
//! pg_dump/pg_restore. Its status (`GET /dbaas-migration-status/{name}`) is stored as it goes:
//! `running`, then `done`, or `failed` with the cause (host:port, authentication, database),
//! per database in `details`. A failed migration leaves the service itself usable.

use serde_json::json;

use crate::model::ServiceRecord;
use crate::store::{self, MigrationRow, StoreTx};
use crate::{Control, ControlError};

/// What `GET /dbaas-migration-status/{name}` shows.
#[derive(Debug, Clone)]
pub struct MigrationStatus {
    pub status: String,
    pub method: String,
    pub error: Option<String>,
    /// Per database: {dbname, method, status, error}.
    pub details: serde_json::Value,
}

impl Control {
    /// Records the migration of a service being created, in its create transaction.
    pub(crate) async fn record_migration(
        &self,
        tx: &mut StoreTx,
        service: &str,
        m: &crate::commands::NewMigration,
    ) -> Result<(), ControlError> {
        let row = MigrationRow {
            host: m.host.clone(),
            port: m.port,
            username: m.username.clone(),
            password_enc: self.inner.secrets.seal(&m.password),
            dbname: m.dbname.clone(),
            ssl: m.ssl,
            ignore_dbs: m.ignore_dbs.clone(),
            method: "dump".into(),
            status: "running".into(),
            error: None,
            details: "[]".into(),
        };
        store::insert_migration(tx, service, &row).await?;
        Ok(())
    }

    /// The migration status of `service`; a 404 when it has none.
    pub async fn migration_status(
        &self,
        name: &crate::input::ServiceName,
    ) -> Result<MigrationStatus, ControlError> {
        let s = self.existing(name).await?;
        let m =
            self.inner.store.migration(&s.name).await?.ok_or_else(|| {
                ControlError::NotFound(format!("service {name} has no migration"))
            })?;
        Ok(MigrationStatus {
            status: m.status,
            method: m.method,
            error: m.error,
            details: serde_json::from_str(&m.details).unwrap_or_else(|_| json!([])),
        })
    }

    /// After the service's cluster runs: its migration, if it has one still running, in the
    /// background (again after a restart that interrupted it).
    pub(crate) fn spawn_migration(&self, service: &str) {
        let control = self.clone();
        let name = service.to_string();
        tokio::spawn(async move {
            if let Err(e) = control.migrate(&name).await {
                tracing::error!(service = %name, error = %e, "migration");
            }
        });
    }

    /// At start-up: a migration a stop cut short is not resumed (its databases may be half
    /// restored): it ends `failed`, saying so.
    pub(crate) async fn fail_interrupted_migration(
        &self,
        service: &str,
    ) -> Result<(), ControlError> {
        if let Some(m) = self.inner.store.migration(service).await? {
            if m.status == "running" {
                self.inner
                    .store
                    .set_migration_status(
                        service,
                        "failed",
                        Some("interrupted by a restart of pgbay"),
                        &m.details,
                    )
                    .await?;
            }
        }
        Ok(())
    }

    async fn migrate(&self, service: &str) -> Result<(), ControlError> {
        let Some(m) = self.inner.store.migration(service).await? else {
            return Ok(());
        };
        if m.status != "running" {
            return Ok(());
        }
        let Some(s) = self.inner.store.service(service).await? else {
            return Ok(());
        };
        let source = pgbay_cluster::migrate::Source {
            host: m.host.clone(),
            port: m.port,
            user: m.username.clone(),
            password: self.inner.secrets.open(&m.password_enc)?,
            dbname: m.dbname.clone(),
            ssl: m.ssl,
        };
        tracing::info!(service, source_host = %m.host, source_port = m.port,
            "migration started");
        let outcome = self.copy_databases(&s, &source, &m.ignore_dbs).await;
        let (status, error, details) = match outcome {
            Ok(details) => {
                let failed = details
                    .iter()
                    .find_map(|d| d["error"].as_str().map(str::to_string));
                match failed {
                    Some(e) => ("failed", Some(e), details),
                    None => ("done", None, details),
                }
            }
            Err(e) => ("failed", Some(e), Vec::new()),
        };
        self.inner
            .store
            .set_migration_status(
                service,
                status,
                error.as_deref(),
                &serde_json::Value::from(details).to_string(),
            )
            .await?;
        tracing::info!(service, status, "migration ended");
        Ok(())
    }

    /// Copies every database of the source (but `postgres`, templates and `ignore`) into the
    /// service. Err: the source could not even be listed (unreachable, refused).
    async fn copy_databases(
        &self,
        s: &ServiceRecord,
        source: &pgbay_cluster::migrate::Source,
        ignore: &[String],
    ) -> Result<Vec<serde_json::Value>, String> {
        let prov = self.inner.prov.clone();
        let (name, src) = (s.name.clone(), source.clone());
        let dbs = tokio::task::spawn_blocking(move || prov.source_databases(&name, &src))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.0)?;
        let t = self
            .internal_target(s)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the service has no internal role to restore with".to_string())?;
        let mut details = Vec::new();
        for db in dbs.into_iter().filter(|d| !ignore.contains(d)) {
            let result = self.copy_one(s, source, &t, &db).await;
            details.push(json!({
                "dbname": db,
                "method": "dump",
                "status": if result.is_ok() { "done" } else { "failed" },
                "error": result.err(),
            }));
            let _ = self
                .inner
                .store
                .set_migration_status(&s.name, "running", None, &json!(details).to_string())
                .await;
        }
        Ok(details)
    }

    async fn copy_one(
        &self,
        s: &ServiceRecord,
        source: &pgbay_cluster::migrate::Source,
        t: &pgbay_cluster::admin::AdminTarget,
        db: &str,
    ) -> Result<(), String> {
        pgbay_cluster::admin::create_database(t, db, &s.admin_username, None, None)
            .await
            .map_err(|e| format!("creating database {db}: {e}"))?;
        {
            let mut tx = self.inner.store.begin().await.map_err(|e| e.to_string())?;
            if !store::database_exists(&mut tx, &s.name, db)
                .await
                .map_err(|e| e.to_string())?
            {
                store::insert_database(&mut tx, &s.name, db)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            tx.commit().await.map_err(|e| e.to_string())?;
        }
        let prov = self.inner.prov.clone();
        let (name, src, db) = (s.name.clone(), source.clone(), db.to_string());
        let (socket, port, user, password, owner) = (
            std::path::PathBuf::from(&t.host),
            t.port,
            t.user.clone(),
            t.password.clone(),
            s.admin_username.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let target = pgbay_cluster::migrate::Target {
                socket_dir: &socket,
                port,
                user: &user,
                password: &password,
                owner: &owner,
            };
            prov.dump_restore(&name, &src, &db, &target)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.0)
    }
}
