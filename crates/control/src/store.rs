//! The control plane's durable state, in one of two backends with the same schema and behaviour:
//! a SQLite file (the single-node default; WAL mode with `synchronous=FULL`, so a transaction
//! that committed before an API call returned survives `kill -9` and power loss), or a
//! PostgreSQL database (`--store postgres://…`, 13 or newer, made highly available by the
//! operator). Both go through sqlx's `Any` driver: one set of queries (`$N` placeholders, types
//! both dialects share: TEXT and 64-bit integers), two migration directories (`migrations/`,
//! `migrations_pg/`) that build the same tables. Every mutation of the API is one transaction
//! ([`StoreTx`]) over the functions below; reads use the pool.

use std::path::Path;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, Connection, Executor, Row, Transaction};
use sqlx::{AnyConnection, AnyPool};
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

use crate::input::{IpFilter, PoolMode, PoolSize};
use crate::model::{
    OpState, OperationRecord, PoolRecord, ServiceRecord, ServiceState, UserKind, UserRecord,
};
use crate::operations::OperationKind;
use crate::pg_settings::PgSettings;
use crate::pgbouncer::PgbouncerSettings;

/// A store failure; always an internal error for the API.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed a statement.
    #[error("store: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// A migration failed.
    #[error("store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value could not be read back.
    #[error("store: corrupt value in {0}")]
    Corrupt(&'static str),
    /// `--store` names something this pgbay cannot use.
    #[error("store: {0}")]
    Unusable(String),
}

/// A store transaction: every mutation of the API is one. Commit with `commit()`; dropped
/// uncommitted, it rolls back.
pub type StoreTx = Transaction<'static, Any>;

/// Which database holds the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

type Result<T> = std::result::Result<T, StoreError>;

mod ha;
mod migrations;
mod nodes;
mod replicas;
pub use ha::{delete_ha_members_from, insert_ha, insert_ha_members, update_ha_settings, HaRecord};
pub use migrations::{insert_migration_task, upsert_migration};
pub use nodes::{NodeRecord, PortLock};
pub use replicas::{delete_replica, insert_replica, ReplicaRecord};

/// Handle on the store's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    url: String,
}

fn ts(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .map_err(|_| StoreError::Corrupt("timestamp"))
}

fn service_from_row(r: &AnyRow) -> Result<ServiceRecord> {
    let id: String = r.try_get("id")?;
    // The JSON columns are the store's own (serde of control's types), not API input.
    let settings: String = r.try_get("pgbouncer_settings")?;
    let pgbouncer: PgbouncerSettings =
        serde_json::from_str(&settings).map_err(|_| StoreError::Corrupt("pgbouncer_settings"))?;
    let ip: String = r.try_get("ip_filter")?;
    let ip: Vec<String> =
        serde_json::from_str(&ip).map_err(|_| StoreError::Corrupt("ip_filter"))?;
    let pg_port: i64 = r.try_get("pg_port")?;
    let pooler_port: i64 = r.try_get("pooler_port")?;
    Ok(ServiceRecord {
        name: r.try_get("name")?,
        id: Uuid::from_str(&id).map_err(|_| StoreError::Corrupt("services.id"))?,
        plan: r.try_get("plan")?,
        state: ServiceState::parse(r.try_get("state")?)
            .ok_or(StoreError::Corrupt("services.state"))?,
        version: r.try_get("version")?,
        admin_username: r.try_get("admin_username")?,
        pg_port: u16::try_from(pg_port).map_err(|_| StoreError::Corrupt("pg_port"))?,
        external_host: r.try_get("external_host")?,
        pooler_port: u16::try_from(pooler_port).map_err(|_| StoreError::Corrupt("pooler_port"))?,
        pgbouncer,
        ip_filter: IpFilter::parse("ip_filter", &ip)
            .map_err(|_| StoreError::Corrupt("ip_filter"))?,
        termination_protection: r.try_get::<i64, _>("termination_protection")? != 0,
        pg_settings: {
            let raw: String = r.try_get("pg_settings")?;
            PgSettings::from_stored(&raw).map_err(|_| StoreError::Corrupt("pg_settings"))?
        },
        work_mem: opt_u32(r.try_get("work_mem")?, "work_mem")?,
        shared_buffers_percentage: opt_u32(
            r.try_get("shared_buffers_percentage")?,
            "shared_buffers_percentage",
        )?,
        created_at: ts(r.try_get("created_at")?)?,
        updated_at: ts(r.try_get("updated_at")?)?,
        node: r.try_get("node")?,
    })
}

