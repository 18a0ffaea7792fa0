//! pgbay's control plane: the model of services, databases, users, pools and operations; their
//! durable store; the desired state it publishes for the data plane; and the decisions about each
//! service's PostgreSQL server, which `pgbay-cluster` carries out (provisioners, admin SQL, OS
//! users). The modules of `pgbay-cluster` that the API, the binary and the tests name are
//! re-exported here under their old paths (`admin`, `external`, `local`, `os_users`).
//!
//! The API calls [`Control`]'s methods with typed commands ([`commands`], built from the validated
//! newtypes of [`input`]) and gets records back ([`model`]); no JSON crosses that boundary except
//! the pgbouncer settings' own schema and JSON view ([`pgbouncer`]).
//!
//! The data-plane wiring uses only [`Control`]: `desired_state()` (a watch of
//! [`DesiredState`], republished with `generation + 1` after every committed change),
//! `tls_material()` (CA, server certificate and key), and `attach_data_plane()`, which returns the
//! [`AppliedReporter`] the wiring calls after applying each generation:
//!
//! ```text
//! AppliedReporter::applied(&self, generation: u64, failures: Vec<(String, String)>)
//! ```
//!
//! `failures` lists `(service, reason)` for every service the pooler could not apply; the others
//! serve that generation. Data-plane-visible operations stay `pending` until such a report covers
//! them, then end `success`, or `failure`/`unavailable` with the pooler's reason for a failed
//! service or after `APPLY_TIMEOUT` without a report (see [`ApplyOutcome`] and `operations.rs`).

pub mod backups;
pub mod ca;
mod cluster_config;
pub mod commands;
mod control;
pub mod crypto;
mod databases;
pub mod desired;
mod error;
pub mod ha;
pub mod input;
mod lifecycle;
pub mod logs;
mod maintenance;
pub mod metrics;
pub mod migrations;
pub mod model;
pub mod nodes;
mod operations;
pub mod pg_settings;
pub mod pgbouncer;
pub mod plans;
mod pools;
pub mod ports;
mod replicas;
mod services;
mod shared;
mod sizing;
pub mod store;
mod users;

pub use backups::{BackupMetrics, BackupSchedule};
pub use ca::TlsMaterial;
pub use commands::{
    NewDatabase, NewPool, NewService, NewUser, PasswordReset, PoolUpdate, ServiceUpdate,
};
pub use control::{Control, ControlConfig, APPLY_TIMEOUT};
pub use desired::{DesiredPool, DesiredService, DesiredState, DesiredUser, Forward};
pub use error::ControlError;
pub use ha::{HaView, NodeState};
pub use input::{InputError, PoolMode, PoolSize};
pub use maintenance::UpgradeCheck;
pub use migrations::{
    MigrationCheck, MigrationDetail, MigrationRecord, MigrationSpec, MigrationStatus, MigrationTask,
};
pub use model::{
    OpState, OperationRecord, PoolRecord, ServiceRecord, ServiceState, UserKind, UserRecord,
};
pub use nodes::{NodeConfig, Owner};
pub use operations::{AppliedReporter, ApplyOutcome, OperationKind};
pub use pgbay_cluster::pgbackrest::Backup;
pub use pgbay_cluster::pgbackrest::S3Repo;
pub use pgbay_cluster::provision::{external, local};
pub use pgbay_cluster::{admin, etcd, migrate, os_users, ExternalServer};
pub use pgbouncer::{IgnoredStartupParameter, PgbouncerPatch, PgbouncerSettings};
pub use ports::PortRange;
pub use services::{ServiceView, UserView};
