//! Provisioners: what runs a service's PostgreSQL server. [`local`] makes and runs one cluster per
//! service on this machine; [`external`] adopts a server the operator runs. The types here are
//! what both share: what a cluster needs ([`ClusterSpec`]), the TLS material it serves, and how a
//! cluster operation fails.

pub mod external;
pub mod local;
pub mod patroni;
pub mod replica;

use std::path::PathBuf;

/// What runs a service's PostgreSQL server: a cluster pgbay makes and runs on this machine
/// ([`local::LocalProvisioner`]), or a server the operator runs that pgbay adopts
/// ([`external::ExternalProvisioner`]). The control plane picks one per service and asks it, never
/// which kind it is, how to reach, start, restart or watch the server.
///
/// Methods block (they run PostgreSQL's programs or wait for a login): call them off the async
/// runtime (`spawn_blocking`), except the cheap ones said so.
pub trait Provisioner: Send + Sync + std::fmt::Debug {
    /// Whether pgbay runs the server itself: then it makes it with its own internal superuser,
    /// writes its configuration (so the plan's memory bounds it), restarts and supervises it. An
    /// adopted server stays as the operator configured it. Cheap.
    fn runs_server(&self) -> bool;

    /// Where the pooler and admin sessions reach the server listening on `port`. Cheap.
    fn backend_host(&self, port: u16) -> String;

    /// Whether the server of service `name` is running, when that shows without logging in
    /// (`None`: only a login tells). Cheap.
    fn running(&self, name: &str) -> Option<bool>;

    /// The server's log file, when pgbay can read it. Cheap.
    fn log_path(&self, name: &str) -> Option<PathBuf>;

    /// Brings the server of `spec` up: makes (once) and starts, or adopts, a local cluster; checks
    /// that an external server lets `spec.superuser` in. Blocking.
    fn bring_up(&self, spec: &ClusterSpec<'_>, tls: &TlsMaterial) -> Result<(), ProvisionError>;

    /// Restarts the server of `spec` with its configuration as given. Blocking.
    fn restart(&self, spec: &ClusterSpec<'_>, tls: &TlsMaterial) -> Result<(), ProvisionError>;
}

/// PEM material handed to the data plane and the clusters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    /// The CA certificate.
    pub ca_pem: String,
    /// Server certificate, SAN = public host, localhost, 127.0.0.1.
    pub server_cert_pem: String,
    /// Server private key (PKCS#8).
    pub server_key_pem: String,
}

/// A cluster operation that failed; internal for the API (logged, not shown).
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// File system work around the cluster failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A PostgreSQL program failed.
    #[error("{program} failed: {output}")]
    Program {
        /// Program name.
        program: String,
        /// Its output.
        output: String,
    },
    /// The service's OS user could not be made, found or removed.
    #[error(transparent)]
    OsUser(#[from] crate::os_users::OsUserError),
    /// An external server refused pgbay's admin login, or could not be reached.
    #[error("external server: {0}")]
    External(#[from] crate::admin::AdminError),
    /// The operation is not pgbay's to do on this server (e.g. restarting an adopted one).
    #[error("{0} is not pgbay's to do on an external server")]
    NotManaged(&'static str),
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ProvisionError {
    let what = what.into();
    move |source| ProvisionError::Io { what, source }
}

/// What a cluster needs to be created or started. Its `Debug` leaves the password out.
#[derive(Clone)]
pub struct ClusterSpec<'a> {
    /// Service name (directory name).
    pub name: &'a str,
    /// Port to listen on.
    pub port: u16,
    /// The bootstrap superuser initdb makes: pgbay's internal role (`admin::INTERNAL_ROLE`) on
    /// clusters made since the tenant's admin stopped being a superuser.
    pub superuser: &'a str,
    /// Its password.
    pub superuser_password: &'a str,
    /// The OS user the cluster runs as when pgbay is root (`os_users::name_for`).
    pub os_user: &'a str,
    /// Client networks allowed to connect (the service's ip-filter).
    pub ip_filter: &'a [ipnet::IpNet],
    /// Text of `pgbay-settings.conf` (plan-derived settings and pg-settings, as control's
    /// `cluster_config` renders them).
    pub settings: &'a str,
    /// The key that encrypts the service's pgBackRest repository (None: unencrypted, a
    /// service made before repositories were encrypted).
    pub backup_cipher: Option<&'a str>,
}

impl std::fmt::Debug for ClusterSpec<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSpec")
            .field("name", &self.name)
            .field("port", &self.port)
            .field("superuser", &self.superuser)
            .field("os_user", &self.os_user)
            .finish_non_exhaustive()
    }
}