fn pgbouncer_column(s: &PgbouncerSettings) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "{}".into())
}

fn opt_u32(v: Option<i64>, what: &'static str) -> Result<Option<u32>> {
    v.map(|n| u32::try_from(n).map_err(|_| StoreError::Corrupt(what)))
        .transpose()
}

fn op_from_row(r: &AnyRow) -> Result<OperationRecord> {
    let id: String = r.try_get("id")?;
    let ref_id: String = r.try_get("ref_id")?;
    Ok(OperationRecord {
        id: Uuid::from_str(&id).map_err(|_| StoreError::Corrupt("operations.id"))?,
        state: OpState::parse(r.try_get("state")?)
            .ok_or(StoreError::Corrupt("operations.state"))?,
        reason: r.try_get("reason")?,
        message: r.try_get("message")?,
        ref_id: Uuid::from_str(&ref_id).map_err(|_| StoreError::Corrupt("operations.ref_id"))?,
        ref_link: r.try_get("ref_link")?,
        ref_command: r.try_get("ref_command")?,
        kind: OperationKind::parse(r.try_get("kind")?)
            .ok_or(StoreError::Corrupt("operations.kind"))?,
        service: r.try_get("service")?,
    })
}

impl Store {
    /// Opens (creating if needed) the SQLite database file and applies the migrations.
    pub async fn open(path: &Path) -> Result<Store> {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        Store::connect(&url).await
    }

