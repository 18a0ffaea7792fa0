//! `PUT /dbaas-postgres/{name}/maintenance/start` and `POST /dbaas-postgres/{service}/upgrade-check`.
//!
//! Maintenance is pgbay's own: a `VACUUM (ANALYZE)` of every database of the service, then a check
//! of the cluster (it answers, and how old its oldest unfrozen transaction id is against
//! `autovacuum_freeze_max_age`). It runs in the background as an operation, `pending` until done;
//! a restart of pgbay ends it as `failure`/`interrupted`.
//!
//! The upgrade check answers from the PostgreSQL binaries this machine has: only the version the
//! service runs, so any other target is "not available".

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::control::Control;
use crate::error::ControlError;
use crate::input::ServiceName;
use crate::model::{OpState, OperationRecord, ServiceRecord};
use crate::operations::{operation_about, OperationKind};
use crate::store;

/// The answer of an upgrade check (the document's `dbaas-task`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeCheck {
    /// Task id.
    pub id: Uuid,
    /// When it ran.
    pub created_at: DateTime<Utc>,
    /// Whether the upgrade is possible.
    pub success: bool,
    /// Why (or why not).
    pub result: String,
}

impl Control {
    /// Starts pgbay's maintenance of a running service; returns its pending operation.
    pub async fn start_maintenance(
        &self,
        service: &ServiceName,
    ) -> Result<OperationRecord, ControlError> {
        let (_g, s) = self.lock_running(service).await?;
        let op = operation_about(
            &s,
            OperationKind::Maintenance,
            OpState::Pending,
            format!("maintenance of service {service} running"),
        );
        let mut tx = self.inner.store.begin().await?;
        store::insert_operation(&mut tx, &op).await?;
        tx.commit().await?;
        let c = self.clone();
        let (name, id) = (s.name.clone(), op.id);
        let task = async move {
            let result = c.run_maintenance(&name).await;
            let finished = match result {
                Ok(message) => c.finish_by_id(id, OpState::Success, None, message).await,
                Err(e) => {
                    tracing::error!(service = %name, error = %e, "maintenance failed");
                    c.finish_by_id(
                        id,
                        OpState::Failure,
                        Some("fault"),
                        format!("maintenance of service {name} failed"),
                    )
                    .await
                }
            };
            if let Err(e) = finished {
                tracing::error!(service = %name, error = %e, "recording the end of maintenance");
            }
        };
        tokio::spawn(tracing::Instrument::instrument(
            task,
            tracing::info_span!("maintenance", service = %s.name),
        ));
        Ok(op)
    }

    async fn finish_by_id(
        &self,
        id: Uuid,
        state: OpState,
        reason: Option<&str>,
        message: String,
    ) -> Result<(), ControlError> {
        let mut tx = self.inner.store.begin().await?;
        store::finish_operation(&mut tx, id, state, reason, &message).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Vacuums and analyzes every database, then checks the cluster; says what it did.
    async fn run_maintenance(&self, name: &str) -> Result<String, ControlError> {
        let lock = self.service_lock(name);
        let _g = lock.lock().await;
        let s: ServiceRecord = self
            .inner
            .store
            .service(name)
            .await?
            .ok_or_else(|| ControlError::NotFound(format!("service {name} was deleted")))?;
        let t = self.admin_target(&s).await?;
        let started = std::time::Instant::now();
        let dbs = self.inner.store.databases(&s.name).await?;
        for db in &dbs {
            let c = pgbay_cluster::admin::connect(&t, db)
                .await
                .map_err(|e| ControlError::internal(format!("connecting to {db}: {e}")))?;
            c.batch_execute("VACUUM (ANALYZE)")
                .await
                .map_err(|e| ControlError::internal(format!("VACUUM (ANALYZE) of {db}: {e}")))?;
        }
        let c = pgbay_cluster::admin::connect(&t, "postgres")
            .await
            .map_err(ControlError::internal)?;
        let row = c
            .query_one(
                "SELECT max(age(datfrozenxid))::bigint,
                        current_setting('autovacuum_freeze_max_age')::bigint
                   FROM pg_database",
                &[],
            )
            .await
            .map_err(|e| ControlError::internal(format!("checking the cluster: {e}")))?;
        let (age, limit): (i64, i64) = (row.get(0), row.get(1));
        Ok(format!(
            "maintenance of service {name} done: VACUUM (ANALYZE) of {} database(s) ({}) in \
             {:.1}s; cluster check: oldest unfrozen transaction id age {age} of {limit}",
            dbs.len(),
            dbs.join(", "),
            started.elapsed().as_secs_f32()
        ))
    }

    /// `POST /dbaas-postgres/{service}/upgrade-check` for `target` (a version of the document's
    /// enum).
    pub async fn upgrade_check(
        &self,
        service: &ServiceName,
        target: &str,
    ) -> Result<UpgradeCheck, ControlError> {
        let s = self.existing(service).await?;
        let available = &self.inner.version;
        let num = |v: &str| v.parse::<u32>().unwrap_or(0);
        let (success, result) = if target == s.version {
            (
                false,
                format!("service {service} already runs PostgreSQL {target}"),
            )
        } else if num(target) < num(&s.version) {
            (
                false,
                format!(
                    "PostgreSQL {target} is older than the service's PostgreSQL {}: a downgrade is not possible",
                    s.version
                ),
            )
        } else if target == available.as_str() {
            (
                false,
                format!(
                    "PostgreSQL {target} is installed, but pgbay cannot upgrade services in place"
                ),
            )
        } else {
            (
                false,
                format!(
                    "PostgreSQL {target} is not available: this pgbay has PostgreSQL {available} binaries only"
                ),
            )
        };
        Ok(UpgradeCheck {
            id: Uuid::new_v4(),
            created_at: Utc::now(),
            success,
            result,
        })
    }
}
