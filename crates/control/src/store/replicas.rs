//! The `read_replicas` table (store migration 0012): which service replicates which.

use sqlx::any::AnyRow;
use sqlx::AnyConnection;
use sqlx::Row;

use super::{ts, Result, Store, StoreError};

/// A read_replica integration: `service` is a streaming replica of `source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRecord {
    /// The integration's id.
    pub id: uuid::Uuid,
    /// The replica (the integration's destination).
    pub service: String,
    /// The service it replicates.
    pub source: String,
    /// Sealed password of its replication role on the source.
    pub replication_password_enc: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl ReplicaRecord {
    /// The replication role of this replica on its source.
    pub fn role(&self) -> String {
        format!("pgbay_rr_{}", &self.id.simple().to_string()[..12])
    }
}

fn from_row(r: &AnyRow) -> Result<ReplicaRecord> {
    let id: String = r.try_get("id")?;
    Ok(ReplicaRecord {
        id: id
            .parse()
            .map_err(|_| StoreError::Corrupt("read_replicas.id"))?,
        service: r.try_get("service")?,
        source: r.try_get("source")?,
        replication_password_enc: r.try_get("replication_password_enc")?,
        created_at: ts(r.try_get("created_at")?)?,
    })
}

impl Store {
    /// Every read replica.
    pub async fn read_replicas(&self) -> Result<Vec<ReplicaRecord>> {
        let rows = sqlx::query("SELECT * FROM read_replicas ORDER BY created_at")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }
}

/// Records a read replica.
pub async fn insert_replica(c: &mut AnyConnection, r: &ReplicaRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO read_replicas (id, service, source, replication_password_enc, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(r.id.to_string())
    .bind(&r.service)
    .bind(&r.source)
    .bind(&r.replication_password_enc)
    .bind(r.created_at.to_rfc3339())
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// Forgets the read replica `service` (promoted).
pub async fn delete_replica(c: &mut AnyConnection, service: &str) -> Result<()> {
    sqlx::query("DELETE FROM read_replicas WHERE service = $1")
        .bind(service)
        .execute(&mut *c)
        .await?;
    Ok(())
}
