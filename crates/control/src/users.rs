//! Users of a service: create, delete, reset and reveal passwords, allow replication. Each call
//! takes an already validated command, locks the running service, checks the store, applies the
//! change to PostgreSQL (idempotently), then commits the store change and its operation in one
//! transaction, `pending` until the pooler answered (see `operations`). A refused call changes
//! neither the store nor the server.

use pgbay_cluster::admin;

use crate::commands::{NewUser, PasswordReset};
use crate::control::Control;
use crate::error::ControlError;
use crate::input::{pg_identifier, Password, ServiceName, Username};
use crate::model::{OperationRecord, ServiceRecord, UserKind, UserRecord};
use crate::operations::OperationKind;
use crate::store;

/// The users (login roles) of every service.
pub struct Users<'a> {
    control: &'a Control,
}

impl Control {
    /// The users (login roles) of every service.
    pub fn users(&self) -> Users<'_> {
        Users { control: self }
    }
}

impl Users<'_> {
    /// `POST .../user`: creates a login role with a generated password.
    pub async fn create(
        &self,
        service: &ServiceName,
        new: NewUser,
    ) -> Result<OperationRecord, ControlError> {
        let c = self.control;
        let (user, replication) = (new.username, new.allow_replication);
        let (_g, s) = c.lock_running(service).await?;
        c.refuse_on_replica(&s)?;
        if c.inner
            .store
            .users(&s.name)
            .await?
            .iter()
            .any(|u| pg_identifier(&u.name) == pg_identifier(user.as_str()))
        {
            return Err(ControlError::Conflict(format!(
                "user {user} already exists"
            )));
        }
        let password = Password::generate();
        let t = c.admin_target(&s).await?;
        admin::upsert_role(&t, user.as_str(), password.as_str(), replication)
            .await
            .map_err(|e| ControlError::from_admin(e, "creating user"))?;
        let rec = UserRecord {
            name: user.to_string(),
            kind: UserKind::Normal,
            password_enc: c.inner.secrets.seal(password.as_str()),
            pending_password_enc: None,
            password_overridden: false,
            allow_replication: replication,
        };
        let mut tx = c.inner.store.begin().await?;
        store::upsert_user(&mut tx, &s.name, &rec).await?;
        for r in c.replicas_from(&s.name) {
            store::upsert_user(&mut tx, &r, &rec).await?;
        }
        c.commit_operation(
            tx,
            &s,
            OperationKind::CreateUser,
            format!("user {user} created"),
        )
        .await
    }

    async fn existing_user(
        &self,
        s: &ServiceRecord,
        user: &Username,
    ) -> Result<UserRecord, ControlError> {
        let c = self.control;
        let users = c.inner.store.users(&s.name).await?;
        users
            .into_iter()
            .find(|u| u.name == user.as_str())
            .ok_or_else(|| ControlError::NotFound(format!("user {user} not found")))
    }

    /// `PUT .../user/{username}/allow-replication`: sets or clears REPLICATION on the role, then
    /// records it. The primary user keeps REPLICATION (a managed admin has it).
    pub async fn set_allow_replication(
        &self,
        service: &ServiceName,
        user: &Username,
        allow: bool,
    ) -> Result<(), ControlError> {
        let c = self.control;
        let (_g, s) = c.lock_running(service).await?;
        c.refuse_on_replica(&s)?;
        let mut rec = self.existing_user(&s, user).await?;
        if rec.kind == UserKind::Primary && !allow {
            return Err(ControlError::Conflict(format!(
                "user {user} is the service's primary user and keeps REPLICATION"
            )));
        }
        let t = c.admin_target(&s).await?;
        admin::set_replication(&t, user.as_str(), allow)
            .await
            .map_err(|e| ControlError::from_admin(e, "setting REPLICATION"))?;
        rec.allow_replication = allow;
        let mut tx = c.inner.store.begin().await?;
        store::upsert_user(&mut tx, &s.name, &rec).await?;
        for r in c.replicas_from(&s.name) {
            store::upsert_user(&mut tx, &r, &rec).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// `DELETE .../user/{username}`.
    pub async fn delete(
        &self,
        service: &ServiceName,
        user: &Username,
    ) -> Result<OperationRecord, ControlError> {
        let c = self.control;
        let (_g, s) = c.lock_running(service).await?;
        c.refuse_on_replica(&s)?;
        let rec = self.existing_user(&s, user).await?;
        if rec.kind == UserKind::Primary {
            return Err(ControlError::Conflict(format!(
                "user {user} is the service's primary user and cannot be deleted"
            )));
        }
        let pools =
            crate::pools::pool_names(c.store(), &s, |p| p.username == user.as_str()).await?;
        if !pools.is_empty() {
            return Err(ControlError::Conflict(format!(
                "user {user} is used by connection pool(s) {}",
                pools.join(", ")
            )));
        }
        let t = c.admin_target(&s).await?;
        let dbs = c.inner.store.databases(&s.name).await?;
        admin::drop_role(&t, user.as_str(), &s.admin_username, &dbs)
            .await
            .map_err(|e| ControlError::from_admin(e, "deleting user"))?;
        let mut tx = c.inner.store.begin().await?;
        store::delete_user(&mut tx, &s.name, user.as_str()).await?;
        c.commit_operation(
            tx,
            &s,
            OperationKind::DeleteUser,
            format!("user {user} deleted"),
        )
        .await
    }

    /// `PUT .../user/{username}/password/reset`: `{}` (or no body) generates a password.
    pub async fn reset_password(
        &self,
        service: &ServiceName,
        user: &Username,
        reset: PasswordReset,
    ) -> Result<OperationRecord, ControlError> {
        let c = self.control;
        let given = reset.password;
        let (_g, s) = c.lock_running(service).await?;
        c.refuse_on_replica(&s)?;
        let mut rec = self.existing_user(&s, user).await?;
        let overridden = given.is_some();
        let password = given.unwrap_or_else(Password::generate);
        let t = c.admin_target(&s).await?;
        // Record the intent first (see migration 0003), then change PostgreSQL, then commit.
        let intent = UserRecord {
            pending_password_enc: Some(c.inner.secrets.seal(password.as_str())),
            ..rec.clone()
        };
        let mut tx = c.inner.store.begin().await?;
        store::upsert_user(&mut tx, &s.name, &intent).await?;
        for r in c.replicas_from(&s.name) {
            store::upsert_user(&mut tx, &r, &intent).await?;
        }
        tx.commit().await?;
        if let Err(e) = admin::set_password(&t, user.as_str(), password.as_str()).await {
            // Refused: withdraw the intent so nothing of the request remains.
            let mut tx = c.inner.store.begin().await?;
            store::upsert_user(&mut tx, &s.name, &rec).await?;
            for r in c.replicas_from(&s.name) {
                store::upsert_user(&mut tx, &r, &rec).await?;
            }
            tx.commit().await?;
            return Err(ControlError::from_admin(e, "resetting password"));
        }
        rec.password_enc = c.inner.secrets.seal(password.as_str());
        rec.pending_password_enc = None;
        rec.password_overridden = overridden;
        let mut tx = c.inner.store.begin().await?;
        store::upsert_user(&mut tx, &s.name, &rec).await?;
        for r in c.replicas_from(&s.name) {
            store::upsert_user(&mut tx, &r, &rec).await?;
        }
        c.commit_operation(
            tx,
            &s,
            OperationKind::ResetPassword,
            format!("password of user {user} reset"),
        )
        .await
    }

    /// `GET .../user/{username}/password/reveal`: (username, password).
    pub async fn reveal_password(
        &self,
        service: &ServiceName,
        user: &Username,
    ) -> Result<(String, String), ControlError> {
        let c = self.control;
        let s = c.existing(service).await?;
        let rec = self.existing_user(&s, user).await?;
        Ok((rec.name, c.inner.secrets.open(&rec.password_enc)?))
    }
}
