//! Connection pools of a service: create, update, delete, through the [`Pools`] handle
//! (`control.pools()`). Pools live in the store and the pooler only: each call locks the running
//! service, then reads what decides the change and writes it in one store transaction with its
//! operation, `pending` until every live node's pooler serves it (see `operations`). A refused
//! call changes nothing.

use crate::commands::{NewPool, PoolUpdate};
use crate::control::Control;
use crate::error::ControlError;
use crate::input::{PoolName, ServiceName, Username};
use crate::model::{OperationRecord, PoolRecord, ServiceRecord};
use crate::operations::OperationKind;
use crate::store::{self, StoreTx};

/// The connection pools of every service.
pub struct Pools<'a> {
    control: &'a Control,
}

impl Control {
    /// The connection pools.
    pub fn pools(&self) -> Pools<'_> {
        Pools { control: self }
    }
}

impl Pools<'_> {
    /// `POST .../connection-pool`.
    pub async fn create(
        &self,
        service: &ServiceName,
        new: NewPool,
    ) -> Result<OperationRecord, ControlError> {
        let c = self.control;
        let name = new.name;
        let (_g, s) = c.lock_running(service).await?;
        let mut tx = c.store().begin().await?;
        if find(&mut tx, &s, name.as_str()).await?.is_some() {
            return Err(ControlError::Conflict(format!(
                "connection pool {name} already exists"
            )));
        }
        let username = new
            .username
            .map(Username::into_string)
            .unwrap_or_else(|| s.admin_username.clone());
        let rec = PoolRecord {
            name: name.to_string(),
            database: new.database.into_string(),
            username,
            mode: new.mode,
            size: new.size,
        };
        check_refs(&mut tx, &s, &rec).await?;
        store::upsert_pool(&mut tx, &s.name, &rec).await?;
        c.commit_operation(
            tx,
            &s,
            OperationKind::CreatePool,
            format!("connection pool {name} created"),
        )
        .await
    }

    /// `PUT .../connection-pool/{connection-pool-name}`: changes the fields it names.
    pub async fn update(
        &self,
        service: &ServiceName,
        name: &PoolName,
        update: PoolUpdate,
    ) -> Result<OperationRecord, ControlError> {
        let c = self.control;
        let (_g, s) = c.lock_running(service).await?;
        let mut tx = c.store().begin().await?;
        let mut rec = find(&mut tx, &s, name.as_str())
            .await?
            .ok_or_else(|| ControlError::NotFound(format!("connection pool {name} not found")))?;
        if let Some(d) = update.database {
            rec.database = d.into_string();
        }
        if let Some(u) = update.username {
            rec.username = u.into_string();
        }
        if let Some(m) = update.mode {
            rec.mode = m;
        }
        if let Some(z) = update.size {
            rec.size = z;
        }
        check_refs(&mut tx, &s, &rec).await?;
        store::upsert_pool(&mut tx, &s.name, &rec).await?;
        c.commit_operation(
            tx,
            &s,
            OperationKind::UpdatePool,
            format!("connection pool {name} updated"),
        )
        .await
    }

    /// `DELETE .../connection-pool/{connection-pool-name}`.
    pub async fn delete(
        &self,
        service: &ServiceName,
        name: &PoolName,
    ) -> Result<OperationRecord, ControlError> {
        let c = self.control;
        let (_g, s) = c.lock_running(service).await?;
        let mut tx = c.store().begin().await?;
        if find(&mut tx, &s, name.as_str()).await?.is_none() {
            return Err(ControlError::NotFound(format!(
                "connection pool {name} not found"
            )));
        }
        store::delete_pool(&mut tx, &s.name, name.as_str()).await?;
        c.commit_operation(
            tx,
            &s,
            OperationKind::DeletePool,
            format!("connection pool {name} deleted"),
        )
        .await
    }
}

/// The names of the pools of `s` that `f` picks: what a user or database deletion checks
/// before it calls the server (the service's lock keeps pools from changing meanwhile).
pub(crate) async fn pool_names(
    store: &crate::store::Store,
    s: &ServiceRecord,
    f: impl Fn(&PoolRecord) -> bool,
) -> Result<Vec<String>, ControlError> {
    Ok(store
        .pools(&s.name)
        .await?
        .into_iter()
        .filter(|p| f(p))
        .map(|p| p.name)
        .collect())
}

async fn find(
    tx: &mut StoreTx,
    s: &ServiceRecord,
    name: &str,
) -> Result<Option<PoolRecord>, ControlError> {
    Ok(store::pools(tx, &s.name)
        .await?
        .into_iter()
        .find(|p| p.name == name))
}

/// A pool's database and user exist on its service.
async fn check_refs(
    tx: &mut StoreTx,
    s: &ServiceRecord,
    rec: &PoolRecord,
) -> Result<(), ControlError> {
    if !store::database_exists(tx, &s.name, &rec.database).await? {
        return Err(ControlError::NotFound(format!(
            "database {} not found",
            rec.database
        )));
    }
    if !store::users(tx, &s.name)
        .await?
        .iter()
        .any(|u| u.name == rec.username)
    {
        return Err(ControlError::NotFound(format!(
            "user {} not found",
            rec.username
        )));
    }
    Ok(())
}