    /// Opens the store `url` names (`sqlite://PATH` or `postgres://…`) and applies the
    /// migrations. A store whose schema is newer than this pgbay's is refused, unchanged.
    pub async fn connect(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::Unusable(
                "--store must be a sqlite:// or postgres:// URL".into(),
            ));
        };
        if backend == Backend::Postgres {
            // One plain connection first: an unreachable or refusing server is one clear error
            // at once, rather than the pool's retries until its acquire timeout.
            let probe = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                <AnyConnection as Connection>::connect(url),
            )
            .await;
            match probe {
                Ok(Ok(c)) => drop(c.close().await),
                Ok(Err(e)) => {
                    return Err(StoreError::Unusable(format!(
                        "cannot use the PostgreSQL store: {e}"
                    )))
                }
                Err(_) => {
                    return Err(StoreError::Unusable(
                        "cannot use the PostgreSQL store: no answer within 10 s".into(),
                    ))
                }
            }
        }
        let opts = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 8 })
            .acquire_timeout(std::time::Duration::from_secs(30));
        let pool = match backend {
            Backend::Sqlite => {
                opts.after_connect(|c, _| {
                    Box::pin(async move {
                        // What SqliteConnectOptions would set: durable commits, enforced
                        // foreign keys, and waiting for another writer instead of failing.
                        c.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                        )
                        .await?;
                        Ok(())
                    })
                })
                .connect(url)
                .await?
            }
            Backend::Postgres => {
                opts.after_connect(|c, _| {
                    Box::pin(async move {
                        // Every statement names its tables unqualified: pin the schema search
                        // so a store user's own schemas cannot shadow them.
                        c.execute("SET search_path = public").await?;
                        Ok(())
                    })
                })
                .connect(url)
                .await?
            }
        };
        let migrator = match backend {
            Backend::Sqlite => sqlx::migrate!("./migrations"),
            Backend::Postgres => sqlx::migrate!("./migrations_pg"),
        };
        // A store written by a newer pgbay: refuse it before touching anything.
        let newest_known = migrator.iter().map(|m| m.version).max().unwrap_or(0);
        if let Some(applied) = newest_applied(&pool).await? {
            if applied > newest_known {
                return Err(StoreError::Unusable(format!(
                    "the store's schema (migration {applied}) is newer than this pgbay's \
                     (migration {newest_known}): run the newer pgbay"
                )));
            }
        }
        migrator.run(&pool).await?;
        Ok(Store {
            pool,
            backend,
            url: url.to_string(),
        })
    }

    /// Closes every connection (waits for those in use to come back).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Starts a write transaction. On SQLite it takes the write lock at once (`BEGIN
    /// IMMEDIATE`, waiting up to the busy timeout for other writers), so that the reads that
    /// decide a change can happen inside its transaction: a deferred read-then-write upgrade
    /// would fail when another connection wrote in between. Keep it short (no server calls
    /// inside).
    pub async fn begin(&self) -> Result<StoreTx> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// All services, by name.
    pub async fn services(&self) -> Result<Vec<ServiceRecord>> {
        let rows = sqlx::query("SELECT * FROM services ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(service_from_row).collect()
    }

    /// One service.
    pub async fn service(&self, name: &str) -> Result<Option<ServiceRecord>> {
        let mut c = self.pool.acquire().await?;
        get_service(&mut c, name).await
    }

    /// The sealed password of the internal superuser of `service`'s cluster (migration 0006), if
    /// it has one.
    pub async fn internal_password(&self, service: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT password_enc FROM service_internal WHERE service = $1")
            .bind(service)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get("password_enc").map_err(StoreError::from))
            .transpose()
    }

    /// The source (and target time) of a service made from another's backups.
    pub async fn fork_of(&self, service: &str) -> Result<Option<Fork>> {
        let row = sqlx::query(
            "SELECT source, target_time, backup_set FROM service_forks WHERE service = $1",
        )
        .bind(service)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| -> Result<Fork> {
            Ok(Fork {
                source: r.try_get("source")?,
                target_time: r.try_get("target_time")?,
                backup_set: r.try_get("backup_set")?,
            })
        })
        .transpose()
    }

    /// Database names of a service.
    pub async fn databases(&self, service: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT name FROM databases WHERE service = $1 ORDER BY name")
            .bind(service)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get("name").map_err(StoreError::from))
            .collect()
    }

    /// Users of a service, primary first.
    pub async fn users(&self, service: &str) -> Result<Vec<UserRecord>> {
        let mut c = self.pool.acquire().await?;
        users(&mut c, service).await
    }

    /// Every service's users (primary first), by service: one query for the desired state.
    pub async fn all_users(&self) -> Result<Vec<(String, UserRecord)>> {
        let rows = sqlx::query("SELECT * FROM users ORDER BY service, kind = 'normal', name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("service")?, user_from_row(r)?)))
            .collect()
    }

    /// Every service's pools, by service: one query for the desired state.
    pub async fn all_pools(&self) -> Result<Vec<(String, PoolRecord)>> {
        let rows = sqlx::query("SELECT * FROM pools ORDER BY service, name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("service")?, pool_from_row(r)?)))
            .collect()
    }

    /// The users `service` had at `at`, with the sealed password each had then (from the
    /// history kept since store migration 0016), by name. A user whose history starts after `at`
    /// did not exist then; a user without history (made before 0016) is not in it.
    pub async fn passwords_at(
        &self,
        service: &str,
        at: DateTime<Utc>,
    ) -> Result<(HashMap<String, String>, HashSet<String>)> {
        let rows = sqlx::query(
            "SELECT name, password_enc, since FROM user_passwords WHERE service = $1 \
             ORDER BY name, since",
        )
        .bind(service)
        .fetch_all(&self.pool)
        .await?;
        let at = history_time(at);
        let (mut then, mut known) = (HashMap::new(), HashSet::new());
        for r in &rows {
            let name: String = r.try_get("name")?;
            let since: String = r.try_get("since")?;
            if since <= at {
                then.insert(name.clone(), r.try_get("password_enc")?);
            }
            known.insert(name);
        }
        Ok((then, known))
    }

    /// Pools of a service.
    pub async fn pools(&self, service: &str) -> Result<Vec<PoolRecord>> {
        let mut c = self.pool.acquire().await?;
        pools(&mut c, service).await
    }

    /// One operation.
    pub async fn operation(&self, id: Uuid) -> Result<Option<OperationRecord>> {
        let row = sqlx::query("SELECT * FROM operations WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(op_from_row).transpose()
    }

    /// Operations still pending (to resume after a restart).
    pub async fn pending_operations(&self) -> Result<Vec<OperationRecord>> {
        let rows = sqlx::query("SELECT * FROM operations WHERE state = 'pending'")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(op_from_row).collect()
    }

    /// Ports held by any service.
    pub async fn used_ports(&self) -> Result<Vec<u16>> {
        let rows = sqlx::query(
            "SELECT pg_port AS p FROM services UNION SELECT pooler_port FROM services \
             UNION SELECT pg_port FROM ha_members UNION SELECT rest_port FROM ha_members",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let p: i64 = r.try_get("p")?;
                u16::try_from(p).map_err(|_| StoreError::Corrupt("port"))
            })
            .collect()
    }
}

/// The daily backup times asked for, by service: `(hour, minute)`.
impl Store {
    pub async fn backup_schedules(&self) -> Result<Vec<(String, u8, u8)>> {
        let rows = sqlx::query("SELECT service, backup_hour, backup_minute FROM backup_schedules")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let h: i64 = r.try_get("backup_hour")?;
                let m: i64 = r.try_get("backup_minute")?;
                Ok((
                    r.try_get("service")?,
                    u8::try_from(h).map_err(|_| StoreError::Corrupt("backup_hour"))?,
                    u8::try_from(m).map_err(|_| StoreError::Corrupt("backup_minute"))?,
                ))
            })
            .collect()
    }
}

