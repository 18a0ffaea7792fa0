//! What the API asks control to do, already parsed: one type per mutating call, built from the
//! validated input newtypes (the API reads them from request bodies in `api/src/requests.rs`).
//! Absent optional values are `None`; control applies the defaults, which depend on its state
//! (the external server, the running version, the service's admin user).

use crate::input::{
    AdminPassword, AdminUsername, DatabaseName, IpFilter, Locale, Password, Plan, PoolMode,
    PoolName, PoolSize, Username,
};
use crate::pg_settings::{PgSettings, PgSettingsPatch};
use crate::pgbouncer::{PgbouncerPatch, PgbouncerSettings};

/// `POST /dbaas-postgres/{name}`: a new service.
#[derive(Debug, Clone)]
pub struct NewService {
    /// Plan name.
    pub plan: Plan,
    /// PostgreSQL major version asked for; it must be the one available.
    pub version: Option<String>,
    /// Admin user name (default `avnadmin`); refused with an external server.
    pub admin_username: Option<AdminUsername>,
    /// Admin password (default: generated); refused with an external server.
    pub admin_password: Option<AdminPassword>,
    /// Pooler settings (default: none set).
    pub pgbouncer: Option<PgbouncerSettings>,
    /// Allowed client networks (default: any IPv4 address).
    pub ip_filter: Option<IpFilter>,
    /// Refuse deletion while set (default: off).
    pub termination_protection: Option<bool>,
    /// PostgreSQL settings (default: none set); refused with an external server.
    pub pg_settings: Option<PgSettings>,
    /// `work_mem` in MB, 1..=1024 (default: derived from the plan); refused with an external server.
    pub work_mem: Option<u32>,
    /// `shared_buffers` as a percentage of the plan's memory, 20..=60 (default 25); refused
    /// with an external server.
    pub shared_buffers_percentage: Option<u32>,
    /// Make the service from this service's backups (`fork-from-service`).
    pub fork_from: Option<crate::input::ServiceName>,
    /// The point in time to recover to (`recovery-backup-time`); only with `fork_from`.
    pub recovery_time: Option<chrono::DateTime<chrono::Utc>>,
    /// A server to copy databases from once the service runs (the document's `migration`).
    pub migration: Option<crate::migrations::MigrationSpec>,
    /// `synchronous-replication`: `quorum` (true) or `off`; only with standbys.
    pub synchronous_replication: Option<bool>,
    /// Daily backup time (`backup-schedule`, UTC; default: picked by pgbay).
    pub backup_schedule: Option<crate::BackupSchedule>,
    /// Make the service a read replica of this service (`integrations` of type read_replica).
    pub read_replica_of: Option<crate::input::ServiceName>,
    /// `pglookout-settings.max-failover-replication-time-lag`, seconds; only with standbys.
    pub max_failover_lag: Option<i64>,
}

/// `PUT /dbaas-postgres/{name}`: changes the values it names.
#[derive(Debug, Clone, Default)]
pub struct ServiceUpdate {
    /// New plan name.
    pub plan: Option<Plan>,
    /// PostgreSQL major version asked for; it must be the service's.
    pub version: Option<String>,
    /// Pooler settings to set or unset; the others keep their values.
    pub pgbouncer: Option<PgbouncerPatch>,
    /// New allowed client networks.
    pub ip_filter: Option<IpFilter>,
    /// New termination protection.
    pub termination_protection: Option<bool>,
    /// PostgreSQL settings to set or unset; the others keep their values.
    pub pg_settings: Option<PgSettingsPatch>,
    /// New `work-mem` (MB).
    pub work_mem: Option<u32>,
    /// New `shared-buffers-percentage`.
    pub shared_buffers_percentage: Option<u32>,
    /// Start a migration from this server (none may be running or replicating).
    pub migration: Option<crate::migrations::MigrationSpec>,
    /// New daily backup time (`backup-schedule`, UTC).
    pub backup_schedule: Option<crate::BackupSchedule>,
    /// New `synchronous-replication` (`quorum`: true).
    pub synchronous_replication: Option<bool>,
    /// New `pglookout-settings.max-failover-replication-time-lag`, seconds.
    pub max_failover_lag: Option<i64>,
}

/// `POST .../database`.
#[derive(Debug, Clone)]
pub struct NewDatabase {
    /// Database name.
    pub name: DatabaseName,
    /// LC_COLLATE of the new database (default: the server's).
    pub lc_collate: Option<Locale>,
    /// LC_CTYPE of the new database (default: the server's).
    pub lc_ctype: Option<Locale>,
}

/// `POST .../user`: a login role with a generated password.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Role name.
    pub username: Username,
    /// Grant REPLICATION.
    pub allow_replication: bool,
}

/// `PUT .../user/{username}/password/reset`.
#[derive(Debug, Clone, Default)]
pub struct PasswordReset {
    /// The new password (default: generated).
    pub password: Option<Password>,
}

/// `POST .../connection-pool`.
#[derive(Debug, Clone)]
pub struct NewPool {
    /// Pool name.
    pub name: PoolName,
    /// Backend database (must exist).
    pub database: DatabaseName,
    /// Pooling mode.
    pub mode: PoolMode,
    /// Server connections.
    pub size: PoolSize,
    /// Backend user (must exist; default: the service's admin user).
    pub username: Option<Username>,
}

/// `PUT .../connection-pool/{name}`: changes the values it names.
#[derive(Debug, Clone, Default)]
pub struct PoolUpdate {
    /// New backend database.
    pub database: Option<DatabaseName>,
    /// New pooling mode.
    pub mode: Option<PoolMode>,
    /// New size.
    pub size: Option<PoolSize>,
    /// New backend user.
    pub username: Option<Username>,
}
