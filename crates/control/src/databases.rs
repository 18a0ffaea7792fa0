//! Databases of a service. Each call takes an already validated command, locks the running
//! service, checks the store, applies the change to PostgreSQL (idempotently), then commits the
//! store change and its operation in one transaction: `success` at once (the pooler does not
//! serve databases, only pools on them). A refused call changes neither the store nor the server.

use pgbay_cluster::admin;

use crate::commands::NewDatabase;
use crate::control::Control;
use crate::error::ControlError;
use crate::input::{pg_identifier, DatabaseName, ServiceName, DEFAULT_DATABASE};
use crate::model::OperationRecord;
use crate::operations::OperationKind;
use crate::store;

/// The databases of every service.
pub struct Databases<'a> {
    control: &'a Control,
}

impl Control {
    /// The databases of every service.
    pub fn databases(&self) -> Databases<'_> {
        Databases { control: self }
    }
}

impl Databases<'_> {
    /// `POST .../database`.
    pub async fn create(
        &self,
        service: &ServiceName,
        new: NewDatabase,
    ) -> Result<OperationRecord, ControlError> {
        let c = self.control;
        let db = new.name;
        let collate = new.lc_collate.as_ref().map(|l| l.as_str());
        let ctype = new.lc_ctype.as_ref().map(|l| l.as_str());
        let (_g, s) = c.lock_running(service).await?;
        c.refuse_on_replica(&s)?;
        if c.inner
            .store
            .databases(&s.name)
            .await?
            .iter()
            .any(|d| pg_identifier(d) == pg_identifier(db.as_str()))
        {
            return Err(ControlError::Conflict(format!(
                "database {db} already exists"
            )));
        }
        let t = c.admin_target(&s).await?;
        admin::create_database(&t, db.as_str(), &s.admin_username, collate, ctype)
            .await
            .map_err(|e| ControlError::from_admin(e, "creating database (lc-collate, lc-ctype)"))?;
        let mut tx = c.inner.store.begin().await?;
        store::insert_database(&mut tx, &s.name, db.as_str()).await?;
        for r in c.replicas_from(&s.name) {
            store::insert_database(&mut tx, &r, db.as_str()).await?;
        }
        c.commit_operation(
            tx,
            &s,
            OperationKind::CreateDatabase,
            format!("database {db} created"),
        )
        .await
    }

    /// `DELETE .../database/{database-name}`.
    pub async fn delete(
        &self,
        service: &ServiceName,
        db: &DatabaseName,
    ) -> Result<OperationRecord, ControlError> {
        let c = self.control;
        let (_g, s) = c.lock_running(service).await?;
        c.refuse_on_replica(&s)?;
        if !c
            .inner
            .store
            .databases(&s.name)
            .await?
            .iter()
            .any(|d| d == db.as_str())
        {
            return Err(ControlError::NotFound(format!("database {db} not found")));
        }
        if db.as_str() == DEFAULT_DATABASE {
            return Err(ControlError::Conflict(format!(
                "database {db} is the service's default database: its uri and uri-params point at it"
            )));
        }
        let users_of =
            crate::pools::pool_names(c.store(), &s, |p| p.database == db.as_str()).await?;
        if !users_of.is_empty() {
            return Err(ControlError::Conflict(format!(
                "database {db} is used by connection pool(s) {}",
                users_of.join(", ")
            )));
        }
        let t = c.admin_target(&s).await?;
        admin::drop_database(&t, db.as_str())
            .await
            .map_err(|e| ControlError::from_admin(e, "dropping database"))?;
        let mut tx = c.inner.store.begin().await?;
        store::delete_database(&mut tx, &s.name, db.as_str()).await?;
        c.commit_operation(
            tx,
            &s,
            OperationKind::DeleteDatabase,
            format!("database {db} deleted"),
        )
        .await
    }
}