/// Sets the daily backup time of `service`.
pub async fn set_backup_schedule(
    c: &mut AnyConnection,
    service: &str,
    hour: u8,
    minute: u8,
) -> Result<()> {
    sqlx::query("DELETE FROM backup_schedules WHERE service = $1")
        .bind(service)
        .execute(&mut *c)
        .await?;
    sqlx::query(
        "INSERT INTO backup_schedules (service, backup_hour, backup_minute) VALUES ($1, $2, $3)",
    )
    .bind(service)
    .bind(i64::from(hour))
    .bind(i64::from(minute))
    .execute(&mut *c)
    .await?;
    Ok(())
}

impl Store {
    /// The sealed key of `service`'s backup repository, if it has one.
    pub async fn backup_key(&self, service: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT cipher_pass_enc FROM backup_keys WHERE service = $1")
            .bind(service)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get("cipher_pass_enc").map_err(StoreError::from))
            .transpose()
    }
}

/// Records the sealed key of `service`'s backup repository.
pub async fn insert_backup_key(c: &mut AnyConnection, service: &str, sealed: &str) -> Result<()> {
    sqlx::query("INSERT INTO backup_keys (service, cipher_pass_enc) VALUES ($1, $2)")
        .bind(service)
        .bind(sealed)
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// Gives `service` the users, databases and internal role of `source` (a new read replica of it)
/// in place of its own, with `admin` as its admin's name.
pub async fn replace_with_copy_of(
    c: &mut AnyConnection,
    service: &str,
    source: &str,
    admin: &str,
) -> Result<()> {
    for table in ["users", "databases", "service_internal"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE service = $1"))
            .bind(service)
            .execute(&mut *c)
            .await?;
    }
    for u in users(c, source).await? {
        upsert_user(c, service, &u).await?;
    }
    let dbs: Vec<String> = sqlx::query("SELECT name FROM databases WHERE service = $1")
        .bind(source)
        .fetch_all(&mut *c)
        .await?
        .iter()
        .map(|r| r.try_get("name"))
        .collect::<std::result::Result<_, _>>()?;
    for d in dbs {
        insert_database(c, service, &d).await?;
    }
    sqlx::query(
        "INSERT INTO service_internal (service, password_enc) \
         SELECT $1, password_enc FROM service_internal WHERE service = $2",
    )
    .bind(service)
    .bind(source)
    .execute(&mut *c)
    .await?;
    sqlx::query("UPDATE services SET admin_username = $1, state = 'rebuilding' WHERE name = $2")
        .bind(admin)
        .bind(service)
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// A service made from another service's backups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fork {
    pub source: String,
    /// `YYYY-MM-DD HH:MM:SS.ffffff+00`; None: the latest recoverable state.
    pub target_time: Option<String>,
    /// The backup to restore from (None: pgBackRest picks the latest).
    pub backup_set: Option<String>,
}

/// Records that `service` is made from `fork.source`'s backups.
pub async fn insert_fork(c: &mut AnyConnection, service: &str, fork: &Fork) -> Result<()> {
    sqlx::query(
        "INSERT INTO service_forks (service, source, target_time, backup_set) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(service)
    .bind(&fork.source)
    .bind(&fork.target_time)
    .bind(&fork.backup_set)
    .execute(c)
    .await?;
    Ok(())
}

/// Reads one service inside a transaction.
pub async fn get_service(c: &mut AnyConnection, name: &str) -> Result<Option<ServiceRecord>> {
    let row = sqlx::query("SELECT * FROM services WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *c)
        .await?;
    row.as_ref().map(service_from_row).transpose()
}

/// Inserts a service.
pub async fn insert_service(c: &mut AnyConnection, s: &ServiceRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO services (name, id, plan, state, version, admin_username, pg_port, pooler_port,
         pgbouncer_settings, ip_filter, termination_protection, created_at, updated_at, external_host,
         pg_settings, work_mem, shared_buffers_percentage, node)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
    )
    .bind(&s.name)
    .bind(s.id.to_string())
    .bind(&s.plan)
    .bind(s.state.as_str())
    .bind(&s.version)
    .bind(&s.admin_username)
    .bind(i64::from(s.pg_port))
    .bind(i64::from(s.pooler_port))
    .bind(pgbouncer_column(&s.pgbouncer))
    .bind(serde_json::Value::from(s.ip_filter.to_strings()).to_string())
    .bind(i64::from(s.termination_protection))
    .bind(s.created_at.to_rfc3339())
    .bind(s.updated_at.to_rfc3339())
    .bind(&s.external_host)
    .bind(s.pg_settings.to_stored())
    .bind(s.work_mem.map(i64::from))
    .bind(s.shared_buffers_percentage.map(i64::from))
    .bind(&s.node)
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// Rewrites the mutable columns of a service (plan, state, settings, filter, protection).
pub async fn update_service(c: &mut AnyConnection, s: &ServiceRecord) -> Result<()> {
    sqlx::query(
        "UPDATE services SET plan = $1, state = $2, pgbouncer_settings = $3, ip_filter = $4,
         termination_protection = $5, updated_at = $6, pg_settings = $7, work_mem = $8,
         shared_buffers_percentage = $9 WHERE name = $10",
    )
    .bind(&s.plan)
    .bind(s.state.as_str())
    .bind(pgbouncer_column(&s.pgbouncer))
    .bind(serde_json::Value::from(s.ip_filter.to_strings()).to_string())
    .bind(i64::from(s.termination_protection))
    .bind(s.updated_at.to_rfc3339())
    .bind(s.pg_settings.to_stored())
    .bind(s.work_mem.map(i64::from))
    .bind(s.shared_buffers_percentage.map(i64::from))
    .bind(&s.name)
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// Deletes a service and everything it owns.
pub async fn delete_service(c: &mut AnyConnection, name: &str) -> Result<()> {
    for table in [
        "pools",
        "users",
        "databases",
        "service_internal",
        "ha_members",
        "ha_services",
        "read_replicas",
        "backup_schedules",
        "backup_keys",
        "user_passwords",
    ] {
        sqlx::query(&format!("DELETE FROM {table} WHERE service = $1"))
            .bind(name)
            .execute(&mut *c)
            .await?;
    }
    sqlx::query("DELETE FROM services WHERE name = $1")
        .bind(name)
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// Records the sealed password of the internal superuser of `service`'s cluster.
pub async fn insert_internal_password(
    c: &mut AnyConnection,
    service: &str,
    password_enc: &str,
) -> Result<()> {
    sqlx::query("INSERT INTO service_internal (service, password_enc) VALUES ($1, $2)")
        .bind(service)
        .bind(password_enc)
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// Does the database exist?
pub async fn database_exists(c: &mut AnyConnection, service: &str, name: &str) -> Result<bool> {
    let row = sqlx::query("SELECT 1 FROM databases WHERE service = $1 AND name = $2")
        .bind(service)
        .bind(name)
        .fetch_optional(&mut *c)
        .await?;
    Ok(row.is_some())
}

/// Inserts a database.
pub async fn insert_database(c: &mut AnyConnection, service: &str, name: &str) -> Result<()> {
    sqlx::query("INSERT INTO databases (service, name) VALUES ($1, $2)")
        .bind(service)
        .bind(name)
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// Deletes a database.
pub async fn delete_database(c: &mut AnyConnection, service: &str, name: &str) -> Result<()> {
    sqlx::query("DELETE FROM databases WHERE service = $1 AND name = $2")
        .bind(service)
        .bind(name)
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// Users of a service, primary first.
pub async fn users(c: &mut AnyConnection, service: &str) -> Result<Vec<UserRecord>> {
    let rows = sqlx::query("SELECT * FROM users WHERE service = $1 ORDER BY kind = 'normal', name")
        .bind(service)
        .fetch_all(&mut *c)
        .await?;
    rows.iter().map(user_from_row).collect()
}

fn user_from_row(r: &AnyRow) -> Result<UserRecord> {
    let kind: String = r.try_get("kind")?;
    Ok(UserRecord {
        name: r.try_get("name")?,
        kind: if kind == "primary" {
            UserKind::Primary
        } else {
            UserKind::Normal
        },
        password_enc: r.try_get("password_enc")?,
        pending_password_enc: r.try_get("pending_password_enc")?,
        password_overridden: r.try_get::<i64, _>("password_overridden")? != 0,
        allow_replication: r.try_get::<i64, _>("allow_replication")? != 0,
    })
}

/// One user.
pub async fn user(c: &mut AnyConnection, service: &str, name: &str) -> Result<Option<UserRecord>> {
    Ok(users(c, service)
        .await?
        .into_iter()
        .find(|u| u.name == name))
}

/// Inserts a user, or replaces its password and flags.
pub async fn upsert_user(c: &mut AnyConnection, service: &str, u: &UserRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO users (service, name, kind, password_enc, password_overridden, allow_replication,
           pending_password_enc)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (service, name) DO UPDATE SET password_enc = excluded.password_enc,
           password_overridden = excluded.password_overridden,
           allow_replication = excluded.allow_replication,
           pending_password_enc = excluded.pending_password_enc",
    )
    .bind(service)
    .bind(&u.name)
    .bind(u.kind.as_str())
    .bind(&u.password_enc)
    .bind(i64::from(u.password_overridden))
    .bind(i64::from(u.allow_replication))
    .bind(&u.pending_password_enc)
    .execute(&mut *c)
    .await?;
    // The password's history (a fork at a time gets the password of that time).
    sqlx::query(
        "INSERT INTO user_passwords (service, name, password_enc, since)
         SELECT $1, $2, $3, $4 WHERE NOT EXISTS (SELECT 1 FROM user_passwords
           WHERE service = $5 AND name = $6 AND password_enc = $7)",
    )
    .bind(service)
    .bind(&u.name)
    .bind(&u.password_enc)
    .bind(history_time(Utc::now()))
    .bind(service)
    .bind(&u.name)
    .bind(&u.password_enc)
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// How `user_passwords.since` spells a time: RFC 3339 in UTC with microseconds, so that the
/// text compares as the time does.
pub fn history_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Deletes a user.
pub async fn delete_user(c: &mut AnyConnection, service: &str, name: &str) -> Result<()> {
    sqlx::query("DELETE FROM users WHERE service = $1 AND name = $2")
        .bind(service)
        .bind(name)
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// Pools of a service.
pub async fn pools(c: &mut AnyConnection, service: &str) -> Result<Vec<PoolRecord>> {
    let rows = sqlx::query("SELECT * FROM pools WHERE service = $1 ORDER BY name")
        .bind(service)
        .fetch_all(&mut *c)
        .await?;
    rows.iter().map(pool_from_row).collect()
}

fn pool_from_row(r: &AnyRow) -> Result<PoolRecord> {
    let mode: String = r.try_get("mode")?;
    Ok(PoolRecord {
        name: r.try_get("name")?,
        database: r.try_get("database")?,
        username: r.try_get("username")?,
        mode: PoolMode::from_stored(&mode).ok_or(StoreError::Corrupt("pools.mode"))?,
        size: PoolSize::from_stored(r.try_get("size")?),
    })
}

/// Inserts or replaces a pool.
pub async fn upsert_pool(c: &mut AnyConnection, service: &str, p: &PoolRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO pools (service, name, database, username, mode, size) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (service, name) DO UPDATE SET database = excluded.database,
           username = excluded.username, mode = excluded.mode, size = excluded.size",
    )
    .bind(service)
    .bind(&p.name)
    .bind(&p.database)
    .bind(&p.username)
    .bind(p.mode.as_str())
    .bind(i64::from(p.size.get()))
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// Deletes a pool.
pub async fn delete_pool(c: &mut AnyConnection, service: &str, name: &str) -> Result<()> {
    sqlx::query("DELETE FROM pools WHERE service = $1 AND name = $2")
        .bind(service)
        .bind(name)
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// Inserts an operation.
pub async fn insert_operation(c: &mut AnyConnection, op: &OperationRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO operations (id, state, reason, message, ref_id, ref_link, ref_command, kind,
         service, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(op.id.to_string())
    .bind(op.state.as_str())
    .bind(&op.reason)
    .bind(&op.message)
    .bind(op.ref_id.to_string())
    .bind(&op.ref_link)
    .bind(&op.ref_command)
    .bind(op.kind.as_str())
    .bind(&op.service)
    .bind(Utc::now().to_rfc3339())
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// Finishes an operation.
pub async fn finish_operation(
    c: &mut AnyConnection,
    id: Uuid,
    state: OpState,
    reason: Option<&str>,
    message: &str,
) -> Result<()> {
    sqlx::query("UPDATE operations SET state = $1, reason = $2, message = $3 WHERE id = $4")
        .bind(state.as_str())
        .bind(reason)
        .bind(message)
        .bind(id.to_string())
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// The newest migration applied to the store, if it has been migrated at all.
async fn newest_applied(pool: &AnyPool) -> Result<Option<i64>> {
    let mut c = pool.acquire().await?;
    // The migrator's own table; absent on a new store (the query fails: nothing applied).
    let mut tx = c.begin().await?;
    let row = sqlx::query("SELECT MAX(version) AS v FROM _sqlx_migrations WHERE success")
        .fetch_optional(&mut *tx)
        .await;
    drop(tx);
    match row {
        Ok(Some(r)) => Ok(r.try_get::<Option<i64>, _>("v")?),
        _ => Ok(None),
    }
}
