//! The desired state of the data plane, as the control plane publishes it: every service whose
//! cluster runs, with its users (plaintext passwords, decrypted for the pooler's authentication),
//! pools and settings. The binary translates it into the pooler's configuration; control itself
//! never depends on the pooler.

use std::sync::Arc;

use crate::input::PoolMode;
use crate::pgbouncer::PgbouncerSettings;

/// One published version of the desired state; `generation` grows with every committed change.
/// A change of one service replaces that service's entry only: the others are the same `Arc`s
/// with the same `changed_at`, so the data plane applies just the entries whose `changed_at`
/// differs from what it applied (a receiver that skipped versions still sees every change).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DesiredState {
    /// Monotonic version number.
    pub generation: u64,
    /// Services with a running cluster, by name.
    pub services: Vec<Arc<DesiredService>>,
}

/// What the pooler should serve for one service.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredService {
    /// Service name.
    pub name: String,
    /// The generation at which this entry last changed.
    pub changed_at: u64,
    /// Port of the pooler listener.
    pub pooler_port: u16,
    /// Address to listen on (the public host).
    pub listen_host: String,
    /// Host of the service's PostgreSQL server; a path (starting with `/`) is the Unix-socket
    /// directory of a local cluster.
    pub backend_host: String,
    /// Port of the service's PostgreSQL server.
    pub backend_port: u16,
    /// For an HA service: the service's own port is forwarded (TCP, TLS end to end) to its
    /// current primary member.
    pub forward: Option<Forward>,
    /// How long the pooler holds a client whose server is unreachable (a failover of an HA
    /// service) before it answers the error; zero for a single cluster.
    pub unavailable_hold: std::time::Duration,
    /// The server must be a primary (an HA service): a member in recovery is treated as
    /// unreachable by the pooler (see `pgbay_pooler::BackendConfig::require_primary`).
    pub require_primary: bool,
    /// Users (the admin user first).
    pub users: Vec<DesiredUser>,
    /// Connection pools.
    pub pools: Vec<DesiredPool>,
    /// Service-wide pooler settings; `None` fields are unset.
    pub pgbouncer: PgbouncerSettings,
    /// Allowed client networks.
    pub ip_filter: Vec<ipnet::IpNet>,
}

impl DesiredService {
    /// Equal apart from `changed_at`: nothing for the data plane to apply.
    pub fn same_as(&self, other: &DesiredService) -> bool {
        let mut o = other.clone();
        o.changed_at = self.changed_at;
        *self == o
    }
}

/// A user the pooler authenticates and logs in to the backend as.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredUser {
    /// Role name.
    pub name: String,
    /// Plaintext password.
    pub password: String,
    /// The service's admin user (kind "primary"): may open the pooler's admin console.
    pub admin: bool,
}

/// A pool the pooler serves.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredPool {
    /// Pool name = database name clients connect to.
    pub name: String,
    /// Backend database.
    pub database: String,
    /// Backend user.
    pub username: String,
    /// Pooling mode.
    pub mode: PoolMode,
    /// Server connections.
    pub size: u32,
}

/// A TCP forwarder of the data plane: connections to `listen_port` on the public host reach
/// `target_host:target_port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The service's own port (its `uri`).
    pub listen_port: u16,
    /// Where its server is: 127.0.0.1 for an HA service's primary member on this node, the
    /// public host of the node a service is placed on for another node's service.
    pub target_host: String,
    /// The current primary member's port, or the service's own port on its node.
    pub target_port: u16,
}
