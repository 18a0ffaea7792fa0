//! Connection pools of a service: create, update, delete. Pools live in the store and the
//! pooler only: a change commits with its operation, `pending` until every live node's pooler
//! serves it (see `operations`). A refused call changes nothing.

use crate::commands::{NewPool, PoolUpdate};
use crate::control::Control;
use crate::error::ControlError;
use crate::input::{PoolName, ServiceName, Username};
use crate::model::{OperationRecord, PoolRecord, ServiceRecord};
use crate::operations::OperationKind;
use crate::store;

impl Control {
    pub(crate) async fn pool_names(
        &self,
        s: &ServiceRecord,
        f: impl Fn(&PoolRecord) -> bool,
    ) -> Result<Vec<String>, ControlError> {
        Ok(self
            .inner
            .store
            .pools(&s.name)
            .await?
            .into_iter()
            .filter(|p| f(p))
            .map(|p| p.name)
            .collect())
    }

    /// `POST .../connection-pool`.
    pub async fn create_pool(
        &self,
        service: &ServiceName,
        new: NewPool,
    ) -> Result<OperationRecord, ControlError> {
        let name = new.name;
        let (_g, s) = self.lock_running(service).await?;
        if !self
            .pool_names(&s, |p| p.name == name.as_str())
            .await?
            .is_empty()
        {
            return Err(ControlError::Conflict(format!(
                "connection pool {name} already exists"
            )));
        }
        let username = new
            .username
            .map(Username::into_string)
            .unwrap_or_else(|| s.admin_username.clone());
        self.check_pool_refs(&s, new.database.as_str(), &username)
            .await?;
        let rec = PoolRecord {
            name: name.to_string(),
            database: new.database.into_string(),
            username,
            mode: new.mode,
            size: new.size,
        };
        let mut tx = self.inner.store.begin().await?;
        store::upsert_pool(&mut tx, &s.name, &rec).await?;
        self.commit_operation(
            tx,
            &s,
            OperationKind::CreatePool,
            format!("connection pool {name} created"),
        )
        .await
    }

    /// `PUT .../connection-pool/{connection-pool-name}`: changes the fields it names.
    pub async fn update_pool(
        &self,
        service: &ServiceName,
        name: &PoolName,
        update: PoolUpdate,
    ) -> Result<OperationRecord, ControlError> {
        let (_g, s) = self.lock_running(service).await?;
        let mut rec = self
            .inner
            .store
            .pools(&s.name)
            .await?
            .into_iter()
            .find(|p| p.name == name.as_str())
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
        self.check_pool_refs(&s, &rec.database, &rec.username)
            .await?;
        let mut tx = self.inner.store.begin().await?;
        store::upsert_pool(&mut tx, &s.name, &rec).await?;
        self.commit_operation(
            tx,
            &s,
            OperationKind::UpdatePool,
            format!("connection pool {name} updated"),
        )
        .await
    }

    /// `DELETE .../connection-pool/{connection-pool-name}`.
    pub async fn delete_pool(
        &self,
        service: &ServiceName,
        name: &PoolName,
    ) -> Result<OperationRecord, ControlError> {
        let (_g, s) = self.lock_running(service).await?;
        if self
            .pool_names(&s, |p| p.name == name.as_str())
            .await?
            .is_empty()
        {
            return Err(ControlError::NotFound(format!(
                "connection pool {name} not found"
            )));
        }
        let mut tx = self.inner.store.begin().await?;
        store::delete_pool(&mut tx, &s.name, name.as_str()).await?;
        self.commit_operation(
            tx,
            &s,
            OperationKind::DeletePool,
            format!("connection pool {name} deleted"),
        )
        .await
    }
}
