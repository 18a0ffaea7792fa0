//! The tables of HA services (store migration 0011): `ha_services` (sealed role passwords and
//! failover settings) and `ha_members` (each Patroni member's ports).

use sqlx::AnyConnection;
use sqlx::Row;

use super::{Result, Store, StoreError};

/// What an HA service keeps besides its service row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaRecord {
    pub service: String,
    /// Sealed password of Patroni's replication role (`pgbay_replication`).
    pub replication_password_enc: String,
    /// Sealed password of Patroni's rewind role (`pgbay_rewind`).
    pub rewind_password_enc: String,
    /// synchronous-replication `quorum`.
    pub synchronous: bool,
    /// pglookout-settings' max-failover-replication-time-lag, seconds.
    pub max_lag_seconds: Option<i64>,
    /// The members' `(pg_port, rest_port)`, by index.
    pub members: Vec<(u16, u16)>,
}

fn port(v: i64, what: &'static str) -> Result<u16> {
    u16::try_from(v).map_err(|_| StoreError::Corrupt(what))
}

impl Store {
    /// The HA record of `service`, if it is an HA service.
    pub async fn ha(&self, service: &str) -> Result<Option<HaRecord>> {
        let Some(row) = sqlx::query(
            "SELECT replication_password_enc, rewind_password_enc, synchronous, max_lag_seconds \
             FROM ha_services WHERE service = $1",
        )
        .bind(service)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let rows = sqlx::query(
            "SELECT pg_port, rest_port FROM ha_members WHERE service = $1 ORDER BY idx",
        )
        .bind(service)
        .fetch_all(&self.pool)
        .await?;
        let members = rows
            .iter()
            .map(|r| {
                Ok((
                    port(r.try_get("pg_port")?, "ha_members.pg_port")?,
                    port(r.try_get("rest_port")?, "ha_members.rest_port")?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let sync: i64 = row.try_get("synchronous")?;
        Ok(Some(HaRecord {
            service: service.to_string(),
            replication_password_enc: row.try_get("replication_password_enc")?,
            rewind_password_enc: row.try_get("rewind_password_enc")?,
            synchronous: sync != 0,
            max_lag_seconds: row.try_get("max_lag_seconds")?,
            members,
        }))
    }
}

/// Records the HA settings and members of a new service.
pub async fn insert_ha(c: &mut AnyConnection, h: &HaRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO ha_services (service, replication_password_enc, rewind_password_enc, \
         synchronous, max_lag_seconds) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&h.service)
    .bind(&h.replication_password_enc)
    .bind(&h.rewind_password_enc)
    .bind(i64::from(h.synchronous))
    .bind(h.max_lag_seconds)
    .execute(&mut *c)
    .await?;
    insert_ha_members(c, &h.service, 0, &h.members).await
}

/// Adds members `first..` (their `(pg_port, rest_port)`) to an HA service.
pub async fn insert_ha_members(
    c: &mut AnyConnection,
    service: &str,
    first: usize,
    members: &[(u16, u16)],
) -> Result<()> {
    for (i, (pg, rest)) in members.iter().enumerate() {
        sqlx::query(
            "INSERT INTO ha_members (service, idx, pg_port, rest_port) VALUES ($1, $2, $3, $4)",
        )
        .bind(service)
        .bind((first + i) as i64)
        .bind(i64::from(*pg))
        .bind(i64::from(*rest))
        .execute(&mut *c)
        .await?;
    }
    Ok(())
}

/// Removes the members of index `from` and above of an HA service.
pub async fn delete_ha_members_from(
    c: &mut AnyConnection,
    service: &str,
    from: usize,
) -> Result<()> {
    sqlx::query("DELETE FROM ha_members WHERE service = $1 AND idx >= $2")
        .bind(service)
        .bind(from as i64)
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// Changes the failover settings of an HA service.
pub async fn update_ha_settings(
    c: &mut AnyConnection,
    service: &str,
    synchronous: bool,
    max_lag_seconds: Option<i64>,
) -> Result<()> {
    sqlx::query("UPDATE ha_services SET synchronous = $1, max_lag_seconds = $2 WHERE service = $3")
        .bind(i64::from(synchronous))
        .bind(max_lag_seconds)
        .bind(service)
        .execute(&mut *c)
        .await?;
    Ok(())
}
