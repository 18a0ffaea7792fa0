//! The `migrations` table (store migration 0008): one migration per service, its source and its
//! status.

use sqlx::any::AnyRow;
use sqlx::AnyConnection;
use sqlx::Row;

use super::{ts, Result, Store, StoreError};
use crate::migrations::{MigrationDetail, MigrationRecord, MigrationStatus, MigrationTask};

fn migration_from_row(r: &AnyRow) -> Result<MigrationRecord> {
    let port: i64 = r.try_get("port")?;
    let ssl: i64 = r.try_get("ssl")?;
    let ignore: String = r.try_get("ignore_dbs")?;
    let details: String = r.try_get("details")?;
    let status: String = r.try_get("status")?;
    Ok(MigrationRecord {
        service: r.try_get("service")?,
        method: r.try_get("method")?,
        host: r.try_get("host")?,
        port: u16::try_from(port).map_err(|_| StoreError::Corrupt("migrations.port"))?,
        username: r.try_get("username")?,
        password_enc: r.try_get("password_enc")?,
        dbname: r.try_get("dbname")?,
        ssl: ssl != 0,
        ignore_dbs: serde_json::from_str(&ignore)
            .map_err(|_| StoreError::Corrupt("migrations.ignore_dbs"))?,
        status: MigrationStatus::parse(&status).ok_or(StoreError::Corrupt("migrations.status"))?,
        error: r.try_get("error")?,
        details: serde_json::from_str::<Vec<MigrationDetail>>(&details)
            .map_err(|_| StoreError::Corrupt("migrations.details"))?,
        updated_at: ts(r.try_get("updated_at")?)?,
    })
}

impl Store {
    /// The migration of `service`, if it has one.
    pub async fn migration(&self, service: &str) -> Result<Option<MigrationRecord>> {
        let row = sqlx::query("SELECT * FROM migrations WHERE service = $1")
            .bind(service)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(migration_from_row).transpose()
    }
}

/// Records (or replaces) the migration of its service.
pub async fn upsert_migration(c: &mut AnyConnection, m: &MigrationRecord) -> Result<()> {
    let ignore = serde_json::to_string(&m.ignore_dbs).map_err(|_| StoreError::Corrupt("ignore"))?;
    let details = serde_json::to_string(&m.details).map_err(|_| StoreError::Corrupt("details"))?;
    sqlx::query(
        "INSERT INTO migrations (service, method, host, port, username, password_enc, dbname, ssl,
         ignore_dbs, status, error, details, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (service) DO UPDATE SET method = excluded.method, host = excluded.host,
         port = excluded.port, username = excluded.username, password_enc = excluded.password_enc,
         dbname = excluded.dbname, ssl = excluded.ssl, ignore_dbs = excluded.ignore_dbs,
         status = excluded.status, error = excluded.error, details = excluded.details,
         updated_at = excluded.updated_at",
    )
    .bind(&m.service)
    .bind(&m.method)
    .bind(&m.host)
    .bind(i64::from(m.port))
    .bind(&m.username)
    .bind(&m.password_enc)
    .bind(&m.dbname)
    .bind(i64::from(m.ssl))
    .bind(ignore)
    .bind(m.status.as_str())
    .bind(&m.error)
    .bind(details)
    .bind(m.updated_at.to_rfc3339())
    .execute(&mut *c)
    .await?;
    Ok(())
}

impl Store {
    /// A migration check of `service`.
    pub async fn migration_task(
        &self,
        service: &str,
        id: uuid::Uuid,
    ) -> Result<Option<MigrationTask>> {
        let row = sqlx::query("SELECT * FROM migration_tasks WHERE service = $1 AND id = $2")
            .bind(service)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let id: String = r.try_get("id")?;
            let success: i64 = r.try_get("success")?;
            Ok(MigrationTask {
                id: uuid::Uuid::parse_str(&id).map_err(|_| StoreError::Corrupt("task id"))?,
                service: r.try_get("service")?,
                success: success != 0,
                result: r.try_get("result")?,
                created_at: ts(r.try_get("created_at")?)?,
            })
        })
        .transpose()
    }
}

/// Records a finished migration check.
pub async fn insert_migration_task(c: &mut AnyConnection, t: &MigrationTask) -> Result<()> {
    sqlx::query(
        "INSERT INTO migration_tasks (id, service, success, result, created_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(t.id.to_string())
    .bind(&t.service)
    .bind(i64::from(t.success))
    .bind(&t.result)
    .bind(t.created_at.to_rfc3339())
    .execute(&mut *c)
    .await?;
    Ok(())
}
