//! The records of the control plane and their states: what the store keeps and what control
//! hands to the API (services, users, pools, operations). Input validation lives in `input`.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::input::{IpFilter, PoolMode, PoolSize};
use crate::operations::OperationKind;
use crate::pg_settings::PgSettings;
use crate::pgbouncer::PgbouncerSettings;

/// The life-cycle state of a service (enum-service-state subset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    /// Cluster being created or recovered.
    Rebuilding,
    /// Cluster provisioned; pgbay keeps it running.
    Running,
}

impl ServiceState {
    /// The document's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Rebuilding => "rebuilding",
            ServiceState::Running => "running",
        }
    }
    /// Reads the stored spelling back.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "rebuilding" => Some(ServiceState::Rebuilding),
            "running" => Some(ServiceState::Running),
            _ => None,
        }
    }
}

/// A stored service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRecord {
    /// Unique name, also the directory name of its cluster.
    pub name: String,
    /// Stable id, used as the operation reference id.
    pub id: Uuid,
    /// Plan name as given.
    pub plan: String,
    /// Life-cycle state.
    pub state: ServiceState,
    /// PostgreSQL major version.
    pub version: String,
    /// The service's admin (primary user): a managed admin, not a superuser (see
    /// `admin::ensure_managed_admin`); on a cluster made by an older pgbay, its bootstrap
    /// superuser; on an external server, the operator's admin.
    pub admin_username: String,
    /// Port of the PostgreSQL server.
    pub pg_port: u16,
    /// Host of an external server (`None`: a local cluster on 127.0.0.1:pg_port).
    pub external_host: Option<String>,
    /// Port of the service's pooler listener.
    pub pooler_port: u16,
    /// Pooler settings.
    pub pgbouncer: PgbouncerSettings,
    /// Allowed client networks.
    pub ip_filter: IpFilter,
    /// Refuse deletion while set.
    pub termination_protection: bool,
    /// PostgreSQL settings (`pg-settings`).
    pub pg_settings: PgSettings,
    /// `work-mem` override, MB (`None`: derived from the plan).
    pub work_mem: Option<u32>,
    /// `shared-buffers-percentage` override (`None`: a quarter of the plan's memory).
    pub shared_buffers_percentage: Option<u32>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change time.
    pub updated_at: DateTime<Utc>,
    /// The node its cluster runs on (`None` only in a store written before nodes existed,
    /// until a node claims it).
    pub node: Option<String>,
}

/// Kind of a service user (`type` in the document).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserKind {
    /// The admin user created with the service.
    Primary,
    /// A user created through the API.
    Normal,
}

impl UserKind {
    /// The document's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            UserKind::Primary => "primary",
            UserKind::Normal => "normal",
        }
    }
}

/// A stored user; the password is encrypted (see `crypto`).
#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    /// Role name.
    pub name: String,
    /// Primary or normal.
    pub kind: UserKind,
    /// AES-GCM ciphertext of the password.
    pub password_enc: String,
    /// Ciphertext of a password being set and not yet committed (see migration 0003).
    pub pending_password_enc: Option<String>,
    /// The user chose this password (the document then omits it from service listings).
    pub password_overridden: bool,
    /// Role has REPLICATION.
    pub allow_replication: bool,
}

/// A stored connection pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolRecord {
    /// Pool name (the database name clients connect to).
    pub name: String,
    /// Backend database.
    pub database: String,
    /// Backend user.
    pub username: String,
    /// Pooling mode.
    pub mode: PoolMode,
    /// Server connections.
    pub size: PoolSize,
}

/// State of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpState {
    /// Still running.
    Pending,
    /// Done.
    Success,
    /// Failed; `reason` says why.
    Failure,
    /// Gave up waiting.
    Timeout,
}

impl OpState {
    /// The document's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OpState::Pending => "pending",
            OpState::Success => "success",
            OpState::Failure => "failure",
            OpState::Timeout => "timeout",
        }
    }
    /// Reads the stored spelling back.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(OpState::Pending),
            "success" => Some(OpState::Success),
            "failure" => Some(OpState::Failure),
            "timeout" => Some(OpState::Timeout),
            _ => None,
        }
    }
}

/// A stored operation (the document's `operation`).
#[derive(Debug, Clone, PartialEq)]
pub struct OperationRecord {
    /// Operation id.
    pub id: Uuid,
    /// State.
    pub state: OpState,
    /// Failure reason (document enum), set for failure/timeout.
    pub reason: Option<String>,
    /// Human message.
    pub message: String,
    /// Referenced resource id.
    pub ref_id: Uuid,
    /// Referenced resource link.
    pub ref_link: String,
    /// Command to get the referenced resource.
    pub ref_command: String,
    /// What the operation does, used to resume it after a restart.
    pub kind: OperationKind,
    /// Service the operation is about.
    pub service: String,
}
